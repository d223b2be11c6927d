"""What a training run checks and claims before it starts, and what it leaves in its folder.

A run of an emotion recipe (:func:`qieemo_lobes.recipe.run_training`) owns its output folder:

- :func:`check_run_settings` refuses bad settings before anything is built (an unknown or
  misspelled override, a value of the wrong type or range, an unset ``!PLACEHOLDER``, a wrong
  test fold, a missing data folder, a feature cache that cannot be written, training
  augmentation that cannot be made), each with one line;
- :func:`locked_output_folder` holds :class:`~qieemo_lobes.files.FolderLock` on the folder
  while the run lasts, so a second run into it is refused;
- :func:`claim_output_folder` records the settings in ``run_settings.json`` and refuses to
  resume a previous run made with other settings (``--overwrite`` removes it first);
- :func:`write_skipped_files` lists the files data preparation skipped, with their reasons.

Example
-------
>>> out = getfixture("tmp_path")
>>> locations = {"save_folder": str(out / "save")}
>>> claim_output_folder(out, {"lr": 0.001}, locations, overwrite=False) is None
True
>>> _ = (out / "test_metrics.json").write_text("{}")  # a finished run
>>> try:
...     claim_output_folder(out, {"lr": 0.01}, locations, overwrite=False)
... except RecipeError as err:
...     print(str(err).replace(str(out), "OUT"))
OUT: holds a previous run with other settings (lr: 0.001 -> 0.01); use --overwrite to start over, or another --output_folder
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from speechbrain.utils.checkpoints import CKPT_PREFIX
from speechbrain.utils.distributed import if_main_process

from qieemo_lobes.augmentation import check_augmentation
from qieemo_lobes.errors import RecipeError, one_line, os_error_line
from qieemo_lobes.files import FolderLock, atomic_open, write_json_atomic
from qieemo_lobes.run_settings import (
    check_overrides,
    overrides_to_dict,
    read_settings_file,
    resolved_settings,
    settings_difference,
    training_speeds,
)
from qieemo_lobes.sampling import MODES

__all__ = [
    "RUN_SETTINGS",
    "SKIPPED_FILES",
    "check_run_settings",
    "claim_output_folder",
    "locked_output_folder",
    "write_skipped_files",
]

SKIPPED_FILES = "skipped_files.csv"
RUN_SETTINGS = "run_settings.json"


def write_skipped_files(skipped: Sequence[dict], output_folder: str | os.PathLike) -> Path | None:
    """``OUT/skipped_files.csv`` (``path,reason``) for the files data preparation skipped.

    Returns its path, or None (and removes a stale list) when nothing was skipped.

    Example
    -------
    >>> out = getfixture("tmp_path")
    >>> listed = write_skipped_files([{"path": "/c/x.wav", "reason": "not audio"}], out)
    >>> listed.read_text().splitlines()
    ['path,reason', '/c/x.wav,not audio']
    >>> write_skipped_files([], out), listed.exists()
    (None, False)
    """
    path = Path(output_folder) / SKIPPED_FILES
    if not skipped:
        path.unlink(missing_ok=True)
        return None
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        for item in skipped:
            writer.writerow([item.get("path", ""), item.get("reason", "")])
    return path


_SPEAKER_NORM_REFUSED = (
    "{}: speaker_norm standardises the cached block that the retrained encoder blocks read; "
    "use it with --tune_blocks=0"
)
_WINDOW_REFUSED = (
    "{}: the retrained encoder blocks need window: fit (with the 30 s window they would not "
    "start from the pretrained blocks); use --tune_blocks=0"
)


def _placeholders(hparams_file: str, given: dict) -> list[str]:
    """The ``!PLACEHOLDER`` settings of ``hparams_file`` that the overrides do not set."""
    import ruamel.yaml

    with open(hparams_file, encoding="utf-8") as fin:
        tree = ruamel.yaml.YAML().load(fin)
    return [
        str(key)
        for key, value in (tree or {}).items()
        if getattr(getattr(value, "tag", None), "value", None) == "!PLACEHOLDER"
        and key not in given
    ]


def _check_test_fold(fold: Any) -> None:
    if fold is None or (isinstance(fold, str) and not fold.strip()):
        raise RecipeError("--test_fold is empty: give a fold name, a 1-based fold index or none")
    if (
        isinstance(fold, bool)
        or not isinstance(fold, (int, str))
        or (isinstance(fold, int) and fold < 1)
    ):
        raise RecipeError(
            f"--test_fold={fold}: test_fold takes a fold name, a 1-based fold index (1, 2, ...) "
            f"or none, not {fold!r}"
        )


def check_run_settings(hparams_file: str, overrides: str | list[str]) -> tuple[dict, dict]:
    """Refuse bad settings before anything is built; returns ``(settings, locations)``.

    ``settings`` are :func:`~qieemo_lobes.run_settings.resolved_settings`; ``locations`` are
    where the run reads and writes (``output_folder``, ``save_folder``, ``feature_cache``, ...).

    Raises
    ------
    RecipeError
        One line: an unknown override, a value of the wrong type or range, an unset
        ``!PLACEHOLDER``, a wrong test fold, a missing data folder, a feature cache that cannot
        be written, training augmentation that cannot be made (an unknown corruption, negative
        copies, a corruption this machine cannot make: ffmpeg or pyroomacoustics missing).
    """
    import ruamel.yaml

    try:
        check_overrides(hparams_file, overrides)
        every = resolved_settings(hparams_file, overrides, include_locations=True)
        missing = _placeholders(hparams_file, overrides_to_dict(overrides))
    except OSError as err:
        raise RecipeError(os_error_line(err)) from None
    except (ValueError, KeyError, ruamel.yaml.YAMLError) as err:
        raise RecipeError(f"{hparams_file}: {one_line(err)}") from None
    if missing:
        raise RecipeError(
            f"{hparams_file}: {', '.join(missing)} must be given, e.g. "
            + " ".join(f"--{name}=..." for name in missing)
        )
    settings = resolved_settings(hparams_file, overrides)
    locations = {k: v for k, v in every.items() if k not in settings}
    if "test_fold" in settings:
        _check_test_fold(settings["test_fold"])
    try:
        training_speeds(settings)
        check_augmentation(settings)
    except ValueError as err:
        raise RecipeError(f"{hparams_file}: {err}") from None
    if settings.get("use_feature_cache") and not settings.get("freeze_encoder", True):
        raise RecipeError(f"{hparams_file}: use_feature_cache needs freeze_encoder: True")
    if settings.get("speaker_norm") and not settings.get("use_feature_cache", True):
        raise RecipeError(
            f"{hparams_file}: speaker_norm needs the feature cache (use_feature_cache: True)"
        )
    if settings.get("tune_blocks"):  # retrained blocks read the cached block below them
        if settings.get("speaker_norm"):
            raise RecipeError(_SPEAKER_NORM_REFUSED.format(hparams_file))
        if settings.get("window", "fit") != "fit":
            raise RecipeError(_WINDOW_REFUSED.format(hparams_file))
    if settings.get("norm_group", "speaker") not in ("speaker", "fold"):
        raise RecipeError(
            f"--norm_group={settings['norm_group']}: norm_group must be speaker or fold"
        )
    balanced = settings.get("balanced_sampling", "none")
    if balanced not in MODES:
        raise RecipeError(
            f"--balanced_sampling={balanced}: balanced_sampling must be one of {', '.join(MODES)}"
        )
    if balanced != "none" and settings.get("sorting", "random") != "random":
        raise RecipeError("balanced_sampling draws at random: it needs sorting: random")
    sorting = settings.get("sorting", "random")
    if sorting not in ("random", "ascending", "descending"):
        raise RecipeError(f"--sorting={sorting}: sorting must be random, ascending or descending")
    if "data_folder" in settings:
        data = settings["data_folder"]
        if not isinstance(data, str) or not data:
            raise RecipeError("--data_folder is empty: give the corpus folder")
        if not os.path.exists(data):
            raise RecipeError(f"--data_folder={data}: no such file or folder")
    if settings.get("use_feature_cache") and locations.get("feature_cache"):
        _check_writable(Path(locations["feature_cache"]), "feature_cache", "feature cache folder")
    for key in ("output_folder", "save_folder"):
        if not isinstance(locations.get(key), str) or not locations[key]:
            raise RecipeError(f"--{key} is empty")
    return settings, locations


def _check_writable(folder: Path, option: str, what: str) -> None:
    """Refuse ``folder`` (set by ``--option``) if it cannot be written to, or created.

    Nothing is created: the probe is a temporary file in ``folder`` or, when it does not exist
    yet, in its nearest existing parent.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise RecipeError(
            f"--{option}={folder}: the {what} cannot be written "
            f"({existing}: {err.strerror or one_line(err)})"
        ) from None


