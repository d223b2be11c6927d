#!/usr/bin/env python3
"""Test-time adaptation on leave-one-corpus-out runs: UA with the training statistics against UA
with the held-out corpus' own (AdaBN, :mod:`qieemo_lobes.adaptation`).

For every finished leave-one-corpus-out run of the chosen variants of
``benchmarks/loco_study.py`` (read from its JSON), the head is loaded as
``python -m qieemo_lobes.export`` would ship it and its held-out corpus classified from the
feature cache:

- **no adaptation**: the head's training statistics; must reproduce the run's own test
  predictions (``predictions.csv``), which checks that the study evaluates what the run measured;
- **corpus, n clips**: statistics of ``n`` random unlabelled clips of the held-out corpus
  (``--draws`` draws each), applied to all its clips: what ``classify --adapt`` needs from a user;
- **corpus, all clips**: statistics of the whole held-out corpus;
- **per speaker**: each speaker's clips with the statistics of that speaker's clips.

Every adapted row is transductive (the statistics come from the test audio, never its labels).
The change against no adaptation gets a paired bootstrap over speakers
(:func:`qieemo_lobes.stats.paired_bootstrap`).

    python benchmarks/adapt_study.py [--loco benchmarks/results/loco_study.json] \\
        [--variants baseline,all_blocks] [--feature_cache results/bench/feature_cache] \\
        [--sizes 10,30,100] [--draws 5] [--work results/adapt_study] \\
        [--out benchmarks/results/adapt_study.md]

writes ``--out`` and its ``.json``. Each run's result is kept in ``WORK/<variant>/<corpus>.json``,
so an interrupted study resumes; a run that fails is reported in one line and the others go on
(exit code 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.data_utils import batch_pad_right

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qieemo_lobes.adaptation import adapted, input_statistics  # noqa: E402
from qieemo_lobes.errors import one_line  # noqa: E402
from qieemo_lobes.features import FeatureCache  # noqa: E402
from qieemo_lobes.files import write_json_atomic, write_text_atomic  # noqa: E402
from qieemo_lobes.interfaces import EmotionRecognizer  # noqa: E402
from qieemo_lobes.recipe_results import read_predictions  # noqa: E402
from qieemo_lobes.robustness_model import model_folder  # noqa: E402
from qieemo_lobes.stats import paired_bootstrap, unweighted_accuracy  # noqa: E402

Features = list[tuple[torch.Tensor, torch.Tensor]]  # per clip: blocks (C, T, D), ppg (T, P)


def log(line: str) -> None:
    print(f"adapt_study: {line}", file=sys.stderr, flush=True)


def batches(features: Features, index: Sequence[int], size: int = 16) -> Iterator[tuple]:
    """``(clips, blocks (C, B, T, D), ppg (B, T, P), lengths)`` for the clips ``index``, in
    batches of ``size`` clips of similar length (zero-padded; relative lengths as the recipe
    passes them).

    Example
    -------
    >>> feats = [(torch.ones(2, t, 3), torch.ones(t, 4)) for t in (5, 2, 4)]
    >>> [(i, b.shape, l.tolist()) for i, b, _, l in batches(feats, [0, 1, 2], size=2)]
    [([1, 2], torch.Size([2, 2, 4, 3]), [0.5, 1.0]), ([0], torch.Size([2, 1, 5, 3]), [1.0])]
    """
    order = sorted(index, key=lambda i: features[i][0].shape[1])
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        # Time first, padded as the recipe's PaddedBatch pads it (SpeechBrain's batch_pad_right).
        blocks, lengths = batch_pad_right([features[i][0].transpose(0, 1).float() for i in chunk])
        ppg, _ = batch_pad_right([features[i][1].float() for i in chunk])
        yield chunk, blocks.permute(2, 0, 1, 3), ppg, lengths


def predict(head: torch.nn.Module, features: Features, index: Sequence[int]) -> dict[int, int]:
    """``{clip: predicted class index}`` for the clips ``index`` (eval mode, no gradients)."""
    out = {}
    head.eval()
    with torch.inference_mode():
        for chunk, blocks, ppg, lengths in batches(features, index):
            for i, k in zip(chunk, head(blocks, ppg, lengths).argmax(-1).tolist(), strict=True):
                out[i] = k
    return out


def statistics(head: torch.nn.Module, features: Features, index: Sequence[int]):
    """The head's input statistics measured on the clips ``index``."""
    return input_statistics(head, (b[1:] for b in batches(features, index)))


