#!/usr/bin/env python3
"""The default model's robustness: its head on corrupted audio of corpora it was not trained on.

    python benchmarks/default_robustness.py [--work results/loco_study]
        [--candidate all_blocks_mild] [--compare all_blocks]
        [--corpora emodb,ravdess,nemo,emovo,turev] [--clips 80] [--seed 0] [--corruptions LIST]
        [--out benchmarks/results/default_robustness.md]

The shipped model is trained on every development corpus, so it has no clean test set of its
own; its estimate is the leave-one-corpus-out runs of its head (``tools/train_default_model.py``,
``WORK/<candidate>/qieemo/train-..._test-<corpus>_...``). Each of those runs is evaluated by
``python -m qieemo_lobes.robustness`` on ``--clips`` clips of its held-out corpus (the classes in
turn, :func:`robustness.limit`), clean and under every built-in corruption and severity (noise,
babble of the training corpora's speakers, simulated rooms, telephone, codecs, gain), twice: as
shipped, and adapted to each condition's clips (``--adapt``: what ``classify --adapt`` does on a
folder of such recordings; transductive). ``--compare`` evaluates other heads' runs the same way,
on the same clips, for a table of clean against corrupted UA (did training with corrupted copies
pay off?).

Writes ``--out`` (a summary table: UA clean, per corruption averaged over its severities, and
averaged over every corrupted condition, for each held-out corpus, plain and adapted; then every
condition), ``default_robustness.json`` beside it (every point) and keeps each evaluation in
``WORK/<candidate>/robustness/<corpus>_<clips>[_adapted].json``, so an interrupted run resumes there.
The model card (``tools/default_model_card.py``) reads the JSON. Exit status: 0 done, 1 some
clips or evaluations failed (listed at the end, after the others ran), 2 bad input (one line),
130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from cross_corpus import NAMES, machine_line  # noqa: E402
from robustness import limit  # noqa: E402

from qieemo_lobes import robustness  # noqa: E402
from qieemo_lobes.files import write_json_atomic, write_text_atomic  # noqa: E402
from qieemo_lobes.robustness_data import TestSetError, read_manifest  # noqa: E402
from qieemo_lobes.robustness_results import condition_key  # noqa: E402

SYSTEMS = {"plain": "as shipped", "adapted": "adapted to each condition (`--adapt`)"}


class BadInput(Exception):
    """Nothing can run (``str()``: one line naming the file or option)."""


def log(line: str) -> None:
    print(f"default_robustness: {line}", file=sys.stderr, flush=True)


def loco_run(work: Path, candidate: str, corpus: str) -> Path:
    """The candidate's leave-one-corpus-out run that holds ``corpus`` out (exactly one)."""
    runs = sorted((work / candidate / "qieemo").glob(f"train-*_test-{corpus}_*"))
    finished = [run for run in runs if (run / "test_metrics.json").is_file()]
    if len(finished) != 1:
        raise BadInput(
            f"{work / candidate / 'qieemo'}: {len(finished)} finished runs holding {corpus} out "
            f"(expected 1; made by tools/train_default_model.py --candidates {candidate})"
        )
    return finished[0]


def write_test_csv(run: Path, n_clips: int, path: Path) -> int:
    """``n_clips`` clips of the run's test set (classes in turn) as the robustness CSV."""
    clips = limit(read_manifest(run / "test.json"), n_clips)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "speaker", "start", "stop"])
        for clip in clips:
            writer.writerow(
                [clip.path, clip.label, clip.speaker, clip.start or "", clip.stop or ""]
            )
    return len(clips)


def _store(store: Path, corpus: str, system: str, n_clips: int) -> Path:
    return store / f"{corpus}_{n_clips}{'' if system == 'plain' else '_' + system}.json"


def _stored(store: Path, corpus: str, system: str, n_clips: int, wanted: set) -> list[dict]:
    """The stored conditions among ``wanted`` (``(corruption, severity)`` keys)."""
    path = _store(store, corpus, system, n_clips)
    records = json.loads(path.read_text())["conditions"] if path.is_file() else []
    return [r for r in records if (r["corruption"], r["severity"]) in wanted]


def evaluate_corpus(run: Path, test_csv: Path, store: Path, system: str, args) -> int:
    """``python -m qieemo_lobes.robustness`` on one run (its exit status)."""
    command = [str(run), "--test", str(test_csv), "--out", str(store), "--seed", str(args.seed)]
    if args.corruptions:
        command += ["--corruptions", args.corruptions]
    return robustness.main([*command, *(["--adapt"] if system == "adapted" else [])])


