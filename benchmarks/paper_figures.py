"""The figures of the paper study's report (``paper_report.py``), drawn with matplotlib.

:func:`plot_probe` draws the probe UA of every block against its relative depth (block k of n at
k/n, the final output at the right), one curve per corpus with its 95 % band and the paper's
peak (block 9 of 12) dashed; :func:`plot_ablations` draws every system's ensemble UA with its
95 % speaker-bootstrap interval. Both write a PNG atomically (no timestamp in its metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qieemo_lobes.files import atomic_open

# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, metadata={"Software": None})
    finally:
        plt.close(fig)


def plot_probe(results: dict, path: Path) -> None:
    """Probe UA against relative depth (block k of n at k/n, the final output at the right),
    one curve per corpus with its 95 % band; the paper's peak (9 of 12) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = False
    for entry in results["corpora"].values():
        probe = entry["probe"]
        if not probe:
            continue
        n = len(probe) - 1
        names = [str(k) for k in range(1, n + 1)] + ["final"]
        x = [k / n for k in range(1, n + 1)] + [1.0 + 0.5 / n]
        y = [probe[b] for b in names]
        low = [entry["probe_ci"][b][0] for b in names]
        high = [entry["probe_ci"][b][1] for b in names]
        (line,) = ax.plot(x, y, marker="o", label=entry["name"])
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        drawn = True
    ax.axvline(0.75, linestyle="--", color="grey", label="paper's best: block 9 of 12")
    ax.set_xlabel("relative depth of the block (k / n); rightmost: final output")
    ax.set_ylabel("probe UA (%), 95 % speaker-bootstrap CI")
    ax.set_title("Where emotion lives: single-block probes")
    if not drawn:
        ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_ablations(results: dict, path: Path) -> None:
    """Ensemble UA of every system per corpus, with 95 % CIs; dots: each seed's pooled UA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(results["corpora"].values())
    systems: list[str] = []
    for entry in corpora:
        systems += [s for s in entry["systems"] if s not in systems]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(corpora) * max(1, len(systems)) / 3), 4.5))
    width = 0.8 / max(1, len(systems))
    for j, system in enumerate(systems):
        xs, ys, err, dots = [], [], [[], []], []
        for i, entry in enumerate(corpora):
            s = entry["systems"].get(system) or {}
            if s.get("ua_ensemble") is None:
                continue
            x = i + (j - (len(systems) - 1) / 2) * width
            xs.append(x)
            ys.append(s["ua_ensemble"])
            low, high = s.get("ci_low"), s.get("ci_high")
            # A percentile interval need not contain the estimate (few speakers): clip at 0.
            err[0].append(max(0.0, s["ua_ensemble"] - low) if low is not None else 0.0)
            err[1].append(max(0.0, high - s["ua_ensemble"]) if high is not None else 0.0)
            dots += [(x, u) for u in s.get("ua_pooled_seeds") or []]
        if xs:
            ax.bar(xs, ys, width, yerr=err, capsize=2, label=system)
            if dots:
                ax.plot(*zip(*dots, strict=True), "k.", markersize=3)
    ax.set_xticks(range(len(corpora)), [e["name"] for e in corpora])
    ax.set_ylabel("ensemble UA (%), 95 % speaker-bootstrap CI")
    ax.set_title("Ablations (dots: each seed's pooled UA)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
