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

The folds' processes and their settings are :mod:`qieemo_lobes.fold_runs`; the summary
:mod:`qieemo_lobes.cv_summary`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from qieemo_lobes.cv_summary import write_summary
from qieemo_lobes.files import (
    FolderLock,
    FolderLockedError,
    terminate_as_interrupt,
    write_json_atomic,
)
from qieemo_lobes.fold_runs import (
    cv_settings,
    cv_settings_difference,
    finished_fold,
    fold_settings_difference,
    read_json,
    run_child,
)

CV_SETTINGS = "cv_settings.json"
# What a cross-validation writes into OUT, besides the fold_K folders; --overwrite removes it.
SUMMARY_FILES = ("summary.json", "predictions.csv", "confusion.png", "report.md", CV_SETTINGS)
FOLD_FOLDER = re.compile(r"^fold_\d+$")
INTERRUPTED = "interrupted; rerun the same command to resume"


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


def _check_settings(out: Path, settings: dict, wanted: list[int], overwrite: bool) -> None:
    """Refuse to mix results made with other settings into ``out`` (unless ``overwrite``)."""
    if overwrite:
        return
    path = out / CV_SETTINGS
    if path.exists():
        previous = read_json(path)
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
        if finished_fold(fold_dir) is not None:
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
            code = run_child(command, log)
        metrics = finished_fold(fold_dir)
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

    done = [k for k in wanted if finished_fold(out / f"fold_{k}") is not None]
    if not done:
        print("error: no fold finished", file=sys.stderr)
        return 1
    command = " ".join(["python cross_validate.py", *argv])
    summary = write_summary(out, done, corpus_summary, settings, started, command)
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