def summary(conditions: list[dict]) -> dict:
    """Clean UA, each corruption's UA averaged over its severities, and the mean over every
    corrupted condition.

    >>> summary([{"corruption": "clean", "ua": 80.0}, {"corruption": "white", "ua": 60.0},
    ...          {"corruption": "white", "ua": 40.0}, {"corruption": "gain", "ua": 70.0}])
    {'clean': 80.0, 'white': 50.0, 'gain': 70.0, 'corrupted': 56.666666666666664}
    """
    out: dict[str, list[float]] = {}
    for record in conditions:
        out.setdefault(record["corruption"], []).append(record["ua"])
    means = {name: sum(uas) / len(uas) for name, uas in out.items()}
    corrupted = [r["ua"] for r in conditions if r["corruption"] != "clean"]
    return {**means, "corrupted": sum(corrupted) / len(corrupted) if corrupted else None}


def _cell(values: dict, key: str) -> str:
    cells = [values[s].get(key) for s in SYSTEMS if s in values]
    return " / ".join("" if v is None else f"{v:.1f}" for v in cells)


def _header(
    corpora: list[str], names: dict[str, str], first: str = "condition", last: tuple = ()
) -> list[str]:
    columns = [first, *(names.get(c, NAMES[c]) for c in corpora), *last]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def summary_table(results: dict, names: dict[str, str] | None = None) -> list[str]:
    """Rows clean, each corruption (mean over its severities) and the mean of the corrupted
    conditions; a column per held-out corpus (``names``: its heading); cells plain / adapted."""
    corpora = list(results["corpora"])
    keys: list[str] = []
    for per_system in results["corpora"].values():
        for values in per_system.values():
            keys += [k for k in values["summary"] if k not in keys and k != "corrupted"]

    def row(label: str, key: str) -> str:
        cells = [
            _cell({s: v["summary"] for s, v in results["corpora"][c].items()}, key) for c in corpora
        ]
        return f"| {label} | " + " | ".join(cells) + " |"

    return [
        *_header(corpora, names or {}),
        row("clean", "clean"),
        *(row(key, key) for key in keys if key != "clean"),
        row("**mean of the corrupted conditions**", "corrupted"),
    ]


def comparison_table(results: dict, names: dict[str, str] | None = None) -> list[str]:
    """The head against each ``--compare`` head on the same clips: per held-out corpus, UA clean
    / mean of the corrupted conditions, as shipped (no adaptation), and their means.

    >>> plain = lambda clean, corrupted: {"plain": {"summary": {"clean": clean, "corrupted": corrupted}}}
    >>> results = {"candidate": "mild", "corpora": {"emovo": plain(50.0, 45.0)},
    ...            "compared": {"none": {"emovo": plain(52.0, 40.0)}}}
    >>> comparison_table(results)[2:]
    ['| `mild` | 50.0 / 45.0 | 50.0 / 45.0 |', '| `none` | 52.0 / 40.0 | 52.0 / 40.0 |']
    """
    heads = {results["candidate"]: results["corpora"], **results.get("compared", {})}
    corpora = list(results["corpora"])
    first = "head (UA clean / mean of the corrupted conditions, as shipped)"
    lines = _header(corpora, names or {}, first, ("mean",))
    for head, per_corpus in heads.items():
        shipped = [per_corpus.get(c, {}).get("plain", {}).get("summary") for c in corpora]
        cells = [f"{s['clean']:.1f} / {s['corrupted']:.1f}" if s else "-" for s in shipped]
        if None in shipped:
            mean = "-"
        else:
            clean, corrupted = (
                statistics.fmean(s[k] for s in shipped) for k in ("clean", "corrupted")
            )
            mean = f"{clean:.1f} / {corrupted:.1f}"
        lines.append(f"| `{head}` | " + " | ".join(cells) + f" | {mean} |")
    return lines


