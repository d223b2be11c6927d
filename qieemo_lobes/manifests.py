"""Data preparation shared by the emotion recipes: utterance records, folds, splits, manifests.

Every ``recipes/<CORPUS>/emotion/<corpus>_prepare.py`` turns a corpus root into a
:class:`~qieemo_lobes.manifests_scan.CorpusScan` (utterance records plus every file it skipped
and why; :mod:`qieemo_lobes.manifests_scan`) and hands it to the helpers here, which

- assign protocol folds (:func:`contiguous_group_folds`, :func:`balanced_group_folds`,
  :func:`stratified_folds`; :mod:`qieemo_lobes.manifests_folds`),
- pick one test fold (a fold name or a 1-based index into the naturally sorted fold list) and draw
  a validation set from the training folds only (:func:`split_for_test_fold`, same module),
- write SpeechBrain JSON manifests ``{utt_id: {"wav", "emo", "spk_id", "fold", "duration"}}``
  (plus ``"start"``/``"stop"`` seconds for segments of a longer file) with :func:`write_manifests`,
- skip work already done, like the ``skip()`` of SpeechBrain's prepare scripts, but only when a
  saved options file next to the manifests matches the current options (:func:`prepare_manifests`),
- and give every prepare script the same command line (:func:`run_cli`)::

      python emodb_prepare.py --data_folder=DIR --summary
      python emodb_prepare.py --data_folder=DIR --save_folder=OUT --test_fold=3

A wrong root, or one that yields no utterances, raises :class:`LayoutError` with one line naming
the expected layout; the command line prints that line and exits with status 2.

Writing, skipping and the command line live here; every public name of the scanning and fold
modules is importable from here too (:data:`__all__`).

Example
-------
>>> recs = [
...     Utterance(f"u{i}", f"/d/u{i}.wav", lab, spk, fold, 1.0)
...     for i, (lab, spk, fold) in enumerate(
...         [("sad", "a", "f1"), ("sad", "b", "f1"), ("happy", "c", "f2"), ("happy", "d", "f2"),
...          ("sad", "e", "f3"), ("happy", "f", "f3")]
...     )
... ]
>>> splits = split_for_test_fold(recs, 2, valid_split="speaker", valid_ratio=0.25, seed=1)
>>> sorted(r.speaker for r in splits["test"])
['c', 'd']
>>> len(splits["train"]) + len(splits["valid"]), len(splits["valid"])
(4, 1)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qieemo_lobes.files import write_json_atomic
from qieemo_lobes.manifests_folds import (
    FOLD_SEED,
    NO_TEST_FOLD,
    VALID_SPLITS,
    balanced_group_folds,
    contiguous_group_folds,
    fold_names,
    resolve_test_fold,
    split_for_test_fold,
    stratified_folds,
)
from qieemo_lobes.manifests_scan import (
    AUDIO_EXTENSIONS,
    CorpusScan,
    LayoutError,
    Utterance,
    existing_folder,
    is_resource_fork,
    list_audio_files,
    natural_key,
    normalize_classes,
    probe_audio,
    summarize,
)

__all__ = [
    # manifests_scan: utterance records, audio checks, the corpus summary
    "AUDIO_EXTENSIONS",
    "CorpusScan",
    "LayoutError",
    "Utterance",
    "existing_folder",
    "is_resource_fork",
    "list_audio_files",
    "natural_key",
    "normalize_classes",
    "probe_audio",
    "summarize",
    # manifests_folds: protocol folds, the split of one test fold
    "FOLD_SEED",
    "NO_TEST_FOLD",
    "VALID_SPLITS",
    "balanced_group_folds",
    "contiguous_group_folds",
    "fold_names",
    "resolve_test_fold",
    "split_for_test_fold",
    "stratified_folds",
    # here: writing, skipping, the command line
    "OPTIONS_FILE",
    "SPLITS",
    "ScanFunction",
    "options_path",
    "prepare_manifests",
    "run_cli",
    "skip",
    "write_manifests",
]

# Plain stdlib logging (SpeechBrain's get_logger wraps the same thing) so that the prepare
# scripts' command line does not pay for importing torch and SpeechBrain.
logger = logging.getLogger(__name__)

OPTIONS_FILE = "prepare_options.json"
SPLITS = ("train", "valid", "test")
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Writing and skipping
# ---------------------------------------------------------------------------------------------


def write_manifests(
    splits: dict[str, Sequence[Utterance]],
    save_json_train: str | os.PathLike,
    save_json_valid: str | os.PathLike,
    save_json_test: str | os.PathLike,
) -> None:
    """Write the three SpeechBrain JSON manifests (each to a temp file, then renamed).

    Example
    -------
    >>> out = getfixture("tmp_path")
    >>> u = Utterance("a", "/a.wav", "sad", "s1", "f1", 1.5)
    >>> write_manifests({"train": [u], "valid": [], "test": []},
    ...                 out / "train.json", out / "valid.json", out / "test.json")
    >>> json.loads((out / "train.json").read_text())["a"]["emo"]
    'sad'
    """
    for split, path in zip(SPLITS, (save_json_train, save_json_valid, save_json_test), strict=True):
        write_json_atomic({r.utt_id: r.to_json() for r in splits[split]}, path)
        logger.info("%s: %d utterances", path, len(splits[split]))


def options_path(save_json_train: str | os.PathLike) -> Path:
    """The saved-options file, next to the train manifest."""
    return Path(save_json_train).parent / OPTIONS_FILE


def skip(
    save_json_train: str | os.PathLike,
    save_json_valid: str | os.PathLike,
    save_json_test: str | os.PathLike,
    options: dict[str, Any],
) -> bool:
    """True when the three manifests exist and the saved options equal ``options``.

    Example
    -------
    >>> out = getfixture("tmp_path")
    >>> paths = [out / f"{s}.json" for s in SPLITS]
    >>> skip(*paths, {"seed": 1})
    False
    """
    if not all(os.path.isfile(p) for p in (save_json_train, save_json_valid, save_json_test)):
        return False
    try:
        saved = json.loads(options_path(save_json_train).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("options") == options


ScanFunction = Callable[..., CorpusScan]


def prepare_manifests(
    corpus: str,
    scan_fn: ScanFunction,
    data_folder: str | os.PathLike,
    save_json_train: str | os.PathLike,
    save_json_valid: str | os.PathLike,
    save_json_test: str | os.PathLike,
    test_fold: int | str,
    valid_split: str = "speaker",
    valid_ratio: float = 0.1,
    classes: str | Sequence[str] | None = None,
    seed: int = 1986,
) -> dict[str, Any]:
    """The body of every ``prepare_<corpus>``: scan, split, write, remember the options.

    Does nothing when :func:`skip` says the same preparation is already on disk.

    Returns
    -------
    dict
        The corpus summary plus ``test_fold`` (the resolved name) and ``splits`` ({split: n}).
    """
    options = {
        "format": _FORMAT_VERSION,
        "corpus": corpus,
        "data_folder": os.path.abspath(data_folder),
        "save_json": [
            os.path.abspath(p) for p in (save_json_train, save_json_valid, save_json_test)
        ],
        "test_fold": test_fold,
        "valid_split": valid_split,
        "valid_ratio": float(valid_ratio),
        "classes": normalize_classes(classes),
        "seed": int(seed),
    }
    if skip(save_json_train, save_json_valid, save_json_test, options):
        logger.info("%s: preparation already done with the same options, skipping", corpus)
        saved = json.loads(options_path(save_json_train).read_text(encoding="utf-8"))
        return {**saved["summary"], "skipped_preparation": True}
    scan = scan_fn(data_folder, classes=classes)
    splits = split_for_test_fold(scan.records, test_fold, valid_split, valid_ratio, seed)
    summary = scan.summary()
    summary["test_fold"] = resolve_test_fold(fold_names(scan.records), test_fold)
    summary["splits"] = {k: len(v) for k, v in splits.items()}
    write_manifests(splits, save_json_train, save_json_valid, save_json_test)
    # Written last: an interrupted run leaves no matching options file, so it is redone.
    write_json_atomic({"options": options, "summary": summary}, options_path(save_json_train))
    return summary


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_cli(
    corpus: str,
    scan_fn: ScanFunction,
    prepare_fn: Callable[..., dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line shared by every prepare script; returns the exit status.

    ``--summary`` prints the summary JSON; ``--save_folder`` with ``--test_fold`` writes
    ``train.json``, ``valid.json`` and ``test.json`` there. A wrong data folder prints one line
    to stderr and returns 2.
    """
    parser = argparse.ArgumentParser(
        prog=f"{corpus}_prepare.py",
        description=f"Prepare {corpus} manifests for emotion recognition.",
    )
    parser.add_argument("--data_folder", required=True, help="corpus root")
    parser.add_argument("--summary", action="store_true", help="print the corpus summary (JSON)")
    parser.add_argument("--save_folder", help="where train/valid/test.json are written")
    parser.add_argument(
        "--test_fold", help="fold name, or 1-based index K into the sorted fold list"
    )
    parser.add_argument("--valid_split", choices=VALID_SPLITS, default="speaker")
    parser.add_argument("--valid_ratio", type=float, default=0.1)
    parser.add_argument("--classes", help="comma-separated labels to keep (default: corpus')")
    parser.add_argument("--seed", type=int, default=1986)
    args = parser.parse_args(argv)
    if not args.summary and not args.save_folder:
        parser.error("give --summary and/or --save_folder with --test_fold")
    if args.save_folder and args.test_fold is None:
        parser.error("--save_folder needs --test_fold")
    classes = normalize_classes(args.classes) if args.classes else None
    try:
        if args.summary:
            print(json.dumps(scan_fn(args.data_folder, classes=classes).summary(), indent=2))
        if args.save_folder:
            # Digits are an index, like train.py's HyperPyYAML override --test_fold=K.
            test_fold = int(args.test_fold) if args.test_fold.isdigit() else args.test_fold
            out = Path(args.save_folder)
            result = prepare_fn(
                args.data_folder,
                out / "train.json",
                out / "valid.json",
                out / "test.json",
                test_fold=test_fold,
                valid_split=args.valid_split,
                valid_ratio=args.valid_ratio,
                classes=classes,
                seed=args.seed,
            )
            state = "unchanged" if result.get("skipped_preparation") else "written"
            sizes = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
            print(f"{corpus}: test fold {result['test_fold']}: {sizes} ({state} in {out})")
    except (ValueError, OSError) as exc:  # LayoutError is a ValueError
        print(f"{corpus}_prepare.py: error: {exc}", file=sys.stderr)
        return 2
    return 0
