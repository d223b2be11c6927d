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
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import baselines  # noqa: E402
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
from qieemo_lobes.files import (  # noqa: E402
    terminate_as_interrupt,
    write_json_atomic,
    write_text_atomic,
)

# A JSON object from a file, or None when it is missing, unreadable or not an object.
from qieemo_lobes.run_settings import read_settings_file as read_json_object  # noqa: E402

RECIPE = REPO / "recipes" / "custom" / "emotion"
HPARAMS = RECIPE / "hparams" / "qieemo.yaml"
SYSTEMS = ("qieemo", "probe")
# Settings this script sets for every qieemo run; an override of one of them is refused.
RESERVED = ("data_folder", "output_folder", "test_fold", "classes", "n_classes", "feature_cache")
# doctest.testmod on this module (tests/test_cross_corpus.py) finds only the functions defined
# here: the examples of those moved to corpora_classes.py and cross_corpus_report.py run too.
__test__ = {"Split.name": Split.name, "plan_splits": plan_splits, "summarise": summarise}


class CrossCorpusError(Exception):
    """Bad input, reported as one line (exit status 2)."""


# --------------------------------------------------------------------------------------------------
# Corpora, classes and splits
# --------------------------------------------------------------------------------------------------
# (the corpora, the classes, Split and plan_splits are in corpora_classes.py)


def class_map(corpus: str, turev_calm: str = "neutral") -> dict[str, str]:
    """``{recipe label: class}`` of a corpus: the labels kept and the class each one counts as.

    Example
    -------
    >>> class_map("ravdess")  # calm is left out
    {'angry': 'angry', 'happy': 'happy', 'neutral': 'neutral', 'sad': 'sad'}
    >>> class_map("turev", "neutral"), class_map("turev", "drop")
    ({'angry': 'angry', 'happy': 'happy', 'sad': 'sad', 'calm': 'neutral'}, {'angry': 'angry', 'happy': 'happy', 'sad': 'sad'})
    """
    if turev_calm not in TUREV_CALM:
        raise ValueError(f"turev_calm must be one of {TUREV_CALM}, not {turev_calm!r}")
    if corpus != "turev":
        return {label: label for label in CLASSES}
    mapping = {"angry": "angry", "happy": "happy", "sad": "sad"}
    if turev_calm == "neutral":
        mapping["calm"] = "neutral"
    return mapping


def read_corpora(
    corpora: Sequence[str], data: str | Path, modes: Sequence[str]
) -> dict[str, list[dict]]:
    """Every utterance of each corpus with a label some mode keeps, as its recipe reads it.

    Returns ``{corpus: [{"path", "label" (the recipe's), "speaker" (prefixed by the corpus),
    "corpus"}]}``. Raises ``ValueError`` (the recipes' one-line ``LayoutError`` among them) for a
    missing or wrong folder.
    """
    raw = {}
    for corpus in corpora:
        labels = sorted({label for mode in modes for label in class_map(corpus, mode)})
        items = baselines.corpus_items(corpus, Path(data) / corpus, classes=labels)
        raw[corpus] = [
            {
                "path": item["path"],
                "label": item["label"],
                "speaker": f"{corpus}_{item['speaker']}",
                "corpus": corpus,
            }
            for item in items
        ]
    return raw


def map_classes(raw: dict[str, list[dict]], turev_calm: str) -> dict[str, list[dict]]:
    """The utterances of every corpus in the four classes for one TurEV-DB mode.

    Each utterance keeps its recipe label as ``source``; ``label`` becomes its class.

    Example
    -------
    >>> raw = {"turev": [{"path": "a.flac", "label": "calm", "speaker": "turev_1", "corpus": "turev"}]}
    >>> [u["label"] for u in map_classes(raw, "neutral")["turev"]], map_classes(raw, "drop")["turev"]
    (['neutral'], [])
    """
    mapped = {}
    for corpus, items in raw.items():
        mapping = class_map(corpus, turev_calm)
        mapped[corpus] = [
            {**item, "source": item["label"], "label": mapping[item["label"]]}
            for item in items
            if item["label"] in mapping
        ]
    return mapped


