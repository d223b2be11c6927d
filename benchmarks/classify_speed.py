#!/usr/bin/env python3
"""Speed and memory of ``python -m qieemo_lobes.classify``, measured from outside the process.

::

    python benchmarks/classify_speed.py [--model DIR] [--files 200] [--batch-size 8]
                                       [--long-minutes M] [--backends torch,onnx]
                                       [--onnx-model DIR] [--json OUT]

Every number is taken on the command as a user runs it (a child process, JSON Lines on stdout):

- **throughput**: ``--files`` EmoDB clips in one run: files per second, real-time factor
  (wall time of the whole process / seconds of audio), peak resident memory (the child's
  ``ru_maxrss`` from ``os.wait4``), and the time to its first result;
- **cold start**: process start to the first result on one clip, caches warm (the encoder's
  converted weights and the files in the page cache: one warm-up run first), median of 3;
- **where the start-up time goes**: a child process that times each step (imports, model
  construction, first batch) on its own;
- ``--long-minutes M``: one M-minute recording (EmoDB clips, 1 s apart) made on the fly, to show
  that memory stays bounded on a long file (``--long-minutes 60``: the one-hour case).

Each backend (``--backends``) is measured the same way: ``torch`` (the model folder, PyTorch) and
``onnx`` (``classify --backend onnx``: onnxruntime, no torch; ``--onnx-model``, default the
default model's ONNX copy, built by the warm-up run if missing, or ``--model`` exported to a
temporary folder). Targets on the project's 2-core CPU: torch: real-time factor <= 0.05, peak
memory <= 1.5 GB, cold start <= 6 s; onnx: real-time factor <= 0.02, peak memory <= 0.5 GB,
cold start <= 1.5 s. The table says which machine and how busy it was (load average), since
numbers on a shared machine move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from qieemo_lobes.classify import DEFAULT_MODEL_DIR
from qieemo_lobes.files import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QIEEMO_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGETS = {
    "torch": {"rtf": 0.05, "peak_gb": 1.5, "cold_start_s": 6.0},
    "onnx": {"rtf": 0.02, "peak_gb": 0.5, "cold_start_s": 1.5},
}
BACKENDS = tuple(TARGETS)

# Timed in a child process: one line "step seconds" per step, then the peak memory.
_PROBE_START = r"""
import sys, time, resource
t = time.perf_counter()
def step(name):
    global t
    now = time.perf_counter()
    print(f"{name}\t{now - t:.3f}", flush=True)
    t = now
"""
_PROBE_END = r"""
print(f"peak_mb\t{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
"""
PROBES = {
    "torch": r"""
from qieemo_lobes import classify, classify_process  # as the command: quiet, threads, malloc
classify_process.quiet_libraries(); classify_process.return_freed_memory(); classify_process.passive_openmp()
import torch; classify_process.set_threads(torch); step("import torch")
import speechbrain.inference.interfaces; step("import speechbrain (inference)")
from qieemo_lobes.interfaces import EmotionRecognizer; step("import qieemo_lobes")
recognizer = EmotionRecognizer.from_hparams(source=sys.argv[1]); step("build model (encoder + head)")
from qieemo_lobes.audio import load_audio
wav = load_audio(sys.argv[2]); step("read + resample one clip")
recognizer.classify_batch(wav[None]); step("first classification")
recognizer.classify_batch(wav[None]); step("second classification")
""",
    "onnx": r"""
from qieemo_lobes import classify, classify_process  # as the command: quiet, malloc, threads
classify._onnx_device(None, True); step("import classify, onnxruntime")
from qieemo_lobes.onnx_inference import OnnxRecognizer; step("import qieemo_lobes (onnx)")
recognizer = OnnxRecognizer(sys.argv[1], threads=classify_process.onnx_threads()); step("build model (sessions)")
wav = recognizer.load(sys.argv[2]); step("read + resample one clip")
recognizer.classify_batch([wav]); step("first classification")
recognizer.classify_batch([wav]); step("second classification")
""",
}


def run_child(command: list[str]) -> dict:
    """Run ``command``; wall time, time to the first stdout line, peak RSS (MB), output lines."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = None
    lines = []
    for line in proc.stdout:
        if first is None:
            first = time.perf_counter() - start
        lines.append(line)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(command[:4])} ... failed ({proc.returncode}): {stderr[-2000:]}"
        )
    return {"wall_s": wall, "first_s": first, "peak_mb": usage.ru_maxrss / 1024, "lines": lines}


