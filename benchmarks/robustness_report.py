"""The report of ``benchmarks/robustness.py``: a UA table per corpus, the curves, the JSON.

Split from the benchmark so that it reads top to bottom as: the systems, every fold, pooled;
this module only formats what it measured (:func:`report`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from accuracy import CORPORA
from cross_corpus import machine_line

from qieemo_lobes.files import atomic_open, write_json_atomic, write_text_atomic


def log(line: str) -> None:
    print(f"robustness: {line}", file=sys.stderr, flush=True)


SYSTEMS = {
    "qieemo": "qieemo (recipe default)",
    "qieemo_adapt": "qieemo adapted to each condition (AdaBN, transductive)",
    "qieemo_aug": "qieemo trained with 2 corrupted copies",
    "qieemo_aug1": "qieemo trained with 1 corrupted copy",
    "qieemo_aug_mild": "qieemo trained with 2 mild corrupted copies",
    "probe": "probe, best block by inner CV",
    "opensmile": "openSMILE ComParE_2016 + linear SVM",
}


def markdown(corpus: str, points: dict) -> list[str]:
    """The corpus' table: a row per condition, a column per system (pooled UA)."""
    systems = list(points)
    keys: list[tuple] = []
    for pooled in points.values():
        keys += [key for key in pooled if key not in keys]
    clean = next((p[("clean", None)] for p in points.values() if ("clean", None) in p), {})
    lines = [
        f"### {CORPORA[corpus][0]} ({clean.get('n', 0)} test clips over "
        f"{len(clean.get('folds', []))} folds)",
        "",
        "| condition | " + " | ".join(SYSTEMS[s] for s in systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for key in keys:
        label = next(p[key]["label"] for p in points.values() if key in p)
        cells = [
            ""
            if key not in points[s]
            else f"{points[s][key]['ua']:.1f}" + ("" if points[s][key]["complete"] else " (part)")
            for s in systems
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean of the corrupted conditions** | "
        + " | ".join(corrupted_mean(points[s], keys) for s in systems)
        + " |"
    )
    return lines + [""]


def corrupted_mean(pooled: dict, keys: list[tuple]) -> str:
    """Mean UA over every condition but clean, when the system has all of them complete (what
    training with corrupted copies must raise); ``-`` otherwise.

    Example
    -------
    >>> point = lambda ua: {"ua": ua, "complete": True}
    >>> keys = [("clean", None), ("white", 0), ("mp3", 8)]
    >>> corrupted_mean({k: point(u) for k, u in zip(keys, [50.0, 30.0, 40.0])}, keys)
    '35.0'
    >>> corrupted_mean({keys[0]: point(50.0), keys[1]: point(30.0)}, keys)
    '-'
    """
    corrupted = [key for key in keys if key != ("clean", None)]
    if not corrupted or any(key not in pooled or not pooled[key]["complete"] for key in corrupted):
        return "-"
    return f"{sum(pooled[key]['ua'] for key in corrupted) / len(corrupted):.1f}"


def plot(path: Path, all_points: dict) -> None:
    """One panel per corruption: pooled UA against severity (clean first, then mild to harsh),
    a line per system (colour) and corpus (line style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks: dict[tuple, str] = {}  # (corruption, severity) -> its tick label, in measured order
    for points in all_points.values():
        for pooled in points.values():
            for key, point in pooled.items():
                ticks.setdefault(key, point["label"][len(key[0]) :].strip() or "clean")
    panels: dict[str, list[tuple]] = {}
    for key in ticks:
        if key[0] != "clean":
            panels.setdefault(key[0], [("clean", None)]).append(key)
    panels = panels or {"clean": [("clean", None)]}
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    colours = {s: f"C{i}" for i, s in enumerate(SYSTEMS)}
    styles = ["-", "--", ":", "-."]
    for ax, (corruption, keys) in zip(axes.flat, panels.items(), strict=False):
        for c, (corpus, points) in enumerate(all_points.items()):
            for system, pooled in points.items():
                xs = [x for x, key in enumerate(keys) if key in pooled]
                ax.plot(
                    xs,
                    [pooled[keys[x]]["ua"] for x in xs],
                    styles[c % len(styles)],
                    color=colours[system],
                    marker="o",
                    label=f"{system}, {CORPORA[corpus][0]}",
                )
        ax.set_xticks(range(len(keys)), [ticks[key] for key in keys])
        ax.set_title(corruption)
        ax.set_ylabel("UA (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, legend = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, legend, loc="lower center", ncol=min(len(legend), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)


def report(args, command: str, wall: float, all_points: dict, seconds: dict, skipped: list) -> int:
    """Write ``--out`` (printed too), the JSON and the PNG beside it; the exit status."""
    out = Path(args.out)
    quick = (
        f"**Quick run: at most {args.max_per_fold} test clips per fold** (classes in turn); "
        "not the full test sets."
        if args.max_per_fold
        else "Every test clip of every fold."
    )
    compute = "; ".join(
        f"{CORPORA[corpus][0]} "
        + ", ".join(
            f"{system} {sum(p['seconds'] for p in pooled.values()):.0f}"
            for system, pooled in points.items()
        )
        for corpus, points in all_points.items()
    )
    lines = [
        "# Robustness: UA (%) on corrupted test clips, same folds as the accuracy table",
        "",
        f"Command: `{command}`",
        f"Date: {time.strftime('%Y-%m-%d')}; machine: {machine_line()}; wall time of this call "
        f"{wall:.0f} s (conditions kept from earlier calls cost nothing).",
        "",
        f"{quick} UA on the predictions pooled over folds (each fold tested by the model trained "
        "without it); corrupted copies made on the fly by `qieemo_lobes.corruptions` (seed "
        f"{args.seed}; babble from the fold's training speakers), the same audio for every "
        f"system. Compute seconds (all folds and conditions, kept ones included): {compute}.",
        "",
    ]
    for corpus, points in all_points.items():
        lines += markdown(corpus, points)
    if skipped:
        lines += [f"{len(skipped)} clips skipped (unreadable or failed corruption):", ""]
        lines += [f"- {line}" for line in skipped] + [""]
    text = "\n".join(lines)
    print(text)
    write_text_atomic(text, out)
    write_json_atomic(
        {
            "command": command,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_line(),
            "seed": args.seed,
            "max_per_fold": args.max_per_fold,
            "wall_time_s": round(wall, 1),
            "wall_time_s_per_system": {
                corpus: {system: round(v, 1) for system, v in per.items()}
                for corpus, per in seconds.items()
            },
            "skipped": skipped,
            "points": [
                {"corpus": corpus, "system": system, **point}
                for corpus, points in all_points.items()
                for system, pooled in points.items()
                for point in pooled.values()
            ],
        },
        out.with_suffix(".json"),
    )
    plot(out.with_suffix(".png"), all_points)
    log(f"written {out}, {out.with_suffix('.json').name}, {out.with_suffix('.png').name}")
    return 1 if skipped else 0
