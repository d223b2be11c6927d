"""The stage-2 emotion recipe, shared by every corpus: one Brain, one data pipeline, one metric set.

Each ``recipes/<CORPUS>/emotion/train.py`` is a few lines that hand its corpus' ``prepare``
function to :func:`run_training`; everything else is configured by the recipe's HyperPyYAML
file. One fold is trained per call::

    python train.py hparams/qieemo.yaml --data_folder=DIR --output_folder=OUT --test_fold=K

- Frozen encoder (default): its outputs come from the feature cache (``qieemo_lobes.features``)
  through the data pipeline, so the encoder runs once per utterance, not once per epoch.
- ``speed_perturb`` (percent, e.g. ``[90, 100, 110]``): training clips are speed-perturbed
  (SpeechBrain's ``SpeedPerturb``). With the cache every speed is encoded once and each epoch
  reads one at random; with a live encoder each training batch is perturbed on the fly.
- ``augment_copies`` (0: off) with ``augment_corruptions``: corrupted copies of the training
  clips (the corruption suite: noise, babble, rooms, telephone, codecs, gain). With the cache
  each training clip gets that many copies, encoded once and read like speed copies; with a live
  encoder each training batch is corrupted on the fly (:mod:`qieemo_lobes.augmentation`).
- ``--freeze_encoder=False`` (optionally ``--unfreeze_top=N``) trains the encoder too, with its
  own optimiser and learning rate (for GPU users).
- The best checkpoint by validation UA is tested. ``OUT/test_metrics.json`` holds WA, UA, WF1,
  macro-F1 (percent) and the confusion matrix; ``OUT/predictions.csv`` every test utterance with
  one probability column per class.
- Calibration: a temperature ``T`` is fitted on the best checkpoint's validation predictions
  (held-out training speakers, never the test fold) and ``OUT/calibration.json`` gives it with
  the expected calibration error and NLL before and after, on validation and test
  (:func:`qieemo_lobes.calibration.calibration_report`). The export carries ``T`` into the model
  folder; the test metrics and ``predictions.csv`` are those of the uncalibrated model (``T``
  never changes a label).

A run owns its output folder: it holds ``FolderLock(OUT)`` until it ends (a second run into the
same folder is refused), records its settings in ``OUT/run_settings.json`` and refuses to resume
a previous run made with other settings (``--overwrite`` removes that run's results and starts
over). Bad input stops the command before anything is built, with one line on stderr and exit
status 2: an unknown or misspelled override, a value of the wrong type or range, a wrong test
fold, a missing data folder, a feature cache that cannot be written, a file that cannot be
written while training. A non-finite loss or prediction stops training with one line naming the
utterances (exit 1); Ctrl-C or SIGTERM prints ``interrupted; rerun the same command to resume``
(exit 130). Checkpoints are written whole and checked before a run resumes
(:mod:`qieemo_lobes.checkpoints`). Files that data preparation skipped are listed in
``OUT/skipped_files.csv``. The checks and the claim of the output folder are in
:mod:`qieemo_lobes.run_folder`.

The module reads as SpeechBrain's main flow: :func:`run_training` parses the command line,
prepares the data, builds the datasets and the Brain, fits, evaluates and writes the results.
The parts live beside it, and their names are re-exported here: the Brain in
:mod:`qieemo_lobes.recipe_brain`, the datasets, feature cache entries and normalisation
statistics in :mod:`qieemo_lobes.recipe_data`, the metrics and result files in
:mod:`qieemo_lobes.recipe_results`. SpeechBrain copies this file into the output folder (it
calls ``create_experiment_directory``); the three modules are copied with it.

Example
-------
>>> metrics = classification_metrics(["sad", "sad", "happy"], ["sad", "happy", "happy"], ["happy", "sad"])
>>> round(metrics["wa"], 2), metrics["ua"], metrics["confusion"]
(66.67, 75.0, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import ddp_barrier, if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from qieemo_lobes.calibration import calibration_report
from qieemo_lobes.checkpoints import SafeCheckpointer, remove_broken_checkpoints
from qieemo_lobes.errors import RecipeError, one_line, os_error_line
from qieemo_lobes.features import FeatureCacheError
from qieemo_lobes.files import FolderLockedError, terminate_as_interrupt

# The recipe's parts, re-exported: ``qieemo_lobes.recipe.X`` stays the name of each.
from qieemo_lobes.recipe_brain import EmotionBrain
from qieemo_lobes.recipe_data import _fold_statistics, cached_inputs, dataio_prepare  # noqa: F401
from qieemo_lobes.recipe_results import (  # noqa: F401
    classification_metrics,
    write_predictions,
    write_results,
)
from qieemo_lobes.run_folder import (
    check_run_settings,
    claim_output_folder,
    locked_output_folder,
    write_skipped_files,
)
from qieemo_lobes.run_settings import RECIPE_FLAGS

logger = get_logger(__name__)

# Copied into the output folder with this file, which SpeechBrain copies (provenance).
RECIPE_MODULES = ("recipe_brain.py", "recipe_data.py", "recipe_results.py")


class _Progress:
    """How far the run got, for the wording of an error."""

    training = False


def run_training(prepare: Callable, argv: list[str] | None = None) -> dict:
    """Train and test one fold: the body of every emotion recipe's ``train.py``.

    ``prepare`` is the corpus' ``prepare_<corpus>`` function. Returns the test metrics. Errors
    end the process with one line on stderr: exit status 2 for bad input and files that cannot be
    read or written, 1 for a non-finite loss, 130 when interrupted (Ctrl-C or SIGTERM).

    The settings are checked and the output folder claimed before anything is built; the
    results are written by the main process.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    progress = _Progress()
    with _errors_as_exit(progress), terminate_as_interrupt():
        hparams_file, run_opts, overrides, overwrite = _parse_arguments(argv)
        settings, locations = check_run_settings(hparams_file, overrides)
        sb.utils.distributed.ddp_init_group(run_opts)
        out = Path(locations["output_folder"])
        with locked_output_folder(out):
            note = _claim_output_folder(out, settings, locations, overwrite)
            _create_experiment(out, hparams_file, overrides, note)
            summary = _prepare_data(prepare, {**settings, **locations})
            progress.training = True
            hparams = _load_hparams(hparams_file, overrides)
            datasets = _build_datasets(hparams)
            brain = _build_brain(hparams, run_opts)
            _fit(brain, datasets, hparams)
            test = _test(brain, datasets, hparams)
            calibration = _calibrate(brain, datasets, hparams, test)
            result = _test_result(hparams, summary, datasets, brain)
            if if_main_process():
                write_results(hparams, summary, result, brain.test_rows, calibration)
            return result