def condition_table(results: dict) -> list[str]:
    """Every condition: a row each, a column per held-out corpus, cells plain / adapted."""
    corpora = list(results["corpora"])
    labels: list[str] = []
    for per_system in results["corpora"].values():
        for values in per_system.values():
            labels += [r["label"] for r in values["conditions"] if r["label"] not in labels]
    lines = _header(corpora, {})
    for label in labels:
        cells = []
        for corpus in corpora:
            by_system = {
                s: {r["label"]: r["ua"] for r in v["conditions"]}
                for s, v in results["corpora"][corpus].items()
            }
            cells.append(_cell(by_system, label))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict, wall: float) -> str:
    clips = ", ".join(
        f"{NAMES[c]} {next(iter(per_system.values()))['n_clips']}"
        for c, per_system in results["corpora"].items()
    )
    lines = [
        "# The default model's head under corruption, on corpora it was not trained on",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {machine_line()}. Wall time: {wall / 60:.0f} min (summed over the conditions).",
        "",
        f"Head: the `{results['candidate']}` leave-one-corpus-out runs of "
        "`tools/train_default_model.py` (trained on four corpora, tested on the fifth). Test "
        f"clips per held-out corpus (classes in turn): {clips}. Babble: speech of the training "
        f"corpora's speakers. Seed {results['seed']}. Each cell: UA as shipped / adapted to each "
        "condition's clips (`classify --adapt`, transductive). A corruption's row is the mean "
        "over its severities; every condition is in the last table and in the JSON.",
        "",
        *summary_table(results),
        "",
        *(
            ["## Against other heads", "", *comparison_table(results), ""]
            if "compared" in results
            else []
        ),
        "## Every condition",
        "",
        *condition_table(results),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "results" / "loco_study"))
    parser.add_argument("--candidate", default="all_blocks_mild")
    parser.add_argument(
        "--compare", help="other heads (comma-separated), evaluated on the same clips for a table"
    )
    parser.add_argument("--corpora", default="emodb,ravdess,nemo,emovo,turev")
    parser.add_argument("--clips", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corruptions", help="as robustness --corruptions (default: all built-in)")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "default_robustness.md")
    )
    args = parser.parse_args(argv)
    unknown = [c for c in args.corpora.split(",") if c not in NAMES]
    if unknown:
        parser.error(f"--corpora: unknown corpus {unknown[0]} (known: {', '.join(NAMES)})")
    if args.clips < robustness.ADAPT_MIN_CLIPS:
        parser.error(f"--clips must be at least {robustness.ADAPT_MIN_CLIPS} (--adapt needs them)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args, argv)
    except BadInput as err:
        log(str(err))
        return 2
    except KeyboardInterrupt:
        log("interrupted; rerun the same command to resume")
        return 130


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    corpora = args.corpora.split(",")
    try:
        wanted = {condition_key(c) for c in robustness.parse_conditions(args.corruptions)[0]}
    except robustness.RobustnessError as err:
        raise BadInput(str(err)) from None
    compared = [c for c in (args.compare or "").split(",") if c and c != args.candidate]
    work = Path(args.work)
    runs = {  # every head's runs found before anything is evaluated: a missing one is refused now
        candidate: {corpus: loco_run(work, candidate, corpus) for corpus in corpora}
        for candidate in (args.candidate, *compared)
    }
    results: dict = {"candidate": args.candidate, "seed": args.seed}
    failed: list[str] = []
    results["corpora"], wall = _evaluate_candidate(args.candidate, runs, wanted, args, failed)
    if compared:
        results["compared"] = {
            candidate: _evaluate_candidate(candidate, runs, wanted, args, failed)[0]
            for candidate in compared
        }
    command = "python benchmarks/default_robustness.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    results["command"] = command.strip()
    out = Path(args.out)
    write_json_atomic(results, out.with_name(out.stem + ".json"))
    write_text_atomic(markdown(results, wall), out)
    log(f"written {out} and {out.stem}.json")
    for line in failed:
        log(f"failed: {line}")
    return 1 if failed else 0


def _evaluate_candidate(
    candidate: str, runs: dict, wanted: set, args: argparse.Namespace, failed: list[str]
) -> tuple[dict, float]:
    """Every held-out corpus of ``candidate``'s runs (``runs[candidate]``: corpus -> run), as
    shipped and adapted: ``(per corpus results, wall seconds of the conditions)``; failures are
    appended to ``failed``.

    Raises KeyboardInterrupt when an evaluation was interrupted (``main`` exits 130).
    """
    store = Path(args.work) / candidate / "robustness"
    per_corpus: dict = {}
    wall = 0.0  # seconds of every condition reported, kept ones included
    for corpus, run in runs[candidate].items():
        test_csv = store / f"{corpus}_{args.clips}_test.csv"
        try:
            n_clips = write_test_csv(run, args.clips, test_csv)
        except TestSetError as err:
            raise BadInput(str(err)) from None
        for system in SYSTEMS:
            out = _store(store, corpus, system, n_clips)
            log(f"{candidate}: {corpus} ({n_clips} clips), {SYSTEMS[system]} -> {out}")
            code = evaluate_corpus(run, test_csv, out, system, args)
            if code == 130:
                raise KeyboardInterrupt
            if code != 0:
                failed.append(f"{candidate} {corpus} {system}: exit status {code}")
            conditions = _stored(store, corpus, system, n_clips, wanted)
            if not conditions:
                continue
            wall += sum(r.get("seconds", 0.0) for r in conditions)
            per_corpus.setdefault(corpus, {})[system] = {
                "run": str(run),
                "n_clips": n_clips,
                "summary": summary(conditions),
                "conditions": [
                    {k: r[k] for k in ("corruption", "severity", "label", "wa", "ua", "wf1", "n")}
                    for r in conditions
                ],
            }
    return per_corpus, wall


if __name__ == "__main__":
    sys.exit(main())
