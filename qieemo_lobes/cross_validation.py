"""Cross-validation over a corpus' protocol folds, shared by every emotion recipe.

Each recipe's ``cross_validate.py`` hands its ``train.py`` and fold listing to
:func:`run_cross_validation`::

    python cross_validate.py hparams/qieemo_whisper.yaml --data_folder=DIR --output_folder=OUT \\
        [--folds 1,3] [any hparam override, e.g. --use_cma=False]

Every fold runs as ``train.py ... --test_fold=K --output_folder=OUT/fold_K`` in its own process
(exactly what a user would type, so a fold can also be rerun by hand); a fold whose
``test_metrics.json`` exists is finished and is not rerun, so an interrupted cross-validation
resumes. A failed fold is reported at the end and makes the exit status non-zero; the others
still run. ``OUT`` then holds

- ``summary.json``: dataset, backbone, classes, class counts, every fold's test metrics, their
  mean and standard deviation, the hyperparameters, library versions and wall time;
- ``predictions.csv``: every test prediction of every fold;
- ``confusion.png``: the summed confusion matrix, row-normalised, with counts;
- ``report.md``: the same for people.

Example
-------
>>> mean_std([{"wa": 80.0, "ua": 70.0, "wf1": 75.0, "macro_f1": 60.0},
...           {"wa": 90.0, "ua": 80.0, "wf1": 85.0, "macro_f1": 70.0}])["mean"]["wa"]
85.0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from qieemo_lobes.files import write_json_atomic, write_text_atomic

METRICS = ("wa", "ua", "wf1", "macro_f1")


def mean_std(folds: list[dict]) -> dict:
    """Mean and (population) standard deviation of each metric over folds."""
    return {
        "mean": {m: statistics.fmean(f[m] for f in folds) for m in METRICS},
        "std": {m: statistics.pstdev([f[m] for f in folds]) for m in METRICS},
    }


def versions() -> dict:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for dist in ("torch", "torchaudio", "speechbrain", "transformers", "qieemo-lobes"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


def plot_confusion(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix with the counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{rates[i, j]:.2f}\n({int(counts[i, j])})",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=120)
    plt.close(fig)
    os.replace(tmp.name, path)


def _report(summary: dict, command: str) -> str:
    lines = [
        f"# {summary['dataset']}: {summary['backbone']}, {len(summary['folds'])} folds",
        "",
        f"Command: `{command}`",
        "",
        "| fold | n_test | WA | UA | WF1 | macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for fold in summary["folds"]:
        lines.append(
            f"| {fold['fold']} | {fold['n_test']} | {fold['wa']:.2f} | {fold['ua']:.2f} "
            f"| {fold['wf1']:.2f} | {fold['macro_f1']:.2f} |"
        )
    mean, std = summary["mean"], summary["std"]
    lines.append(
        "| **mean +- std** | | "
        + " | ".join(f"**{mean[m]:.2f} +- {std[m]:.2f}**" for m in METRICS)
        + " |"
    )
    lines += [
        "",
        "WA: accuracy; UA: mean per-class recall; WF1: support-weighted F1 (percent).",
        "",
        f"Classes (utterances): {', '.join(f'{c} ({n})' for c, n in summary['class_counts'].items())}",
        "",
        "![confusion matrix](confusion.png)",
        "",
        f"Wall time {summary['wall_time_s']:.0f} s; versions: "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def _run_child(command: list[str], log) -> int:
    """Run one fold; if this process is interrupted or terminated, the fold goes down with it."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cross_validation(
    train_script: str | os.PathLike,
    list_utterances: Callable,
    argv: list[str] | None = None,
) -> int:
    """Run the protocol's folds of a recipe and summarise them; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Cross-validate a qieemo emotion recipe over its protocol folds.",
        epilog="Any other --name=value is passed to train.py as a hyperparameter override.",
    )
    parser.add_argument("hparams", help="the recipe's YAML file")
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--folds", help="comma-separated 1-based fold indices (default: all)")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    try:
        scan = list_utterances(args.data_folder)
    except (ValueError, OSError) as err:  # LayoutError is a ValueError: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    corpus_summary = scan.summary()
    fold_names = list(corpus_summary["folds"])
    if args.folds:
        try:
            wanted = [int(k) for k in args.folds.split(",")]
        except ValueError:
            print(
                f"error: --folds takes 1-based fold indices, e.g. 1,3 (got {args.folds})",
                file=sys.stderr,
            )
            return 2
        bad = [k for k in wanted if not 1 <= k <= len(fold_names)]
        if bad:
            print(f"error: --folds {bad} out of range 1..{len(fold_names)}", file=sys.stderr)
            return 2
    else:
        wanted = list(range(1, len(fold_names) + 1))

    failures = []
    for k in wanted:
        fold_dir = out / f"fold_{k}"
        if (fold_dir / "test_metrics.json").exists():
            print(f"fold {k}/{len(fold_names)} ({fold_names[k - 1]}): finished earlier, kept")
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            str(train_script),
            args.hparams,
            f"--data_folder={args.data_folder}",
            f"--output_folder={fold_dir}",
            f"--test_fold={k}",
            *overrides,
        ]
        print(f"fold {k}/{len(fold_names)} ({fold_names[k - 1]}): training ...", flush=True)
        fold_start = time.time()
        with open(fold_dir / "stdout.log", "w") as log:
            code = _run_child(command, log)
        if code != 0 or not (fold_dir / "test_metrics.json").exists():
            failures.append(k)
            print(f"fold {k}: FAILED (exit {code}); see {fold_dir / 'stdout.log'}", file=sys.stderr)
            continue
        write_json_atomic({"wall_time_s": time.time() - fold_start}, fold_dir / "wall_time.json")
        metrics = json.loads((fold_dir / "test_metrics.json").read_text())
        print(
            f"fold {k}: WA {metrics['wa']:.2f} UA {metrics['ua']:.2f} WF1 {metrics['wf1']:.2f} "
            f"({time.time() - fold_start:.0f} s)",
            flush=True,
        )

    done = [k for k in wanted if (out / f"fold_{k}" / "test_metrics.json").exists()]
    if not done:
        print("error: no fold finished", file=sys.stderr)
        return 1
    folds = [json.loads((out / f"fold_{k}" / "test_metrics.json").read_text()) for k in done]
    run_info = json.loads((out / f"fold_{done[0]}" / "run_info.json").read_text())
    classes = folds[0]["classes"]
    confusion = [
        [sum(f["confusion"][i][j] for f in folds) for j in range(len(classes))]
        for i in range(len(classes))
    ]
    wall = 0.0
    for k in done:
        timing = out / f"fold_{k}" / "wall_time.json"
        if timing.exists():
            wall += json.loads(timing.read_text())["wall_time_s"]
    summary = {
        "dataset": run_info["dataset"],
        "backbone": run_info["backbone"],
        "classes": classes,
        "class_counts": {c: corpus_summary["classes"].get(c, 0) for c in classes},
        "folds": folds,
        **mean_std(folds),
        "confusion": confusion,
        "hparams": run_info["hparams"],
        "versions": versions(),
        "wall_time_s": wall + (time.time() - started if not wall else 0.0),
    }
    write_json_atomic(summary, out / "summary.json")

    with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False, newline="") as tmp:
        writer = None
        for k in done:
            with open(out / f"fold_{k}" / "predictions.csv", newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader)
                if writer is None:
                    writer = csv.writer(tmp)
                    writer.writerow(["fold", *header])
                for row in reader:
                    writer.writerow([folds[done.index(k)]["fold"], *row])
    os.replace(tmp.name, out / "predictions.csv")

    plot_confusion(
        confusion, classes, f"{summary['dataset']} ({len(done)} folds)", out / "confusion.png"
    )
    command = " ".join(["python cross_validate.py", *(argv if argv is not None else sys.argv[1:])])
    write_text_atomic(_report(summary, command), out / "report.md")
    mean, std = summary["mean"], summary["std"]
    print(
        f"{summary['dataset']} {len(done)} folds: "
        + ", ".join(f"{m.upper()} {mean[m]:.2f} +- {std[m]:.2f}" for m in ("wa", "ua", "wf1"))
        + f"  -> {out / 'summary.json'}"
    )
    if failures:
        print(f"error: folds {failures} failed", file=sys.stderr)
        return 1
    return 0
