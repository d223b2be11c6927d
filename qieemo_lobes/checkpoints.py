"""Whole checkpoints: SpeechBrain's Checkpointer, saved so that a cut-short save is never loaded.

SpeechBrain's :class:`~speechbrain.utils.checkpoints.Checkpointer` writes ``CKPT.yaml`` (which
makes a folder a checkpoint) first and the recoverables' files after it: a save cut short by a
full disk or a kill leaves a checkpoint that looks valid, and every later run crashes recovering
it. :class:`SafeCheckpointer` writes the files first and ``CKPT.yaml`` last, and removes the
folder when a file cannot be written; :func:`remove_broken_checkpoints` removes, with one warning
line each, the checkpoints that do not load (saved by any version), so that a run falls back to
the previous good one.

Example
-------
>>> folder = getfixture("tmp_path")
>>> checkpointer = SafeCheckpointer(folder, {"layer": torch.nn.Linear(2, 2)})
>>> checkpointer.save_checkpoint(meta={"ua": 50.0}).meta["ua"]
50.0
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
    torch_save,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process
from speechbrain.utils.logger import get_logger

from qieemo_lobes.errors import one_line
from qieemo_lobes.files import atomic_open

__all__ = ["CheckpointSaveError", "SafeCheckpointer", "remove_broken_checkpoints"]

logger = get_logger(__name__)


class CheckpointSaveError(OSError):
    """A checkpoint file that could not be written; the incomplete checkpoint is removed."""


def _save_state_dict(obj: Any, path: Path) -> None:
    """SpeechBrain's ``torch_save`` through a Python file, so a full disk raises ``OSError``
    (``torch.save`` to a path reports it as an unspecific ``RuntimeError``)."""
    if not if_main_process():
        return
    with open(path, "wb") as fh:
        torch.save(obj.state_dict(), fh)


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` an error was raised while handling, if any.

    ``torch.save`` to a Python file turns an interrupt raised inside the file's ``write`` (a
    ``SIGTERM`` under :func:`~qieemo_lobes.files.terminate_as_interrupt`, or Ctrl-C) into a
    ``RuntimeError`` ("enforce fail ..."), with the interrupt as its ``__context__``: the
    checkpoint was interrupted, not refused by the disk.

    Example
    -------
    >>> try:
    ...     try:
    ...         raise KeyboardInterrupt("signal 15")
    ...     except KeyboardInterrupt:
    ...         raise RuntimeError("enforce fail")
    ... except RuntimeError as err:
    ...     print(repr(_interrupt_behind(err)))
    KeyboardInterrupt('signal 15')
    >>> print(_interrupt_behind(RuntimeError("disk full")))
    None
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class SafeCheckpointer(Checkpointer):
    """SpeechBrain's :class:`~speechbrain.utils.checkpoints.Checkpointer`, with whole checkpoints.

    SpeechBrain writes ``CKPT.yaml`` (which makes a folder a checkpoint) first and the
    recoverables' files after it, so a save cut short by a full disk or a kill leaves a
    checkpoint that looks valid and crashes every later recovery. Here the files are written
    first and ``CKPT.yaml`` last (atomically); if a file cannot be written the folder is
    removed and :class:`CheckpointSaveError` names that file.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> layer = torch.nn.Linear(2, 2)
    >>> checkpointer = SafeCheckpointer(folder, {"layer": layer})
    >>> ckpt = checkpointer.save_checkpoint(meta={"ua": 50.0})
    >>> sorted(p.name for p in ckpt.path.iterdir())
    ['CKPT.yaml', 'layer.ckpt']
    >>> checkpointer.recover_if_possible().meta["ua"]
    50.0
    """

    @classmethod
    def replacing(cls, checkpointer: Checkpointer) -> Checkpointer:
        """A SafeCheckpointer with ``checkpointer``'s folder, recoverables and hooks.

        A subclass of Checkpointer (a recipe's own) is returned unchanged.
        """
        if type(checkpointer) is not Checkpointer:
            return checkpointer
        safe = cls.__new__(cls)
        safe.__dict__.update(checkpointer.__dict__)
        return safe

    def save_checkpoint(
        self,
        meta: dict | None = None,
        end_of_epoch: bool = True,
        name: str | None = None,
        verbosity: int = logging.INFO,
    ) -> Checkpoint | None:
        """Save every recoverable, then ``CKPT.yaml``; see :meth:`Checkpointer.save_checkpoint`.

        Raises
        ------
        CheckpointSaveError
            A file could not be written (disk full, permission); nothing of this checkpoint
            is left behind.
        """
        ckpt_dir = None
        if if_main_process():
            if name is None:
                ckpt_dir = self._new_checkpoint_dirpath()
            else:
                ckpt_dir = self._custom_checkpoint_dirpath(name)
            try:
                os.makedirs(ckpt_dir, exist_ok=True)
                # An existing checkpoint of that name stops being one before it is rewritten.
                (ckpt_dir / METAFNAME).unlink(missing_ok=True)
            except OSError as err:
                raise CheckpointSaveError(err.errno, err.strerror, str(ckpt_dir)) from err
        ckpt_dir = ddp_broadcast(ckpt_dir, src=0)
        current = ckpt_dir
        paramfiles = {}
        complete = False  # CKPT.yaml written: from then on the checkpoint is whole
        try:
            for key, obj in self.recoverables.items():
                current = ckpt_dir / f"{key}{PARAMFILE_EXT}"
                paramfiles[key] = current
                if key in self.custom_save_hooks:
                    self.custom_save_hooks[key](obj, current)
                    continue
                hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
                if hook is None:
                    raise RuntimeError(f"don't know how to save {type(obj).__name__}")
                if hook is torch_save:
                    _save_state_dict(obj, current)
                else:
                    hook(obj, current)
            ddp_barrier()  # every process' files are written before the checkpoint exists
            saved_meta = None
            if if_main_process():
                current = ckpt_dir / METAFNAME
                saved_meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch}
                saved_meta.update(meta or {})
                with atomic_open(current) as fo:
                    fo.write("# yamllint disable\n")
                    fo.write(yaml.dump(saved_meta))
                complete = True
            # Every process sees the new checkpoint before any of them lists the checkpoints
            # (delete_checkpoints calls a collective per deletion: the lists must agree).
            ddp_barrier()
        except (OSError, RuntimeError) as err:
            if if_main_process():
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            interrupt = _interrupt_behind(err)
            if interrupt is not None:  # Ctrl-C or SIGTERM inside torch.save's writes
                raise interrupt from err
            cause = err if isinstance(err, OSError) else err.__context__
            if isinstance(cause, OSError) and cause.strerror:
                problem = cause.strerror
            else:
                problem = one_line(err)
            raise CheckpointSaveError(
                getattr(cause, "errno", None), f"{problem} (checkpoint not saved)", str(current)
            ) from err
        except BaseException:  # interrupted: the folder without CKPT.yaml is no checkpoint
            if if_main_process() and not complete:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            raise
        if not if_main_process():
            return None
        kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logging.getLogger("speechbrain.utils.checkpoints").log(
            verbosity, f"Saved an {kind} checkpoint in {ckpt_dir}"
        )
        return Checkpoint(ckpt_dir, saved_meta, paramfiles)


def _checkpoint_problem(ckpt_dir: Path) -> tuple[Path, str] | None:
    """The first unreadable file of a checkpoint folder and why, or None if it is whole."""
    meta_path = ckpt_dir / METAFNAME
    if not meta_path.is_file():
        return ckpt_dir, f"no {METAFNAME} (a save that did not finish)"
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return meta_path, one_line(err)
    if not isinstance(meta, dict) or "end-of-epoch" not in meta:
        return meta_path, "not a SpeechBrain checkpoint's meta data"
    for path in sorted(ckpt_dir.glob(f"*{PARAMFILE_EXT}")):
        try:
            with open(path, "rb") as fh:
                start = fh.read(4)
        except OSError as err:
            return path, err.strerror or one_line(err)
        if not start:
            return path, "empty file"
        archive = start == b"PK\x03\x04"  # torch.save's zip format
        try:
            # Memory-mapped: a large checkpoint (a fine-tuned encoder) is not read into memory.
            torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
            continue
        except Exception as err:  # noqa: BLE001 - any failure to load means a broken file
            problem = one_line(err)
        if archive:  # a torch.save archive that does not load
            return path, problem
        try:  # a recoverable saved as text (e.g. the epoch counter)
            path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return path, problem
    return None


def remove_broken_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Remove the checkpoints of ``checkpoints_dir`` that cannot be loaded; returns their folders.

    Every file of each ``CKPT+*`` folder must load (``torch.load(weights_only=True)``, or be
    text for a recoverable saved as text) and its ``CKPT.yaml`` must parse; a folder without
    ``CKPT.yaml`` is a save that never finished. Each removal is one warning line naming the
    broken file, so that recovery falls back to the previous good checkpoint.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> checkpointer = SafeCheckpointer(folder, {"layer": torch.nn.Linear(2, 2)})
    >>> good = checkpointer.save_checkpoint().path
    >>> bad = checkpointer.save_checkpoint(name="cut").path
    >>> _ = (bad / "layer.ckpt").write_bytes((bad / "layer.ckpt").read_bytes()[:100])
    >>> [p.name for p in remove_broken_checkpoints(folder)], good.exists()
    (['CKPT+cut'], True)
    """
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    removed = []
    for ckpt_dir in sorted(folder.glob(f"{CKPT_PREFIX}+*")):
        if not ckpt_dir.is_dir():
            continue
        found = _checkpoint_problem(ckpt_dir)
        if found is None:
            continue
        path, problem = found
        shutil.rmtree(ckpt_dir)
        logger.warning(
            "%s: %s; removed the broken checkpoint %s, the run resumes from the previous one",
            path,
            problem,
            ckpt_dir.name,
        )
        removed.append(ckpt_dir)
    return removed
