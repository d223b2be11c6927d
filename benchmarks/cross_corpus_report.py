"""The report of the cross-corpus matrix (``benchmarks/cross_corpus.py``): the markdown tables,
``cross_corpus.json`` and the heat maps (``cross_corpus.png``).

Everything here is a function of the runs' records (no training):

- :func:`summarise`: one system's matrix for one TurEV-DB mode (UA per pair and per
  leave-one-corpus-out split, and their means);
- :func:`matrix_table`, :func:`mapping_table`, :func:`details_table`: the markdown tables;
- :func:`plot_heatmaps`: one heat map per TurEV-DB mode and system;
- :func:`write_report`: the markdown report, its JSON and its heat maps; :func:`machine_line`
  says which machine ran them.

``cross_corpus.py`` re-exports these names; the corpora, classes and splits come from
``benchmarks/corpora_classes.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from corpora_classes import (
    CLASSES,
    CORPORA,
    LEFT_OUT,
    NAMES,
    PROBE_C,
    PROBE_ENCODER,
    PROBE_INNER_FOLDS,
    SOURCES,
    Split,
    plan_splits,
)

from qieemo_lobes.files import atomic_open, write_json_atomic, write_text_atomic


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: dict[str, dict], corpora: Sequence[str], turev_calm: str) -> dict:
    """One system's matrix for one TurEV-DB mode, from its records ``{split name: record}``.

    Returns ``pairs`` (``{trained on: {tested on: UA or None}}``, no diagonal), ``loco``
    (``{tested on: UA or None}``), ``mean_off_diagonal``, ``mean_loco`` (over the splits that
    finished) and ``runs`` (the records of this mode).

    Example
    -------
    >>> records = {"train-emodb_test-ravdess": {"ua": 40.0}, "train-ravdess_test-emodb": {"ua": 60.0}}
    >>> s = summarise(records, ["emodb", "ravdess"], "neutral")
    >>> s["pairs"], s["loco"], s["mean_off_diagonal"], s["mean_loco"]
    ({'emodb': {'ravdess': 40.0}, 'ravdess': {'emodb': 60.0}}, {'emodb': 60.0, 'ravdess': 40.0}, 50.0, 50.0)
    """

    def ua(split: Split) -> float | None:
        record = records.get(split.name(turev_calm))
        return None if record is None or "failed" in record else record.get("ua")

    corpora = [c for c in CORPORA if c in corpora]
    pairs = {a: {b: ua(Split((a,), b)) for b in corpora if b != a} for a in corpora}
    loco = {t: ua(Split(tuple(c for c in corpora if c != t), t)) for t in corpora}
    names = {s.name(turev_calm) for s in plan_splits(corpora)}
    return {
        "pairs": pairs,
        "loco": loco,
        "mean_off_diagonal": _mean(v for row in pairs.values() for v in row.values()),
        "mean_loco": _mean(loco.values()),
        "runs": {name: record for name, record in records.items() if name in names},
    }


def _cell(value: float | None, planned: bool = True) -> str:
    if not planned:
        return "not run"
    return "failed" if value is None else f"{value:.1f}"


def matrix_table(summary: dict, corpora: Sequence[str], pairs: bool, loco: bool) -> list[str]:
    """The markdown UA matrix: rows trained on, columns tested on, the LOCO row, the means."""
    corpora = [c for c in CORPORA if c in corpora]
    head = "| trained on \\ tested on | " + " | ".join(NAMES[c] for c in corpora) + " | mean |"
    lines = [head, "|---" * (len(corpora) + 2) + "|"]
    for a in corpora:
        row = summary["pairs"][a]
        cells = ["(within: not here)" if b == a else _cell(row[b], pairs) for b in corpora]
        mean = _mean(row.values()) if pairs else None
        lines.append(f"| {NAMES[a]} | " + " | ".join(cells) + f" | {_cell(mean, pairs)} |")
    if pairs:
        column = [_mean(summary["pairs"][a][b] for a in corpora if a != b) for b in corpora]
        lines.append(
            "| mean over training corpora | "
            + " | ".join(_cell(v) for v in column)
            + f" | {_cell(summary['mean_off_diagonal'])} |"
        )
    if loco:
        cells = [_cell(summary["loco"][t]) for t in corpora]
        lines.append(
            "| all the others (leave one corpus out) | "
            + " | ".join(cells)
            + f" | {_cell(summary['mean_loco'])} |"
        )
    return lines


def mapping_table(counts: dict[str, dict[str, int]], turev_calm: str) -> list[str]:
    """Which label of each corpus is which class, with the utterances kept."""
    lines = [
        "| corpus | " + " | ".join(CLASSES) + " | left out | utterances |",
        "|---" * (len(CLASSES) + 3) + "|",
    ]
    for corpus in CORPORA:
        if corpus not in counts:
            continue
        cells = []
        for c in CLASSES:
            n = counts[corpus].get(c, 0)
            dropped = corpus == "turev" and c == "neutral" and turev_calm == "drop"
            cells.append("(none: calm left out)" if dropped else f"{SOURCES[corpus][c]} ({n})")
        left = LEFT_OUT[corpus] or ("calm" if turev_calm == "drop" else "")
        total = sum(counts[corpus].values())
        lines.append(f"| {NAMES[corpus]} | " + " | ".join(cells) + f" | {left or '-'} | {total} |")
    return lines


def details_table(runs: dict[str, dict]) -> list[str]:
    """Every run of one system: classes, sizes, WA / UA / WF1, wall time, reuse."""
    lines = [
        "| split | classes | n_train | n_test | WA | UA | WF1 | wall time (s) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        if "failed" in r:
            lines.append(f"| {name} | | | | | | | | FAILED: {r['failed']} |")
            continue
        note = "kept from an earlier call" if r.get("reused") else ""
        classes = (
            len(r["classes"]) if len(r["classes"]) == len(CLASSES) else ", ".join(r["classes"])
        )
        if r.get("system") == "probe":
            note = f"block {r['block']}" + (f"; {note}" if note else "")
        wall = r.get("wall_time_s")
        lines.append(
            f"| {name} | {classes} | {r['n_train']} | {r['n_test']} | {r['wa']:.1f} | "
            f"{r['ua']:.1f} | {r['wf1']:.1f} | {'' if wall is None else f'{wall:.0f}'} | {note} |"
        )
    return lines


def _matrix_array(summary: dict, corpora: Sequence[str]) -> np.ndarray:
    """``(n + 1, n)`` UA: rows trained on (the last: leave one corpus out), NaN where none."""
    n = len(corpora)
    array = np.full((n + 1, n), np.nan)
    for i, a in enumerate(corpora):
        for j, b in enumerate(corpora):
            if a != b and summary["pairs"][a][b] is not None:
                array[i, j] = summary["pairs"][a][b]
    for j, t in enumerate(corpora):
        if summary["loco"][t] is not None:
            array[n, j] = summary["loco"][t]
    return array


def plot_heatmaps(
    summaries: dict[str, dict[str, dict]], corpora: Sequence[str], path: Path
) -> None:
    """One heat map per TurEV-DB mode (rows) and system (columns): UA, trained on the row
    (the last row: all the others), tested on the column; the diagonal left blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = [c for c in CORPORA if c in corpora]
    modes, systems = list(summaries), list(next(iter(summaries.values())))
    n = len(corpora)
    size = 1.2 + 0.95 * n
    fig, axes = plt.subplots(
        len(modes),
        len(systems),
        figsize=(size * len(systems) + 1.2, (size + 0.6) * len(modes)),
        squeeze=False,
        layout="constrained",
    )
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = None
    for i, mode in enumerate(modes):
        for j, system in enumerate(systems):
            ax = axes[i][j]
            values = _matrix_array(summaries[mode][system], corpora)
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=100.0)
            for r in range(n + 1):
                for c in range(n):
                    text = (
                        "-"
                        if r == c
                        else ("" if math.isnan(values[r, c]) else f"{values[r, c]:.0f}")
                    )
                    colour = "black" if math.isnan(values[r, c]) or values[r, c] > 60 else "white"
                    ax.text(c, r, text, ha="center", va="center", fontsize=9, color=colour)
            ax.axhline(n - 0.5, color="white", linewidth=3)
            ax.set_xticks(range(n), [NAMES[c] for c in corpora], rotation=45, ha="right")
            ax.set_yticks(range(n + 1), [NAMES[c] for c in corpora] + ["all others"])
            ax.set_xlabel("tested on")
            ax.set_ylabel("trained on")
            calm = "" if "turev" not in corpora else f", TurEV-DB calm: {mode}"
            ax.set_title(f"{system}: UA %{calm}", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="UA (%)")
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def machine_line() -> str:
    """The machine, as in accuracy.py's header."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}; torch threads "
        f"{torch.get_num_threads()}; 1-minute load average at the end {os.getloadavg()[0]:.1f}"
    )


def write_report(
    out: Path,
    *,
    command: str,
    corpora: Sequence[str],
    modes: Sequence[str],
    systems: Sequence[str],
    counts: dict[str, dict[str, dict[str, int]]],
    records: dict[str, dict[str, dict]],
    pairs: bool,
    loco: bool,
    overrides: Sequence[str],
    wall_time_s: float,
    machine: str,
    date: str,
) -> tuple[str, dict]:
    """Write ``out`` (markdown), ``out.json`` and ``out.png``; returns the tables and the JSON.

    ``records`` is ``{system: {split name: record}}`` (a record holds WA, UA, WF1, n_test,
    confusion, ... or ``failed``); ``counts`` is ``{mode: {corpus: {class: n}}}``.
    """
    summaries = {
        mode: {system: summarise(records[system], corpora, mode) for system in systems}
        for mode in modes
    }
    named = ", ".join(NAMES[c] for c in CORPORA if c in corpora)
    lines = [
        "# Cross-corpus emotion recognition: train on one corpus, test on another",
        "",
        f"Command: `{command}`",
        f"Date: {date}; machine: {machine}.",
        f"Corpora: {named}; classes: {', '.join(CLASSES)}. UA (mean recall over the test "
        "corpus' classes) in percent; rows: trained on, columns: tested on; the diagonal "
        "(within-corpus) is not computed here (benchmarks/results/accuracy*.md has it). Chance "
        "UA: 25 (33.3 where three classes are tested).",
        "",
        "- qieemo: `recipes/custom/emotion/train.py hparams/qieemo.yaml` with "
        f"`--speed_perturb=[100]` {' '.join(f'`{o}`' for o in overrides) or '(no other override)'}"
        "; fold = corpus, validation = held-out speakers of the training corpora.",
        f"- probe: standardise + logistic regression (C={PROBE_C}) on the time-mean of one "
        "whisper-base block (fit window), the block (1-6, 7 = final output) chosen by a "
        f"speaker-grouped {PROBE_INNER_FOLDS}-fold cross-validation on the training corpora.",
        "",
    ]
    for mode in modes:
        calm = (
            "calm counted as neutral (`--turev-calm neutral`)"
            if mode == "neutral"
            else "calm left out (`--turev-calm drop`): UA tested on TurEV-DB averages angry, "
            "happy and sad; trained on TurEV-DB alone the model learns those three and is "
            "tested on the other corpus' angry, happy and sad"
        )
        title = f"## TurEV-DB: {calm}" if "turev" in corpora else "## Results"
        lines += [title, "", "Class mapping (utterances kept):", ""]
        lines += mapping_table(counts[mode], mode) + [""]
        lines += [
            "| system | mean off-diagonal UA | mean leave-one-corpus-out UA |",
            "|---|---|---|",
        ]
        for system in systems:
            s = summaries[mode][system]
            lines.append(
                f"| {system} | {_cell(s['mean_off_diagonal'], pairs)} | "
                f"{_cell(s['mean_loco'], loco)} |"
            )
        lines.append("")
        for system in systems:
            lines += [f"### {system}: UA (%)", ""]
            lines += matrix_table(summaries[mode][system], corpora, pairs, loco) + [""]
    for system in systems:
        lines += [f"## Every {system} run", ""]
        unique = {}
        for mode in modes:
            unique.update(summaries[mode][system]["runs"])
        lines += details_table(unique) + [""]
    walls = {
        system: sum(
            r.get("wall_time_s") or 0.0 for r in records[system].values() if "failed" not in r
        )
        for system in systems
    }
    lines.append(
        "Wall time of this call: "
        f"{wall_time_s:.0f} s; recorded wall time of the runs (earlier calls' included): "
        + ", ".join(f"{system} {walls[system]:.0f} s" for system in systems)
        + ". The first qieemo runs include the encoding of their clips into the feature cache."
    )
    text = "\n".join(lines) + "\n"
    failed = [
        {"system": system, "split": name, "problem": r["failed"]}
        for system in systems
        for name, r in records[system].items()
        if "failed" in r
    ]
    data = {
        "command": command,
        "date": date,
        "machine": machine,
        "corpora": [c for c in CORPORA if c in corpora],
        "classes": list(CLASSES),
        "turev_calm": list(modes),
        "mapping": {c: SOURCES[c] for c in CORPORA if c in corpora},
        "left_out": {c: LEFT_OUT[c] for c in CORPORA if c in corpora},
        "counts": counts,
        "overrides": list(overrides),
        "probe": {
            "encoder": f"{PROBE_ENCODER}, fit window",
            "C": PROBE_C,
            "inner_folds": PROBE_INNER_FOLDS,
        },
        "results": summaries,
        "failed": failed,
        "wall_time_s": wall_time_s,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out.with_suffix(".json"))
    plot_heatmaps(summaries, corpora, out.with_suffix(".png"))
    write_text_atomic(text, out)
    return text, data
