#!/usr/bin/env python3
"""Choose the head's defaults on every corpus together: within-corpus UA of head variants.

Each variant (:data:`VARIANTS`: fusion blocks, head size and pooling, CMA, normalisation) is
cross-validated on every corpus with its recipe's own protocol (``recipes/<corpus>/emotion/
cross_validate.py hparams/qieemo.yaml``, the folds of ``benchmarks/accuracy.py``) under one
uniform, cheap training setting for all corpora (:data:`PROTOCOL`: frozen encoder, no speed
copies, 15 epochs), so the rows differ only by the head. One table: UA per corpus, the mean over
corpora, the worst corpus and the number of corpora on which the variant beats the first
(reference) variant. Prefer what holds across corpora over what wins on one.

    python benchmarks/head_study.py [--variants recipe,small,blocks_234,...] \\
        [--corpora emodb,ravdess,nemo,emovo,turev] [--data ../shared/data] \\
        [--work results/head_study] [--feature_cache results/bench/feature_cache] \\
        [--out benchmarks/results/head_study.md]

Runs live in ``WORK/<corpus>/<variant>/``; finished folds are kept (cross_validate.py resumes),
so an interrupted study resumes and a rerun only writes the table. A finished cell (its
``summary.json``) is read as it is: remove its folder to run it again with other settings. ``--report-only`` trains
nothing: unfinished cells are left empty.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from accuracy import CORPORA, cross_validate_command  # noqa: E402
from corpora_classes import NAMES  # noqa: E402

from qieemo_lobes.files import write_json_atomic, write_text_atomic  # noqa: E402

PROTOCOL = ["--tune_blocks=0", "--speed_perturb=[100]", "--number_of_epochs=15"]
SMALL = ["--d_model=32", "--pooling=mean", "--dropout=0.5"]
# name -> (description, overrides); the first one given is the reference of the table.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipes' head: MMF blocks 2-3, d_model 128, attentive pooling, no CMA", []),
    "blocks_234": ("MMF blocks 2-4", ["--fusion_blocks=[2,3,4]"]),
    "all_blocks": ("MMF over all six blocks", ["--fusion_blocks=[1,2,3,4,5,6]"]),
    "small": ("small head: d_model 32, mean pooling, dropout 0.5", SMALL),
    "small_234": ("small head, MMF blocks 2-4", [*SMALL, "--fusion_blocks=[2,3,4]"]),
    "small_all_blocks": ("small head, all six blocks", [*SMALL, "--fusion_blocks=[1,2,3,4,5,6]"]),
    "cma": ("the recipes' head with CMA", ["--use_cma=True"]),
    "no_input_norm": ("without input standardisation", ["--input_norm=False"]),
}
DEFAULT_VARIANTS = "recipe,blocks_234,all_blocks,small,small_all_blocks"


def cross_validate(corpus: str, data: Path, out: Path, cache: Path, overrides: list[str]) -> int:
    """Run the corpus' cross-validation (it resumes finished folds); its exit status."""
    command, recipe = cross_validate_command(corpus, data, out, cache, overrides)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout.log", "a") as log:
        return subprocess.call(command, cwd=recipe, stdout=log, stderr=subprocess.STDOUT)


