"""The summary of a cross-validation: metrics over folds, merged predictions, confusion, report.

:func:`write_summary` turns the finished ``fold_K`` folders of ``OUT`` into ``summary.json``,
``predictions.csv``, ``confusion.png`` and ``report.md`` (see
:mod:`qieemo_lobes.cross_validation`).

Example
-------
>>> mean_std([{"wa": 80.0, "ua": 70.0, "wf1": 75.0, "macro_f1": 60.0},
...           {"wa": 90.0, "ua": 80.0, "wf1": 85.0, "macro_f1": 70.0}])["mean"]["wa"]
85.0
"""

from __future__ import annotations

import csv
import platform
import statistics
import time
from pathlib import Path

from qieemo_lobes.files import atomic_open, write_json_atomic, write_text_atomic
from qieemo_lobes.fold_runs import METRICS, finished_fold, read_json


def mean_std(folds: list[dict]) -> dict:
    """Mean and (population) standard deviation of each metric over folds."""
    return {
        "mean": {m: statistics.fmean(f[m] for f in folds) for m in METRICS},
        "std": {m: statistics.pstdev([f[m] for f in folds]) for m in METRICS},
    }


def versions() -> dict:
    """Versions of Python and of the libraries a result depends on."""
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
    try:
        with atomic_open(path, "wb") as fh:  # a new file's permissions; nothing left on failure
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)


def report_markdown(summary: dict, command: str) -> str:
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


def merge_predictions(out: Path, done: list[int], folds: list[dict]) -> None:
    """Every fold's ``predictions.csv`` in one ``OUT/predictions.csv`` with a ``fold`` column."""
    with atomic_open(out / "predictions.csv", newline="") as merged:
        writer = None
        for k, metrics in zip(done, folds, strict=True):
            with open(out / f"fold_{k}" / "predictions.csv", newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader)
                if writer is None:
                    writer = csv.writer(merged)
                    writer.writerow(["fold", *header])
                for row in reader:
                    writer.writerow([metrics["fold"], *row])


def write_summary(
    out: Path, done: list[int], corpus_summary: dict, settings: dict, started: float, command: str
) -> dict:
    """Summarise the finished folds ``done`` of ``out``; returns what ``summary.json`` holds.

    ``corpus_summary``: the corpus scan's ``summary()``; ``settings``: the cross-validation's
    :func:`~qieemo_lobes.fold_runs.cv_settings`; ``started``: when it began (``time.time()``),
    the wall time when no fold recorded its own; ``command``: the command line for the report.
    """
    folds = [finished_fold(out / f"fold_{k}") for k in done]
    run_info = read_json(out / f"fold_{done[0]}" / "run_info.json") or {}
    classes = folds[0]["classes"]
    confusion = [
        [sum(f["confusion"][i][j] for f in folds) for j in range(len(classes))]
        for i in range(len(classes))
    ]
    wall = 0.0
    for k in done:
        timing = read_json(out / f"fold_{k}" / "wall_time.json")
        if timing is not None:
            wall += float(timing.get("wall_time_s", 0.0))
    summary = {
        "dataset": run_info.get("dataset", "unknown"),
        "backbone": run_info.get("backbone", "unknown"),
        "classes": classes,
        "class_counts": {c: corpus_summary["classes"].get(c, 0) for c in classes},
        "folds": folds,
        **mean_std(folds),
        "confusion": confusion,
        "hparams": run_info.get("hparams", settings["settings"]),
        "versions": versions(),
        "wall_time_s": wall + (time.time() - started if not wall else 0.0),
    }
    write_json_atomic(summary, out / "summary.json")
    merge_predictions(out, done, folds)
    plot_confusion(
        confusion, classes, f"{summary['dataset']} ({len(done)} folds)", out / "confusion.png"
    )
    write_text_atomic(report_markdown(summary, command), out / "report.md")
    return summary