def adaptation_results(
    head: torch.nn.Module,
    features: Features,
    truth: Sequence[str],
    speakers: Sequence[str],
    labels: Sequence[str],
    sizes: Sequence[int],
    draws: int,
    seed: int = 0,
) -> dict:
    """UA (percent) of the head on all clips without adaptation, adapted to the whole set, to
    ``n`` random clips of it (``draws`` times per size) and per speaker, with the predictions.

    Example
    -------
    >>> from qieemo_lobes.qieemo import QieemoHead
    >>> _ = torch.manual_seed(0)
    >>> head = QieemoHead(input_dim=4, ppg_dim=4, n_classes=2, n_encoder_blocks=2, blocks=[1, 2],
    ...                   d_model=8, use_cma=False)
    >>> feats = [(torch.randn(2, 6, 4) + 3, torch.randn(6, 4)) for _ in range(8)]
    >>> out = adaptation_results(head, feats, ["a", "b"] * 4, ["s1"] * 4 + ["s2"] * 4,
    ...                          ["a", "b"], sizes=[2], draws=3)
    >>> sorted(out), len(out["by_size"]["2"])
    (['by_size', 'corpus', 'none', 'per_speaker', 'predictions'], 3)
    """
    everything = range(len(features))

    def ua(predicted: dict[int, int]) -> float:
        return unweighted_accuracy(truth, [labels[predicted[i]] for i in everything])

    base = predict(head, features, everything)
    with adapted(head, statistics(head, features, everything)):
        corpus = predict(head, features, everything)
    per_speaker: dict[int, int] = {}
    for speaker in sorted(set(speakers)):
        own = [i for i in everything if speakers[i] == speaker]
        with adapted(head, statistics(head, features, own)):
            per_speaker.update(predict(head, features, own))
    rng = np.random.default_rng(seed)
    by_size = {}
    for n in sizes:
        if n >= len(features):
            continue
        by_size[str(n)] = []
        for _ in range(draws):
            subset = sorted(rng.choice(len(features), size=n, replace=False).tolist())
            with adapted(head, statistics(head, features, subset)):
                by_size[str(n)].append(ua(predict(head, features, everything)))
    return {
        "none": ua(base),
        "corpus": ua(corpus),
        "per_speaker": ua(per_speaker),
        "by_size": by_size,
        "predictions": {
            name: [labels[p[i]] for i in everything]
            for name, p in (("none", base), ("corpus", corpus), ("per_speaker", per_speaker))
        },
    }


def load_run(run: Path) -> EmotionRecognizer:
    """The run's head, label encoder and inference encoder, as the export ships them."""
    with model_folder(run) as folder:
        return EmotionRecognizer.from_hparams(source=folder, savedir=folder)


def evaluate_run(run: Path, cache_root: Path, sizes: Sequence[int], draws: int) -> dict:
    """:func:`adaptation_results` on the run's test set, read from the feature cache, with the
    agreement of the unadapted predictions with the run's ``predictions.csv``."""
    recognizer = load_run(run)
    test = json.loads((run / "test.json").read_text())
    cache = FeatureCache(recognizer.mods.encoder, str(cache_root))
    utterances = sorted(test)
    features = [cache.load(test[utt]["wav"]) for utt in utterances]
    truth = [test[utt]["emo"] for utt in utterances]
    speakers = [test[utt]["spk_id"] for utt in utterances]
    results = adaptation_results(
        recognizer.mods.head, features, truth, speakers, recognizer.labels, sizes, draws
    )
    classes, recorded = read_predictions(run / "predictions.csv")
    recorded_pred = [classes[int(np.argmax(recorded[utt][1]))] for utt in utterances]
    predictions = results.pop("predictions")
    results["agreement_with_run"] = 100.0 * float(
        np.mean([a == b for a, b in zip(recorded_pred, predictions["none"], strict=True)])
    )
    results["ua_recorded"] = json.loads((run / "test_metrics.json").read_text())["ua"]
    for name in ("corpus", "per_speaker"):  # a bootstrap over speakers needs two
        results[f"{name}_vs_none"] = (
            paired_bootstrap(truth, predictions["none"], predictions[name], speakers)
            if len(set(speakers)) > 1
            else None
        )
    results["n_clips"], results["n_speakers"] = len(utterances), len(set(speakers))
    return results


