#!/usr/bin/env python3
"""Build qieemo's built-in default model: 4 emotions, five corpora, whisper-base + Qieemo head.

Everything goes through the recipes (``recipes/custom/emotion``, whose CSV manifest takes every
corpus at once) and the cross-corpus benchmark's class mapping
(``benchmarks/cross_corpus.py``: which label of each corpus is angry, happy, neutral or sad;
TurEV-DB's calm counts as neutral):

1. Leave-one-corpus-out, for each head in ``--candidates`` (``benchmarks/loco_study.py``'s
   variants, run by :func:`loco_study.run_variant` into ``WORK/<candidate>/``, the same runs
   the study makes when the work folder is the same): ``train.py`` trains on all corpora but
   one and tests on that one (new speakers, a new language, other recording conditions). The
   head with the best mean UA over the held-out corpora is chosen; each run's
   ``calibration.json`` gives the expected calibration error on the held-out corpus before and
   after the temperature (fitted on the training corpora's held-out speakers).
2. The final model: ``train.py --test_fold=none`` trains that head on every corpus (validation:
   held-out speakers of each), then :func:`qieemo_lobes.export.export_model` writes the model
   folder, its temperature included.
3. ``MODEL_CARD.md`` in the model folder (formatted by ``tools/default_model_card.py``), with the
   numbers measured in step 1: written by the export together with the rest of the folder (``export_model(..., force=True,
   extra_files=...)``), which replaces the previous default model whole.

    python tools/train_default_model.py --data ../shared/data \\
        --corpora emodb,ravdess,nemo,emovo,turev --work results/loco_study \\
        --out qieemo_lobes/default_model [--candidates small,recipe] [any --hparam=value]

Finished steps are not redone (the recipes skip finished folds and runs), so an interrupted build
resumes. Overrides are passed to both the cross-validation and the final training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "custom" / "emotion"
HPARAMS = "hparams/qieemo.yaml"
sys.path.insert(0, str(REPO / "benchmarks"))

import cross_corpus  # noqa: E402
import loco_study  # noqa: E402

from qieemo_lobes.calibration import (  # noqa: E402
    N_BINS,
    expected_calibration_error,
    fit_temperature,
)
from qieemo_lobes.export import ExportError, export_model  # noqa: E402
from qieemo_lobes.files import write_json_atomic  # noqa: E402
from qieemo_lobes.recipe_results import read_predictions  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
from default_model_card import CANDIDATES, CLASSES, mean_eces, model_card  # noqa: E402

DEFAULT_CANDIDATES = "baseline,small_no_input_norm,small_all_blocks,all_blocks"


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    code = subprocess.call(command, cwd=RECIPE)
    if code != 0:
        raise SystemExit(f"failed with exit code {code}: {' '.join(command)}")


def loco_summary(records: dict[str, dict]) -> tuple[dict, dict[str, dict]]:
    """``(summary, calibration)`` of one candidate's leave-one-corpus-out runs: the folds
    (held-out corpus, n_test, WA, UA, WF1, confusion), their mean and wall time, and each
    run's ``calibration.json`` by held-out corpus."""
    failed = [f"{c}: {r['failed']}" for c, r in records.items() if "failed" in r]
    if failed:
        raise SystemExit(f"leave-one-corpus-out run failed: {failed[0]}")
    keys = ("n_test", "wa", "ua", "wf1", "confusion")
    folds = [{"fold": corpus, **{k: r[k] for k in keys}} for corpus, r in records.items()]
    mean = {m: sum(f[m] for f in folds) / len(folds) for m in ("wa", "ua", "wf1")}
    wall = sum(r.get("wall_time_s") or 0.0 for r in records.values())
    calibration = {}
    for corpus, r in records.items():
        path = Path(r["folder"]) / "calibration.json"
        if path.is_file():
            calibration[corpus] = json.loads(path.read_text())
    return {"folds": folds, "mean": mean, "wall_time_s": wall}, calibration


