#!/usr/bin/env python3
"""Throughput of sharded work: 1 process against N processes, one thread each.

::

    python benchmarks/shard_throughput.py [--files 200] [--processes 2] [--encoder whisper-base]
                                          [--model DIR] [--backend torch|onnx] [--out FILE.md]

Two jobs, each run by 1 process and then by ``--processes`` processes at once, every process
with ``OMP_NUM_THREADS=1``; the wall time runs from the first start to the last exit (model
loading and the merge included), so it is what a user waits for:

- **classify**: ``python -m qieemo_lobes.classify`` on ``--files`` EmoDB clips (JSON Lines into a
  file), then the same with ``--shard I/N`` (N processes, the last one merges); the merged
  output is checked against the single process's (same paths, same labels).
- **cache filling**: a fresh feature cache of ``--encoder`` (fit window, as the recipes) filled
  for the same clips by :func:`qieemo_lobes.sharding.fill_cache`, in 1 process, then in N
  processes of one gloo process group (as under ``torchrun``), each encoding its share. The
  table also gives the longest time a process spent in ``fill_cache`` (encoding and waiting,
  without the start-up).

A warm-up run first (one clip) puts the model, the converted encoder weights and the files in
the page cache. The table names the machine and its load average before and after, since numbers
on a shared machine move with the load. ``--out`` writes it as Markdown with the command and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QIEEMO_SHARED_DATA", REPO.parent / "shared" / "data"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def fill_worker(rank: int, world_size: int, port: int, cache: str, clips_file: str) -> None:
    """One process of the cache-filling job: prints ``{"rank", "fill_s", "entries"}``."""
    import torch

    torch.set_num_threads(1)
    if world_size > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.features import FeatureCache
    from qieemo_lobes.sharding import fill_cache

    clips = json.loads(Path(clips_file).read_text())
    encoder_source = json.loads(Path(clips_file).with_suffix(".encoder").read_text())
    cache_ = FeatureCache(WhisperBlocks(encoder_source, window="fit"), cache)
    start = time.perf_counter()
    paths = fill_cache(cache_, {c: {"wav": c} for c in clips}, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"rank": rank, "fill_s": seconds, "entries": len(paths)}))
    if world_size > 1:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_together(commands: list[list[str]]) -> tuple[float, list[subprocess.CompletedProcess]]:
    """Start every command at once; the wall time until the last exits, and their results."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    done = []
    for proc, command in zip(procs, commands, strict=True):
        out, err = proc.communicate()
        done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return time.perf_counter() - start, done


def classify_job(clips: list[str], n: int, folder: Path, args) -> dict:
    """``classify`` of ``clips`` by ``n`` processes (``--shard I/N`` when ``n`` > 1)."""
    out = folder / f"classify_{n}.jsonl"
    command = [sys.executable, "-m", "qieemo_lobes.classify", *clips, "--format", "json"]
    command += ["--out", str(out), "--backend", args.backend]
    command += ["--model", args.model] if args.model else []
    shards = [[]] if n == 1 else [["--shard", f"{i}/{n}"] for i in range(1, n + 1)]
    wall, done = run_together([command + shard for shard in shards])
    if any(p.returncode != 0 for p in done):
        raise SystemExit("classify failed:\n" + "\n".join(p.stderr[-2000:] for p in done))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {"wall_s": wall, "records": [(r["path"], r.get("label")) for r in records]}