def _mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.1f} +- {np.std(values):.1f}"


def _delta(comparison: dict | None) -> str:
    if comparison is None:  # a single test speaker
        return "-"
    return "{delta_ua:+.1f} [{ci_low:+.1f}, {ci_high:+.1f}] p {p_value:.3f}".format(**comparison)


def _row(name: str, runs: dict, corpora: Sequence[str], cell, mean: bool = True) -> str:
    """One table row: ``cell(result)`` per corpus (``-`` where a run is missing), and the mean
    of the cells' leading numbers when every corpus has one and ``mean``."""
    cells = [cell(runs[c]) if c in runs else "-" for c in corpora]
    tail = "-"
    if mean and "-" not in cells:
        tail = f"{np.mean([float(v.split()[0]) for v in cells]):.1f}"
    return f"| {name} | " + " | ".join(cells) + f" | {tail} |"


def variant_rows(runs: dict, corpora: Sequence[str], sizes: Sequence[int]) -> list[str]:
    """The table of one variant: ``{corpus: result of evaluate_run}`` as markdown lines.

    Example
    -------
    >>> delta = {"delta_ua": 5.0, "ci_low": 1.0, "ci_high": 9.0, "p_value": 0.01}
    >>> run = {"ua_recorded": 50.0, "none": 50.0, "agreement_with_run": 100.0, "corpus": 55.0,
    ...        "by_size": {"10": [52.0, 54.0]}, "per_speaker": 56.0, "corpus_vs_none": delta,
    ...        "per_speaker_vs_none": delta}
    >>> print("\\n".join(variant_rows({"emodb": run}, ["emodb", "emovo"], [10])[3:6]))
    | none (recomputed) | 50.0 | - | - |
    | agreement with the run (%) | 100.0 | - | - |
    | corpus, 10 clips | 53.0 +- 1.0 | - | - |
    """
    lines = ["| | " + " | ".join(corpora) + " | mean |", "|---" * (len(corpora) + 2) + "|"]
    lines.append(_row("UA of the run", runs, corpora, lambda r: f"{r['ua_recorded']:.1f}"))
    lines.append(_row("none (recomputed)", runs, corpora, lambda r: f"{r['none']:.1f}"))
    lines.append(
        _row(
            "agreement with the run (%)",
            runs,
            corpora,
            lambda r: f"{r['agreement_with_run']:.1f}",
            mean=False,
        )
    )
    for n in sizes:
        lines.append(
            _row(
                f"corpus, {n} clips",
                runs,
                corpora,
                lambda r, n=n: _mean_std(r["by_size"][str(n)]) if str(n) in r["by_size"] else "-",
            )
        )
    lines.append(_row("corpus, all clips", runs, corpora, lambda r: f"{r['corpus']:.1f}"))
    lines.append(
        _row("delta corpus - none", runs, corpora, lambda r: _delta(r["corpus_vs_none"]), False)
    )
    lines.append(_row("per speaker", runs, corpora, lambda r: f"{r['per_speaker']:.1f}"))
    lines.append(
        _row(
            "delta per speaker - none",
            runs,
            corpora,
            lambda r: _delta(r["per_speaker_vs_none"]),
            False,
        )
    )
    return lines


def pair_rows(pairs: dict[str, dict]) -> list[str]:
    """The single-corpus section: a row per ``TRAIN:TEST`` run of the cross-corpus matrix.

    Example
    -------
    >>> run = {"none": 54.3, "corpus": 60.0, "per_speaker": 61.0, "by_size": {"100": [59.0]}}
    >>> pair_rows({"emodb:ravdess": run})[-3]
    '| emodb | ravdess | 54.3 | 59.0 | 60.0 | 61.0 |'
    """
    lines = [
        "### Trained on one corpus",
        "",
        "Runs of the cross-corpus matrix (`benchmarks/cross_corpus.py`, the recipe head, no CMA).",
        "",
        "| trained on | tested on | none | corpus, 100 clips | corpus, all clips | per speaker |",
        "|---|---|---|---|---|---|",
    ]
    for pair, run in pairs.items():
        train, _, test = pair.partition(":")
        hundred = run["by_size"].get("100")
        cells = [
            run["none"],
            np.mean(hundred) if hundred else None,
            run["corpus"],
            run["per_speaker"],
        ]
        lines.append(
            f"| {train} | {test} | "
            + " | ".join("-" if v is None else f"{v:.1f}" for v in cells)
            + " |"
        )
    return lines + ["", ""]


