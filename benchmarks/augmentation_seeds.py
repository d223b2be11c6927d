#!/usr/bin/env python3
"""Does training with corrupted copies cost clean accuracy? Every setting over several seeds.

    python benchmarks/augmentation_seeds.py --corpus emodb \\
        [--settings qieemo_aug,qieemo_aug1,qieemo_aug_mild] [--seeds 1986,1987,1988] \\
        [--work results/bench] [--data ../shared/data] [--report-only] \\
        [--out benchmarks/results/augmentation_seeds_emodb.md]

Issue 14's bar for training-time augmentation is a clean UA at most 1 point lower than without
it. One run per setting cannot decide that: on EmoDB's ten folds the recipe default itself
reached UA 89.1, 87.4 and 87.9 with seeds 1986, 1987 and 1988 (the head is chosen on a
validation set of about 40 clips), so a single run's drop of 2 points says little. So every setting of ``benchmarks/accuracy.py --augmented`` and the recipe
default (``qieemo``) run with every seed, through the same recipe command as accuracy.py
(``cross_validate.py hparams/qieemo.yaml``, feature cache ``WORK/feature_cache``), in
``WORK/<corpus>/<setting>`` for the recipe's own seed (accuracy.py's runs, reused) and
``WORK/<corpus>/<setting>_seed<seed>`` for the others. Finished folds are reused; an
interrupted run resumes; ``--report-only`` runs nothing and reports the finished runs.

Per setting and seed the report gives the clean UA (mean over folds, as accuracy.py's table);
per setting the mean and standard deviation over seeds, and the paired difference to the recipe
default on the same clips: the seeds' predictions pooled (each seed's clips paired with the
default's clips of the same seed), a speaker bootstrap (:func:`qieemo_lobes.stats.paired_bootstrap`,
95 % interval, 5000 resamples) and McNemar's exact test. The bar holds where the mean difference
is at least -1.

Writes ``--out`` (markdown, with the command, date and wall time) and ``--out`` with ``.json``
(every number). Bad arguments: one line, exit status 2; a failed run: exit status 1 after the
others ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import paper_runs  # noqa: E402
from accuracy import AUGMENTED, CORPORA, cross_validate_command  # noqa: E402

from qieemo_lobes.files import (  # noqa: E402
    terminate_as_interrupt,
    write_json_atomic,
    write_text_atomic,
)
from qieemo_lobes.stats import mcnemar, paired_bootstrap  # noqa: E402

RECIPE_SEED = 1986  # every emotion recipe's hparams/qieemo.yaml
BAR = -1.0  # issue 14: the clean UA may drop by at most one point


def run_folder(work: Path, corpus: str, setting: str, seed: int) -> Path:
    """Where a setting's run with ``seed`` lives (accuracy.py's own folder for the recipe seed).

    >>> run_folder(Path("w"), "emodb", "qieemo_aug1", 1987).as_posix()
    'w/emodb/qieemo_aug1_seed1987'
    >>> run_folder(Path("w"), "emodb", "qieemo", 1986).as_posix()
    'w/emodb/qieemo'
    """
    name = setting if seed == RECIPE_SEED else f"{setting}_seed{seed}"
    return work / corpus / name


def overrides(setting: str, seed: int) -> list[str]:
    """The recipe overrides of a setting and seed.

    >>> overrides("qieemo_aug1", 1987)
    ['--augment_copies=1', '--seed=1987']
    >>> overrides("qieemo", 1986)
    []
    """
    base = [] if setting == "qieemo" else list(AUGMENTED[setting][0])
    return base + ([] if seed == RECIPE_SEED else [f"--seed={seed}"])


def read_folds(folder: Path) -> dict | None:
    """A finished cross-validation: the folds' UA and every test clip's ``(true, predicted,
    speaker)``, each fold read by the paper study's reader (:func:`paper_runs.read_fold`);
    None while ``summary.json`` is missing."""
    if not (folder / "summary.json").is_file():
        return None
    wall = json.loads((folder / "summary.json").read_text()).get("wall_time_s")
    fold_ua, clips = [], {}
    for path in sorted(folder.glob("fold_*"), key=lambda f: int(f.name.split("_")[1])):
        fold = paper_runs.read_fold(path, path.name)
        if fold is None:
            return None
        fold_ua.append(fold["ua"])
        for utt, info in fold["utterances"].items():
            predicted = fold["classes"][int(np.argmax(info["probs"]))]
            clips[utt] = (info["true"], predicted, info["speaker"])
    return {"fold_ua": fold_ua, "ua": float(np.mean(fold_ua)), "clips": clips, "wall_time_s": wall}


def compare(default: dict[int, dict], other: dict[int, dict]) -> dict | None:
    """``other - default`` over the seeds both finished, their clips pooled and paired by seed."""
    seeds = sorted(set(default) & set(other))
    if not seeds:
        return None
    truth, pred_a, pred_b, speakers = [], [], [], []
    for seed in seeds:
        for utt, (true, predicted, speaker) in default[seed]["clips"].items():
            truth.append(true)
            pred_a.append(predicted)
            pred_b.append(other[seed]["clips"][utt][1])
            speakers.append(speaker)
    test = paired_bootstrap(truth, pred_a, pred_b, speakers)
    mean_delta = float(np.mean([other[s]["ua"] - default[s]["ua"] for s in seeds]))
    return {
        "seeds": seeds,
        "delta_ua_fold_mean": mean_delta,
        "pooled": test,
        "mcnemar": mcnemar(truth, pred_a, pred_b),
        "bar_holds": mean_delta >= BAR,
    }


def setting_row(setting: str, done: dict[int, dict], seeds: list[int], result: dict | None) -> str:
    """The table row of one setting: UA per seed, mean and spread, and :func:`compare`'s result."""
    cells = [f"{done[s]['ua']:.1f}" if s in done else "not run" for s in seeds]
    uas = [done[s]["ua"] for s in seeds if s in done]
    spread = (
        f"{np.mean(uas):.1f} +- {np.std(uas, ddof=1) if len(uas) > 1 else 0:.1f}" if uas else ""
    )
    versus = p_mcnemar = bar = ""
    if result is not None:
        pooled = result["pooled"]
        versus = (
            f"{pooled['delta_ua']:+.1f} [{pooled['ci_low']:+.1f}, {pooled['ci_high']:+.1f}], "
            f"p {pooled['p_value']:.3f}"
        )
        p_mcnemar = f"{result['mcnemar']['p_value']:.3f}"
        bar = f"{'holds' if result['bar_holds'] else 'fails'} ({result['delta_ua_fold_mean']:+.1f})"
    note = "recipe default" if setting == "qieemo" else AUGMENTED[setting][1]
    return (
        f"| {setting} ({note}) | {' | '.join(cells)} | {spread} | {versus} | {p_mcnemar} | {bar} |"
    )


