"""The command line of the paper study (``benchmarks/paper.py``), parsed and checked: a bad
value is one :class:`PaperError` line (exit status 2), raised before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from accuracy import CORPORA  # corpus -> recipe folder, folder under --data
from paper_plan import systems_of

REPO = Path(__file__).resolve().parents[1]
DESCRIPTION = "The paper study (issue 15): which of the Qieemo paper's claims hold here."
SECTIONS = ("probe", "ablations", "scratch", "ppg", "verdicts")
SEEDS = (1986, 1987, 1988)
DEFAULT_BLOCK_SETS = ((2, 3, 4), (1, 2, 3, 4, 5, 6))


class PaperError(Exception):
    """A refusal before anything runs: ``str()`` is one line (exit status 2)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PaperError(f"{what} takes comma-separated integers, not {text!r}") from None
    if not values:
        raise PaperError(f"{what} is empty")
    if len(set(values)) != len(values):
        raise PaperError(f"{what} {text} names a value twice")
    return values


def parse_block_sets(text: str) -> list[tuple[int, ...]]:
    """``"2,3,4;1,2,3,4,5,6"`` -> ``[(2, 3, 4), (1, 2, 3, 4, 5, 6)]``; ``""`` -> ``[]``.

    Example
    -------
    >>> parse_block_sets("4,2;1,2,3")
    [(2, 4), (1, 2, 3)]
    >>> parse_block_sets("2,9")
    Traceback (most recent call last):
        ...
    paper_args.PaperError: --block-sets: block 9 is not one of whisper-base's blocks 1..6
    """
    sets = []
    for part in (p for p in text.split(";") if p.strip()):
        blocks = tuple(sorted(_int_list(part, "--block-sets")))
        bad = [b for b in blocks if not 1 <= b <= 6]
        if bad:
            raise PaperError(
                f"--block-sets: block {bad[0]} is not one of whisper-base's blocks 1..6"
            )
        if blocks not in sets:
            sets.append(blocks)
    return sets


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked; :class:`PaperError` (one line) for bad values."""
    parser = argparse.ArgumentParser(prog="paper.py", description=DESCRIPTION)
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "paper"))
    parser.add_argument("--cache", help="the feature cache (default WORK/feature_cache)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "paper_report.md"))
    parser.add_argument("--json", help="the results (default paper_results.json beside --out)")
    parser.add_argument(
        "--archive",
        default=str(REPO / "benchmarks" / "results" / "paper_runs"),
        help="compact copies of the finished runs (default benchmarks/results/paper_runs)",
    )
    parser.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument(
        "--block-sets",
        default=";".join(",".join(str(b) for b in s) for s in DEFAULT_BLOCK_SETS),
        help="MMF block sets of the ablations, ';'-separated (default 2,3,4;1,2,3,4,5,6)",
    )
    parser.add_argument(
        "--systems", help="run only these systems, ','-separated (default: every planned one)"
    )
    parser.add_argument("--max-folds", type=int, help="run folds 1..N of each corpus only")
    parser.add_argument("--scratch-trained", action="store_true")
    parser.add_argument("--scratch-epochs", type=int, default=15)
    parser.add_argument("--device", help="passed to every run, e.g. cuda:0")
    parser.add_argument("--report-only", action="store_true", help="train and encode nothing")
    parser.add_argument("--n-boot", type=int, default=5000, help="bootstrap draws (default 5000)")

    def fail(message: str) -> None:
        raise PaperError(message)

    parser.error = fail  # type: ignore[method-assign]  # one line, exit 2, from main
    args = parser.parse_args(list(argv))
    args.corpora = [c.strip().lower() for c in args.corpora.split(",") if c.strip()]
    unknown = [c for c in args.corpora if c not in CORPORA]
    if unknown:
        raise PaperError(f"unknown corpus {unknown[0]!r} (known: {', '.join(CORPORA)})")
    if not args.corpora:
        raise PaperError("--corpora is empty")
    if len(set(args.corpora)) != len(args.corpora):
        raise PaperError(f"--corpora {','.join(args.corpora)} names a corpus twice")
    args.seeds = _int_list(args.seeds, "--seeds")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        raise PaperError(
            f"unknown section {bad[0] if bad else '(none)'!r} (known: {', '.join(SECTIONS)})"
        )
    args.block_sets = parse_block_sets(args.block_sets)
    if args.systems is not None:
        args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
        planned = {s for corpus in args.corpora for s in systems_of(args, corpus)}
        unknown = sorted(args.systems - planned)
        if unknown or not args.systems:
            raise PaperError(
                f"unknown system {unknown[0] if unknown else '(none)'!r} in --systems"
                f" (planned: {', '.join(sorted(planned))})"
            )
    if args.max_folds is not None and args.max_folds < 2:
        raise PaperError(
            f"--max-folds must be at least 2 (a paired test needs folds), not {args.max_folds}"
        )
    if args.scratch_epochs < 1:
        raise PaperError(f"--scratch-epochs must be positive, not {args.scratch_epochs}")
    if args.n_boot < 100:
        raise PaperError(f"--n-boot must be at least 100, not {args.n_boot}")
    return args
