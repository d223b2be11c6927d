#!/usr/bin/env python3
"""The paper study (issue 15): which of the Qieemo paper's claims hold on the corpora here.

    python benchmarks/paper.py --corpora emodb,ravdess,nemo,emovo,turev \\
        [--data ../shared/data] [--work results/paper] [--cache WORK/feature_cache] \\
        [--out benchmarks/results/paper_report.md] [--seeds 1986,1987,1988] \\
        [--sections probe,ablations,scratch,ppg,verdicts] [--block-sets "2,3,4;1,2,3,4,5,6"] \\
        [--max-folds N] [--scratch-trained] [--device cuda:0] [--report-only]

plans every run, runs what is missing (resumable), analyses and writes ``--out`` (the report),
``paper_results.json`` beside it (every number of the report; ``--json`` moves it) and two PNGs
(``<out stem>_probe.png``: probe UA of every block with 95 % confidence intervals;
``<out stem>_ablations.png``: every system's UA with its interval). The analysis and the report
are in ``benchmarks/paper_report.py``.

Sections (``--sections`` chooses what runs; the report always covers every section, listing what
is missing as "not run"):

1. ``probe``: where emotion lives. Standardise + logistic regression (C=0.1) on the time-mean of
   every whisper-base block (fit window) and of its final output, leave-one-fold-out over the
   recipe's folds; UA of the pooled predictions with a 95 % speaker-bootstrap interval.
   Features come from the feature cache (clips missing from it are encoded first). The block
   used by ``best_block`` is chosen by an inner leave-one-fold-out CV on the training folds of
   each outer fold (:class:`baselines.InnerCVBlockProbe`, encoder blocks only); the block most
   folds choose is then used in every fold (ties: the lower block).
2. ``ablations``: every system is one run of ``recipes/<corpus>/emotion/cross_validate.py
   hparams/qieemo.yaml`` per seed, in ``WORK/<corpus>/<system>_seed<seed>/``, with one uniform
   protocol on every corpus (:data:`PROTOCOL`: frozen encoder read from the feature cache, no
   retrained block, no speed copies, 15 epochs) and ``--seed=<seed>``. The systems
   (:func:`system_overrides`): ``full`` (MMF over the recipe's fusion blocks + CMA, the paper's
   system), ``no_cma``, ``no_mmf`` (the paper's "without MMF": the last encoder block alone,
   with CMA), ``best_block`` (MMF over the single best probe block, no CMA: the simplest strong
   system, the qieemo counterpart of the probe) and ``mmf_<blocks>`` (MMF over other block sets,
   with CMA).
3. ``scratch``: ``from_scratch``: the full system on the same encoder architecture with random
   weights (:class:`qieemo_lobes.scratch_encoder.ScratchWhisperBlocks`, seed 0, frozen); with
   ``--scratch-trained`` also ``from_scratch_trained``: that encoder trained with the head (live
   encoder, no cache), first seed only, ``--scratch-epochs`` epochs: the small budget.
4. ``ppg``: what the PPG carries. A controlled espeak-ng corpus whose words alone carry the
   emotion (``benchmarks/lexical_corpus.py``, in ``WORK/lexical/corpus``) is learnt by
   ``recipes/custom/emotion/train.py`` (train/test folds of the corpus: unseen voices, templates
   and feeling words) with PPG only (``--use_mmf=False --use_cma=False``: the last block, which
   is the PPG before Whisper's final layer norm), blocks only (no CMA) and the full system;
   with nEMO among the corpora, a text-only classifier on nEMO's transcripts (leave one speaker
   out) checks that its sentences carry no label.
5. ``verdicts``: analysis only.

Cost: measured on the 2-core development CPU under a load of 3-5 (one EmoDB fold, 448
training clips of 2 s, 15 epochs): 71 s with CMA, 34 s without; encoding EmoDB's 535 clips 42 s;
EmoDB's probe with its inner CV 75 s. Scaled by each corpus' clips, folds and durations, the five
corpora with 7 systems and 3 seeds take about 28 hours (nEMO half of it), the lexical corpus
about half an hour; ``--scratch-trained`` (a live whisper-base encoder trained on CPU) would add
days and about 9 GB of checkpoints: use it on a GPU (``--device cuda:0``).

Finished work is reused: a run whose recorded settings are the ones planned and whose folds are
finished is not launched again; an unfinished one is resumed by ``cross_validate.py`` itself
(finished folds kept). ``--report-only`` trains and encodes nothing: it rebuilds the report from
the finished runs and the cached features. ``--max-folds N`` runs only folds 1..N of each corpus
(quick runs; the report says so). Progress goes to stdout; bad arguments are one line on stderr
(exit status 2); a failed run is reported at the end (exit status 1) after the others ran;
Ctrl-C stops the running fold and exits with status 130.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import baselines  # noqa: E402
import lexical_corpus  # noqa: E402
import paper_report  # noqa: E402
from accuracy import CORPORA  # noqa: E402  (corpus -> recipe folder, folder under --data)

from qieemo_lobes.errors import one_line, os_error_line  # noqa: E402
from qieemo_lobes.files import terminate_as_interrupt, write_json_atomic  # noqa: E402

SECTIONS = ("probe", "ablations", "scratch", "ppg", "verdicts")
SEEDS = (1986, 1987, 1988)
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
INTERRUPTED = "interrupted; rerun the same command to resume"


class PaperError(Exception):
    """A refusal before anything runs: ``str()`` is one line (exit status 2)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


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
    paper.PaperError: --block-sets: block 9 is not one of whisper-base's blocks 1..6
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
    parser = argparse.ArgumentParser(
        prog="paper.py", description=(__doc__ or "").strip().splitlines()[0]
    )
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "paper"))
    parser.add_argument("--cache", help="the feature cache (default WORK/feature_cache)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "paper_report.md"))
    parser.add_argument("--json", help="the results (default paper_results.json beside --out)")
    parser.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument(
        "--block-sets",
        default=";".join(",".join(str(b) for b in s) for s in DEFAULT_BLOCK_SETS),
        help="MMF block sets of the ablations, ';'-separated (default 2,3,4;1,2,3,4,5,6)",
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
    if args.max_folds is not None and args.max_folds < 2:
        raise PaperError(
            f"--max-folds must be at least 2 (a paired test needs folds), not {args.max_folds}"
        )
    if args.scratch_epochs < 1:
        raise PaperError(f"--scratch-epochs must be positive, not {args.scratch_epochs}")
    if args.n_boot < 100:
        raise PaperError(f"--n-boot must be at least 100, not {args.n_boot}")
    return args


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
    from qieemo_lobes.cross_validation import _run_child

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return _run_child([sys.executable, str(script), *arguments], fh)


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


def cv_finished(out: Path, arguments: Sequence[str], folds: list[int]) -> bool:
    """Whether the cross-validation in ``out`` holds every fold of ``folds``, finished with the
    settings ``arguments`` give (then it is not launched again)."""
    from qieemo_lobes.cross_validation import _finished, cv_settings, cv_settings_difference

    recorded = paper_report.read_json(out / "cv_settings.json")
    if recorded is None or any(_finished(out / f"fold_{k}") is None for k in folds):
        return False
    hparams, rest = arguments[0], list(arguments[1:])
    named = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
    overrides = [
        a
        for a in rest
        if a.split("=", 1)[0] not in ("--data_folder", "--output_folder", "--folds", "--device")
    ]
    try:
        wanted = cv_settings(hparams, overrides, named["data_folder"])
    except (ValueError, KeyError, OSError):
        return False
    return not cv_settings_difference(recorded, wanted)


def single_run_finished(out: Path, arguments: Sequence[str]) -> bool:
    """Whether the ``train.py`` run in ``out`` finished with the settings ``arguments`` give."""
    from qieemo_lobes.cross_validation import _finished, fold_settings_difference
    from qieemo_lobes.run_settings import resolved_settings

    if _finished(out) is None:
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


def execute(
    label: str,
    script: Path,
    arguments: list[str],
    out: Path,
    log: Path,
    finished: Callable[[], bool],
    failures: list[dict],
) -> None:
    """Run one planned run unless ``finished()``; a failure is recorded (and printed), not
    raised."""
    if finished():
        print(f"paper: {label}: finished earlier, kept", flush=True)
        return
    print(f"paper: {label}: running ({log}) ...", flush=True)
    start = time.time()
    code = launch(script, arguments, log)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0 or not finished():
        problem = _last_line(log) or f"exit status {code}"
        failed(failures, label, out, f"exit status {code}: {problem}")
        return
    print(f"paper: {label}: done ({time.time() - start:.0f} s)", flush=True)


# --------------------------------------------------------------------------------------------------
# Reading finished runs
# --------------------------------------------------------------------------------------------------


def read_predictions(path: Path) -> tuple[list[str], dict[str, tuple[str, np.ndarray]]]:
    """``predictions.csv`` -> ``(classes, {utterance: (true label, probabilities)})``."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        classes = header[3:]
        rows = {
            row[0]: (row[1], np.array([float(p) for p in row[3:]], dtype=float)) for row in reader
        }
    return classes, rows


def mmf_weights(train_log: Path) -> dict[str, float] | None:
    """The MMF block weights of the tested epoch (``Epoch loaded: N`` in ``train_log.txt``),
    ``{"2": 0.51, "3": 0.49}``; None when the log has none (no MMF, or no log).

    Example
    -------
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "train_log.txt"
    >>> _ = log.write_text("epoch: 1, lr: 1e-3, w2: 5.0e-01, w3: 5.0e-01 - x\\n"
    ...                    "epoch: 2, lr: 9e-4, w2: 6.0e-01, w3: 4.0e-01 - x\\n"
    ...                    "Epoch loaded: 2 - test loss: 1.0\\n")
    >>> mmf_weights(log)
    {'2': 0.6, '3': 0.4}
    """
    try:
        lines = train_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    loaded = [m.group(1) for line in lines if (m := re.search(r"Epoch loaded: (\d+)", line))]
    epochs = {m.group(1): line for line in lines if (m := re.match(r"epoch: (\d+),", line.strip()))}
    line = epochs.get(loaded[-1]) if loaded else None
    if line is None and epochs:
        line = epochs[max(epochs, key=int)]
    if line is None:
        return None
    weights = {b: float(w) for b, w in re.findall(r"\bw(\d+): ([-+0-9.eE]+)", line.split(" - ")[0])}
    return weights or None


def cma_gates(save: Path) -> dict[str, list[float]] | None:
    """``tanh`` of the CMA gates of the tested checkpoint (best validation UA, the latest among
    ties), ``{"attn": [...], "ffn": [...]}`` per layer; None without CMA or checkpoint."""
    import torch
    import yaml

    best, best_key = None, None
    for folder in save.glob("CKPT+*"):
        if not (folder / "head.ckpt").is_file():
            continue
        try:
            meta = yaml.safe_load((folder / "CKPT.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            meta = {}
        key = (float(meta.get("ua", -1.0)), float(meta.get("unixtime", 0.0)), folder.name)
        if best_key is None or key > best_key:
            best, best_key = folder, key
    if best is None:
        return None
    try:
        state = torch.load(best / "head.ckpt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if "cma.attn_gate" not in state:
        return None
    return {
        "attn": [round(float(v), 6) for v in torch.tanh(state["cma.attn_gate"].float())],
        "ffn": [round(float(v), 6) for v in torch.tanh(state["cma.ffn_gate"].float())],
    }


def read_fold(folder: Path, fold: int | str) -> dict[str, Any] | None:
    """One finished fold (or single run): metrics, every test utterance with its speaker, the
    MMF weights and CMA gates of the tested model; None when not finished."""
    from qieemo_lobes.cross_validation import _finished

    metrics = _finished(folder)
    if metrics is None or not (folder / "predictions.csv").is_file():
        return None
    classes, rows = read_predictions(folder / "predictions.csv")
    test = paper_report.read_json(folder / "test.json") or {}
    utterances = {
        utt: {
            "true": true,
            "probs": probs,
            "speaker": str((test.get(utt) or {}).get("spk_id", f"fold{fold}")),
            "fold": str(fold),
        }
        for utt, (true, probs) in rows.items()
    }
    wall = (paper_report.read_json(folder / "wall_time.json") or {}).get("wall_time_s")
    return {
        "ua": float(metrics["ua"]),
        "wa": float(metrics["wa"]),
        "classes": classes,
        "utterances": utterances,
        "weights": mmf_weights(folder / "train_log.txt"),
        "gates": cma_gates(folder / "save"),
        "wall_time_s": float(wall) if wall is not None else None,
    }


def read_run(out: Path, folds: list[int]) -> dict[str, Any]:
    """A cross-validation's finished folds among ``folds``; ``status`` ``done`` (all),
    ``partial`` or ``not run``, and its recorded settings."""
    found = {k: f for k in folds if (f := read_fold(out / f"fold_{k}", k)) is not None}
    recorded = paper_report.read_json(out / "cv_settings.json") or {}
    status = "done" if len(found) == len(folds) else ("partial" if found else "not run")
    return {
        "status": status,
        "folder": str(out),
        "folds": found,
        "n_folds_wanted": len(folds),
        "settings": recorded.get("settings") or {},
    }


def read_single_run(out: Path) -> dict[str, Any]:
    """A single ``train.py`` run (the lexical corpus) as a one-fold run."""
    fold = read_fold(out, "test")
    settings = paper_report.read_json(out / "run_settings.json") or {}
    return {
        "status": "done" if fold else "not run",
        "folder": str(out),
        "folds": {1: fold} if fold else {},
        "n_folds_wanted": 1,
        "settings": settings.get("settings", settings) if isinstance(settings, dict) else {},
    }


# --------------------------------------------------------------------------------------------------
# Probe (section 1)
# --------------------------------------------------------------------------------------------------


@functools.cache
def probe_encoder_identity(kind: str) -> str:
    """The feature cache identity of the probed encoder: ``pretrained`` (whisper-base, fit
    window) or ``scratch`` (the random encoder of ``from_scratch``)."""
    if kind == "scratch":
        from qieemo_lobes.scratch_encoder import ScratchWhisperBlocks

        return ScratchWhisperBlocks(SCRATCH_SOURCE, window="fit", seed=SCRATCH_SEED).identity
    from qieemo_lobes.encoders import WhisperBlocks

    return WhisperBlocks.identity_for(PROBE_ENCODER, "fit")


def _probe_digest(identity: str, items: list[dict], inner: bool) -> str:
    h = hashlib.sha1(f"{identity}|C={PROBE_C}|inner={inner}\n".encode())
    for item in items:
        h.update(f"{item['path']}\t{item['label']}\t{item['speaker']}\t{item['fold']}\n".encode())
    return h.hexdigest()


def block_means(items: list[dict], cache: Path, identity: str, encode: bool) -> np.ndarray | None:
    """``(n_blocks + 1, N, D)`` time-means of every block and of the final output; None when a
    clip is not cached and ``encode`` is False (else missing clips are encoded first)."""
    from qieemo_lobes.features import FeatureCache, looks_complete, read_entry_file

    reader = FeatureCache(SimpleNamespace(identity=identity), str(cache))
    entries = [reader.entry(item["path"]) for item in items]
    missing = {
        str(i): {"wav": items[i]["path"]} for i, e in enumerate(entries) if not looks_complete(e)
    }
    if missing:
        if not encode:
            return None
        from qieemo_lobes.whisper_torch import TorchWhisperBlocks

        print(f"paper: probe: encoding {len(missing)} clips missing from {cache} ...", flush=True)
        FeatureCache(TorchWhisperBlocks(PROBE_ENCODER, window="fit"), str(cache)).precompute(
            missing
        )
    means = []
    for entry in entries:
        blocks, ppg = read_entry_file(entry)
        blocks, ppg = blocks.float(), ppg.float()
        means.append(np.concatenate([blocks.mean(1).numpy(), ppg.mean(0, keepdim=True).numpy()]))
    return np.stack(means, axis=1)


def corpus_probe(
    items: list[dict],
    cache: Path,
    path: Path,
    kind: str = "pretrained",
    encode: bool = False,
    inner: bool = True,
) -> dict[str, Any] | None:
    """The per-block probe of one corpus (kept in ``path``, reused while its inputs are the
    same); None when its features are not all cached and ``encode`` is False.

    Returns
    -------
    dict
        ``blocks``: ``{"1": {...}, ..., "final": {...}}`` with ``ua`` (pooled predictions),
        ``ci_low``/``ci_high`` (95 %, speaker bootstrap), ``ua_mean_folds``, ``ua_folds``;
        ``predictions`` per block, ``labels``, ``speakers``; with ``inner``, ``inner_choice``
        (the block chosen by inner CV in each outer fold, 1-based) and ``chosen_block`` (the one
        most folds chose); ``n_blocks``, ``identity``, ``wall_time_s``.
    """
    from qieemo_lobes.stats import speaker_bootstrap_ci

    identity = probe_encoder_identity(kind)
    digest = _probe_digest(identity, items, inner)
    kept = paper_report.read_json(path)
    if kept is not None and kept.get("digest") == digest:
        return kept
    start = time.time()
    means = block_means(items, cache, identity, encode and kind == "pretrained")
    if means is None:
        return None
    y = np.array([item["label"] for item in items])
    folds = np.array([item["fold"] for item in items])
    speakers = np.array([str(item["speaker"]) for item in items])
    n_blocks = means.shape[0] - 1
    names = [str(b) for b in range(1, n_blocks + 1)] + ["final"]
    blocks, predictions = {}, {}
    for name, X in zip(names, means, strict=True):
        result = baselines.probe_baseline(X, y, folds, C=PROBE_C)
        ua, low, high = speaker_bootstrap_ci(y, result["predictions"], speakers, seed=0)
        blocks[name] = {
            "ua": ua,
            "ci_low": low,
            "ci_high": high,
            "ua_mean_folds": result["mean"]["UA"],
            "ua_folds": [f["UA"] for f in result["folds"]],
        }
        predictions[name] = [str(p) for p in result["predictions"]]
    out: dict[str, Any] = {
        "digest": digest,
        "identity": identity,
        "kind": kind,
        "n_blocks": n_blocks,
        "blocks": blocks,
        "predictions": predictions,
        "labels": [str(v) for v in y],
        "speakers": [str(s) for s in speakers],
    }
    if inner:
        chosen = baselines.best_block_probe(means[:n_blocks], y, folds, C=PROBE_C, select="inner")
        choice = [int(b) + 1 for b in chosen["best_block"]]
        counts = Counter(choice)
        out["inner_choice"] = choice
        out["chosen_block"] = min(b for b, n in counts.items() if n == max(counts.values()))
        out["inner_ua_mean_folds"] = chosen["result"]["mean"]["UA"]
    out["wall_time_s"] = time.time() - start
    write_json_atomic(out, path)
    return out


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


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def load_items(corpus: str, data: Path, required: bool) -> list[dict] | None:
    """The recipe's utterances and folds of ``corpus``; None when its data are missing and not
    ``required`` (``--report-only``)."""
    folder = data / CORPORA[corpus][1]
    try:
        return baselines.corpus_items(corpus, folder)
    except (ValueError, OSError) as err:
        if required:
            raise PaperError(f"{corpus}: {folder}: {one_line(err)}") from None
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with terminate_as_interrupt():
            return _main(argv)
    except KeyboardInterrupt:
        print(f"paper: {INTERRUPTED}", file=sys.stderr, flush=True)
        return 130
    except PaperError as err:
        print(f"paper: error: {err}", file=sys.stderr, flush=True)
        return 2
    except OSError as err:
        print(f"paper: error: {os_error_line(err)}", file=sys.stderr, flush=True)
        return 2


def _main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    started = time.time()
    work = Path(args.work).resolve()  # absolute: every run records its paths in its settings
    cache = Path(args.cache).resolve() if args.cache else work / "feature_cache"
    data = Path(args.data).resolve()
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_name("paper_results.json")
    running = not args.report_only
    sections = set(args.sections)

    items = {c: load_items(c, data, required=running) for c in args.corpora}
    failures: list[dict] = []
    n_folds = {}
    for corpus, listed in items.items():
        if listed is not None:
            n_folds[corpus] = len({item["fold"] for item in listed})
        else:  # --report-only without the data: the folds the runs hold
            found = [
                int(p.name[5:]) for p in (work / corpus).glob("*/fold_*") if p.name[5:].isdigit()
            ]
            n_folds[corpus] = max(found, default=0)
    wanted = {c: list(range(1, min(n, args.max_folds or n) + 1)) for c, n in n_folds.items()}
    if running:
        work.mkdir(parents=True, exist_ok=True)

    # 1. Probes (also what best_block needs).
    probes: dict[str, dict | None] = {}
    scratch_probes: dict[str, dict | None] = {}
    for corpus in args.corpora:
        probes[corpus] = None
        if items[corpus] is None:
            continue
        encode = running and bool(sections & {"probe", "ablations"})
        if encode:
            print(f"paper: [{corpus}] probe of every block ...", flush=True)
        try:
            probes[corpus] = corpus_probe(
                items[corpus], cache, work / corpus / "probe.json", "pretrained", encode
            )
        except Exception as err:  # features, audio, weights: the probe fails, the rest goes on
            failed(failures, f"[{corpus}] probe", work / corpus, one_line(err))

    # 2-3. Cross-validations, seed by seed so that early seeds give whole comparisons.
    planned: dict[str, dict[str, dict[int, Path]]] = {c: {} for c in args.corpora}
    for seed in args.seeds:
        for corpus in args.corpora:
            for system in systems_of(args, corpus):
                if seed not in seeds_of(args, system):
                    continue
                folder = run_folder(work, corpus, system, seed)
                planned[corpus].setdefault(system, {})[seed] = folder
                if not running or section_of(system) not in sections:
                    continue
                label = f"[{corpus}] {system} seed {seed}"
                probe = probes.get(corpus)
                block = probe.get("chosen_block") if probe else None
                overrides = system_overrides(system, block, args.scratch_epochs)
                if overrides is None:
                    failed(failures, label, folder, "no probe, so no best block")
                    continue
                arguments = run_arguments(
                    corpus,
                    overrides,
                    seed,
                    data / CORPORA[corpus][1],
                    folder,
                    cache,
                    wanted[corpus] if args.max_folds else None,
                    args.device,
                )
                script = REPO / "recipes" / CORPORA[corpus][0] / "emotion" / "cross_validate.py"
                execute(
                    label,
                    script,
                    arguments,
                    folder,
                    folder.with_suffix(".log"),
                    lambda f=folder, a=arguments, c=corpus: cv_finished(f, a, wanted[c]),
                    failures,
                )

    for corpus in args.corpora:  # the random encoder's blocks, when its features are cached
        scratch_probes[corpus] = None
        if items[corpus] is not None:
            try:
                scratch_probes[corpus] = corpus_probe(
                    items[corpus],
                    cache,
                    work / corpus / "probe_scratch.json",
                    "scratch",
                    inner=False,
                )
            except Exception as err:  # a damaged entry, say: reported, the rest goes on
                failed(
                    failures,
                    f"[{corpus}] probe of the random encoder",
                    work / corpus,
                    one_line(err),
                )

    # 4. The lexical corpus and nEMO's text.
    lexical_dir = work / "lexical"
    manifest = lexical_dir / "corpus" / lexical_corpus.MANIFEST
    if running and "ppg" in sections:
        try:
            manifest = make_lexical_corpus(lexical_dir / "corpus")
        except (lexical_corpus.CorpusError, OSError) as err:
            failed(failures, "lexical corpus", lexical_dir, one_line(err))
        if manifest.is_file():
            for seed in args.seeds:
                for system in LEXICAL_SYSTEMS:
                    folder = lexical_dir / f"{system}_seed{seed}"
                    arguments = lexical_arguments(
                        manifest, system, seed, folder, cache, args.device
                    )
                    execute(
                        f"[lexical] {system} seed {seed}",
                        REPO / "recipes" / "custom" / "emotion" / "train.py",
                        arguments,
                        folder,
                        folder.with_suffix(".log"),
                        lambda f=folder, a=arguments: single_run_finished(f, a),
                        failures,
                    )
    text_only = None
    if manifest.is_file():

        def _text_check() -> dict:
            check = lexical_corpus.corpus_text_check(manifest.parent)
            check.pop("predictions", None)
            return check

        text_only = cached_json(lexical_dir / "text_only.json", _text_check)
    nemo_text = None
    kept = work / "nemo" / "text_only.json"
    if "nemo" in args.corpora and (items.get("nemo") is not None or kept.is_file()):
        try:
            nemo_text = cached_json(
                kept, lambda: lexical_corpus.nemo_text_check(data / CORPORA["nemo"][1])
            )
        except (ValueError, OSError) as err:
            failed(failures, "[nemo] text-only check", work / "nemo", one_line(err))

    # 5. Analysis and report.
    runs = {
        corpus: {
            system: {seed: read_run(folder, wanted[corpus]) for seed, folder in by_seed.items()}
            for system, by_seed in systems.items()
        }
        for corpus, systems in planned.items()
    }
    lexical_runs = {
        system: {seed: read_single_run(lexical_dir / f"{system}_seed{seed}") for seed in args.seeds}
        for system in LEXICAL_SYSTEMS
    }
    lexical_text = {}
    if manifest.is_file():
        lexical_text = {
            Path(r["path"]).stem: r["text"] for r in lexical_corpus.read_manifest(manifest)
        }
    meta = {
        "command": "python benchmarks/paper.py "
        + " ".join(a for a in argv if a != "--report-only"),
        "corpora": args.corpora,
        "seeds": args.seeds,
        "max_folds": args.max_folds,
        "n_folds": n_folds,
        "block_sets": [list(s) for s in args.block_sets],
        "protocol": render(PROTOCOL),
        "scratch": {
            "source": SCRATCH_SOURCE,
            "seed": SCRATCH_SEED,
            "trained_epochs": args.scratch_epochs if args.scratch_trained else None,
            "trained_encoder_lr": SCRATCH_ENCODER_LR,
        },
        "machine": f"{os.cpu_count()} CPU cores"
        + (f", runs on {args.device}" if args.device else ""),
        "n_boot": args.n_boot,
        "recipe_fusion_blocks": {c: list(recipe_fusion_blocks(c)) for c in args.corpora},
        "failures": failures,
    }
    results = paper_report.analyse(
        runs,
        probes,
        scratch_probes,
        {"runs": lexical_runs, "text": lexical_text, "text_only": text_only},
        nemo_text,
        meta,
    )
    paper_report.write_outputs(results, out, json_path)
    print(f"paper: written {out} and {json_path} ({time.time() - started:.0f} s)", flush=True)
    if failures:
        print(f"paper: {len(failures)} run(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"paper:   {failure['run']}: {failure['problem']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
