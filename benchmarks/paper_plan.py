"""Planning of the paper study (``benchmarks/paper.py``): the one protocol and the systems.

Everything a run of the study is made of, before and while it runs: the protocol shared by
every run (:data:`PROTOCOL`), each system's overrides on top of it (:func:`system_overrides`),
the systems, seeds and folders planned per corpus, the arguments of ``cross_validate.py`` and of
the lexical corpus' ``train.py`` runs, launching one run as a child process (:func:`launch`),
telling whether a run already finished with the planned settings (:func:`cv_finished`,
:func:`single_run_finished`), the line of a failed run's log that says why, and the controlled
lexical corpus itself. ``paper.py`` drives these; it re-exports every name here.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import lexical_corpus
import paper_report
from accuracy import CORPORA  # corpus -> recipe folder, folder under --data

from qieemo_lobes.files import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
# The one protocol of every run: frozen encoder from the feature cache, no retrained block (the
# RAVDESS default retrains block 3), no speed-perturbed copies, 15 epochs.
PROTOCOL = {"tune_blocks": "0", "speed_perturb": "[100]", "number_of_epochs": "15"}
DEFAULT_BLOCK_SETS = ((2, 3, 4), (1, 2, 3, 4, 5, 6))
ABLATIONS = ("full", "no_cma", "no_mmf", "best_block")
SCRATCH_SOURCE = "scratch-whisper-base"
SCRATCH_SEED = 0  # the random encoder's weights: one encoder for every training seed
SCRATCH_ENCODER_LR = "0.0003"  # random weights need a training rate, not a fine-tuning one
PROBE_C = 0.1
PROBE_ENCODER = "whisper-base"
LEXICAL_CLASSES = lexical_corpus.CLASSES
LEXICAL_SYSTEMS = {
    "ppg_only": {"use_mmf": "False", "use_cma": "False"},
    "blocks_only": {"use_mmf": "True", "use_cma": "False"},
    "full": {"use_mmf": "True", "use_cma": "True"},
}


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


def render(overrides: dict[str, str]) -> list[str]:
    """``{"use_cma": "True"}`` -> ``["--use_cma=True"]`` (in order)."""
    return [f"--{k}={v}" for k, v in overrides.items()]


def system_overrides(
    system: str, best_block: int | None = None, scratch_epochs: int = 15
) -> dict[str, str] | None:
    """The overrides of a system on top of :data:`PROTOCOL` (None: ``best_block`` without a
    block).

    Example
    -------
    >>> system_overrides("no_mmf")
    {'use_mmf': 'False', 'use_cma': 'True'}
    >>> system_overrides("mmf_2-3-4")
    {'use_mmf': 'True', 'use_cma': 'True', 'fusion_blocks': '[2, 3, 4]'}
    """
    from qieemo_lobes.scratch_encoder import RECIPE_OVERRIDE

    if system == "full":
        return {"use_mmf": "True", "use_cma": "True"}
    if system == "no_cma":
        return {"use_mmf": "True", "use_cma": "False"}
    if system == "no_mmf":
        return {"use_mmf": "False", "use_cma": "True"}
    if system == "best_block":
        if best_block is None:
            return None
        return {"use_mmf": "True", "use_cma": "False", "fusion_blocks": f"[{best_block}]"}
    if system.startswith("mmf_"):
        blocks = ", ".join(system[4:].split("-"))
        return {"use_mmf": "True", "use_cma": "True", "fusion_blocks": f"[{blocks}]"}
    encoder = RECIPE_OVERRIDE.split("=", 1)[1]
    scratch = {"use_mmf": "True", "use_cma": "True", "encoder_source": SCRATCH_SOURCE}
    if system == "from_scratch":
        return {**scratch, "encoder": encoder}
    if system == "from_scratch_trained":
        return {
            **scratch,
            "encoder": encoder,
            "freeze_encoder": "False",
            "use_feature_cache": "False",
            "number_of_epochs": str(scratch_epochs),
            "encoder_lr": SCRATCH_ENCODER_LR,
        }
    raise ValueError(f"unknown system {system!r}")


def block_set_name(blocks: Sequence[int]) -> str:
    """``(2, 3, 4)`` -> ``"mmf_2-3-4"``."""
    return "mmf_" + "-".join(str(b) for b in blocks)


def recipe_hparams(corpus: str) -> Path:
    return REPO / "recipes" / CORPORA[corpus][0] / "emotion" / "hparams" / "qieemo.yaml"


def recipe_fusion_blocks(corpus: str) -> tuple[int, ...]:
    from qieemo_lobes.run_settings import resolved_settings

    return tuple(int(b) for b in resolved_settings(recipe_hparams(corpus), None)["fusion_blocks"])


def systems_of(args: argparse.Namespace, corpus: str) -> list[str]:
    """The systems planned on ``corpus`` (every section: the report lists all of them)."""
    systems = list(ABLATIONS)
    default = recipe_fusion_blocks(corpus)
    systems += [block_set_name(s) for s in args.block_sets if tuple(s) != default]
    systems.append("from_scratch")
    if args.scratch_trained:
        systems.append("from_scratch_trained")
    return systems


def section_of(system: str) -> str:
    return "scratch" if system.startswith("from_scratch") else "ablations"


def seeds_of(args: argparse.Namespace, system: str) -> list[int]:
    """``from_scratch_trained`` runs with the first seed only (the small budget)."""
    return args.seeds[:1] if system == "from_scratch_trained" else list(args.seeds)


def run_folder(work: Path, corpus: str, system: str, seed: int) -> Path:
    return work / corpus / f"{system}_seed{seed}"


def run_arguments(
    corpus: str,
    overrides: dict[str, str],
    seed: int,
    data: Path,
    out: Path,
    cache: Path,
    folds: list[int] | None,
    device: str | None,
) -> list[str]:
    """``cross_validate.py``'s arguments after the script: the hparams file, paths, folds and
    every override."""
    arguments = [
        str(recipe_hparams(corpus)),
        f"--data_folder={data}",
        f"--output_folder={out}",
        f"--feature_cache={cache}",
    ]
    if folds is not None:
        arguments.append(f"--folds={','.join(str(k) for k in folds)}")
    merged = {**PROTOCOL, "seed": str(seed), **overrides}
    if device:
        merged["device"] = device
    return arguments + render(merged)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def launch(script: Path, arguments: Sequence[str], log: Path) -> int:
    """Run ``python SCRIPT ARGUMENTS`` (output in ``log``); its exit status. The child goes
    down with this process (Ctrl-C, SIGTERM, even SIGKILL), as a cross-validation's folds do."""
    from qieemo_lobes.fold_runs import run_child

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return run_child([sys.executable, str(script), *arguments], fh)


