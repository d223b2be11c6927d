"""Reading the finished runs of the paper study (``benchmarks/paper.py``), training nothing.

A run's folder is turned into what the analysis needs: per fold the UA and WA of
``test.json``, the utterances of ``predictions.csv`` with their true labels and class
probabilities, the MMF block weights of the tested epoch (from ``train_log.txt``), the CMA gates
of the tested checkpoint, the recorded settings and the wall time; :func:`read_run` does it for
a cross-validation (every planned fold), :func:`read_single_run` for one ``train.py`` run of the
lexical corpus, each with a status (``done``, ``partial`` or ``not run``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import paper_report

from qieemo_lobes.recipe_results import read_predictions

# --------------------------------------------------------------------------------------------------
# Reading finished runs
# --------------------------------------------------------------------------------------------------


def mmf_weights(train_log: Path) -> dict[str, float] | None:
    """The MMF block weights of the tested epoch (``Epoch loaded: N`` in ``train_log.txt``),
    ``{"2": 0.51, "3": 0.49}``; None when the log has none (no MMF, or no log).

    Example
    -------
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "train_log.txt"
    >>> _ = log.write_text("epoch: 1, lr: 1e-3, w2: 5.0e-01, w3: 5.0e-01 - x\\n"
    ...                    "epoch: 2, lr: 9e-4, w2: 6.0e-01, w3: 4.0e-01 - x\\n"
    ...                    "Epoch loaded: 2 - test loss: 1.0\\n")
    >>> mmf_weights(log)
    {'2': 0.6, '3': 0.4}
    """
    try:
        lines = train_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    loaded = [m.group(1) for line in lines if (m := re.search(r"Epoch loaded: (\d+)", line))]
    epochs = {m.group(1): line for line in lines if (m := re.match(r"epoch: (\d+),", line.strip()))}
    line = epochs.get(loaded[-1]) if loaded else None
    if line is None and epochs:
        line = epochs[max(epochs, key=int)]
    if line is None:
        return None
    weights = {b: float(w) for b, w in re.findall(r"\bw(\d+): ([-+0-9.eE]+)", line.split(" - ")[0])}
    return weights or None


def cma_gates(save: Path) -> dict[str, list[float]] | None:
    """``tanh`` of the CMA gates of the tested checkpoint (best validation UA, the latest among
    ties), ``{"attn": [...], "ffn": [...]}`` per layer; None without CMA or checkpoint."""
    import torch
    import yaml

    best, best_key = None, None
    for folder in save.glob("CKPT+*"):
        if not (folder / "head.ckpt").is_file():
            continue
        try:
            meta = yaml.safe_load((folder / "CKPT.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            meta = {}
        key = (float(meta.get("ua", -1.0)), float(meta.get("unixtime", 0.0)), folder.name)
        if best_key is None or key > best_key:
            best, best_key = folder, key
    if best is None:
        return None
    try:
        state = torch.load(best / "head.ckpt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if "cma.attn_gate" not in state:
        return None
    return {
        "attn": [round(float(v), 6) for v in torch.tanh(state["cma.attn_gate"].float())],
        "ffn": [round(float(v), 6) for v in torch.tanh(state["cma.ffn_gate"].float())],
    }


def read_fold(folder: Path, fold: int | str) -> dict[str, Any] | None:
    """One finished fold (or single run): metrics, every test utterance with its speaker, the
    MMF weights and CMA gates of the tested model; None when not finished."""
    from qieemo_lobes.fold_runs import finished_fold

    metrics = finished_fold(folder)
    if metrics is None or not (folder / "predictions.csv").is_file():
        return None
    classes, rows = read_predictions(folder / "predictions.csv")
    test = paper_report.read_json(folder / "test.json") or {}
    utterances = {
        utt: {
            "true": true,
            "probs": probs,
            "speaker": str((test.get(utt) or {}).get("spk_id", f"fold{fold}")),
            "fold": str(fold),
        }
        for utt, (true, probs) in rows.items()
    }
    wall = (paper_report.read_json(folder / "wall_time.json") or {}).get("wall_time_s")
    return {
        "ua": float(metrics["ua"]),
        "wa": float(metrics["wa"]),
        "classes": classes,
        "utterances": utterances,
        "weights": mmf_weights(folder / "train_log.txt"),
        "gates": cma_gates(folder / "save"),
        "wall_time_s": float(wall) if wall is not None else None,
    }


def read_run(out: Path, folds: list[int]) -> dict[str, Any]:
    """A cross-validation's finished folds among ``folds``; ``status`` ``done`` (all),
    ``partial`` or ``not run``, and its recorded settings."""
    found = {k: f for k in folds if (f := read_fold(out / f"fold_{k}", k)) is not None}
    recorded = paper_report.read_json(out / "cv_settings.json") or {}
    status = "done" if len(found) == len(folds) else ("partial" if found else "not run")
    return {
        "status": status,
        "folder": str(out),
        "folds": found,
        "n_folds_wanted": len(folds),
        "settings": recorded.get("settings") or {},
    }


def read_single_run(out: Path) -> dict[str, Any]:
    """A single ``train.py`` run (the lexical corpus) as a one-fold run."""
    fold = read_fold(out, "test")
    settings = paper_report.read_json(out / "run_settings.json") or {}
    return {
        "status": "done" if fold else "not run",
        "folder": str(out),
        "folds": {1: fold} if fold else {},
        "n_folds_wanted": 1,
        "settings": settings.get("settings", settings) if isinstance(settings, dict) else {},
    }
