#!/usr/bin/env python3
"""Robustness curves: UA against corruption severity, qieemo against the probe and openSMILE.

    python benchmarks/robustness.py --corpora emodb,ravdess,emovo
        [--systems qieemo,qieemo_adapt,qieemo_aug,qieemo_aug1,qieemo_aug_mild,probe,opensmile]
        [--work results/bench] [--data ../shared/data] [--out benchmarks/results/robustness.md]
        [--corruptions white,babble,...|all] [--seed 0] [--max-per-fold N]

Same folds and utterances as ``benchmarks/accuracy.py`` (the recipes' prepare scripts, through
:func:`baselines.corpus_items`), evaluated on corrupted copies of each fold's test clips made on
the fly by :mod:`qieemo_lobes.robustness` (deterministic per utterance and ``--seed``; babble
from the fold's training speakers, never the test speaker). Every system sees the same corrupted
audio:

- qieemo: accuracy.py's finished fold runs ``WORK/<corpus>/qieemo/fold_<k>`` (the recipe
  default), each on its own test speakers (refused, naming the accuracy.py command that makes
  them, when they are missing);
- qieemo_adapt: the same runs, adapted to each condition (AdaBN, :mod:`qieemo_lobes.adaptation`):
  the head's input statistics measured on the fold's corrupted test clips of that condition
  (transductive: what ``classify --adapt`` does on a folder of such recordings);
- qieemo_aug, qieemo_aug1, qieemo_aug_mild: accuracy.py's ``--augmented`` runs
  ``WORK/<corpus>/<system>/fold_<k>`` (``--augment-settings <system>``), trained with corrupted
  copies of every training clip: two, one, two of the mild severities only (the trade-off: clean
  UA against the rest);
- probe: accuracy.py's (b): standardise + logistic regression (C=0.1) on the time-mean of one
  whisper-base block (fit window), the block chosen by inner CV on the training folds
  (:class:`baselines.InnerCVBlockProbe`), fitted on the clean training folds' means from the
  feature cache ``WORK/feature_cache`` and tested on the means of the corrupted test clips,
  encoded in memory (never cached);
- opensmile: accuracy.py's (c): ComParE_2016 functionals of the clean clips
  (``WORK/opensmile_<corpus>.npz``, accuracy.py's cache) + linear SVM, C by inner CV on the
  training folds, tested on the functionals of the corrupted test clips (at the corpus' own
  sample rate, as its training features: the 16 kHz corrupted clip is resampled to it).

UA is computed on the predictions pooled over folds (every test clip once). ``--max-per-fold N``
keeps N test clips per fold (classes in turn) for a quick run; the report says so.

Writes ``--out`` (a UA table per corpus: rows corruption and severity, columns systems, with
the command, date, machine and wall times), ``robustness.json`` beside it (every point, per
fold too) and ``robustness.png`` (a panel per corruption: UA against severity, a line per system
and corpus). Each (corpus, system, fold) keeps its finished conditions in
``WORK/robustness/<corpus>/<system>/fold_<k>.json``: an interrupted run resumes there. Bad input
is one line, exit status 2; clips that could not be read or corrupted: listed, exit status 1;
Ctrl-C: 130.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import baselines  # noqa: E402
from accuracy import AUGMENTED, CORPORA  # noqa: E402
from robustness_report import SYSTEMS, log, report  # noqa: E402

from qieemo_lobes.errors import one_line  # noqa: E402
from qieemo_lobes.features import FeatureCacheError  # noqa: E402
from qieemo_lobes.files import (  # noqa: E402
    terminate_as_interrupt,
)
from qieemo_lobes.robustness import (  # noqa: E402
    Results,
    RobustnessError,
    evaluate,
    parse_conditions,
)
from qieemo_lobes.robustness_data import (  # noqa: E402
    SAMPLE_RATE,
    Clip,
    TestSetError,
    babble_pool,
    clips_digest,
    read_manifest,
)
from qieemo_lobes.robustness_model import (  # noqa: E402
    AdaptingRecognizer,
    Classifier,
    LazyRecognizer,
    ModelError,
    model_digest,
    model_folder,
)

PROBE_ENCODER = "whisper-base"  # accuracy.py's block_means reads this encoder's cache
PROBE_C = 0.1


def limit(clips: Sequence[Clip], n: int | None, first: int = 0) -> list[Clip]:
    """At most ``n`` clips, the classes in turn from the ``first``-th (fold ``k`` passes ``k``,
    so that short folds cover every class between them); path order within a class.

    Example
    -------
    >>> clips = [Clip(i, f"{i}.wav", label) for i, label in zip("abcde", "xxxyy")]
    >>> [c.id for c in limit(clips, 3)], [c.id for c in limit(clips, 1, first=1)]
    (['a', 'b', 'd'], ['d'])
    """
    if n is None or len(clips) <= n:
        return list(clips)
    by_label: dict[str, list[Clip]] = {}
    for clip in sorted(clips, key=lambda c: c.path):
        by_label.setdefault(clip.label, []).append(clip)
    labels = sorted(by_label)
    queues = [
        by_label[label] for label in labels[first % len(labels) :] + labels[: first % len(labels)]
    ]
    chosen: list[Clip] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return sorted(chosen, key=lambda c: c.id)


def digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def fold_runs(corpus: str, items: list[dict], work: Path, name: str = "qieemo") -> dict[int, Path]:
    """``{fold index: accuracy.py's finished run ``name`` of that fold}``; refuses missing runs."""
    folds = sorted({item["fold"] for item in items})
    runs = {k: work / corpus / name / f"fold_{k + 1}" for k in folds}
    missing = [run.name for run in runs.values() if not (run / "test_metrics.json").is_file()]
    if missing:
        option = f" --augmented {corpus} --augment-settings {name}" if name in AUGMENTED else ""
        raise RobustnessError(
            f"{work / corpus / name}: no finished {name} fold runs {', '.join(missing)}; make "
            f"them with: python benchmarks/accuracy.py --corpora {corpus}{option} --work {work}"
        )
    return runs


def fold_clips(run: Path, items: list[dict], k: int) -> list[Clip]:
    """The run's test clips, checked to be fold ``k`` of the corpus as accuracy.py reads it."""
    clips = read_manifest(run / "test.json")
    expected = {os.path.realpath(i["path"]) for i in items if i["fold"] == k}
    if {os.path.realpath(c.path) for c in clips} != expected:
        raise RobustnessError(
            f"{run / 'test.json'}: its test clips are not fold {k + 1} of the corpus read from "
            "--data; run this benchmark with the --data accuracy.py used"
        )
    return clips


@contextlib.contextmanager
def quiet_inner_cv() -> Iterator[None]:
    """scikit-learn's warning for an inner fold lacking a class (as in baselines.grouped_cv)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        yield


# --------------------------------------------------------------------------------------------------
# The three systems: each a classifier of 16 kHz waveforms, fitted or loaded on first use


@torch.no_grad()
def encode_means(wavs: list[torch.Tensor]) -> np.ndarray:
    """``(N, n_blocks + 1, D)`` block and final-output time-means, as the feature cache would
    hold them (DC removed, each clip's own frames, fp16), computed in memory."""
    from qieemo_lobes.audio import remove_dc

    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    relative = lengths / lengths.max()
    blocks, ppg = Probe.whisper()(remove_dc(padded, relative), relative)
    means = []
    for i in range(len(wavs)):
        frames = max(1, int(round(float(relative[i]) * blocks.shape[2])))
        b, p = blocks[:, i, :frames].half().float(), ppg[i, :frames].half().float()
        means.append(torch.cat([b.mean(1), p.mean(0, keepdim=True)]).numpy())
    return np.stack(means)


def training_means(items: list[dict], cache: Path) -> np.ndarray:
    """``(N, n_blocks + 1, D)`` from the feature cache (clips missing from it encoded first)."""
    import accuracy

    from qieemo_lobes.features import FeatureCache, looks_complete

    reader = FeatureCache(Probe.whisper(), str(cache))
    missing = {
        str(i): {"wav": item["path"]}
        for i, item in enumerate(items)
        if not looks_complete(reader.entry(item["path"]))
    }
    if missing:
        log(f"probe: encoding {len(missing)} clean clips missing from {cache}")
        reader.precompute(missing, progress=False)
    return accuracy.block_means(items, cache, speaker_norm=False).transpose(1, 0, 2)


class Probe:
    """accuracy.py's probe for test fold ``k``: fitted (on first use) on the clean training
    folds' cached means, tested on the means of the (corrupted) clips it is given."""

    encoder = None  # one WhisperBlocks for every fold and corpus

    def __init__(self, corpus: Corpus, k: int) -> None:
        self.corpus, self.train, self.model = corpus, corpus.groups != k, None

    @classmethod
    def whisper(cls):
        if cls.encoder is None:
            from qieemo_lobes.encoders import WhisperBlocks

            cls.encoder = WhisperBlocks(PROBE_ENCODER, window="fit")
        return cls.encoder

    def __call__(self, wavs: list[torch.Tensor]) -> list[str]:
        if self.model is None:
            means = self.corpus.block_means[self.train]
            self.model = baselines.InnerCVBlockProbe(means.shape[1], C=PROBE_C, metric="UA")
            c = self.corpus
            with quiet_inner_cv():
                self.model.fit(means.reshape(len(means), -1), c.y[self.train], c.groups[self.train])
        means = encode_means(wavs)
        return [str(p) for p in self.model.predict(means.reshape(len(means), -1))]


class OpenSmile:
    """accuracy.py's openSMILE + linear SVM for test fold ``k``: fitted (on first use) on the
    clean training folds' cached functionals, tested on functionals of the clips it is given,
    resampled to ``rate`` (the corpus' own, as in training)."""

    smile = None

    def __init__(self, corpus: Corpus, k: int, rate: int) -> None:
        self.corpus, self.train, self.rate, self.model = corpus, corpus.groups != k, rate, None

    def __call__(self, wavs: list[torch.Tensor]) -> list[str]:
        import torchaudio.functional as AF
        from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut

        if self.model is None:
            OpenSmile.smile = OpenSmile.smile or baselines._make_smile()
            self.model = GridSearchCV(
                baselines.make_svm(),
                {"svm__C": list(baselines.SVM_C_GRID)},
                scoring="balanced_accuracy",
                cv=LeaveOneGroupOut(),
            )
            c = self.corpus
            with quiet_inner_cv():
                self.model.fit(
                    c.functionals[self.train], c.y[self.train], groups=c.groups[self.train]
                )
        rows = []
        for wav in wavs:
            signal = wav if self.rate == SAMPLE_RATE else AF.resample(wav, SAMPLE_RATE, self.rate)
            features = OpenSmile.smile.process_signal(signal.numpy(), self.rate)
            rows.append(features.to_numpy(dtype=np.float32).reshape(-1))
        return [str(p) for p in self.model.predict(np.stack(rows))]


class Corpus:
    """One corpus as accuracy.py reads it, its clean training features (read when first
    needed) and its systems for each test fold."""

    def __init__(self, name: str, items: list[dict], work: Path) -> None:
        self.name, self.items, self.work = name, items, work
        self.runs = fold_runs(name, items, work)
        self.y = np.array([item["label"] for item in items])
        self.groups = np.array([item["fold"] for item in items])

    @functools.cache  # noqa: B019 - one Corpus per corpus and command
    def augmented_runs(self, system: str) -> dict[int, Path]:
        """accuracy.py's ``--augmented`` runs ``system``, on the same folds (checked once)."""
        runs = fold_runs(self.name, self.items, self.work, system)
        for k, run in runs.items():
            fold_clips(run, self.items, k)
        return runs

    @functools.cached_property
    def block_means(self) -> np.ndarray:
        return training_means(self.items, self.work / "feature_cache")

    @functools.cached_property
    def functionals(self) -> np.ndarray:
        log(f"{self.name}: openSMILE functionals of {len(self.items)} clean clips")
        return baselines.opensmile_features(
            [item["path"] for item in self.items],
            self.work / f"opensmile_{self.name}.npz",
            progress=False,
        )

    @contextlib.contextmanager
    def system(self, system: str, k: int) -> Iterator[tuple[Classifier, str]]:
        """``(classifier, digest of what it is)`` of ``system`` for test fold ``k``."""
        if system in ("qieemo", "qieemo_adapt"):
            with model_folder(self.runs[k].resolve()) as folder:
                if system == "qieemo":
                    yield LazyRecognizer(folder), model_digest(folder)
                else:
                    yield AdaptingRecognizer(folder), digest("adapt", model_digest(folder))
            return
        if system in AUGMENTED:
            with model_folder(self.augmented_runs(system)[k].resolve()) as folder:
                yield LazyRecognizer(folder), model_digest(folder)
            return
        training = clips_digest(
            Clip(str(i), item["path"], item["label"])
            for i, item in enumerate(self.items)
            if item["fold"] != k
        )
        if system == "probe":
            yield Probe(self, k), digest("probe", PROBE_ENCODER, PROBE_C, training)
            return
        from qieemo_lobes.audio import audio_info

        rate = audio_info(next(i["path"] for i in self.items if i["fold"] == k)).sample_rate
        yield OpenSmile(self, k, rate), digest("opensmile", baselines.SVM_C_GRID, rate, training)


# --------------------------------------------------------------------------------------------------
# Every fold, every system, pooled


def evaluate_fold(corpus: Corpus, system: str, k: int, conditions, args) -> tuple[list, list, list]:
    """``(test clips, condition records, skipped lines)`` of one system on test fold ``k``,
    kept in and resumed from ``WORK/robustness/<corpus>/<system>/fold_<k>.json``."""
    run = corpus.runs[k]
    clips = limit(fold_clips(run, corpus.items, k), args.max_per_fold, first=k)
    store = corpus.work / "robustness" / corpus.name / system / f"fold_{k + 1}.json"
    log(f"{corpus.name} fold {k + 1} {system}: {len(clips)} test clips")
    with corpus.system(system, k) as (classify, identity):
        identity = {
            "model": f"{system} for {run}",
            "model_digest": identity,
            "test": f"{run / 'test.json'} (fold {k + 1})",
            "test_digest": clips_digest(clips),
            "seed": args.seed,
        }
        results = Results(store, identity, replace=True)  # the benchmark's own: never refused
        if results.replaced:
            log(f"  {store}: made for another run, clip subset or seed; starting over")
        records, skipped = evaluate(
            classify,
            clips,
            conditions,
            seed=args.seed,
            pool=babble_pool(read_manifest(run / "train.json")),
            results=results,
            log=lambda line: log(f"  {line}"),
        )
    return clips, records, skipped


def pool_folds(folds: list[tuple[int, list[Clip], list[dict]]], n_folds: int) -> dict:
    """``{(corruption, severity): point}``: WA, UA, WF1 of the predictions pooled over folds,
    ``n``, the per-fold UA and their mean, compute seconds, and whether every fold has it."""
    from qieemo_lobes.recipe import classification_metrics

    pooled: dict[tuple, dict] = {}
    for k, clips, records in folds:
        labels = {clip.id: clip.label for clip in clips}
        for record in records:
            entry = pooled.setdefault(
                (record["corruption"], record["severity"]),
                {key: record[key] for key in ("corruption", "severity", "label")}
                | {"true": [], "predicted": [], "folds": [], "seconds": 0.0},
            )
            for clip_id, predicted in record["predictions"].items():
                entry["true"].append(labels[clip_id])
                entry["predicted"].append(predicted)
            entry["folds"].append({"fold": k + 1, "ua": record["ua"], "n": record["n"]})
            entry["seconds"] += record["seconds"]
    for entry in pooled.values():
        true, predicted = entry.pop("true"), entry.pop("predicted")
        m = classification_metrics(true, predicted, sorted(set(true) | set(predicted)))
        entry.update({key: round(m[key], 2) for key in ("wa", "ua", "wf1")}, n=len(true))
        entry["ua_fold_mean"] = round(float(np.mean([f["ua"] for f in entry["folds"]])), 2)
        entry["complete"] = len(entry["folds"]) == n_folds
        entry["seconds"] = round(entry["seconds"], 1)
    return pooled


def run_corpus(corpus: Corpus, args, conditions) -> tuple[dict, dict, list[str]]:
    """``({system: pooled points}, {system: seconds this call}, skipped lines)``."""
    folds: dict[str, list] = {system: [] for system in args.systems}
    seconds = dict.fromkeys(args.systems, 0.0)
    skipped: list[str] = []
    for k in corpus.runs:
        for system in args.systems:
            start = time.perf_counter()
            clips, records, lines = evaluate_fold(corpus, system, k, conditions, args)
            folds[system].append((k, clips, records))
            skipped += lines
            seconds[system] += time.perf_counter() - start
    points = {system: pool_folds(folds[system], len(corpus.runs)) for system in args.systems}
    return points, seconds, skipped


def names(value: str, known: dict, option: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise RobustnessError(
            f"--{option}: unknown {', '.join(unknown) or '(none)'} (known: {', '.join(known)})"
        )
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="emodb,ravdess,emovo")
    parser.add_argument("--systems", default="qieemo,qieemo_adapt,probe,opensmile")
    parser.add_argument("--work", default=str(REPO / "results" / "bench"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "robustness.md"))
    parser.add_argument("--corruptions", help="as qieemo_lobes.robustness (default: built-in)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-fold", type=int, help="test clips per fold (a quick run)")
    args = parser.parse_args(argv)
    command = "python benchmarks/robustness.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.time()
    all_points, seconds, skipped = {}, {}, []
    try:
        with terminate_as_interrupt():
            args.corpora = names(args.corpora, CORPORA, "corpora")
            args.systems = names(args.systems, SYSTEMS, "systems")
            if args.max_per_fold is not None and args.max_per_fold < 1:
                raise RobustnessError("--max-per-fold must be at least 1")
            work = Path(args.work).resolve()
            conditions, unavailable = parse_conditions(args.corruptions)
            corpora = {  # every corpus read and its runs found before anything runs
                name: Corpus(
                    name, baselines.corpus_items(name, Path(args.data) / CORPORA[name][1]), work
                )
                for name in args.corpora
            }
            for system in set(args.systems) & set(AUGMENTED):  # found before anything runs
                for corpus in corpora.values():
                    corpus.augmented_runs(system)
            for name, reason in unavailable.items():
                log(f"{name}: skipped ({reason})")
            for name, corpus in corpora.items():
                all_points[name], seconds[name], lines = run_corpus(corpus, args, conditions)
                skipped += lines
    except (RobustnessError, TestSetError, ModelError, ValueError) as err:
        log(one_line(err, limit=400))
        return 2
    except (baselines.FeatureExtractionError, FeatureCacheError) as err:
        log(one_line(err, limit=400))
        return 1
    except KeyboardInterrupt:
        log(f"interrupted; finished conditions are kept under {Path(args.work) / 'robustness'}")
        return 130
    return report(args, command, time.time() - started, all_points, seconds, skipped)


if __name__ == "__main__":
    sys.exit(main())
