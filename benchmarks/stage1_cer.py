#!/usr/bin/env python3
"""Stage-1 proof: the tiny Conformer-CTC recipe learns to transcribe a synthetic espeak-ng corpus.

1. Generates the "proof" corpus of ``tools/make_synthetic_librispeech.py`` (LibriSpeech layout;
   held-out voices for dev and test, disjoint sentence pools), reusing files already there.
2. Trains ``recipes/LibriSpeech/ASR/train.py hparams/conformer_tiny.yaml`` from scratch on CPU
   (a fresh output folder, so that the recipe also scores the untrained model).
3. Prints a table (corpus size, epochs, wall times, dev / test CER and WER, the untrained model's
   CER and WER) and writes it, with the command, to ``benchmarks/results/stage1_cer.md``.

The target: test CER <= 50 % within 20 minutes of training on 2 CPU cores (exit status 1 if the
CER target is missed; the wall time is reported as measured, on a machine shared with other jobs).

Usage::

    python benchmarks/stage1_cer.py [--workdir /tmp/qieemo_stage1] [--epochs 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "LibriSpeech" / "ASR"
sys.path.insert(0, str(ROOT / "tools"))
from make_synthetic_librispeech import make_corpus  # noqa: E402

from qieemo_lobes.files import write_text_atomic  # noqa: E402

CER_TARGET = 50.0
TIME_TARGET_MIN = 20.0


def corpus_stats(run_dir: Path) -> dict[str, dict]:
    """Utterances, hours, speakers and distinct sentences of each prepared manifest."""
    stats = {}
    for name in ("train", "dev-clean", "test-clean"):
        with open(run_dir / f"{name}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        stats[name] = {
            "utts": len(rows),
            "minutes": sum(float(r["duration"]) for r in rows) / 60,
            "speakers": len({r["spk_id"] for r in rows}),
            "sentences": len({r["wrd"] for r in rows}),
        }
    return stats


def best_checkpoint_meta(save_dir: Path) -> dict:
    """CKPT.yaml of the checkpoint the recipe tested (lowest dev CER)."""
    metas = [yaml.safe_load(p.read_text()) for p in save_dir.glob("CKPT+*/CKPT.yaml")]
    if not metas:
        raise RuntimeError(f"{save_dir}: no checkpoint found")
    return min(metas, key=lambda m: m["CER"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qieemo_stage1"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage1_cer.md"))
    args = parser.parse_args(argv)
    command = "python benchmarks/stage1_cer.py " + " ".join(shlex.quote(a) for a in (argv or []))

    workdir = Path(args.workdir)
    corpus_dir, run_dir = workdir / "corpus", workdir / "run"
    t0 = time.time()
    try:
        make_corpus(corpus_dir, "proof", workers=2)
    except RuntimeError as err:
        print(f"stage1_cer: {err}", file=sys.stderr)
        return 1
    corpus_s = time.time() - t0

    shutil.rmtree(run_dir, ignore_errors=True)
    train_cmd = [
        sys.executable,
        "train.py",
        "hparams/conformer_tiny.yaml",
        "--data_folder",
        str(corpus_dir / "LibriSpeech"),
        "--output_folder",
        str(run_dir),
        "--number_of_epochs",
        str(args.epochs),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(workdir / "train.out", "w", encoding="utf-8") as log:
        proc = subprocess.run(train_cmd, cwd=RECIPE, env=env, stdout=log, stderr=subprocess.STDOUT)
    train_s = time.time() - t0
    if proc.returncode != 0:
        print(f"stage1_cer: train.py failed (exit {proc.returncode}), see {workdir / 'train.out'}")
        return 1

    test = json.loads((run_dir / "test_metrics.json").read_text())
    untrained = json.loads((run_dir / "untrained_metrics.json").read_text())
    dev = best_checkpoint_meta(run_dir / "save")
    stats = corpus_stats(run_dir)
    ok = test["cer"] <= CER_TARGET

    lines = [
        "| split | utterances | minutes | speakers (voices) | distinct sentences |",
        "|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['utts']} | {s['minutes']:.1f} | {s['speakers']} | {s['sentences']} |"
        )
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| epochs | {args.epochs} (tested: epoch {dev['epoch']}, lowest dev CER) |",
        f"| wall time, corpus generation (files reused if present) | {corpus_s / 60:.1f} min |",
        f"| wall time, train.py (prep, tokenizer, untrained eval, training, test) "
        f"| {train_s / 60:.1f} min |",
        f"| dev CER / WER (%) | {dev['CER']:.2f} / {dev['WER']:.2f} |",
        f"| test CER / WER (%), {test['n_test']} utterances | {test['cer']:.2f} / {test['wer']:.2f} |",
        f"| untrained model, test CER / WER (%) | {untrained['cer']:.2f} / {untrained['wer']:.2f} |",
        f"| target: test CER <= {CER_TARGET:.0f} % within {TIME_TARGET_MIN:.0f} min "
        f"| {'met' if ok and train_s <= TIME_TARGET_MIN * 60 else 'NOT met'} |",
    ]
    table = "\n".join(lines)
    print(table)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report = (
        "# Stage 1: tiny Conformer-CTC on the synthetic espeak-ng LibriSpeech corpus\n\n"
        f"Command (repository root): `{command.strip()}`\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared "
        f"with other jobs (1-min load average at the end: {load:.1f}), {args.threads} torch "
        "thread(s), no GPU. Model: `recipes/LibriSpeech/ASR/hparams/conformer_tiny.yaml` "
        "(4 Conformer blocks, d_model 96, characters, greedy CTC). Dev and test speakers are "
        "espeak-ng voices that no training speaker uses; dev/test sentences are not in training. "
        "CER counts characters including word boundaries (SpeechBrain `ErrorRateStats`, "
        "`split_tokens=True`), in percent.\n\n" + table + "\n"
    )
    write_text_atomic(report, Path(args.out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
