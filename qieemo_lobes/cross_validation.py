"""Cross-validation over a corpus' protocol folds, shared by every emotion recipe.

Each recipe's ``cross_validate.py`` hands its ``train.py`` and fold listing to
:func:`run_cross_validation`::

    python cross_validate.py hparams/qieemo.yaml --data_folder=DIR --output_folder=OUT \\
        [--folds 1,3] [--overwrite] [any hparam override, e.g. --use_cma=False]

Every fold runs as ``train.py ... --test_fold=K --output_folder=OUT/fold_K`` in its own process
(exactly what a user would type, so a fold can also be rerun by hand); a fold whose
``test_metrics.json`` exists is finished and is not rerun, so an interrupted cross-validation
resumes. A failed fold is reported at the end and makes the exit status non-zero; the others
still run.

Finished work is reused only when it was made with the same settings. ``OUT/cv_settings.json``
records, at the start, the recipe's plain settings with the overrides applied
(:func:`qieemo_lobes.run_settings.resolved_settings`) and the data folder; a rerun with other
settings stops with one line listing the differences, and so does a fold whose own recorded
settings (``fold_K/run_settings.json``, or the ``hparams`` of ``fold_K/run_info.json``) differ.
``--overwrite`` removes the previous folds and summaries and starts over. The cross-validation
holds ``FolderLock(OUT)`` while it runs, so a second one into the same folder is refused.

Refusals are one line on stderr with exit status 2, before anything is trained: an output
folder that is a file, a fold index repeated, out of range or not a number, an unknown
override, a data folder that yields no corpus, other settings than the folder's. Ctrl-C or
SIGTERM stops the running fold's ``train.py`` and prints ``interrupted; rerun the same command
to resume`` (exit status 130); if the cross-validation itself is killed (even by SIGKILL), the
kernel stops the fold's process too (Linux).

``OUT`` then holds

- ``summary.json``: dataset, backbone, classes, class counts, every fold's test metrics, their
  mean and standard deviation, the hyperparameters, library versions and wall time;
- ``predictions.csv``: every test prediction of every fold;
- ``confusion.png``: the summed confusion matrix, row-normalised, with counts;
- ``report.md``: the same for people.

Example
-------
>>> mean_std([{"wa": 80.0, "ua": 70.0, "wf1": 75.0, "macro_f1": 60.0},
...           {"wa": 90.0, "ua": 80.0, "wf1": 85.0, "macro_f1": 70.0}])["mean"]["wa"]
85.0
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from qieemo_lobes.files import (
    FolderLock,
    FolderLockedError,
    atomic_open,
    terminate_as_interrupt,
    write_json_atomic,
    write_text_atomic,
)

METRICS = ("wa", "ua", "wf1", "macro_f1")
CV_SETTINGS = "cv_settings.json"
FOLD_SETTINGS = "run_settings.json"  # written by each fold's train.py (qieemo_lobes.recipe)
# Differ from fold to fold by design (test_fold), or are compared once for the whole
# cross-validation (data_folder: a fold records it as given, relative to where it ran).
PER_FOLD = frozenset({"test_fold", "data_folder"})
# What a cross-validation writes into OUT, besides the fold_K folders; --overwrite removes it.
SUMMARY_FILES = ("summary.json", "predictions.csv", "confusion.png", "report.md", CV_SETTINGS)
FOLD_FOLDER = re.compile(r"^fold_\d+$")
INTERRUPTED = "interrupted; rerun the same command to resume"


def mean_std(folds: list[dict]) -> dict:
    """Mean and (population) standard deviation of each metric over folds."""
    return {
        "mean": {m: statistics.fmean(f[m] for f in folds) for m in METRICS},
        "std": {m: statistics.pstdev([f[m] for f in folds]) for m in METRICS},
    }


def versions() -> dict:
    """Versions of Python and of the libraries a result depends on."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for dist in ("torch", "torchaudio", "speechbrain", "transformers", "qieemo-lobes"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


def plot_confusion(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix with the counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{rates[i, j]:.2f}\n({int(counts[i, j])})",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as fh:  # a new file's permissions; nothing left on failure
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)