def fill_job(clips: list[str], n: int, folder: Path, encoder: str) -> dict:
    """A fresh cache of ``encoder`` filled for ``clips`` by ``n`` processes."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / f"clips_{n}.json"
    listing.write_text(json.dumps(clips))
    listing.with_suffix(".encoder").write_text(json.dumps(encoder))
    cache, port = folder / f"cache_{n}", _free_port()
    script = str(Path(__file__).resolve())
    commands = [
        [
            sys.executable,
            script,
            "--fill-worker",
            str(r),
            str(n),
            str(port),
            str(cache),
            str(listing),
        ]
        for r in range(n)
    ]
    wall, done = run_together(commands)
    if any(p.returncode != 0 for p in done):
        raise SystemExit("cache filling failed:\n" + "\n".join(p.stderr[-2000:] for p in done))
    workers = [json.loads(p.stdout.strip().splitlines()[-1]) for p in done]
    stored = len(list(cache.rglob("*.pt")))
    if stored != len(clips) or any(w["entries"] != len(clips) for w in workers):
        raise SystemExit(f"cache filling: {stored} entries stored for {len(clips)} clips")
    return {"wall_s": wall, "fill_s": max(w["fill_s"] for w in workers)}


def format_table(result: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    after = ", ".join(f"{x:.2f}" for x in result["load_average_after"])
    lines = [
        f"machine: {result['machine']}; load average {load} (after: {after})",
        f"{result['files']} EmoDB clips ({result['audio_s']:.0f} s of audio); one thread per "
        f"process; classify: {result['classify_model']}; cache: {result['encoder']}, fit window",
        "",
        "| job | processes | wall time | files per second | speed-up | longest fill_cache |",
        "|---|---|---|---|---|---|",
    ]
    for job in ("classify", "cache filling"):
        base = result[job][0]["wall_s"]
        for row in result[job]:
            fill = f"{row['fill_s']:.1f} s" if "fill_s" in row else ""
            lines.append(
                f"| {job} | {row['processes']} | {row['wall_s']:.1f} s | "
                f"{result['files'] / row['wall_s']:.2f} | {base / row['wall_s']:.2f}x | {fill} |"
            )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--fill-worker"]:
        rank, size, port, cache, clips = sys.argv[2:7]
        fill_worker(int(rank), int(size), int(port), cache, clips)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "emodb"), help="EmoDB folder")
    parser.add_argument("--files", type=int, default=200, help="clips (default 200)")
    parser.add_argument("--processes", type=int, default=2, help="N (default 2)")
    parser.add_argument("--encoder", default="whisper-base", help="cache filling's encoder")
    parser.add_argument("--model", help="classify's model folder (default: the default model)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--out", help="also write the table, with the command, to this file")
    args = parser.parse_args()
    if args.processes < 2:
        raise SystemExit("--processes must be at least 2")

    import soundfile as sf

    from qieemo_lobes.files import write_text_atomic

    clips = [str(c) for c in sorted(Path(args.data).glob("*.wav"))[: args.files]]
    if len(clips) < args.files:
        raise SystemExit(f"{args.data}: only {len(clips)} clips, {args.files} wanted")
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "files": len(clips),
        "audio_s": sum(sf.info(c).duration for c in clips),
        "classify_model": f"{args.model or 'the default model'} ({args.backend})",
        "encoder": args.encoder,
        "classify": [],
        "cache filling": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        classify_job(clips[:1], 1, folder, args)  # warm-up
        fill_job(clips[:1], 1, folder / "warm", args.encoder)
        for n in (1, args.processes):
            job = classify_job(clips, n, folder, args)
            result["classify"].append({"processes": n, "wall_s": job["wall_s"]})
            if n > 1 and job["records"] != result["classify_records"]:
                raise SystemExit("the merged output differs from the single process's")
            result["classify_records"] = job["records"]
        for n in (1, args.processes):
            job = fill_job(clips, n, folder / f"fill_{n}", args.encoder)
            result["cache filling"].append({"processes": n, **job})
    del result["classify_records"]
    result["load_average_after"] = os.getloadavg()
    table = format_table(result)
    print(table)
    if args.out:
        command = "python benchmarks/shard_throughput.py " + " ".join(sys.argv[1:])
        date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        header = (
            "# Sharded classify and cache filling: 1 process against "
            f"{args.processes}\n\nCommand: `{command}`; {date}\n\n"
        )
        write_text_atomic(header + table + "\n", args.out)


if __name__ == "__main__":
    main()