def within_rows(within: dict[str, list[dict]]) -> list[str]:
    """The within-corpus section: per corpus, UA mean +- std over the folds of
    ``benchmarks/accuracy.py``'s qieemo runs, unadapted and adapted.

    Example
    -------
    >>> fold = {"none": 50.0, "corpus": 60.0, "per_speaker": 62.0, "agreement_with_run": 100.0}
    >>> within_rows({"emovo": [fold, fold]})[-4]
    '| emovo | 2 | 100.0 | 50.0 +- 0.0 | 60.0 +- 0.0 | 62.0 +- 0.0 |'
    """
    lines = [
        "### Within each corpus",
        "",
        "The recipes' qieemo runs of `benchmarks/accuracy.py` (each corpus' own classes and",
        "speaker-independent folds), UA mean +- std over folds: with the training statistics, with",
        "those of the fold's test speakers together, and of each test speaker alone (transductive).",
        "",
        "| corpus | folds | agreement with the runs (%) | none | test fold | per speaker |",
        "|---|---|---|---|---|---|",
    ]
    for corpus, folds in within.items():
        agreement = min(f["agreement_with_run"] for f in folds)
        cells = [_mean_std([f[key] for f in folds]) for key in ("none", "corpus", "per_speaker")]
        lines.append(f"| {corpus} | {len(folds)} | {agreement:.1f} | " + " | ".join(cells) + " |")
    return lines + ["", "Agreement: the lowest over folds.", ""]


def markdown(study: dict, corpora: Sequence[str], sizes: Sequence[int], command: str) -> str:
    """The study's table: one block of rows per variant, one column per held-out corpus."""
    lines = [
        "# Test-time adaptation (AdaBN) on leave-one-corpus-out runs",
        "",
        f"Command: `{command}`",
        f"Date: {study['date']}; machine: 2 CPU cores, no GPU; wall time {study['wall_time_s']:.0f} s.",
        "",
        "UA (percent) on the held-out corpus of each leave-one-corpus-out run of",
        "`benchmarks/loco_study.py` (classes angry / happy / neutral / sad; TurEV-DB's calm as",
        "neutral). *none*: the head's training statistics (recomputed here; *agreement* is the",
        "share of clips predicted as the run's own `predictions.csv`). *n clips*: input statistics",
        f"of n random unlabelled clips of the held-out corpus, mean +- std over {study['draws']}",
        "draws. *corpus*: of all its clips. *per speaker*: each speaker's clips with their own.",
        "Every adapted row is **transductive**: it uses the test audio (never its labels).",
        "Delta: paired bootstrap over speakers against *none* (95 % interval, p).",
        "",
    ]
    for variant, runs in study["variants"].items():
        lines += [f"### {variant}", "", *variant_rows(runs, corpora, sizes), ""]
    if study.get("pairs"):
        lines += pair_rows(study["pairs"])
    if study.get("within"):
        lines += within_rows(study["within"])
    if study["failed"]:
        lines += ["Failed: " + "; ".join(study["failed"]), ""]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loco", type=Path, default=REPO / "benchmarks/results/loco_study.json")
    parser.add_argument("--variants", default="baseline,all_blocks")
    parser.add_argument("--feature_cache", type=Path, default=REPO / "results/bench/feature_cache")
    parser.add_argument("--sizes", default="10,30,100")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / "results/adapt_study")
    parser.add_argument(
        "--within",
        default="",
        help="also the within-corpus folds of benchmarks/accuracy.py for these corpora "
        "(WITHIN_WORK/<corpus>/qieemo/fold_<k>)",
    )
    parser.add_argument("--within_work", type=Path, default=REPO / "results/bench")
    parser.add_argument(
        "--pairs",
        default="",
        help="also single-corpus runs of benchmarks/cross_corpus.py, TRAIN:TEST,... "
        "(PAIRS_WORK/train-TRAIN_test-TEST[_turev-calm-neutral])",
    )
    parser.add_argument("--pairs_work", type=Path, default=REPO / "results/cross_corpus/qieemo")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/adapt_study.md")
    return parser.parse_args(argv)