def _last_line(path: Path) -> str:
    """The line of a run's log that says what went wrong: its last ``error:`` line; for a
    cross-validation whose fold failed, that fold's own (``see .../stdout.log``)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    for line in reversed(lines):
        match = re.search(r"FAILED \(exit \d+\); see (\S+)$", line)
        if match and Path(match.group(1)) != path:
            fold = _last_line(Path(match.group(1)))
            if fold:
                return f"{line.split(':')[0]}: {fold}"
    errors = [line for line in lines if line.startswith("error:") or "FAILED" in line]
    return (errors or [line for line in lines if line] or [""])[-1]


def planned_settings(arguments: Sequence[str]) -> dict | None:
    """What ``cv_settings.json`` will record for a run of ``arguments`` (:func:`run_arguments`),
    or None when the recipe's settings cannot be resolved."""
    from qieemo_lobes.fold_runs import cv_settings

    hparams, rest = arguments[0], list(arguments[1:])
    named = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
    overrides = [
        a
        for a in rest
        if a.split("=", 1)[0] not in ("--data_folder", "--output_folder", "--folds", "--device")
    ]
    try:
        return cv_settings(hparams, overrides, named["data_folder"])
    except (ValueError, KeyError, OSError):
        return None


def cv_finished(out: Path, arguments: Sequence[str], folds: list[int]) -> bool:
    """Whether the cross-validation in ``out`` holds every fold of ``folds``, finished with the
    settings ``arguments`` give (then it is not launched again)."""
    from qieemo_lobes.fold_runs import cv_settings_difference, finished_fold

    recorded = paper_report.read_json(out / "cv_settings.json")
    if recorded is None or any(finished_fold(out / f"fold_{k}") is None for k in folds):
        return False
    wanted = planned_settings(arguments)
    return wanted is not None and not cv_settings_difference(recorded, wanted)


def archived_finished(path: Path, arguments: Sequence[str], folds: list[int]) -> bool:
    """Whether the archive (:mod:`paper_archive`) holds the run of ``arguments`` with every fold
    of ``folds``, trained with the settings ``arguments`` give (wherever its data were)."""
    from paper_archive import load_run

    from qieemo_lobes.fold_runs import cv_settings_difference

    kept, wanted = load_run(path, folds), planned_settings(arguments)
    if kept is None or wanted is None:
        return False
    recorded = {"data_folder": wanted["data_folder"], "settings": kept["settings"]}
    return not cv_settings_difference(recorded, wanted)


def single_run_finished(out: Path, arguments: Sequence[str]) -> bool:
    """Whether the ``train.py`` run in ``out`` finished with the settings ``arguments`` give."""
    from qieemo_lobes.fold_runs import finished_fold, fold_settings_difference
    from qieemo_lobes.run_settings import resolved_settings

    if finished_fold(out) is None:
        return False
    try:
        settings = resolved_settings(arguments[0], [a for a in arguments[1:] if a.startswith("--")])
    except (ValueError, KeyError, OSError):
        return False
    return fold_settings_difference(out, settings) == []


def failed(failures: list[dict], label: str, folder: Path, problem: str) -> None:
    """Record (and print) a failure; the study goes on."""
    print(f"paper: {label}: FAILED: {problem}", file=sys.stderr, flush=True)
    failures.append({"run": label, "folder": str(folder), "problem": problem})


# --------------------------------------------------------------------------------------------------
# The lexical corpus and nEMO's text (section 4)
# --------------------------------------------------------------------------------------------------


def make_lexical_corpus(folder: Path) -> Path:
    """The controlled corpus in ``folder`` (made once, completed when interrupted); its
    manifest."""
    manifest = folder / lexical_corpus.MANIFEST
    if manifest.is_file():
        return manifest
    lexical_corpus.make_corpus(folder, seed=0, progress=True)
    return manifest


def lexical_arguments(
    manifest: Path, system: str, seed: int, out: Path, cache: Path, device: str | None
) -> list[str]:
    hparams = REPO / "recipes" / "custom" / "emotion" / "hparams" / "qieemo.yaml"
    merged = {
        **PROTOCOL,
        "seed": str(seed),
        **LEXICAL_SYSTEMS[system],
        "classes": f"[{', '.join(LEXICAL_CLASSES)}]",
        "n_classes": str(len(LEXICAL_CLASSES)),
    }
    if device:
        merged["device"] = device
    return [
        str(hparams),
        f"--data_folder={manifest}",
        "--test_fold=test",
        f"--output_folder={out}",
        f"--feature_cache={cache}",
        *render(merged),
    ]


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """``compute()`` once, kept in ``path``."""
    kept = paper_report.read_json(path)
    if kept is not None:
        return kept
    value = compute()
    write_json_atomic(value, path)
    return value