@contextlib.contextmanager
def _errors_as_exit(progress: _Progress) -> Iterator[None]:
    """An error ends the process with one line on stderr and its exit status.

    Ctrl-C or SIGTERM: 130; :class:`RecipeError`: its code; a locked output folder, a damaged
    feature cache or a file that cannot be read or written: 2 (with a hint to resume once
    training started).
    """
    try:
        yield
    except KeyboardInterrupt:
        # The signal can land while tqdm is drawing a bar, before its closing newline.
        _exit("interrupted; rerun the same command to resume", 130, own_line=True)
    except RecipeError as err:
        _exit(f"error: {err}", err.code)
    except (FolderLockedError, FeatureCacheError) as err:  # one line naming the folder or entry
        _exit(f"error: {err}", 2)
    except OSError as err:
        resume = "; rerun the same command to resume" if progress.training else ""
        _exit(f"error: {os_error_line(err)}{resume}", 2)


def _exit(message: str, code: int, own_line: bool = False) -> None:
    """Log ``message``, print it on stderr and exit with status ``code``.

    ``own_line``: start with a newline, so the message never trails a half-drawn progress bar.
    """
    logger.debug(message)  # in log.txt when logging is set up
    print("\n" * own_line + message, file=sys.stderr, flush=True)
    raise SystemExit(code)


def _parse_arguments(argv: list[str]) -> tuple[str, dict, str, bool]:
    """SpeechBrain's command line, less the recipe's own flags.

    Returns
    -------
    tuple
        ``(hparams_file, run_opts, overrides, overwrite)``; ``overwrite``: ``--overwrite`` was
        given.
    """
    overwrite = any(arg in RECIPE_FLAGS for arg in argv)
    argv = [arg for arg in argv if arg not in RECIPE_FLAGS]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    return hparams_file, run_opts, overrides, overwrite


def _claim_output_folder(out: Path, settings: dict, locations: dict, overwrite: bool) -> str | None:
    """Claim ``out`` in the main process (:func:`claim_output_folder`); the others wait.

    Returns the note for the log (the previous run removed), or None.
    """
    note = None
    if if_main_process():
        note = claim_output_folder(out, settings, locations, overwrite)
    ddp_barrier()
    return note


def _create_experiment(out: Path, hparams_file: str, overrides: str, note: str | None) -> None:
    """SpeechBrain's experiment folder: the resolved hparams, this file, ``log.txt``, ``env.log``.

    SpeechBrain copies the file that calls it (this one, so the call stays here); the recipe's
    other modules (:data:`RECIPE_MODULES`) are copied beside it.
    """
    sb.create_experiment_directory(
        experiment_directory=str(out), hyperparams_to_save=hparams_file, overrides=overrides
    )
    if if_main_process():
        here = Path(os.path.realpath(__file__))
        for name in RECIPE_MODULES:
            shutil.copy(here.with_name(name), out)
    if note:
        logger.info(note)