def read_summary(out: Path) -> dict | None:
    """The finished cross-validation's ``summary.json``, or None."""
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def table(
    ua: dict[str, dict[str, float | None]], corpora: Sequence[str], variants: Sequence[str]
) -> list[str]:
    """The markdown rows: UA per corpus, mean, worst corpus, corpora better than the reference.

    Example
    -------
    >>> ua = {"recipe": {"emodb": 50.0, "emovo": 60.0}, "small": {"emodb": 55.0, "emovo": 58.0}}
    >>> print("\\n".join(table(ua, ["emodb", "emovo"], ["recipe", "small"])[2:]))
    | the recipes' head: MMF blocks 2-3, d_model 128, attentive pooling, no CMA (`recipe`) | 50.0 | 60.0 | 55.0 | 50.0 | (reference) |
    | small head: d_model 32, mean pooling, dropout 0.5 (`small`) | 55.0 | 58.0 | 56.5 | 55.0 | 1 of 2 |
    """
    head = "| variant | " + " | ".join(NAMES[c] for c in corpora) + " | mean | worst | better |"
    rows = [head, "|---" * (len(corpora) + 4) + "|"]
    reference = variants[0]
    for name in variants:
        cells = [ua[name].get(c) for c in corpora]
        done = [v for v in cells if v is not None]
        complete = len(done) == len(corpora)
        mean = f"{sum(done) / len(done):.1f}" if complete else ""
        worst = f"{min(done):.1f}" if complete else ""
        if name == reference:
            better = "(reference)"
        else:
            pairs = [(ua[name].get(c), ua[reference].get(c)) for c in corpora]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            better = f"{sum(a > b for a, b in pairs)} of {len(pairs)}" if pairs else ""
        text = " | ".join("" if v is None else f"{v:.1f}" for v in cells)
        rows.append(f"| {VARIANTS[name][0]} (`{name}`) | {text} | {mean} | {worst} | {better} |")
    return rows


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "head_study"))
    parser.add_argument("--feature_cache", default=str(REPO / "results" / "feature_cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "head_study.md"))
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args(list(argv))
    args.variants = [v for v in args.variants.split(",") if v]
    args.corpora = [c for c in args.corpora.split(",") if c]
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    for name in args.corpora:
        if name not in CORPORA:
            parser.error(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    if not args.variants or not args.corpora:
        parser.error("give at least one variant and one corpus")
    return args


def main(argv: Sequence[str] | None = None, run: Callable = cross_validate) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv)
    started = time.time()
    work, cache = Path(args.work).resolve(), Path(args.feature_cache).resolve()
    ua: dict[str, dict[str, float | None]] = {name: {} for name in args.variants}
    runs: dict[str, dict[str, dict]] = {name: {} for name in args.variants}
    failed = []
    try:
        for corpus in args.corpora:  # corpus by corpus: a partial study covers whole corpora
            data = Path(args.data) / CORPORA[corpus][1]
            for name in args.variants:
                out = (work / corpus / name).resolve()  # may link to accuracy.py's runs
                summary = read_summary(out)
                if summary is None and not args.report_only:
                    print(f"[{corpus}] {name}: cross-validating ({out / 'stdout.log'}) ...")
                    code = run(corpus, data, out, cache, [*PROTOCOL, *VARIANTS[name][1]])
                    summary = read_summary(out)
                    if code != 0 or summary is None:
                        failed.append(f"{corpus} {name}: exit status {code} ({out / 'stdout.log'})")
                        summary = None
                if summary is not None:
                    ua[name][corpus] = summary["mean"]["ua"]
                    runs[name][corpus] = {
                        "ua_folds": [f["ua"] for f in summary["folds"]],
                        "mean": summary["mean"],
                        "std": summary.get("std"),
                        "wall_time_s": summary.get("wall_time_s"),
                    }
                    print(f"[{corpus}] {name}: UA {ua[name][corpus]:.1f}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    command = "python benchmarks/head_study.py " + " ".join(argv)
    lines = [
        "# Head study: the head's defaults chosen on every corpus together",
        "",
        f"Command: `{command.strip()}`",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "Within-corpus cross-validation (each recipe's speaker-independent folds), whisper-base "
        f"fit window, one training setting for every corpus: `{' '.join(PROTOCOL)}`. UA in "
        "percent, mean over folds. `better`: corpora on which the variant's UA is above the "
        "first row's.",
        "",
        *table(ua, args.corpora, args.variants),
        "",
        "Overrides: " + "; ".join(f"`{n}`: `{' '.join(VARIANTS[n][1]) or '-'}`" for n in ua),
        "",
        f"Wall time of this call: {time.time() - started:.0f} s.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        {"command": command.strip(), "protocol": PROTOCOL, "ua": ua, "runs": runs},
        out.with_suffix(".json"),
    )
    write_text_atomic("\n".join(lines) + "\n", out)
    print("\n".join(lines))
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