def classify_command(
    model: Path | None, paths: list[str], batch_size: int, backend: str = "torch"
) -> list[str]:
    """The command a user runs; ``model`` None: the backend's default model."""
    return [
        sys.executable,
        "-m",
        "qieemo_lobes.classify",
        *paths,
        *(["--model", str(model)] if model is not None else []),
        "--format",
        "json",
        "--batch-size",
        str(batch_size),
        "--device",
        "cpu",
        "--backend",
        backend,
    ]


def make_long_file(clips: list[Path], minutes: float, path: Path) -> float:
    """Write an ``minutes``-long recording of clips 1 s apart, block by block; its duration."""
    rate = sf.info(clips[0]).samplerate
    total = int(minutes * 60 * rate)
    gap = np.zeros(rate, dtype=np.float32)
    written = 0
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        k = 0
        while written < total:
            clip = sf.read(clips[k % len(clips)], dtype="float32")[0]
            block = np.concatenate([clip, gap])[: total - written]
            out.write(block)
            written += len(block)
            k += 1
    return written / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model folder")
    parser.add_argument("--data", default=str(SHARED / "emodb"), help="EmoDB folder")
    parser.add_argument("--files", type=int, default=200, help="clips in the throughput run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-minutes", type=float, default=0.0, help="also a long recording")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for the command (default: torch's choice)"
    )
    parser.add_argument(
        "--backends", default="torch,onnx", help="comma-separated: torch, onnx (default both)"
    )
    parser.add_argument(
        "--onnx-model",
        help="ONNX model folder for the onnx rows (default: the default model's ONNX copy, or "
        "--model exported to a temporary folder)",
    )
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument(
        "--out", help="also write the table, with the command, to this Markdown file"
    )
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every child

    model = Path(args.model)
    if not (model / "hyperparams.yaml").is_file():
        raise SystemExit(f"{model}: not a model folder (export one or pass --model)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - set(BACKENDS):
        raise SystemExit(f"--backends: choose among {', '.join(BACKENDS)}")
    clips = sorted(Path(args.data).glob("*.wav"))[: args.files]
    if len(clips) < args.files:
        raise SystemExit(f"{args.data}: only {len(clips)} clips, {args.files} wanted")
    audio_s = sum(sf.info(c).duration for c in clips)
    paths = [str(c) for c in clips]

    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "model": str(model),
        "files": len(clips),
        "audio_s": audio_s,
        "batch_size": args.batch_size,
        "threads": args.threads or "default",
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            backend_model = backend_model_dir(backend, model, args.onnx_model, Path(tmp))
            result["backends"][backend] = measure(
                backend, backend_model, clips, paths, audio_s, args
            )
    result["load_average_after"] = os.getloadavg()
    table = format_table(result)
    print(table)
    if args.out:
        command = "python benchmarks/classify_speed.py " + " ".join(sys.argv[1:])
        header = f"# Speed and memory of the classify command\n\nCommand: `{command}`\n\n"
        write_text_atomic(header + table + "\n", args.out)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def backend_model_dir(backend: str, model: Path, onnx_model: str | None, tmp: Path) -> Path | None:
    """The folder ``--backend`` runs: the model itself (torch); for onnx, ``--onnx-model``, or
    None (the default model's ONNX copy, which the warm-up run builds), or ``model`` exported."""
    if backend == "torch":
        return model
    if onnx_model:
        return Path(onnx_model)
    if model.resolve() == DEFAULT_MODEL_DIR.resolve():
        return None
    out = tmp / "onnx_model"
    subprocess.run(
        [sys.executable, "-m", "qieemo_lobes.export_onnx", str(model), str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out


def measure(
    backend: str,
    model: Path | None,
    clips: list[Path],
    paths: list[str],
    audio_s: float,
    args: argparse.Namespace,
) -> dict:
    """Throughput, cold start, start-up steps (and the long recording) of one backend."""
    # Warm-up: converts the encoder weights (or builds the ONNX copy) if needed, fills the
    # page cache.
    run_child(classify_command(model, paths[:1], args.batch_size, backend))
    cold = [
        run_child(classify_command(model, paths[:1], args.batch_size, backend)) for _ in range(3)
    ]
    bulk = run_child(classify_command(model, paths, args.batch_size, backend))
    assert len(bulk["lines"]) == len(clips), "one JSON line per clip expected"
    errors = [json.loads(line) for line in bulk["lines"] if '"error"' in line]

    probe_model = model
    if probe_model is None:  # the default model's ONNX copy
        from qieemo_lobes.onnx_models import default_onnx_dir

        probe_model = default_onnx_dir()
    probe_script = _PROBE_START + PROBES[backend] + _PROBE_END
    probe = subprocess.run(
        [sys.executable, "-c", probe_script, str(probe_model), paths[0]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    steps = [line.split("\t") for line in probe.stdout.splitlines()]

    long_result = None
    if args.long_minutes > 0:
        with tempfile.TemporaryDirectory() as tmp:
            long_path = Path(tmp) / "long.wav"
            long_s = make_long_file(clips, args.long_minutes, long_path)
            run = run_child(classify_command(model, [str(long_path)], args.batch_size, backend))
            record = json.loads(run["lines"][0])
            long_result = {
                "audio_s": long_s,
                "wall_s": run["wall_s"],
                "rtf": run["wall_s"] / long_s,
                "peak_mb": run["peak_mb"],
                "segments": len(record.get("segments", [])),
                "error": record.get("error"),
            }
    return {
        "model": str(probe_model),
        "wall_s": bulk["wall_s"],
        "files_per_s": len(clips) / bulk["wall_s"],
        "rtf": bulk["wall_s"] / audio_s,
        "rtf_after_first_result": (bulk["wall_s"] - bulk["first_s"]) / audio_s,
        "first_result_s": bulk["first_s"],
        "peak_mb": bulk["peak_mb"],
        "cold_start_s": statistics.median(c["first_s"] for c in cold),
        "cold_start_runs_s": [round(c["first_s"], 2) for c in cold],
        "cold_start_peak_mb": max(c["peak_mb"] for c in cold),
        "errors": len(errors),
        "startup_steps_s": {name: float(value) for name, value in steps if name != "peak_mb"},
        "long": long_result,
    }


def format_table(r: dict) -> str:
    """One column per backend, each with its targets."""

    def verdict(value, target):
        return "ok" if value <= target else "MISSED"

    backends = list(r["backends"])
    out: list[str] = []
    load = ", ".join(f"{x:.1f}" for x in r["load_average"])
    after = ", ".join(f"{x:.1f}" for x in r.get("load_average_after", []))
    out.append(f"machine: {r['machine']}; load average {load} (after: {after})")
    out.append(f"model: {r['model']}; batch size {r['batch_size']}; threads {r['threads']}")
    for name in backends:
        out.append(f"{name}: {r['backends'][name]['model']}")
    out.append(f"files: {r['files']} ({r['audio_s']:.0f} s of audio)\n")
    out.append("| measure | " + " | ".join(backends) + " |")
    out.append("|---|" + "---|" * len(backends))

    def row(label: str, cell) -> None:
        out.append(f"| {label} | " + " | ".join(cell(n, r["backends"][n]) for n in backends) + " |")

    def with_target(value: float, key: str, name: str, text: str, unit: str = "") -> str:
        target = TARGETS[name][key]
        return f"{text} (<= {target}{unit} {verdict(value, target)})"

    row("wall time, whole process", lambda n, b: f"{b['wall_s']:.1f} s")
    row("files per second", lambda n, b: f"{b['files_per_s']:.1f}")
    row(
        "real-time factor, whole process",
        lambda n, b: with_target(b["rtf"], "rtf", n, f"{b['rtf']:.3f}"),
    )
    row(
        "real-time factor after the first result", lambda n, b: f"{b['rtf_after_first_result']:.3f}"
    )
    row(
        "peak resident memory",
        lambda n, b: with_target(
            b["peak_mb"] / 1024, "peak_gb", n, f"{b['peak_mb'] / 1024:.2f} GB", " GB"
        ),
    )
    row(
        "cold start (1 clip, median of 3)",
        lambda n, b: with_target(
            b["cold_start_s"],
            "cold_start_s",
            n,
            f"{b['cold_start_s']:.2f} s {b['cold_start_runs_s']}",
            " s",
        ),
    )
    if all(r["backends"][n]["long"] for n in backends):
        row(
            "long recording",
            lambda n, b: (
                f"{b['long']['audio_s'] / 60:.0f} min ({b['long']['segments']} segments): "
                f"RTF {b['long']['rtf']:.3f}, peak {b['long']['peak_mb'] / 1024:.2f} GB"
            ),
        )
    for name in backends:
        out.append(f"\nwhere the start-up goes ({name}, one child process):\n")
        out.append("| step | seconds |")
        out.append("|---|---|")
        for step, seconds in r["backends"][name]["startup_steps_s"].items():
            out.append(f"| {step} | {seconds:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