def _prepare_data(prepare: Callable, args: dict) -> dict:
    """Run the corpus' preparation (main process) and list the files it skipped."""
    summary: dict = {}

    def _prepare():
        summary.update(
            prepare(
                args["data_folder"],
                args["train_annotation"],
                args["valid_annotation"],
                args["test_annotation"],
                test_fold=args["test_fold"],
                valid_split=args["valid_split"],
                valid_ratio=args["valid_ratio"],
                classes=args["classes"],
                seed=args["seed"],
            )
        )

    try:
        run_on_main(_prepare)
    except ValueError as err:  # LayoutError, a wrong test fold, a split that cannot be made
        raise RecipeError(one_line(err)) from None
    if if_main_process():
        listed = write_skipped_files(summary.get("skipped") or [], args["output_folder"])
        if listed is not None:
            n = summary.get("n_skipped", len(summary["skipped"]))
            logger.info("preparation skipped %d files (list: %s)", n, listed)
    return summary


def _load_hparams(hparams_file: str, overrides: str) -> dict:
    """Build the recipe's objects; a setting a lobe refuses is one line."""
    with open(hparams_file, encoding="utf-8") as fin:
        try:
            hparams = load_hyperpyyaml(fin, overrides)
        except ValueError as err:  # e.g. fusion blocks out of the encoder's range
            raise RecipeError(f"{hparams_file}: {one_line(err)}") from None
    if "pretrainer" in hparams:  # e.g. the stage-1 ASR checkpoint of ConformerBlocks
        run_on_main(hparams["pretrainer"].collect_files)
        hparams["pretrainer"].load_collected()
    return hparams


def _build_datasets(hparams: dict) -> dict:
    """The train/valid/test datasets (:func:`dataio_prepare`).

    A frozen encoder's outputs are read from the feature cache, filled first
    (:func:`cached_inputs`); a live encoder reads the waveforms.
    """
    if hparams["use_feature_cache"]:
        return dataio_prepare(hparams, **cached_inputs(hparams))
    return dataio_prepare(hparams, feature_paths=None)


def _build_brain(hparams: dict, run_opts: dict) -> EmotionBrain:
    """The Brain over the head (and a live encoder), resuming from whole checkpoints only.

    Built after :func:`_build_datasets`, which may set the training loader's sampler.
    """
    modules = {"head": hparams["head"]}
    if not hparams["use_feature_cache"]:
        modules["encoder"] = hparams["encoder"]
        if not hparams["freeze_encoder"]:  # fine-tuned weights: saved with the head, resumed
            hparams["checkpointer"].add_recoverable("encoder", hparams["encoder"])
    hparams["checkpointer"] = SafeCheckpointer.replacing(hparams["checkpointer"])
    run_on_main(remove_broken_checkpoints, args=[hparams["checkpointer"].checkpoints_dir])
    brain = EmotionBrain(
        modules=modules,
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    # SpeechBrain calls set_epoch only on a sampler it made itself or that is set here.
    brain.train_sampler = hparams["train_dataloader_opts"].get("sampler")
    return brain


def _fit(brain: EmotionBrain, datasets: dict, hparams: dict) -> None:
    """Train, validating every epoch; the best checkpoint by validation UA is kept."""
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["test_dataloader_opts"],
    )


def _test(
    brain: EmotionBrain, datasets: dict, hparams: dict
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Test the best checkpoint (``brain.test_metrics``, ``brain.test_rows``).

    Returns its test log-probabilities and labels, or None without a test fold (the best
    checkpoint is then loaded for the calibration).
    """
    if len(datasets["test"]) == 0:  # --test_fold=none: a final model trained on every fold
        logger.info("No test fold: trained on every fold; nothing to test")
        brain.test_metrics, brain.test_rows = {}, []
        brain.on_evaluate_start(max_key="ua")  # the best checkpoint, for the calibration
        return None
    brain.evaluate(
        datasets["test"], max_key="ua", test_loader_kwargs=hparams["test_dataloader_opts"]
    )
    return brain.stacked_outputs()


def _calibrate(brain: EmotionBrain, datasets: dict, hparams: dict, test: tuple | None) -> dict:
    """Fit a temperature on the best checkpoint's validation predictions.

    Returns the calibration report (``calibration.json``, :func:`calibration_report`).
    """
    valid = brain.log_probabilities(datasets["valid"], hparams["test_dataloader_opts"])
    calibration = calibration_report(valid, test)
    logger.info(
        "Calibration: temperature %s (%d validation utterances); validation ECE %s -> %s %%",
        calibration["temperature"],
        calibration["n_valid"],
        calibration["ece_valid_before"],
        calibration["ece_valid_after"],
    )
    return calibration


def _test_result(hparams: dict, summary: dict, datasets: dict, brain: EmotionBrain) -> dict:
    """The test metrics with the fold, the split sizes and the classes (``test_metrics.json``)."""
    return {
        "fold": str(summary.get("test_fold", hparams["test_fold"])),
        "n_train": len(datasets["train"]),
        "n_valid": len(datasets["valid"]),
        "n_test": len(datasets["test"]),
        "classes": list(hparams["classes"]),
        **brain.test_metrics,
    }