def split_data(
    split: Split, utterances: dict[str, list[dict]]
) -> tuple[list[dict], list[dict], list[str]]:
    """``(train, test, classes)`` of a split: the training corpora's utterances, the test
    corpus' utterances of the classes learnt, and those classes (the four, or angry, happy and
    sad when the training corpora have no neutral: TurEV-DB alone without calm).

    Example
    -------
    >>> u = {"turev": [{"path": "t", "label": "sad"}],
    ...      "emodb": [{"path": "e1", "label": "neutral"}, {"path": "e2", "label": "sad"}]}
    >>> train, test, classes = split_data(Split(("turev",), "emodb"), u)
    >>> [x["path"] for x in train], [x["path"] for x in test], classes
    (['t'], ['e2'], ['sad'])
    """
    train = [u for corpus in split.train for u in utterances[corpus]]
    present = {u["label"] for u in train}
    classes = [c for c in CLASSES if c in present]
    test = [u for u in utterances[split.test] if u["label"] in classes]
    return train, test, classes


def class_counts(utterances: Iterable[dict]) -> dict[str, int]:
    """``{class: n}`` in :data:`CLASSES` order (classes with no utterance left out)."""
    labels = [u["label"] for u in utterances]
    return {c: labels.count(c) for c in CLASSES if c in labels}


# --------------------------------------------------------------------------------------------------
# qieemo: one run of the custom recipe per split
# --------------------------------------------------------------------------------------------------