def _previous_run(out: Path, save_folder: Path) -> bool:
    """Whether ``out`` holds results of an earlier run: a checkpoint or test metrics."""
    if (out / "test_metrics.json").exists():
        return True
    return save_folder.is_dir() and any(
        p.is_dir() and p.name.startswith(f"{CKPT_PREFIX}+") for p in save_folder.iterdir()
    )


def _remove_previous_run(out: Path, locations: dict) -> None:
    """``--overwrite``: the previous run's checkpoints, results and logs go."""
    save_folder = Path(locations["save_folder"])
    if save_folder.is_dir():
        shutil.rmtree(save_folder)
    names = ["test_metrics.json", "predictions.csv", "run_info.json", "calibration.json"]
    names += [RUN_SETTINGS, "log.txt"]
    names.append(SKIPPED_FILES)
    paths = [out / name for name in names]
    if locations.get("train_log"):
        paths.append(Path(locations["train_log"]))
    for path in paths:
        path.unlink(missing_ok=True)


def claim_output_folder(out: Path, settings: dict, locations: dict, overwrite: bool) -> str | None:
    """Compare ``settings`` with the run already in ``out``; record them in ``run_settings.json``.

    Same settings: the run resumes. Other settings, or a previous run that recorded none (an
    older version of the recipe): :class:`RecipeError`, unless ``overwrite``, which removes that
    run's checkpoints, results and logs first. Returns a note for the log, or None.
    """
    note = None
    if _previous_run(out, Path(locations["save_folder"])):
        recorded = read_settings_file(out / RUN_SETTINGS)
        if overwrite:
            _remove_previous_run(out, locations)
            note = f"--overwrite: removed the previous run's checkpoints and results in {out}"
        elif recorded is None:
            raise RecipeError(
                f"{out}: holds a previous run whose settings are unknown (no {RUN_SETTINGS}: "
                "made by an older version of the recipe); use --overwrite to start over, or "
                "another --output_folder"
            )
        else:
            differences = settings_difference(recorded, settings)
            if differences:
                raise RecipeError(
                    f"{out}: holds a previous run with other settings ({'; '.join(differences)});"
                    " use --overwrite to start over, or another --output_folder"
                )
    write_json_atomic(settings, out / RUN_SETTINGS)
    return note


@contextlib.contextmanager
def locked_output_folder(out: Path) -> Iterator[None]:
    """Hold ``FolderLock(out)`` in the main process (other DDP processes share its run)."""
    if not if_main_process():
        yield
        return
    with FolderLock(out):
        yield