def report(
    corpus: str, settings: list[str], seeds: list[int], runs: dict, command: str, wall: float
) -> tuple[str, dict]:
    """The markdown table and the JSON record of every setting's runs."""
    default = runs["qieemo"]
    run_wall = sum(r.get("wall_time_s") or 0 for done in runs.values() for r in done.values())
    lines = [
        f"# Augmentation and clean accuracy over seeds: {CORPORA[corpus][0]}",
        "",
        f"Command: `{command}`",
        f"Date: {time.strftime('%Y-%m-%d')}; machine: {os.cpu_count()} CPU cores, no GPU; "
        f"wall time of this command {wall:.0f} s (finished runs reused); the runs' own: "
        f"{run_wall:.0f} s, one thread each.",
        "Clean UA (mean over folds) per seed; the difference to the recipe default (qieemo) on "
        "the same clips, each seed paired with the same seed, pooled: speaker bootstrap 95 % "
        "interval and p, McNemar p. Issue 14's bar: a drop of at most 1 UA (mean over seeds).",
        "",
        "| setting | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean +- std | vs qieemo (pooled) | McNemar p | bar |",
        "|---|" + "---|" * (len(seeds) + 4),
    ]
    record: dict = {"corpus": corpus, "seeds": seeds, "command": command, "settings": {}}
    for setting in ["qieemo", *settings]:
        done = runs[setting]
        result = None if setting == "qieemo" else compare(default, done)
        lines.append(setting_row(setting, done, seeds, result))
        record["settings"][setting] = {
            "ua": {str(s): done[s]["ua"] for s in done},
            "fold_ua": {str(s): done[s]["fold_ua"] for s in done},
            "vs_qieemo": result,
        }
    lines += [
        "",
        "Overrides of each setting (recipe `hparams/qieemo.yaml`, `--seed` added per seed):",
    ]
    lines += [f"- {s}: `{' '.join(AUGMENTED[s][0])}`" for s in settings]
    return "\n".join(lines) + "\n", record


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="emodb", choices=sorted(CORPORA))
    parser.add_argument("--settings", default=",".join(AUGMENTED))
    parser.add_argument("--seeds", default="1986,1987,1988")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "benchmarks"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--report-only", action="store_true", help="run nothing")
    args = parser.parse_args(argv)
    args.settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in args.settings if s not in AUGMENTED]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; known: {', '.join(AUGMENTED)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
    args.out = Path(
        args.out or REPO / "benchmarks" / "results" / f"augmentation_seeds_{args.corpus}.md"
    )
    return args


def collect_runs(args: argparse.Namespace, failed: list[str]) -> dict[str, dict[int, dict]]:
    """Every setting's finished runs per seed, running the missing ones first (unless
    ``--report-only``); a run that fails is appended to ``failed`` and the others go on."""
    work, data = Path(args.work).resolve(), (Path(args.data) / CORPORA[args.corpus][1]).resolve()
    runs: dict[str, dict[int, dict]] = {}
    for setting in ["qieemo", *args.settings]:
        runs[setting] = {}
        for seed in args.seeds:
            folder = run_folder(work, args.corpus, setting, seed)
            if read_folds(folder) is None and not args.report_only:
                cv, recipe = cross_validate_command(
                    args.corpus, data, folder, work / "feature_cache", overrides(setting, seed)
                )
                print(f"[{args.corpus}] {setting} seed {seed} -> {folder}", flush=True)
                if subprocess.call(cv, cwd=recipe) != 0:
                    failed.append(f"{setting} seed {seed}")
            if (found := read_folds(folder)) is not None:
                runs[setting][seed] = found
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    command = "python benchmarks/augmentation_seeds.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    started = time.time()
    failed: list[str] = []
    try:
        with terminate_as_interrupt():
            runs = collect_runs(args, failed)
    except KeyboardInterrupt:
        print("interrupted; finished folds are kept and reused by the next call", file=sys.stderr)
        return 130
    text, record = report(
        args.corpus, args.settings, args.seeds, runs, command, time.time() - started
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, args.out)
    write_json_atomic(record, args.out.with_suffix(".json"))
    print(text, flush=True)
    for line in failed:
        print(f"failed: {line} (its log is in the run's folder)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