def _report(summary: dict, command: str) -> str:
    lines = [
        f"# {summary['dataset']}: {summary['backbone']}, {len(summary['folds'])} folds",
        "",
        f"Command: `{command}`",
        "",
        "| fold | n_test | WA | UA | WF1 | macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for fold in summary["folds"]:
        lines.append(
            f"| {fold['fold']} | {fold['n_test']} | {fold['wa']:.2f} | {fold['ua']:.2f} "
            f"| {fold['wf1']:.2f} | {fold['macro_f1']:.2f} |"
        )
    mean, std = summary["mean"], summary["std"]
    lines.append(
        "| **mean +- std** | | "
        + " | ".join(f"**{mean[m]:.2f} +- {std[m]:.2f}**" for m in METRICS)
        + " |"
    )
    lines += [
        "",
        "WA: accuracy; UA: mean per-class recall; WF1: support-weighted F1 (percent).",
        "",
        f"Classes (utterances): {', '.join(f'{c} ({n})' for c, n in summary['class_counts'].items())}",
        "",
        "![confusion matrix](confusion.png)",
        "",
        f"Wall time {summary['wall_time_s']:.0f} s; versions: "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
    ]
    return "\n".join(lines)


class CrossValidationError(Exception):
    """A refusal of the cross-validation: ``str()`` is one line, ``code`` the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.code = code


def parse_folds(text: str | None, n_folds: int) -> list[int]:
    """The 1-based fold indices of ``--folds`` (all folds when ``text`` is None), in order.

    Raises
    ------
    CrossValidationError
        A value that is not a number, out of ``1..n_folds``, or repeated (a fold counted twice
        in the mean would weigh double).

    Example
    -------
    >>> parse_folds("3,1", 5), parse_folds(None, 3)
    ([3, 1], [1, 2, 3])
    >>> parse_folds("1,1", 5)
    Traceback (most recent call last):
        ...
    qieemo_lobes.cross_validation.CrossValidationError: --folds 1,1 names fold 1 twice
    """
    if text is None:
        return list(range(1, n_folds + 1))
    try:
        wanted = [int(k) for k in text.split(",")]
    except ValueError:
        raise CrossValidationError(
            f"--folds takes 1-based fold indices, e.g. 1,3 (got {text})"
        ) from None
    bad = [k for k in wanted if not 1 <= k <= n_folds]
    if bad:
        raise CrossValidationError(f"--folds {bad} out of range 1..{n_folds}")
    repeated = sorted({k for k in wanted if wanted.count(k) > 1})
    if repeated:
        names = ", ".join(str(k) for k in repeated)
        raise CrossValidationError(
            f"--folds {text} names fold{'s' if len(repeated) > 1 else ''} {names} twice"
        )
    return wanted


def cv_settings(hparams: str | os.PathLike, overrides: list[str], data_folder: str) -> dict:
    """What ``OUT/cv_settings.json`` records: the settings every fold is trained with.

    ``settings`` are the recipe's plain settings with ``overrides`` applied
    (:func:`~qieemo_lobes.run_settings.resolved_settings`, without the per-fold ones),
    ``data_folder`` the corpus root as an absolute path.
    """
    from qieemo_lobes.run_settings import resolved_settings

    settings = resolved_settings(hparams, overrides)
    return {
        "data_folder": os.path.abspath(data_folder),
        "settings": {k: v for k, v in settings.items() if k not in PER_FOLD},
    }


def cv_settings_difference(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every difference between two :func:`cv_settings` records."""
    from qieemo_lobes.run_settings import settings_difference

    old_settings = old.get("settings")
    differences = settings_difference(
        old_settings if isinstance(old_settings, dict) else {}, new["settings"]
    )
    if old.get("data_folder") != new["data_folder"]:
        differences.insert(0, f"data_folder: {old.get('data_folder')} -> {new['data_folder']}")
    return differences


def fold_settings_difference(fold_dir: Path, settings: dict) -> list[str] | None:
    """How the settings a fold recorded differ from ``settings`` (a :func:`cv_settings`'
    ``settings``); None when the fold recorded none.

    The fold's ``run_settings.json`` (its ``settings`` if it has that key) is compared on every
    setting of ``settings``; without it, the ``hparams`` that older runs kept in
    ``run_info.json`` are compared on the settings both hold. :data:`PER_FOLD` is left out.
    """
    from qieemo_lobes.run_settings import read_settings_file, settings_difference

    recorded = read_settings_file(fold_dir / FOLD_SETTINGS)
    every_setting = recorded is not None
    if recorded is None:
        info = read_settings_file(fold_dir / "run_info.json")
        recorded = info.get("hparams") if info is not None else None
    if not isinstance(recorded, dict):
        return None
    if isinstance(recorded.get("settings"), dict):
        recorded = recorded["settings"]
    expected = {k: v for k, v in settings.items() if k not in PER_FOLD}
    if not every_setting:
        expected = {k: v for k, v in expected.items() if k in recorded}
    return settings_difference({k: v for k, v in recorded.items() if k in expected}, expected)


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _finished(fold_dir: Path) -> dict | None:
    """A fold's test metrics when it finished (``test_metrics.json`` complete), else None."""
    metrics = _read_json(fold_dir / "test_metrics.json")
    if metrics is None or not all(m in metrics for m in (*METRICS, "confusion", "classes")):
        return None
    return metrics


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), looked up once in this process; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, prctl: Callable[..., int]) -> None:
    """``preexec_fn`` of a fold's process: the kernel sends it SIGTERM when ``parent`` dies.

    Ctrl-C and SIGTERM are handled in :func:`_run_child`, but nothing runs in this process when
    it is killed with SIGKILL (or by the out-of-memory killer): without this the fold's
    ``train.py`` would go on as an orphan, holding the CPU and its output folder, and a rerun
    would find the fold locked. ``PR_SET_PDEATHSIG`` is kept by the ``exec`` of ``train.py``;
    SIGTERM (not SIGKILL) lets it stop its own workers. A parent that died before the call
    (the child then belongs to another process) is caught by comparing ``getppid``.
    """
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _run_child(command: list[str], log: IO[Any]) -> int:
    """Run one fold; it goes down with this process, however this process ends.

    Ctrl-C or SIGTERM (turned into ``KeyboardInterrupt`` by the caller) stops the child and
    waits for it before re-raising; a SIGKILL of this process reaches it through
    :func:`_die_with_parent`.
    """
    prctl = _prctl()
    preexec = functools.partial(_die_with_parent, os.getpid(), prctl) if prctl else None
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise


