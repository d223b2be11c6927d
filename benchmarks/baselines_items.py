"""The corpora of the baselines (``benchmarks/baselines.py``), read as their recipes read them.

:func:`corpus_items` lists a corpus' utterances with label, speaker and protocol fold through the
recipe's own ``*_prepare.py`` script (:data:`RECIPE_PREPARE`), so every baseline sees the
utterances and folds the recipes' cross-validation sees. ``baselines.py`` re-exports these names.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("baselines")

# corpus name -> its recipe's prepare script: the benchmarks read a corpus exactly as the recipe
# does (same utterances, labels, skipped files and folds).
RECIPE_PREPARE = {
    "emodb": "EmoDB/emotion/emodb_prepare.py",
    "ravdess": "RAVDESS/emotion/ravdess_prepare.py",
    "nemo": "nEMO/emotion/nemo_prepare.py",
    "emovo": "EMOVO/emotion/emovo_prepare.py",
    "turev": "TurEV-DB/emotion/turev_prepare.py",
}
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _prepare_module(name: str) -> Any:
    """The recipe's ``<corpus>_prepare`` module (recipes are scripts, not a package)."""
    path = RECIPES / RECIPE_PREPARE[name]
    spec = importlib.util.spec_from_file_location(f"{path.stem}_for_benchmarks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_items(
    name: str, root: str | Path, classes: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Lists the utterances of a corpus with label, speaker and protocol fold, as its recipe does.

    The corpus is read by its recipe's ``list_utterances`` (``recipes/<Corpus>/emotion/
    <corpus>_prepare.py``): the same utterances, labels and skipped files, and the same folds
    as the recipe's ``cross_validate.py`` (fold ``k`` here is its fold ``k + 1``). EmoDB, nEMO,
    EMOVO and TurEV-DB: leave one speaker out; RAVDESS: 6 folds of 4 actors.

    Arguments
    ---------
    name : str
        One of :data:`RECIPE_PREPARE` (``"emodb"``, ``"ravdess"``, ``"nemo"``, ``"emovo"``,
        ``"turev"``).
    root : str or Path
        The corpus folder.
    classes : sequence of str, optional
        The labels to keep (the recipe's names, e.g. ``["angry", "calm", "happy", "sad"]``);
        default every label. Only the kept utterances' audio is checked.

    Returns
    -------
    list of dict
        ``{"path": str, "label": str, "speaker": str, "fold": int}`` (0-based fold index),
        sorted by path.

    Raises
    ------
    ValueError
        An unknown corpus, or a folder that is not that corpus (the recipe's one-line
        ``LayoutError``).

    Example
    -------
    >>> corpus_items("timit", ".")
    Traceback (most recent call last):
    ...
    ValueError: unknown corpus 'timit' (known: emodb, ravdess, nemo, emovo, turev)
    """
    name = name.lower()
    if name not in RECIPE_PREPARE:
        raise ValueError(f"unknown corpus {name!r} (known: {', '.join(RECIPE_PREPARE)})")
    from qieemo_lobes.manifests_folds import fold_names

    scan = _prepare_module(name).list_utterances(str(root), classes=classes)
    for skipped in scan.skipped:
        logger.warning("%s: skipped (%s)", skipped["path"], skipped["reason"])
    folds = fold_names(scan.records)
    items = [
        {"path": r.wav, "label": r.label, "speaker": r.speaker, "fold": folds.index(r.fold)}
        for r in scan.records
    ]
    return sorted(items, key=lambda item: item["path"])
