"""One fold of a cross-validation as its own process: its settings, whether it finished, running it.

Shared by :mod:`qieemo_lobes.cross_validation` and the benchmarks that drive recipes fold by
fold. A fold folder is finished when its ``test_metrics.json`` is complete; it may be reused
only when the settings it recorded (``run_settings.json``, written by every ``train.py``) are
those asked for; :func:`run_child` runs a fold's ``train.py`` so that it never outlives the
process that started it.

Example
-------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     finished_fold(Path(folder)) is None
True
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

METRICS = ("wa", "ua", "wf1", "macro_f1")
FOLD_SETTINGS = "run_settings.json"  # written by each fold's train.py (qieemo_lobes.recipe)
# Differ from fold to fold by design (test_fold), or are compared once for the whole
# cross-validation (data_folder: a fold records it as given, relative to where it ran).
PER_FOLD = frozenset({"test_fold", "data_folder"})


def cv_settings(hparams: str | os.PathLike, overrides: list[str], data_folder: str) -> dict:
    """What ``OUT/cv_settings.json`` records: the settings every fold is trained with.

    ``settings`` are the recipe's plain settings with ``overrides`` applied
    (:func:`~qieemo_lobes.run_settings.resolved_settings`, without the per-fold ones),
    ``data_folder`` the corpus root as an absolute path.
    """
    from qieemo_lobes.run_settings import resolved_settings

    settings = resolved_settings(hparams, overrides)
    return {
        "data_folder": os.path.abspath(data_folder),
        "settings": {k: v for k, v in settings.items() if k not in PER_FOLD},
    }


def cv_settings_difference(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every difference between two :func:`cv_settings` records."""
    from qieemo_lobes.run_settings import settings_difference

    old_settings = old.get("settings")
    differences = settings_difference(
        old_settings if isinstance(old_settings, dict) else {}, new["settings"]
    )
    if old.get("data_folder") != new["data_folder"]:
        differences.insert(0, f"data_folder: {old.get('data_folder')} -> {new['data_folder']}")
    return differences


def fold_settings_difference(fold_dir: Path, settings: dict) -> list[str] | None:
    """How the settings a fold recorded differ from ``settings`` (a :func:`cv_settings`'
    ``settings``); None when the fold recorded none.

    The fold's ``run_settings.json`` (its ``settings`` if it has that key) is compared on every
    setting of ``settings``; without it, the ``hparams`` that older runs kept in
    ``run_info.json`` are compared on the settings both hold. :data:`PER_FOLD` is left out.
    """
    from qieemo_lobes.run_settings import read_settings_file, settings_difference

    recorded = read_settings_file(fold_dir / FOLD_SETTINGS)
    every_setting = recorded is not None
    if recorded is None:
        info = read_settings_file(fold_dir / "run_info.json")
        recorded = info.get("hparams") if info is not None else None
    if not isinstance(recorded, dict):
        return None
    if isinstance(recorded.get("settings"), dict):
        recorded = recorded["settings"]
    expected = {k: v for k, v in settings.items() if k not in PER_FOLD}
    if not every_setting:
        expected = {k: v for k, v in expected.items() if k in recorded}
    return settings_difference({k: v for k, v in recorded.items() if k in expected}, expected)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_fold(fold_dir: Path) -> dict | None:
    """A fold's test metrics when it finished (``test_metrics.json`` complete), else None."""
    metrics = read_json(fold_dir / "test_metrics.json")
    if metrics is None or not all(m in metrics for m in (*METRICS, "confusion", "classes")):
        return None
    return metrics


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), looked up once in this process; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, prctl: Callable[..., int]) -> None:
    """``preexec_fn`` of a fold's process: the kernel sends it SIGTERM when ``parent`` dies.

    Ctrl-C and SIGTERM are handled in :func:`run_child`, but nothing runs in this process when
    it is killed with SIGKILL (or by the out-of-memory killer): without this the fold's
    ``train.py`` would go on as an orphan, holding the CPU and its output folder, and a rerun
    would find the fold locked. ``PR_SET_PDEATHSIG`` is kept by the ``exec`` of ``train.py``;
    SIGTERM (not SIGKILL) lets it stop its own workers. A parent that died before the call
    (the child then belongs to another process) is caught by comparing ``getppid``.
    """
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def run_child(command: list[str], log: IO[Any]) -> int:
    """Run one fold; it goes down with this process, however this process ends.

    Ctrl-C or SIGTERM (turned into ``KeyboardInterrupt`` by the caller) stops the child and
    waits for it before re-raising; a SIGKILL of this process reaches it through
    :func:`_die_with_parent`.
    """
    prctl = _prctl()
    preexec = functools.partial(_die_with_parent, os.getpid(), prctl) if prctl else None
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