def manifest_text(utterances: dict[str, list[dict]], corpora: Sequence[str]) -> str:
    """The custom recipe's CSV (``path,label,speaker,fold``; fold = corpus) of ``corpora``.

    Example
    -------
    >>> u = {"emodb": [{"path": "/d/a,b.wav", "label": "sad", "speaker": "emodb_03"}]}
    >>> print(manifest_text(u, ["emodb"]), end="")
    path,label,speaker,fold
    "/d/a,b.wav",sad,emodb_03,emodb
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "speaker", "fold"])
    for corpus in corpora:
        for u in utterances[corpus]:
            writer.writerow([u["path"], u["label"], u["speaker"], corpus])
    return buffer.getvalue()


def write_manifest(
    utterances: dict[str, list[dict]], split: Split, turev_calm: str, folder: Path
) -> Path:
    """The CSV of the split's corpora under ``folder``, named by its corpora, the TurEV-DB mode
    (when TurEV-DB is in it) and its content: another content is another file, so a run never
    resumes on a manifest that changed (its recorded ``data_folder`` differs)."""
    text = manifest_text(utterances, split.corpora)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    mode = f"_turev-calm-{turev_calm}" if "turev" in split.corpora else ""
    path = folder / f"{'+'.join(split.corpora)}{mode}.{digest}.csv"
    if not path.is_file():
        write_text_atomic(text, path)
    return path


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


def qieemo_arguments(
    manifest: Path,
    out: Path,
    split: Split,
    classes: Sequence[str],
    cache: Path,
    overrides: Sequence[str],
) -> list[str]:
    """The arguments of ``train.py hparams/qieemo.yaml`` for one split.

    Example
    -------
    >>> qieemo_arguments(Path("/m.csv"), Path("/o"), Split(("emodb",), "nemo"), ["sad"],
    ...                  Path("/c"), ["--use_cma=False"])  # doctest: +NORMALIZE_WHITESPACE
    ['--data_folder=/m.csv', '--output_folder=/o', '--test_fold=nemo', '--classes=["sad"]',
     '--n_classes=1', '--feature_cache=/c', '--speed_perturb=[100]', '--use_cma=False']
    """
    arguments = [
        f"--data_folder={manifest}",
        f"--output_folder={out}",
        f"--test_fold={split.test}",
        f"--classes={json.dumps(list(classes))}",
        f"--n_classes={len(classes)}",
        f"--feature_cache={cache}",
    ]
    if not any(o.startswith("--speed_perturb=") for o in overrides):
        arguments.append("--speed_perturb=[100]")
    return arguments + list(overrides)


def finished_run(out: Path, arguments: Sequence[str]) -> dict | None:
    """The test metrics of a finished run in ``out`` made with these arguments' settings, else
    None (not finished, or made with other settings: ``train.py`` then says which)."""
    from qieemo_lobes.run_settings import resolved_settings, settings_difference

    metrics = read_json_object(out / "test_metrics.json")
    if metrics is None or not all(
        key in metrics for key in ("wa", "ua", "wf1", "confusion", "classes", "n_test")
    ):
        return None
    recorded = read_json_object(out / "run_settings.json")
    if recorded is None or settings_difference(recorded, resolved_settings(HPARAMS, arguments)):
        return None
    return metrics


def launch(arguments: Sequence[str], log: Path) -> int:
    """Run ``train.py hparams/qieemo.yaml ARGUMENTS`` (output in ``log``); its exit status.

    The run stops with this process, however it ends (Ctrl-C, SIGTERM, even SIGKILL), through
    the cross-validation's child handling.
    """
    from qieemo_lobes.cross_validation import _run_child

    command = [sys.executable, str(RECIPE / "train.py"), str(HPARAMS), *arguments]
    with open(log, "w") as fh:
        return _run_child(command, fh)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or [line for line in lines if line] or [""])[-1]


def run_qieemo(
    split: Split,
    turev_calm: str,
    utterances: dict[str, list[dict]],
    work: Path,
    cache: Path,
    overrides: Sequence[str],
    train: Callable[[Sequence[str], Path], int] | None = None,
) -> dict:
    """One split's qieemo run (reused when finished with the same settings); its record.

    ``train(arguments, log)`` runs ``train.py`` and returns its exit status (default
    :func:`launch`).
    """
    train = train or launch
    name = split.name(turev_calm)
    _, _, classes = split_data(split, utterances)
    manifest = write_manifest(utterances, split, turev_calm, work / "manifests")
    out = work / "qieemo" / name
    arguments = qieemo_arguments(manifest, out, split, classes, cache, overrides)
    record = {
        "system": "qieemo",
        "train": list(split.train),
        "test": split.test,
        "folder": str(out),
    }
    metrics = finished_run(out, arguments)
    reused = metrics is not None
    if reused:
        print(f"qieemo {name}: finished earlier, kept", flush=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        print(f"qieemo {name}: training ({out / 'stdout.log'}) ...", flush=True)
        start = time.time()
        code = train(arguments, out / "stdout.log")
        metrics = finished_run(out, arguments)
        if code != 0 or metrics is None:
            problem = _last_line(out / "stdout.log") or f"exit status {code}"
            print(f"qieemo {name}: FAILED: {problem}", file=sys.stderr, flush=True)
            return {**record, "failed": f"exit status {code}: {problem}"}
        write_json_atomic({"wall_time_s": time.time() - start}, out / "wall_time.json")
    wall = (read_json_object(out / "wall_time.json") or {}).get("wall_time_s")
    record.update(
        {
            key: metrics.get(key)
            for key in ("classes", "n_train", "n_valid", "n_test", "wa", "ua", "wf1", "macro_f1")
        }
    )
    record.update({"confusion": metrics["confusion"], "wall_time_s": wall, "reused": reused})
    if not reused:
        print(f"qieemo {name}: UA {record['ua']:.1f} ({wall:.0f} s)", flush=True)
    return record


# --------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------


def probe_features(paths: Sequence[str], cache: Path) -> dict[str, np.ndarray]:
    """``{path: (n_blocks + 1, D)}``: time-mean of every whisper-base block (fit window) and of
    its final output, read from the feature cache; clips not in it are encoded first."""
    import accuracy

    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.features import FeatureCache, looks_complete

    paths = sorted(set(paths))
    identity = WhisperBlocks.identity_for(PROBE_ENCODER, "fit")
    reader = FeatureCache(SimpleNamespace(identity=identity), str(cache))
    missing = {
        str(i): {"wav": p} for i, p in enumerate(paths) if not looks_complete(reader.entry(p))
    }
    if missing:
        print(f"probe: encoding {len(missing)} clips missing from {cache} ...", flush=True)
        encoder = WhisperBlocks(PROBE_ENCODER, window="fit")
        FeatureCache(encoder, str(cache)).precompute(missing)
    means = accuracy.block_means([{"path": p} for p in paths], cache, speaker_norm=False)
    return {p: means[:, i] for i, p in enumerate(paths)}


def inner_folds(speakers: Sequence[str], n_folds: int = PROBE_INNER_FOLDS) -> np.ndarray:
    """Per-utterance inner fold of the probe's block choice: whole speakers, balanced sizes.

    Example
    -------
    >>> inner_folds(["a", "a", "b", "c"], 2).tolist()
    ['fold1', 'fold1', 'fold2', 'fold2']
    """
    from qieemo_lobes.manifests_folds import balanced_group_folds

    folds = balanced_group_folds(list(speakers), n_folds)
    if len(set(folds.values())) < 2:
        raise ValueError(
            f"the probe's block choice needs at least 2 training speakers, found {sorted(folds)}"
        )
    return np.array([folds[s] for s in speakers])


def fit_probe(
    means: dict[str, np.ndarray], train: Sequence[dict], C: float = PROBE_C
) -> baselines.InnerCVBlockProbe:
    """The probe fitted on ``train`` only: the block chosen by the inner speaker-grouped folds
    (:func:`inner_folds`), then refitted on every training utterance."""
    X = np.stack([means[u["path"]] for u in train])  # (N, n_blocks, D)
    y = np.array([u["label"] for u in train])
    model = baselines.InnerCVBlockProbe(n_blocks=X.shape[1], C=C, metric="UA")
    with warnings.catch_warnings():  # inner folds without some class: UA over those present
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        model.fit(X.reshape(len(X), -1), y, inner_folds([u["speaker"] for u in train]))
    return model


def _inputs_digest(train: Sequence[dict], test: Sequence[dict]) -> str:
    h = hashlib.sha1(f"{PROBE_ENCODER}|fit|C={PROBE_C}|folds={PROBE_INNER_FOLDS}\n".encode())
    for part, items in (("train", train), ("test", test)):
        for u in items:
            h.update(f"{part}\t{u['path']}\t{u['label']}\t{u['speaker']}\n".encode())
    return h.hexdigest()


def run_probe(
    split: Split,
    turev_calm: str,
    utterances: dict[str, list[dict]],
    work: Path,
    means: Callable[[], dict[str, np.ndarray]],
    models: dict,
) -> dict:
    """One split's probe (reused from ``WORK/probe/<split>.json`` while its utterances are the
    same); ``means()`` gives the block means, ``models`` keeps the probes fitted so far (one per
    training set, shared by its test corpora)."""
    from qieemo_lobes.recipe import classification_metrics

    name = split.name(turev_calm)
    train, test, classes = split_data(split, utterances)
    digest = _inputs_digest(train, test)
    path = work / "probe" / f"{name}.json"
    previous = read_json_object(path)
    if previous is not None and previous.get("inputs") == digest:
        print(f"probe {name}: finished earlier, kept", flush=True)
        return {**previous, "reused": True}
    start = time.time()
    features = means()
    key = _inputs_digest(train, [])
    if key not in models:
        models[key] = fit_probe(features, train)
    model = models[key]
    predicted = model.predict(np.stack([features[u["path"]] for u in test]).reshape(len(test), -1))
    truth = [u["label"] for u in test]
    metrics = classification_metrics(truth, list(predicted), classes)
    record = {
        "system": "probe",
        "train": list(split.train),
        "test": split.test,
        "classes": classes,
        "n_train": len(train),
        "n_test": len(test),
        **metrics,
        "block": model.best_block_ + 1,  # 1-based; n_blocks + 1 is the final output
        "inner_ua": [100.0 * s for s in model.inner_scores_],
        "wall_time_s": time.time() - start,
        "inputs": digest,
    }
    write_json_atomic(record, path)
    print(f"probe {name}: UA {record['ua']:.1f} (block {record['block']})", flush=True)
    return {**record, "reused": False}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


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