def kept_or_evaluated(
    name: str, folder: Path, kept: Path, args: argparse.Namespace, failed: list[str]
) -> dict | None:
    """:func:`evaluate_run` of ``folder``, or its result kept in ``kept`` by an earlier call with
    the same settings; ``None`` (and a line in ``failed``) when it fails."""
    settings = {"folder": str(folder), "sizes": args.sizes, "draws": args.draws}
    if kept.exists() and json.loads(kept.read_text()).get("settings") == settings:
        log(f"{name}: finished earlier, kept")
        return json.loads(kept.read_text())
    log(f"{name}: {folder} ...")
    try:
        result = evaluate_run(folder, args.feature_cache, args.sizes, args.draws)
    except Exception as err:  # noqa: BLE001 - one line per failed run, the others go on
        failed.append(f"{name}: {one_line(err)}")
        log(failed[-1])
        return None
    result["settings"] = settings
    write_json_atomic(result, kept)
    log(
        f"{name}: UA {result['none']:.1f} -> {result['corpus']:.1f} (whole test set), "
        f"{result['per_speaker']:.1f} (per speaker)"
    )
    return result


def fold_folders(folder: Path) -> list[Path]:
    """The finished fold runs ``fold_<k>`` of a cross-validation folder, in fold order."""
    folds = [f for f in folder.glob("fold_*") if (f / "test_metrics.json").is_file()]
    return sorted(folds, key=lambda f: int(f.name.split("_")[1]))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "python benchmarks/adapt_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.sizes = [int(n) for n in args.sizes.split(",") if n]
    try:
        loco = json.loads(args.loco.read_text())
    except (OSError, ValueError) as err:
        print(f"adapt_study: {args.loco}: {one_line(err)}", file=sys.stderr)
        return 2
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        if variant not in loco["variants"]:
            print(f"adapt_study: {args.loco}: no variant {variant!r}", file=sys.stderr)
            return 2
    start, failed = time.time(), []
    study: dict = {"variants": {}, "within": {}, "draws": args.draws, "sizes": args.sizes}
    for variant in variants:
        study["variants"][variant] = {}
        for corpus, record in loco["variants"][variant]["runs"].items():
            kept = args.work / variant / f"{corpus}.json"
            name = f"{variant} tested on {corpus}"
            result = kept_or_evaluated(name, Path(record["folder"]), kept, args, failed)
            if result is not None:
                study["variants"][variant][corpus] = result
    study["pairs"] = {}
    for pair in [p for p in args.pairs.split(",") if p]:
        train, _, test = pair.partition(":")
        mode = "_turev-calm-neutral" if "turev" in (train, test) else ""
        folder = args.pairs_work / f"train-{train}_test-{test}{mode}"
        kept = args.work / "pairs" / f"{train}-{test}.json"
        result = kept_or_evaluated(
            f"trained on {train}, tested on {test}", folder, kept, args, failed
        )
        if result is not None:
            study["pairs"][pair] = result
    for corpus in [c for c in args.within.split(",") if c]:
        folds = fold_folders(args.within_work / corpus / "qieemo")
        if not folds:
            failed.append(f"within {corpus}: no finished fold under {args.within_work / corpus}")
            continue
        results = [
            kept_or_evaluated(
                f"{corpus} {fold.name}",
                fold,
                args.work / "within" / corpus / f"{fold.name}.json",
                args,
                failed,
            )
            for fold in folds
        ]
        study["within"][corpus] = [r for r in results if r is not None]
    study.update(
        failed=failed,
        command=command,
        wall_time_s=time.time() - start,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    )
    write_json_atomic(study, args.out.with_suffix(".json"))
    text = markdown(study, loco["corpora"], args.sizes, command)
    write_text_atomic(text, args.out)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