def _check_settings(out: Path, settings: dict, wanted: list[int], overwrite: bool) -> None:
    """Refuse to mix results made with other settings into ``out`` (unless ``overwrite``)."""
    if overwrite:
        return
    path = out / CV_SETTINGS
    if path.exists():
        previous = _read_json(path)
        if previous is None:
            raise CrossValidationError(
                f"{path}: unreadable, so the settings of the folds in {out} are unknown; "
                "use --overwrite to start over"
            )
        differences = cv_settings_difference(previous, settings)
        if differences:
            raise CrossValidationError(
                f"{out} holds a cross-validation with other settings "
                f"({'; '.join(differences)}); use --overwrite to start over"
            )
    stale: dict[int, list[str]] = {}
    for k in wanted:
        differences = fold_settings_difference(out / f"fold_{k}", settings["settings"])
        if differences:
            stale[k] = differences
    if stale:
        folds = ", ".join(str(k) for k in stale)
        first = next(iter(stale.values()))
        raise CrossValidationError(
            f"{out}: fold{'s' if len(stale) > 1 else ''} {folds} "
            f"{'were' if len(stale) > 1 else 'was'} trained with other settings "
            f"({'; '.join(first)}); use --overwrite to start over"
        )


def _remove_previous_results(out: Path) -> None:
    """``--overwrite``: remove every fold folder and summary file a cross-validation wrote."""
    removed = 0
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and FOLD_FOLDER.match(entry.name):
            shutil.rmtree(entry)
            removed += 1
        elif entry.name in SUMMARY_FILES:
            entry.unlink()
            removed += 1
    if removed:
        print(f"--overwrite: removed the previous results in {out}", flush=True)


def _merge_predictions(out: Path, done: list[int], folds: list[dict]) -> None:
    """Every fold's ``predictions.csv`` in one ``OUT/predictions.csv`` with a ``fold`` column."""
    with atomic_open(out / "predictions.csv", newline="") as merged:
        writer = None
        for k, metrics in zip(done, folds, strict=True):
            with open(out / f"fold_{k}" / "predictions.csv", newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader)
                if writer is None:
                    writer = csv.writer(merged)
                    writer.writerow(["fold", *header])
                for row in reader:
                    writer.writerow([metrics["fold"], *row])