def held_out_log_probabilities(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A leave-one-corpus-out run's test predictions (``predictions.csv``): log-probabilities
    (probabilities clamped at 1e-6, the file's precision) and label indices, both in
    :data:`CLASSES` order. Temperature scaling of log-probabilities is that of the logits (the
    log-sum-exp shift cancels in the softmax)."""
    classes, rows = read_predictions(run / "predictions.csv")
    order = [classes.index(c) for c in CLASSES]
    probabilities = torch.tensor(np.stack([p[order] for _, p in rows.values()]))
    labels = torch.tensor([CLASSES.index(true) for true, _ in rows.values()])
    return probabilities.clamp_min(1e-6).log(), labels


def cross_corpus_calibration(runs: dict[str, Path]) -> dict:
    """The shipped model's temperature, fitted on what it is for: new corpora.

    The recipe fits ``T`` on held-out speakers of the training corpora; on a held-out corpus
    that temperature can make the calibration worse (the model is more often wrong there). Here
    ``T`` is fitted on the pooled test predictions of every leave-one-corpus-out run (each
    corpus predicted by a head that never saw it), and, per corpus, the ECE before and after a
    temperature fitted on the other corpora's predictions only (the honest estimate).

    Returns
    -------
    dict
        ``temperature``, ``fitted``, ``fitted_on``, ``n_valid``, ``n_bins``, ``method``,
        ``ece_valid_before`` / ``ece_valid_after`` (the pooled predictions, T fitted on them),
        ``ece_test_before`` / ``ece_test_after`` (mean over corpora of the nested estimate) and
        ``per_corpus``: ``{corpus: {temperature, ece_before, ece_after}}``.
    """
    data = {corpus: held_out_log_probabilities(run) for corpus, run in runs.items()}
    per_corpus = {}
    for corpus, (logits, labels) in data.items():
        others = [data[c] for c in data if c != corpus]
        temperature = fit_temperature(
            torch.cat([o[0] for o in others]), torch.cat([o[1] for o in others])
        )
        per_corpus[corpus] = {
            "temperature": temperature,
            "ece_before": expected_calibration_error(logits, labels),
            "ece_after": expected_calibration_error(logits, labels, temperature),
        }
    logits = torch.cat([d[0] for d in data.values()])
    labels = torch.cat([d[1] for d in data.values()])
    temperature = fit_temperature(logits, labels)
    mean = lambda key: sum(c[key] for c in per_corpus.values()) / len(per_corpus)  # noqa: E731
    return {
        "temperature": temperature,
        "fitted": True,
        "fitted_on": f"the {len(labels)} test predictions of the leave-one-corpus-out runs, "
        "each corpus predicted by a head that never saw it",
        "method": "temperature scaling on held-out corpora (tools/train_default_model.py)",
        "n_valid": len(labels),
        "n_bins": N_BINS,
        "ece_valid_before": expected_calibration_error(logits, labels),
        "ece_valid_after": expected_calibration_error(logits, labels, temperature),
        "ece_test_before": mean("ece_before"),
        "ece_test_after": mean("ece_after"),
        "per_corpus": per_corpus,
    }


def shipped_calibration(calibration: dict[str, dict], cross: dict) -> tuple[dict | None, str]:
    """The calibration to ship, ``(calibration for export_model, reason)``: of no temperature
    (T = 1), the recipe's (fitted on the training corpora's held-out speakers) and the
    cross-corpus one, the one with the lowest mean ECE on the held-out corpora (the card's
    three ECE columns). ``None``: the final run's own ``calibration.json`` (the recipe's).

    >>> runs = {"a": {"ece_test_before": 10.0, "ece_test_after": 12.0}}
    >>> cross = {"per_corpus": {"a": {"ece_after": 11.0}}, "temperature": 2.0}
    >>> shipped_calibration(runs, cross)[0]["temperature"]
    1.0
    >>> cross["per_corpus"]["a"]["ece_after"] = 4.0
    >>> shipped_calibration(runs, cross)[0]["temperature"]
    2.0
    """
    known = {
        name: value for name, value in mean_eces(calibration, cross).items() if value is not None
    }
    best = min(known, key=known.get)
    means = ", ".join(f"{name} {value:.1f}" for name, value in known.items())
    reason = f"lowest mean ECE on the held-out corpora ({means} %): {best}"
    if best == "cross":
        return cross, reason
    if best == "recipe":
        return None, reason
    return {
        "temperature": 1.0,
        "fitted": False,
        "note": "no temperature lowered the expected calibration error on held-out corpora "
        f"({means} %; see MODEL_CARD.md), so T = 1",
    }, reason


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--corpora", default=",".join(cross_corpus.CORPORA))
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES)
    parser.add_argument("--work", type=Path, default=REPO / "results" / "loco_study")
    parser.add_argument("--out", type=Path, default=REPO / "qieemo_lobes" / "default_model")
    parser.add_argument("--feature_cache", default=None, help="default: WORK/feature_cache")
    args, overrides = parser.parse_known_args(argv)
    corpora = [c for c in args.corpora.split(",") if c]
    candidates = [c for c in args.candidates.split(",") if c]
    for name in corpora:
        if name not in cross_corpus.CORPORA:
            parser.error(f"unknown corpus {name!r} (known: {', '.join(cross_corpus.CORPORA)})")
    for name in candidates:
        if name not in CANDIDATES:
            parser.error(f"unknown candidate {name!r} (known: {', '.join(CANDIDATES)})")
        if CANDIDATES[name][2]:
            parser.error(f"{name} is transductive (it needs the test audio's statistics)")
    if len(corpora) < 2 or not candidates:
        parser.error("at least two corpora and one candidate")
    args.corpora = [c for c in cross_corpus.CORPORA if c in corpora]
    args.candidates = candidates
    try:
        overrides = cross_corpus.parse_overrides(overrides)
    except cross_corpus.CrossCorpusError as err:
        parser.error(str(err))
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    started = time.time()
    work = args.work.resolve()
    cache = Path(args.feature_cache).resolve() if args.feature_cache else work / "feature_cache"
    work.mkdir(parents=True, exist_ok=True)
    try:
        raw = cross_corpus.read_corpora(args.corpora, args.data.resolve(), ["neutral"])
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    utterances = cross_corpus.map_classes(raw, "neutral")
    counts = {c: cross_corpus.class_counts(utterances[c]) for c in args.corpora}
    loco, calibration, folders = {}, {}, {}
    for name in args.candidates:
        print(f"== {name}: {CANDIDATES[name][0]}", flush=True)
        records = loco_study.run_variant(name, utterances, args.corpora, work, cache, overrides)
        loco[name], calibration[name] = loco_summary(records)
        folders[name] = {corpus: Path(r["folder"]) for corpus, r in records.items()}
    chosen = max(loco, key=lambda name: loco[name]["mean"]["ua"])
    cross = cross_corpus_calibration(folders[chosen])
    # The final model: every corpus (the leave-one-corpus-out manifest, which holds them all).
    every = cross_corpus.Split(tuple(args.corpora[1:]), args.corpora[0])
    manifest = cross_corpus.write_manifest(utterances, every, "neutral", work / "manifests")
    final_run = work / f"final_{chosen}"
    arguments = cross_corpus.qieemo_arguments(
        manifest, final_run, every, CLASSES, cache, [*CANDIDATES[chosen][1], *overrides]
    )
    arguments = [a if not a.startswith("--test_fold=") else "--test_fold=none" for a in arguments]
    run([sys.executable, "train.py", HPARAMS, *arguments])
    final = json.loads((final_run / "test_metrics.json").read_text())
    final["hparams"] = json.loads((final_run / "run_info.json").read_text())["hparams"]
    shipped, reason = shipped_calibration(calibration[chosen], cross)
    if shipped is None:
        shipped = json.loads((final_run / "calibration.json").read_text())
    final["temperature"], final["calibration_choice"] = shipped["temperature"], reason
    print(f"temperature {shipped['temperature']:.3f}: {reason}", flush=True)
    command = "python tools/train_default_model.py " + " ".join(
        [f"--corpora {','.join(args.corpora)}", f"--candidates {','.join(args.candidates)}"]
        + list(overrides)
    )
    card = model_card(counts, loco, calibration, chosen, final, command, cross)
    # The model folder is replaced whole (force: it is the earlier default model), its card
    # written inside it before it appears: the shipped model is never without MODEL_CARD.md.
    print(f"+ export {final_run} -> {args.out} (with MODEL_CARD.md)", flush=True)
    try:
        export_model(
            final_run,
            args.out,
            force=True,
            extra_files={"MODEL_CARD.md": card},
            calibration=shipped,
        )
    except (ExportError, OSError) as err:
        raise SystemExit(f"export: {err}") from None
    write_json_atomic(
        {"chosen": chosen, **{name: summary["mean"] for name, summary in loco.items()}},
        work / "loco_metrics.json",
    )
    print(f"model: {args.out} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
