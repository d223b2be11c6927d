"""Robustness: UA of a trained model on corrupted copies of its test set, computed on the fly.

::

    python -m qieemo_lobes.robustness RUN_OR_MODEL [--test CSV] [--corruptions LIST|all]
        [--seed 0] [--out results.json] [--babble-pool CSV] [--noise-csv CSV] [--rir-csv CSV]
        [--batch-size 8] [--device cpu] [--adapt]

``RUN_OR_MODEL`` is a finished recipe run (a ``train.py`` output folder: its ``test.json`` is
the test set, its ``train.json`` the babble pool; the run is exported to a temporary model
folder with :func:`qieemo_lobes.export.export_model`) or a model folder (``--test CSV`` needed:
``path,label[,speaker][,start,stop]``; babble from the CSV's other speakers or
``--babble-pool CSV`` with ``path,speaker``). ``--test`` also replaces a run's ``test.json``.

Conditions: clean, then every severity of every corruption of
:mod:`qieemo_lobes.corruptions` (default: all built-in ones, plus ``noise``/``rir`` when their
CSV is given; ``--corruptions white,babble:0,mp3`` picks names or ``name:severity``; ``all``
also names ``noise`` and ``rir``). Each clip is decoded (16 kHz mono), corrupted in memory
(deterministic per utterance id and ``--seed``; babble never uses the test clip's speaker),
classified in batches, and WA, UA, WF1 (percent) and ``n`` are computed per condition. A
corruption this machine cannot make is one line naming the reason, skipped.

``--adapt`` classifies each condition with the model adapted to that condition's corrupted
clips (AdaBN, :mod:`qieemo_lobes.adaptation`, as ``classify --adapt`` does for a folder of
such recordings: transductive; at least :data:`qieemo_lobes.classify.ADAPT_MIN_CLIPS` test clips).

``--out`` (JSON, written whole after every condition): ``{"model", "model_digest", "test",
"test_digest", "seed", "adapted", "conditions": [{"corruption", "severity", "label", "wa", "ua", "wf1",
"n", "seconds", "predictions": {id: label}, "skipped": [...]}]}``. Conditions already in it
for the same model, test set and seed are kept ("kept"), so an interrupted run resumes; a file
made for another model, test set or seed is refused. A table (rows corruption, columns
severity) goes to stdout, progress to stderr.

Exit status: 0 done; 1 some clips were skipped (unreadable audio, a corruption that failed on
a clip: each listed, counted at the end); 2 nothing could run (one line naming the file or
option); 130 interrupted (what finished is in ``--out``).

Example
-------
>>> [c.label if c else "clean" for c in parse_conditions("gain,white:0")[0]]
['clean', 'gain -20 dB', 'gain +20 dB', 'white 0 dB']
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from qieemo_lobes.audio import AudioError
from qieemo_lobes.classify import ADAPT_MIN_CLIPS
from qieemo_lobes.corruptions import (
    CORRUPTIONS,
    FILE_CORRUPTIONS,
    Corruption,
    CorruptionError,
    corrupt,
    unavailable_corruptions,
)
from qieemo_lobes.errors import one_line, os_error_line
from qieemo_lobes.files import terminate_as_interrupt
from qieemo_lobes.robustness_data import (
    SAMPLE_RATE,
    Clip,
    TestSetError,
    babble_pool,
    clip_seconds,
    clips_digest,
    load_clip,
    read_csv,
    read_manifest,
)
from qieemo_lobes.robustness_model import (
    AdaptingRecognizer,
    Classifier,
    LazyRecognizer,
    ModelError,
    model_digest,
    model_folder,
)
from qieemo_lobes.robustness_results import (
    Results,
    RobustnessError,
    condition_key,
    table,
)

__all__ = ["Results", "RobustnessError", "evaluate", "main", "parse_conditions", "table"]


def _log(line: str) -> None:
    print(f"robustness: {line}", file=sys.stderr, flush=True)


def parse_conditions(
    spec: str | None = None, noise_csv=None, rir_csv=None
) -> tuple[list[Corruption | None], dict[str, str]]:
    """``([None (clean), Corruption, ...], {name: why it is skipped})`` for ``--corruptions``."""
    registry = {**CORRUPTIONS, **FILE_CORRUPTIONS}
    given = {"noise": noise_csv, "rir": rir_csv}
    if spec is None:
        tokens = [n for n in registry if n in CORRUPTIONS or given[n] is not None]
    elif spec.strip() == "all":
        tokens = list(registry)
    else:
        tokens = [t.strip() for t in spec.split(",") if t.strip()]
    missing = unavailable_corruptions(noise_csv, rir_csv)
    conditions: list[Corruption | None] = [None]
    skipped: dict[str, str] = {}
    for token in tokens:
        name, _, severity = token.partition(":")
        if name not in registry:
            known = ", ".join(registry)
            raise RobustnessError(f"--corruptions: unknown corruption {name!r} (known: {known})")
        try:
            chosen = [Corruption(name, s) for s in ([severity] if severity else registry[name])]
        except CorruptionError as err:
            raise RobustnessError(f"--corruptions: {err}") from None
        if name in missing:
            skipped[name] = missing[name]
        conditions += [c for c in chosen if name not in missing and c not in conditions]
    return conditions, skipped


def _source(condition: Corruption | None, pool, noise_csv, rir_csv) -> str | None:
    """What a condition depends on besides the clips and the seed."""
    name = None if condition is None else condition.name
    if name == "babble":
        h = hashlib.sha256()
        for speaker, wave in pool or []:
            clip = getattr(wave, "clip", None)  # a PoolWave: its file, else the samples
            h.update(repr((speaker, clip)).encode() if clip else np.asarray(wave).tobytes())
        return "pool " + h.hexdigest()[:16]
    if name in ("noise", "rir"):
        return str(Path(noise_csv if name == "noise" else rir_csv).resolve())
    return None


def _corrupted(clip: Clip, condition, seed, pool, noise_csv, rir_csv) -> torch.Tensor:
    wav = load_clip(clip)
    if condition is None:
        return wav
    noisy = corrupt(
        wav.numpy(),
        SAMPLE_RATE,
        condition,
        utterance_id=clip.id,
        seed=seed,
        babble_pool=pool,
        speaker=clip.speaker,
        noise_csv=noise_csv,
        rir_csv=rir_csv,
    )
    return torch.from_numpy(noisy)


def evaluate(
    classify: Classifier,
    clips: Sequence[Clip],
    conditions: Sequence[Corruption | None],
    *,
    seed: int = 0,
    pool: Sequence | None = None,
    noise_csv=None,
    rir_csv=None,
    batch_size: int = 8,
    results: Results | None = None,
    log: Callable[[str], None] = _log,
) -> tuple[list[dict], list[str]]:
    """Classify every clip under every condition; returns ``(records, skipped lines)``.

    ``classify`` maps a list of 16 kHz waveforms to their labels (a batch at a time, or all of a
    condition's clips at once when it has ``whole_condition = True``). Conditions already in
    ``results`` (same source) are kept without calling it; the others are added to it as they
    finish. A clip that cannot be read or corrupted is skipped (one line, logged once).
    """
    from qieemo_lobes.recipe import classification_metrics

    order = sorted(clips, key=clip_seconds)  # batches of similar length: little padding
    skipped: dict[str, None] = {}
    records = []
    for number, condition in enumerate(conditions, 1):
        label = "clean" if condition is None else condition.label
        head = f"[{number}/{len(conditions)}] {label}"
        source = _source(condition, pool, noise_csv, rir_csv)
        record = results.kept(condition, source) if results is not None else None
        if record is not None:
            log(f"{head}: kept (UA {record['ua']:.1f} %, {record['n']} clips)")
        else:
            start = time.perf_counter()
            predictions, problems = {}, []
            # A classifier adapted to the condition (whole_condition) gets all its clips at once.
            step = len(order) if getattr(classify, "whole_condition", False) else batch_size
            for i in range(0, len(order), max(1, step)):
                wavs, ids = [], []
                for clip in order[i : i + step]:
                    try:
                        wavs.append(_corrupted(clip, condition, seed, pool, noise_csv, rir_csv))
                        ids.append(clip.id)
                    except (AudioError, CorruptionError) as err:
                        line = str(err) if isinstance(err, AudioError) else f"{clip.path}: {err}"
                        problems.append(line)
                        if line not in skipped:
                            log(f"skipped {line}")
                            skipped[line] = None
                if wavs:
                    predictions.update(zip(ids, classify(wavs), strict=True))
            if not predictions:
                log(f"{head}: no clip could be classified")
                continue
            true = [c.label for c in clips if c.id in predictions]
            predicted = [predictions[c.id] for c in clips if c.id in predictions]
            metrics = classification_metrics(true, predicted, sorted(set(true) | set(predicted)))
            record = {
                "corruption": condition_key(condition)[0],
                "severity": condition_key(condition)[1],
                "label": label,
                **{k: round(metrics[k], 4) for k in ("wa", "ua", "wf1")},
                "n": len(predictions),
                "seconds": round(time.perf_counter() - start, 2),
                "predictions": {c.id: predictions[c.id] for c in clips if c.id in predictions},
                "skipped": problems,
                **({} if source is None else {"source": source}),
            }
            if results is not None:
                results.add(record)
            log(f"{head}: UA {record['ua']:.1f} % ({record['n']} clips, {record['seconds']:.1f} s)")
        for line in record.get("skipped", []):
            skipped.setdefault(line, None)
        records.append(record)
    return records, list(skipped)


def _inputs(args) -> tuple[Path, list[Clip], str, list]:
    """``(source, test clips, test set name, babble pool)`` from the command line."""
    source = Path(args.source)
    if not source.is_dir():
        raise RobustnessError(f"{source}: no such folder")
    is_model = (source / "head.ckpt").is_file() and (source / "hyperparams.yaml").is_file()
    is_run = (source / "hyperparams.yaml").is_file() and (source / "save").is_dir()
    if not is_model and not is_run:
        raise RobustnessError(
            f"{source}: neither a recipe run (hyperparams.yaml and save/) nor a model folder "
            "(hyperparams.yaml and head.ckpt)"
        )
    if args.test is not None:
        test_file = Path(args.test)
        clips = read_csv(test_file)
    elif is_model:
        raise RobustnessError(f"{source}: a model folder needs --test CSV (path,label[,speaker])")
    else:
        test_file = source / "test.json"
        clips = read_manifest(test_file)
    if not clips:
        raise RobustnessError(f"{test_file}: no test clips")
    if args.babble_pool is not None:
        pool_clips = read_csv(args.babble_pool, required=("path", "speaker"))
    elif is_run and (source / "train.json").is_file():
        pool_clips = read_manifest(source / "train.json")
    else:
        pool_clips = clips  # the test set's other speakers (corrupt never uses the clip's own)
    return source, clips, str(test_file.resolve()), babble_pool(pool_clips)


def _no_babble(clips: Sequence[Clip], pool: Sequence) -> str | None:
    """Why babble cannot be made for every clip (None: it can)."""
    if any(c.speaker is None for c in clips):
        return "the test set names no speaker for some clips"
    speakers = {speaker for speaker, _ in pool}
    alone = sorted({str(c.speaker) for c in clips if not speakers - {str(c.speaker)}})
    if alone:
        return f"the babble pool has no speaker other than {', '.join(alone)}"
    return None


def _check_adaptable(recognizer: AdaptingRecognizer, source: Path) -> None:
    """Refuse, in one line, a model whose head has no input standardisation to adapt."""
    from qieemo_lobes.adaptation import AdaptationError, check_adaptable

    try:
        check_adaptable(recognizer.load().mods.head)
    except AdaptationError as err:
        raise RobustnessError(f"{source}: --adapt: {err}") from None


def _run(args) -> int:
    from qieemo_lobes.model_folder import ModelFolderError, load_labels

    source, clips, test_name, pool = _inputs(args)
    conditions, unavailable = parse_conditions(args.corruptions, args.noise_csv, args.rir_csv)
    for name in ("noise_csv", "rir_csv"):
        path = getattr(args, name)
        if path is not None and not Path(path).exists():
            raise RobustnessError(f"{path}: no such file or folder (--{name.replace('_', '-')})")
    why = _no_babble(clips, pool)
    if why and any(c is not None and c.name == "babble" for c in conditions):
        unavailable["babble"] = why
        conditions = [c for c in conditions if c is None or c.name != "babble"]
    if args.adapt and len(clips) < ADAPT_MIN_CLIPS:
        raise RobustnessError(
            f"{test_name}: --adapt needs at least {ADAPT_MIN_CLIPS} test clips, it has {len(clips)}"
        )
    with model_folder(source.resolve()) as folder:
        try:
            labels = load_labels(folder / "label_encoder.ckpt")
        except ModelFolderError as err:
            raise RobustnessError(str(err)) from None
        unknown = sorted({c.label for c in clips} - set(labels))
        if unknown:
            raise RobustnessError(
                f"{test_name}: labels the model does not know: {', '.join(unknown)} "
                f"(the model's: {', '.join(labels)})"
            )
        classify = (AdaptingRecognizer if args.adapt else LazyRecognizer)(folder, args.device)
        if args.adapt:  # loads the model: after the checks that need only its files
            _check_adaptable(classify, source)
        identity = {
            "model": str(source.resolve()),
            "model_digest": model_digest(folder),
            "test": test_name,
            "test_digest": clips_digest(clips),
            "seed": args.seed,
            "adapted": args.adapt,
        }
        results = Results(args.out, identity)
        for name, reason in unavailable.items():  # every input checked: now the skips
            _log(f"{name}: skipped ({reason})")
        try:
            records, skipped = evaluate(
                classify,
                clips,
                conditions,
                seed=args.seed,
                pool=pool,
                noise_csv=args.noise_csv,
                rir_csv=args.rir_csv,
                batch_size=args.batch_size,
                results=results,
            )
        except (ModelFolderError, FileNotFoundError) as err:
            raise RobustnessError(one_line(err)) from None
        except KeyboardInterrupt:
            where = f"; finished conditions: {len(results.records)}, in {args.out}"
            _log("interrupted" + (where if args.out else ""))
            return 130
    print(table(records))
    if skipped:
        _log(f"{len(skipped)} clips skipped (unreadable audio or a failed corruption)")
    return 1 if skipped else 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m qieemo_lobes.robustness",
        description="UA of a recipe run or model folder on corrupted copies of its test set.",
    )
    parser.add_argument("source", metavar="RUN_OR_MODEL", help="a recipe run or a model folder")
    parser.add_argument("--test", help="CSV path,label[,speaker][,start,stop]")
    parser.add_argument("--corruptions", help="names or name:severity, comma-separated, or all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON of every condition (kept and resumed)")
    parser.add_argument("--babble-pool", help="CSV path,speaker of babble talkers")
    parser.add_argument("--noise-csv", help="AddNoise CSV or folder of noise files")
    parser.add_argument("--rir-csv", help="AddReverb CSV or folder of impulse responses")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="adapt the model to each condition's clips (AdaBN; transductive)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        with terminate_as_interrupt():
            return _run(args)
    except (RobustnessError, TestSetError, ModelError) as err:
        _log(str(err))
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    except OSError as err:  # --out cannot be written
        _log(os_error_line(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
