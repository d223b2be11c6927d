#!/usr/bin/env python3
"""What closes the cross-corpus gap: leave-one-corpus-out UA of qieemo under training variants.

Each variant is a set of hyperparameter overrides of ``recipes/custom/emotion`` (:data:`VARIANTS`),
run leave-one-corpus-out exactly as ``benchmarks/cross_corpus.py`` runs it (same manifests,
classes angry / happy / neutral / sad, TurEV-DB's calm as neutral, ``--speed_perturb=[100]``
unless the variant sets it, validation = held-out speakers of the training corpora): trained on
all the corpora but one, tested on that one. One row per variant: UA on each held-out corpus,
the mean, and the change of the mean against the baseline. Two more rows come from the
cross-corpus matrix when its JSON is given (``--matrix``): the mean and the best UA on each
corpus when trained on one other corpus only (what more corpora in training bring).

    python benchmarks/loco_study.py [--variants baseline,corpus_norm,...] \\
        [--corpora emodb,ravdess,nemo,emovo,turev] [--data ../shared/data] \\
        [--work results/loco_study] [--feature_cache WORK/feature_cache] \\
        [--matrix benchmarks/results/cross_corpus.json] [--out benchmarks/results/loco_study.md]

writes ``--out`` (markdown) and its ``.json``. Runs live in ``WORK/<variant>/qieemo/<split>/``;
a finished run with the same settings is kept, so an interrupted study resumes and
``tools/train_default_model.py`` (same work folder) reuses its runs. Transductive variants
(statistics of the held-out corpus' own unlabelled audio) are marked as such in the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import cross_corpus as cc  # noqa: E402

from qieemo_lobes.augmentation import MILD  # noqa: E402
from qieemo_lobes.errors import one_line  # noqa: E402
from qieemo_lobes.files import write_json_atomic, write_text_atomic  # noqa: E402

NO_CMA = ["--use_cma=False"]
SMALL = [*NO_CMA, "--d_model=32", "--pooling=mean", "--dropout=0.5"]
# name -> (description, overrides, transductive)
VARIANTS: dict[str, tuple[str, list[str], bool]] = {
    "baseline": ("the recipe's head (d_model 128, attentive pooling), no CMA", NO_CMA, False),
    "cma": ("the recipe's head with CMA", ["--use_cma=True"], False),
    "all_blocks": (
        "MMF over all six blocks (learned weights)",
        [*NO_CMA, "--fusion_blocks=[1,2,3,4,5,6]"],
        False,
    ),
    "all_blocks_mild": (
        "MMF over all six blocks, two corrupted copies of every training clip (mild severities)",
        [
            *NO_CMA,
            "--fusion_blocks=[1,2,3,4,5,6]",
            "--augment_copies=2",
            f"--augment_corruptions=[{','.join(MILD)}]",
        ],
        False,
    ),
    "blocks_234": ("MMF over blocks 2, 3 and 4", [*NO_CMA, "--fusion_blocks=[2,3,4]"], False),
    "small": ("small head: d_model 32, mean pooling, dropout 0.5", SMALL, False),
    "small_no_input_norm": (
        "small head without input standardisation (default model v1)",
        [*SMALL, "--input_norm=False"],
        False,
    ),
    "small_all_blocks": (
        "small head, MMF over all six blocks",
        [*SMALL, "--fusion_blocks=[1,2,3,4,5,6]"],
        False,
    ),
    "balanced": (
        "class-balanced sampling across corpora (every corpus and class equally often)",
        [*NO_CMA, "--balanced_sampling=fold_class"],
        False,
    ),
    "corpus_norm": (
        "per-corpus feature normalisation",
        [*NO_CMA, "--speaker_norm=True", "--norm_group=fold"],
        True,
    ),
    "speaker_norm": (
        "per-speaker feature normalisation",
        [*NO_CMA, "--speaker_norm=True"],
        True,
    ),
    "speed": (
        "speed perturbation 90/100/110 % of the training clips",
        [*NO_CMA, "--speed_perturb=[90,100,110]"],
        False,
    ),
}
DEFAULT_VARIANTS = "baseline,corpus_norm,balanced,all_blocks"


def run_variant(
    name: str,
    utterances: dict[str, list[dict]],
    corpora: Sequence[str],
    work: Path,
    cache: Path,
    extra: Sequence[str] = (),
    train: Callable[[Sequence[str], Path], int] | None = None,
) -> dict[str, dict]:
    """The leave-one-corpus-out runs of one variant: ``{held-out corpus: record}`` (a record
    as :func:`cross_corpus.run_qieemo` returns it: WA, UA, WF1, confusion, folder... or
    ``failed``)."""
    overrides = [*VARIANTS[name][1], *extra]
    # Resolved: WORK/<name> may link to a folder of cross_corpus.py's runs (the same runs).
    folder = (work / name).resolve()
    records = {}
    for split in cc.plan_splits(corpora, pairs=False, loco=True):
        records[split.test] = cc.run_qieemo(
            split, "neutral", utterances, folder, cache, overrides, train=train
        )
    return records


def matrix_rows(matrix: dict, corpora: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """From cross_corpus.json (qieemo, calm as neutral): the mean and the best UA on each corpus
    over the models trained on one other corpus."""
    pairs = matrix["results"]["neutral"]["qieemo"]["pairs"]
    mean, best = {}, {}
    for test in corpora:
        values = [pairs[a][test] for a in corpora if a != test and pairs[a].get(test) is not None]
        mean[test] = sum(values) / len(values) if values else None
        best[test] = max(values) if values else None
    return {"one other corpus (mean)": mean, "one other corpus (best)": best}


def _mean(values) -> float | None:
    """The mean, or ``None`` when a value is missing: a mean over fewer corpora is another
    average, not comparable with the other rows'.

    >>> _mean([50.0, 60.0]), _mean([50.0, None])
    (55.0, None)
    """
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _cell(value: float | None, missing: str = "failed") -> str:
    return missing if value is None else f"{value:.1f}"


def report(
    results: dict[str, dict[str, dict]],
    corpora: Sequence[str],
    extra_rows: dict[str, dict[str, float | None]],
    command: str,
    wall_time_s: float,
) -> tuple[str, dict]:
    """The markdown table and the JSON of the study."""
    ua = {
        name: {c: None if "failed" in r[c] else r[c]["ua"] for c in corpora}
        for name, r in results.items()
    }
    base = _mean(ua["baseline"].values()) if "baseline" in ua else None
    head = "| variant | " + " | ".join(cc.NAMES[c] for c in corpora) + " | mean | vs baseline |"
    lines = [
        "# Leave-one-corpus-out study: what closes the cross-corpus gap",
        "",
        f"Command: `{command}`",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cc.machine_line()}.",
        "Trained on all the other corpora, tested on the column's corpus (4 classes, TurEV-DB's "
        "calm as neutral); UA in percent; chance 25. Transductive rows use the held-out "
        "corpus' unlabelled audio (its feature statistics) and need a batch of it at test time.",
        "",
        head,
        "|---" * (len(corpora) + 3) + "|",
    ]
    for name, row in ua.items():
        description, _, transductive = VARIANTS[name]
        mean = _mean(row.values())
        delta = "" if base is None or mean is None or name == "baseline" else f"{mean - base:+.1f}"
        label = f"{description} (`{name}`)" + (" - transductive" if transductive else "")
        cells = " | ".join(_cell(row[c]) for c in corpora)
        lines.append(f"| {label} | {cells} | {_cell(mean, missing='-')} | {delta} |")
    for label, row in extra_rows.items():
        mean = _mean(row.values())
        cells = " | ".join(_cell(row[c]) for c in corpora)
        delta = "" if base is None or mean is None else f"{mean - base:+.1f}"
        lines.append(f"| trained on {label}, from the cross-corpus matrix | {cells} | "
                     f"{_cell(mean, missing='-')} | {delta} |")  # fmt: skip
    lines += ["", "Overrides of each variant:", ""]
    lines += [f"- `{name}`: `{' '.join(VARIANTS[name][1])}`" for name in results]
    lines += ["", f"Wall time of this call: {wall_time_s:.0f} s."]
    data = {
        "command": command,
        "corpora": list(corpora),
        "variants": {
            name: {
                "description": VARIANTS[name][0],
                "overrides": VARIANTS[name][1],
                "transductive": VARIANTS[name][2],
                "ua": ua[name],
                "mean_ua": _mean(ua[name].values()),
                "runs": results[name],
            }
            for name in results
        },
        "from_matrix": extra_rows,
        "wall_time_s": wall_time_s,
    }
    return "\n".join(lines) + "\n", data


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--corpora", default=",".join(cc.CORPORA))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "loco_study"))
    parser.add_argument("--feature_cache", default=None, help="default: WORK/feature_cache")
    parser.add_argument("--matrix", default=None, help="cross_corpus.json, for the rows of pairs")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "loco_study.md"))
    args, extra = parser.parse_known_args(list(argv))
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise cc.CrossCorpusError(
            f"--variants: unknown {unknown[0]!r} (known: {', '.join(VARIANTS)})"
            if unknown
            else "--variants: give at least one"
        )
    corpora = [c for c in args.corpora.split(",") if c]
    if any(c not in cc.CORPORA for c in corpora) or len(set(corpora)) < 2:
        raise cc.CrossCorpusError(f"--corpora: at least two of {', '.join(cc.CORPORA)}")
    args.variants = variants
    args.corpora = [c for c in cc.CORPORA if c in corpora]
    return args, cc.parse_overrides(extra)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.time()
    try:
        args, extra = parse_arguments(argv)
        work = Path(args.work).resolve()
        cache = Path(args.feature_cache).resolve() if args.feature_cache else work / "feature_cache"
        raw = cc.read_corpora(args.corpora, args.data, ["neutral"])
        utterances = cc.map_classes(raw, "neutral")
        extra_rows = {}
        if args.matrix:
            extra_rows = matrix_rows(json.loads(Path(args.matrix).read_text()), args.corpora)
    except cc.CrossCorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    results = {}
    try:
        for name in args.variants:
            print(f"== {name}: {VARIANTS[name][0]}", flush=True)
            results[name] = run_variant(name, utterances, args.corpora, work, cache, extra)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    command = "python benchmarks/loco_study.py " + " ".join(argv)
    text, data = report(results, args.corpora, extra_rows, command.strip(), time.time() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out.with_suffix(".json"))
    write_text_atomic(text, out)
    print(text)
    failed = [(n, c) for n, r in results.items() for c in r if "failed" in r[c]]
    for name, corpus in failed:
        print(
            f"{name} tested on {corpus}: FAILED: {results[name][corpus]['failed']}", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