def run_cross_validation(
    train_script: str | os.PathLike,
    list_utterances: Callable,
    argv: list[str] | None = None,
) -> int:
    """Run the protocol's folds of a recipe and summarise them; returns the exit status.

    Arguments
    ---------
    train_script : str or os.PathLike
        The recipe's ``train.py``, run once per fold.
    list_utterances : callable
        ``list_utterances(data_folder)`` of the corpus' prepare script: a
        :class:`~qieemo_lobes.manifests_scan.CorpusScan` (or anything with its ``summary()``).
    argv : list of str, optional
        The command line after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every fold finished; 1 when a fold failed; 2 for a refusal (one line on
        stderr, nothing trained); 130 when interrupted by Ctrl-C or SIGTERM.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        description="Cross-validate a qieemo emotion recipe over its protocol folds.",
        epilog="Any other --name=value is passed to train.py as a hyperparameter override.",
    )
    parser.add_argument("hparams", help="the recipe's YAML file")
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--folds", help="comma-separated 1-based fold indices (default: all)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the previous folds' results in the output folder and start over",
    )
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.output_folder)
    try:
        with terminate_as_interrupt():
            if out.exists() and not out.is_dir():
                raise CrossValidationError(f"--output_folder {out} is a file, not a folder")
            import ruamel.yaml

            from qieemo_lobes.run_settings import check_overrides

            try:
                check_overrides(args.hparams, overrides)
                settings = cv_settings(args.hparams, overrides, args.data_folder)
            except (ValueError, KeyError, OSError, ruamel.yaml.YAMLError) as err:
                raise CrossValidationError(
                    f"{args.hparams}: {' '.join(str(err).split())}"
                ) from None
            try:
                lock = FolderLock(out, what="another cross-validation").acquire()
            except FolderLockedError as err:
                raise CrossValidationError(str(err)) from None
            except OSError as err:
                raise CrossValidationError(
                    f"--output_folder {out}: {err.strerror or err}"
                ) from None
            try:
                return _cross_validate(
                    args, overrides, out, settings, train_script, list_utterances, argv
                )
            finally:
                lock.release()
    except CrossValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def _cross_validate(
    args: argparse.Namespace,
    overrides: list[str],
    out: Path,
    settings: dict,
    train_script: str | os.PathLike,
    list_utterances: Callable,
    argv: list[str],
) -> int:
    """The body of :func:`run_cross_validation`, once the output folder is locked."""
    started = time.time()
    try:
        scan = list_utterances(args.data_folder)
    except (ValueError, OSError) as err:  # LayoutError is a ValueError: one line, no traceback
        raise CrossValidationError(str(err)) from None
    corpus_summary = scan.summary()
    fold_names = list(corpus_summary["folds"])
    wanted = parse_folds(args.folds, len(fold_names))
    _check_settings(out, settings, wanted, args.overwrite)
    if args.overwrite:
        _remove_previous_results(out)
    write_json_atomic(
        {"hparams_file": os.path.abspath(args.hparams), "overrides": overrides, **settings},
        out / CV_SETTINGS,
    )

    failures = []
    for k in wanted:
        fold_dir = out / f"fold_{k}"
        if _finished(fold_dir) is not None:
            print(f"fold {k}/{len(fold_names)} ({fold_names[k - 1]}): finished earlier, kept")
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            str(train_script),
            args.hparams,
            f"--data_folder={args.data_folder}",
            f"--output_folder={fold_dir}",
            f"--test_fold={k}",
            *overrides,
        ]
        print(f"fold {k}/{len(fold_names)} ({fold_names[k - 1]}): training ...", flush=True)
        fold_start = time.time()
        with open(fold_dir / "stdout.log", "w") as log:
            code = _run_child(command, log)
        metrics = _finished(fold_dir)
        if code != 0 or metrics is None:
            failures.append(k)
            print(f"fold {k}: FAILED (exit {code}); see {fold_dir / 'stdout.log'}", file=sys.stderr)
            continue
        write_json_atomic({"wall_time_s": time.time() - fold_start}, fold_dir / "wall_time.json")
        print(
            f"fold {k}: WA {metrics['wa']:.2f} UA {metrics['ua']:.2f} WF1 {metrics['wf1']:.2f} "
            f"({time.time() - fold_start:.0f} s)",
            flush=True,
        )

    done = [k for k in wanted if _finished(out / f"fold_{k}") is not None]
    if not done:
        print("error: no fold finished", file=sys.stderr)
        return 1
    folds = [_finished(out / f"fold_{k}") for k in done]
    run_info = _read_json(out / f"fold_{done[0]}" / "run_info.json") or {}
    classes = folds[0]["classes"]
    confusion = [
        [sum(f["confusion"][i][j] for f in folds) for j in range(len(classes))]
        for i in range(len(classes))
    ]
    wall = 0.0
    for k in done:
        timing = _read_json(out / f"fold_{k}" / "wall_time.json")
        if timing is not None:
            wall += float(timing.get("wall_time_s", 0.0))
    summary = {
        "dataset": run_info.get("dataset", "unknown"),
        "backbone": run_info.get("backbone", "unknown"),
        "classes": classes,
        "class_counts": {c: corpus_summary["classes"].get(c, 0) for c in classes},
        "folds": folds,
        **mean_std(folds),
        "confusion": confusion,
        "hparams": run_info.get("hparams", settings["settings"]),
        "versions": versions(),
        "wall_time_s": wall + (time.time() - started if not wall else 0.0),
    }
    write_json_atomic(summary, out / "summary.json")
    _merge_predictions(out, done, folds)
    plot_confusion(
        confusion, classes, f"{summary['dataset']} ({len(done)} folds)", out / "confusion.png"
    )
    command = " ".join(["python cross_validate.py", *argv])
    write_text_atomic(_report(summary, command), out / "report.md")
    mean, std = summary["mean"], summary["std"]
    print(
        f"{summary['dataset']} {len(done)} folds: "
        + ", ".join(f"{m.upper()} {mean[m]:.2f} +- {std[m]:.2f}" for m in ("wa", "ua", "wf1"))
        + f"  -> {out / 'summary.json'}"
    )
    if failures:
        print(f"error: folds {failures} failed", file=sys.stderr)
        return 1
    return 0
