"""Compact copies of the paper study's finished cross-validations, committed with the report.

A run's folder (checkpoints, logs, features) lives under the ignored ``results/`` and is lost
with the checkout; the report needs only what :func:`paper_runs.read_run` reads from it. So
every finished run (all its planned folds) is also kept as
``ARCHIVE/<corpus>/<system>_seed<seed>.json.gz``: the settings it recorded and, per fold, its
UA and WA, the MMF block weights, the CMA gates, the wall time and every test utterance's true
label, speaker and class probabilities (rounded to 4 decimals: a probability's last digit
never decides the most probable class of a seed ensemble in practice, and it keeps an EmoDB
run near 15 kB). The block probe of each corpus (section 1) is kept beside them as
``probe.json.gz`` (``probe_scratch.json.gz`` for the random encoder). ``benchmarks/paper.py`` reads a run from its folder first and from the
archive when the folder is gone, and does not train again what the archive holds with the
planned settings: the report regenerates on a fresh checkout from the feature cache and the
archive.

Example
-------
>>> import tempfile
>>> run = {"status": "done", "folder": "w/emodb/full_seed1", "n_folds_wanted": 1,
...        "settings": {"use_cma": True}, "folds": {1: {"ua": 50.0, "wa": 50.0,
...        "classes": ["a", "b"], "weights": None, "gates": None, "wall_time_s": 2.0,
...        "utterances": {"u1": {"true": "a", "probs": [0.123456, 0.876544],
...                              "speaker": "s1", "fold": "1"}}}}}
>>> path = Path(tempfile.mkdtemp()) / "emodb" / "full_seed1.json.gz"
>>> save_run(path, run)
>>> kept = load_run(path, [1])
>>> kept["folds"][1]["utterances"]["u1"]["probs"], kept["status"]
([0.1235, 0.8765], 'done')
>>> load_run(path, [1, 2]) is None  # the archive does not hold fold 2
True
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

DECIMALS = 4


def archive_path(archive: Path, corpus: str, system: str, seed: int) -> Path:
    """Where the run ``system`` at ``seed`` on ``corpus`` is kept."""
    return archive / corpus / f"{system}_seed{seed}.json.gz"


def _compact(run: dict[str, Any]) -> dict[str, Any]:
    folds = {}
    for k, fold in run["folds"].items():
        utterances = {
            utt: {**record, "probs": [round(float(p), DECIMALS) for p in record["probs"]]}
            for utt, record in fold["utterances"].items()
        }
        folds[str(k)] = {**fold, "utterances": utterances}
    return {"settings": run.get("settings") or {}, "folds": folds}


def probe_archive_path(archive: Path, corpus: str, kind: str) -> Path:
    """Where the block probe of ``corpus`` is kept (``kind``: ``pretrained`` or ``scratch``)."""
    return archive / corpus / ("probe.json.gz" if kind == "pretrained" else f"probe_{kind}.json.gz")


def save_json_gz(path: Path, value: Any) -> None:
    """Write ``value`` as gzip-compressed JSON at ``path``: a temporary file, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    partial = path.with_name(path.name + ".partial")
    # mtime=0: the same value gives the same bytes, so git sees no change when nothing changed.
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    os.replace(partial, path)


def load_json_gz(path: Path) -> Any | None:
    """The value kept at ``path`` by :func:`save_json_gz`; None when missing or unreadable."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def save_run(path: Path, run: dict[str, Any]) -> None:
    """Keep a finished run (:func:`paper_runs.read_run` with status ``done``) at ``path``,
    written to a temporary file, then renamed."""
    if run["status"] != "done":
        raise ValueError(f"{run['folder']}: only a finished run is archived ({run['status']})")
    save_json_gz(path, _compact(run))


def load_run(path: Path, folds: list[int]) -> dict[str, Any] | None:
    """The archived run at ``path`` shaped as :func:`paper_runs.read_run` returns it (status
    ``done``), or None when it is missing, unreadable or lacks a fold of ``folds``."""
    kept = load_json_gz(path)
    try:
        found = {int(k): fold for k, fold in kept["folds"].items()}
        settings = kept["settings"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if any(k not in found for k in folds):
        return None
    return {
        "status": "done",
        "folder": str(path),
        "folds": {k: found[k] for k in folds},
        "n_folds_wanted": len(folds),
        "settings": settings,
    }
