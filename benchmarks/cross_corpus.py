#!/usr/bin/env python3
"""Cross-corpus matrix: train on one corpus and test on another, and leave one corpus out.

Corpora, under ``--data`` (default ``../shared/data``), read by the recipes' own prepare scripts
(:func:`baselines.corpus_items`): EmoDB, RAVDESS, nEMO, EMOVO and TurEV-DB, on the four classes
they share, angry, happy, neutral and sad (:data:`SOURCES` says which label of each corpus is
which class; RAVDESS' calm is left out). TurEV-DB has calm, not neutral: ``--turev-calm
neutral`` (the default) counts calm as neutral; ``--turev-calm drop`` leaves calm out, so
TurEV-DB has angry, happy and sad only: UA tested on it averages those three, and a model
trained on TurEV-DB alone learns those three and is tested on the other corpus' angry, happy
and sad utterances; ``--turev-calm both`` measures both (the runs without TurEV-DB are shared).

Splits: every ordered pair (trained on A, tested on B) and leave-one-corpus-out (trained on all
the other corpora, tested on one; with two corpora it is the pair). Each split is measured with

- qieemo: one run of ``recipes/custom/emotion/train.py hparams/qieemo.yaml`` on a CSV manifest
  of the corpora involved (``WORK/manifests/``: fold = corpus, speakers prefixed by corpus) with
  ``--test_fold=<test corpus>`` (validation: held-out speakers of the training corpora, never
  the test corpus), ``--speed_perturb=[100]``, one feature cache for every run (keyed by audio
  content: each clip is encoded once) and every ``--hparam=value`` given here. The run is in
  ``WORK/qieemo/<split>/`` (its output in ``stdout.log``); one whose ``test_metrics.json``
  exists with the same settings is reused, so an interrupted matrix resumes;
- the probe: standardise + logistic regression (C=0.1) on the time-mean of one whisper-base
  (fit window) block read from the same cache (clips missing from it are encoded first); the
  block, of the 6 and the final output, chosen by a speaker-grouped 5-fold cross-validation on
  the training corpora only; fitted on the training corpora, tested on the test corpus
  (``WORK/probe/<split>.json``, reused while its utterances are the same).

    python benchmarks/cross_corpus.py [--corpora emodb,ravdess,nemo,emovo,turev] \\
        [--turev-calm neutral|drop|both] [--pairs-only | --loco-only] [--systems qieemo,probe] \\
        [--data ../shared/data] [--work results/cross_corpus] [--feature_cache WORK/feature_cache] \\
        [--out benchmarks/results/cross_corpus.md] [any --hparam=value, e.g. --use_cma=False]

writes ``--out`` (the UA tables, trained on the row and tested on the column, with the
leave-one-corpus-out row, the mean off-diagonal and LOCO UA, every run's numbers, the class
mapping, the command, date, machine and wall times), ``cross_corpus.json`` beside it (every
number: per run WA, UA, WF1, n_test, confusion) and ``cross_corpus.png`` (heat maps), and prints
the tables. Bad input is one line (exit status 2); a failed run is reported at the end (exit
status 1) after the others have run.

This file is the command line; the parts it runs are beside it: the corpora, classes and splits
in ``corpora_classes.py``, the utterances of each corpus and split in ``cross_corpus_data.py``,
the qieemo runs in ``cross_corpus_qieemo.py``, the probe in ``cross_corpus_probe.py`` and the
tables, JSON and heat maps in ``cross_corpus_report.py``. Every name stays importable from here.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from corpora_classes import (  # noqa: E402, F401
    CLASSES,
    CORPORA,
    LEFT_OUT,
    NAMES,
    PROBE_C,
    PROBE_ENCODER,
    PROBE_INNER_FOLDS,
    SOURCES,
    TUREV_CALM,
    Split,
    plan_splits,
)
from cross_corpus_data import (  # noqa: E402, F401
    class_counts,
    class_map,
    map_classes,
    read_corpora,
    split_data,
)
from cross_corpus_probe import (  # noqa: E402, F401
    _inputs_digest,
    fit_probe,
    inner_folds,
    probe_features,
    run_probe,
)

# The qieemo runs, re-exported: tests replace ``launch`` in cross_corpus_qieemo, where
# :func:`run_qieemo` looks it up.
from cross_corpus_qieemo import (  # noqa: E402, F401
    HPARAMS,
    RECIPE,
    _last_line,
    finished_run,
    launch,
    manifest_text,
    qieemo_arguments,
    run_qieemo,
    write_manifest,
)
from cross_corpus_report import (  # noqa: E402, F401
    details_table,
    machine_line,
    mapping_table,
    matrix_table,
    plot_heatmaps,
    summarise,
    write_report,
)

from qieemo_lobes.errors import one_line, os_error_line  # noqa: E402
from qieemo_lobes.files import terminate_as_interrupt  # noqa: E402

SYSTEMS = ("qieemo", "probe")
# Settings this script sets for every qieemo run; an override of one of them is refused.
RESERVED = ("data_folder", "output_folder", "test_fold", "classes", "n_classes", "feature_cache")
# doctest.testmod on this module (tests/test_cross_corpus.py) finds only the functions defined
# here: the examples of those moved to corpora_classes.py, cross_corpus_report.py,
# cross_corpus_data.py, cross_corpus_qieemo.py and cross_corpus_probe.py run too.
__test__ = {
    "Split.name": Split.name,
    "plan_splits": plan_splits,
    "summarise": summarise,
    "class_map": class_map,
    "map_classes": map_classes,
    "split_data": split_data,
    "manifest_text": manifest_text,
    "qieemo_arguments": qieemo_arguments,
    "inner_folds": inner_folds,
}


class CrossCorpusError(Exception):
    """Bad input, reported as one line (exit status 2)."""


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_overrides(extra: Sequence[str]) -> list[str]:
    """The ``--name=value`` hyperparameter overrides, checked against the recipe's YAML.

    Example
    -------
    >>> parse_overrides(["--use_cma=False"])
    ['--use_cma=False']
    >>> parse_overrides(["--test_fold=2"])
    Traceback (most recent call last):
    ...
    cross_corpus.CrossCorpusError: --test_fold is set by cross_corpus.py for each run; it cannot be overridden
    """
    for arg in extra:
        match = re.fullmatch(r"--([A-Za-z_][A-Za-z0-9_]*)=(.*)", arg, flags=re.DOTALL)
        if match is None:
            raise CrossCorpusError(
                f"{arg}: not an option of cross_corpus.py, and overrides take the form --name=value"
            )
        if match[1] in RESERVED:
            raise CrossCorpusError(
                f"--{match[1]} is set by cross_corpus.py for each run; it cannot be overridden"
            )
    if extra:
        from qieemo_lobes.run_settings import check_overrides

        try:
            check_overrides(HPARAMS, list(extra))
        except ValueError as err:
            raise CrossCorpusError(f"{HPARAMS.relative_to(REPO)}: {one_line(err)}") from None
    return list(extra)


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Any other --name=value is a hyperparameter override of every qieemo run.",
    )
    parser.add_argument(
        "--corpora", default=",".join(CORPORA), help="comma-separated, at least two"
    )
    parser.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "data"),
        help="the folder holding one folder per corpus (emodb, ravdess, ...)",
    )
    parser.add_argument(
        "--turev-calm",
        default="neutral",
        choices=[*TUREV_CALM, "both"],
        help="TurEV-DB's calm counted as neutral, left out, or both measured",
    )
    parser.add_argument(
        "--work",
        default=str(REPO / "results" / "cross_corpus"),
        help="the runs, manifests and probe results (reused by a later call)",
    )
    parser.add_argument("--feature_cache", default=None, help="default: WORK/feature_cache")
    parser.add_argument(
        "--out",
        default=str(REPO / "benchmarks" / "results" / "cross_corpus.md"),
        help="the markdown report; its .json and .png are written beside it",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="qieemo, probe or both")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--pairs-only", action="store_true", help="no leave-one-corpus-out")
    only.add_argument("--loco-only", action="store_true", help="leave-one-corpus-out only")
    args, extra = parser.parse_known_args(list(argv))
    corpora = [c.strip().lower() for c in args.corpora.split(",") if c.strip()]
    unknown = [c for c in corpora if c not in CORPORA]
    if unknown:
        raise CrossCorpusError(
            f"--corpora: unknown corpus {unknown[0]!r} (known: {', '.join(CORPORA)})"
        )
    if len(set(corpora)) < 2:
        raise CrossCorpusError(f"--corpora: give at least two corpora, not {args.corpora!r}")
    args.corpora = [c for c in CORPORA if c in corpora]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        raise CrossCorpusError(f"--systems: a list of {', '.join(SYSTEMS)}, not {args.systems!r}")
    args.systems = [s for s in SYSTEMS if s in systems]
    args.modes = list(TUREV_CALM) if args.turev_calm == "both" else [args.turev_calm]
    return args, parse_overrides(extra)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.time()
    try:
        with terminate_as_interrupt():
            return _main(argv, started)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except CrossCorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2


def _main(argv: list[str], started: float) -> int:
    args, overrides = parse_arguments(argv)
    work = Path(args.work).resolve()  # absolute: each run records its paths in its settings
    cache = Path(args.feature_cache).resolve() if args.feature_cache else work / "feature_cache"
    try:
        raw = read_corpora(args.corpora, args.data, args.modes)
    except ValueError as err:  # the recipes' LayoutError, or no utterance of the classes
        raise CrossCorpusError(one_line(err)) from None
    by_mode = {mode: map_classes(raw, mode) for mode in args.modes}
    splits = plan_splits(args.corpora, pairs=not args.loco_only, loco=not args.pairs_only)
    work.mkdir(parents=True, exist_ok=True)

    records: dict[str, dict[str, dict]] = {system: {} for system in args.systems}
    if "qieemo" in args.systems:
        for mode in args.modes:
            for split in splits:
                name = split.name(mode)
                if name not in records["qieemo"]:  # a split without TurEV-DB: once for all modes
                    records["qieemo"][name] = run_qieemo(
                        split, mode, by_mode[mode], work, cache, overrides
                    )
    if "probe" in args.systems:
        loaded: dict[str, np.ndarray] = {}
        problem: list[str] = []

        def means() -> dict[str, np.ndarray]:
            if problem:
                raise ValueError(problem[0])
            if not loaded:
                paths = [u["path"] for items in raw.values() for u in items]
                try:
                    loaded.update(probe_features(paths, cache))
                except Exception as err:  # weights, audio or cache: every probe split fails
                    problem.append(f"features: {one_line(err)}")
                    raise ValueError(problem[0]) from None
            return loaded

        models: dict = {}
        for mode in args.modes:
            for split in splits:
                name = split.name(mode)
                if name in records["probe"]:
                    continue
                try:
                    records["probe"][name] = run_probe(
                        split, mode, by_mode[mode], work, means, models
                    )
                except (ValueError, OSError, RuntimeError) as err:
                    print(f"probe {name}: FAILED: {one_line(err)}", file=sys.stderr, flush=True)
                    records["probe"][name] = {
                        "system": "probe",
                        "train": list(split.train),
                        "test": split.test,
                        "failed": one_line(err),
                    }

    counts = {
        mode: {corpus: class_counts(items) for corpus, items in by_mode[mode].items()}
        for mode in args.modes
    }
    text, data = write_report(
        Path(args.out),
        command="python benchmarks/cross_corpus.py " + " ".join(argv),
        corpora=args.corpora,
        modes=args.modes,
        systems=args.systems,
        counts=counts,
        records=records,
        pairs=not args.loco_only,
        loco=not args.pairs_only,
        overrides=overrides,
        wall_time_s=time.time() - started,
        machine=machine_line(),
        date=time.strftime("%Y-%m-%d"),
    )
    print(text)
    print(
        f"written {args.out} (and {Path(args.out).with_suffix('.json').name}, "
        f"{Path(args.out).with_suffix('.png').name})"
    )
    if data["failed"]:
        print(f"error: {len(data['failed'])} run(s) failed:", file=sys.stderr)
        for f in data["failed"]:
            print(f"  {f['system']} {f['split']}: {f['problem']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
