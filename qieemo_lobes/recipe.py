"""The stage-2 emotion recipe, shared by every corpus: one Brain, one data pipeline, one metric set.

Each ``recipes/<CORPUS>/emotion/train.py`` is a few lines that hand its corpus' ``prepare``
function to :func:`run_training`; everything else is configured by the recipe's HyperPyYAML
file. One fold is trained per call::

    python train.py hparams/qieemo_whisper.yaml --data_folder=DIR --output_folder=OUT --test_fold=K

- Frozen encoder (default): its outputs come from the feature cache (``qieemo_lobes.features``)
  through the data pipeline, so the encoder runs once per utterance, not once per epoch.
- ``speed_perturb`` (percent, e.g. ``[90, 100, 110]``): training clips are speed-perturbed
  (SpeechBrain's ``SpeedPerturb``). With the cache every speed is encoded once and each epoch
  reads one at random; with a live encoder each training batch is perturbed on the fly.
- ``--freeze_encoder=False`` (optionally ``--unfreeze_top=N``) trains the encoder too, with its
  own optimiser and learning rate (for GPU users).
- The best checkpoint by validation UA is tested. ``OUT/test_metrics.json`` holds WA, UA, WF1,
  macro-F1 (percent) and the confusion matrix; ``OUT/predictions.csv`` every test utterance with
  one probability column per class.

A run owns its output folder: it holds ``FolderLock(OUT)`` until it ends (a second run into the
same folder is refused), records its settings in ``OUT/run_settings.json`` and refuses to resume
a previous run made with other settings (``--overwrite`` removes that run's results and starts
over). Bad input stops the command before anything is built, with one line on stderr and exit
status 2: an unknown or misspelled override, a value of the wrong type or range, a wrong test
fold, a missing data folder, a feature cache that cannot be written, a file that cannot be
written while training. A non-finite loss or prediction stops training with one line naming the
utterances (exit 1); Ctrl-C or SIGTERM prints ``interrupted; rerun the same command to resume``
(exit 130). Checkpoints are written whole (:class:`SafeCheckpointer`: the ``CKPT.yaml`` that
makes a checkpoint visible is written last) and checked before a run resumes
(:func:`remove_broken_checkpoints`). Files that data preparation skipped are listed in
``OUT/skipped_files.csv``.

Example
-------
>>> metrics = classification_metrics(["sad", "sad", "happy"], ["sad", "happy", "happy"], ["happy", "sad"])
>>> round(metrics["wa"], 2), metrics["ua"], metrics["confusion"]
(66.67, 75.0, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from speechbrain.augment.time_domain import SpeedPerturb
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
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

from qieemo_lobes import features
from qieemo_lobes.features import (
    SAMPLE_RATE,
    FeatureCache,
    normalize_speaker,
    read_audio,
    speaker_statistics,
)
from qieemo_lobes.files import (
    FolderLock,
    FolderLockedError,
    atomic_open,
    terminate_as_interrupt,
    write_json_atomic,
)
from qieemo_lobes.run_settings import (
    RECIPE_FLAGS,
    check_overrides,
    overrides_to_dict,
    read_settings_file,
    resolved_settings,
    settings_difference,
)

logger = get_logger(__name__)


def classification_metrics(true: list[str], predicted: list[str], classes: list[str]) -> dict:
    """WA (accuracy), UA (mean per-class recall), WF1, macro-F1 in percent, and the confusion.

    UA averages the recall of the classes present in ``true``; the confusion matrix rows are the
    true classes in ``classes`` order.
    """
    present = [c for c in classes if c in set(true)]
    return {
        "wa": 100.0 * accuracy_score(true, predicted),
        "ua": 100.0
        * recall_score(true, predicted, labels=present, average="macro", zero_division=0),
        "wf1": 100.0
        * f1_score(true, predicted, labels=present, average="weighted", zero_division=0),
        "macro_f1": 100.0
        * f1_score(true, predicted, labels=present, average="macro", zero_division=0),
        "confusion": confusion_matrix(true, predicted, labels=classes).tolist(),
    }


def _speeds(hparams: dict) -> list[int]:
    """The training speeds in percent (``speed_perturb``; ``[100]``: no perturbation)."""
    speeds = hparams.get("speed_perturb") or [100]
    if not isinstance(speeds, (list, tuple)):
        raise ValueError(
            f"speed_perturb takes a list of percentages, e.g. [90, 100, 110], not {speeds!r}"
        )
    speeds = [int(s) for s in speeds]
    if any(not 50 <= s <= 200 for s in speeds):
        raise ValueError(f"speed_perturb takes percentages between 50 and 200, not {speeds}")
    return speeds


class RecipeError(Exception):
    """A refusal or failure the command reports in one line; ``code`` is its exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.code = code


class NonFiniteError(RecipeError):
    """A loss or prediction that is NaN or infinite: the model would be NaN from there on."""

    def __init__(self, message: str):
        super().__init__(message, code=1)


class CheckpointSaveError(OSError):
    """A checkpoint file that could not be written; the incomplete checkpoint is removed."""


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (torch's span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _os_error(err: OSError) -> str:
    """``file: problem`` for an OSError (``str(err)`` without the errno prefix)."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return _one_line(err)


def _save_state_dict(obj: Any, path: Path) -> None:
    """SpeechBrain's ``torch_save`` through a Python file, so a full disk raises ``OSError``
    (``torch.save`` to a path reports it as an unspecific ``RuntimeError``)."""
    if not if_main_process():
        return
    with open(path, "wb") as fh:
        torch.save(obj.state_dict(), fh)


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
            cause = err if isinstance(err, OSError) else err.__context__
            if isinstance(cause, OSError) and cause.strerror:
                problem = cause.strerror
            else:
                problem = _one_line(err)
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
        return meta_path, _one_line(err)
    if not isinstance(meta, dict) or "end-of-epoch" not in meta:
        return meta_path, "not a SpeechBrain checkpoint's meta data"
    for path in sorted(ckpt_dir.glob(f"*{PARAMFILE_EXT}")):
        try:
            with open(path, "rb") as fh:
                start = fh.read(4)
        except OSError as err:
            return path, err.strerror or _one_line(err)
        if not start:
            return path, "empty file"
        archive = start == b"PK\x03\x04"  # torch.save's zip format
        try:
            # Memory-mapped: a large checkpoint (a fine-tuned encoder) is not read into memory.
            torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
            continue
        except Exception as err:  # noqa: BLE001 - any failure to load means a broken file
            problem = _one_line(err)
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


class EmotionBrain(sb.Brain):
    """Encoder (or cached encoder outputs) -> Qieemo head -> log-probabilities over emotions."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        if self.hparams.use_feature_cache:
            blocks, lens = batch.blocks  # (B, T, n_blocks, D), stored time-first, fp16
            blocks = blocks.permute(2, 0, 1, 3)  # the head converts the blocks it reads
            ppg = batch.ppg.data
        else:
            wavs, lens = batch.sig
            if stage == sb.Stage.TRAIN and hasattr(self.hparams, "augment"):
                wavs, lens = self.hparams.augment(wavs, lens)
            if stage == sb.Stage.TRAIN and self.speed_perturb is not None:
                # One speed per batch: every clip scales alike, relative lengths are unchanged.
                wavs = self.speed_perturb(wavs)
            blocks, ppg = self.modules.encoder(wavs, lens)
        logits = self.modules.head(blocks, ppg, lens)
        return self.hparams.log_softmax(logits)

    def compute_objectives(self, predictions, batch, stage):
        labels, _ = batch.emo_encoded
        labels = labels.squeeze(-1)
        loss = self.hparams.compute_cost(predictions, labels)
        if stage != sb.Stage.TRAIN:
            finite = torch.isfinite(predictions).all(dim=-1)
            if not bool(finite.all()):
                bad = [utt for utt, ok in zip(batch.id, finite.tolist(), strict=True) if not ok]
                if stage == sb.Stage.VALID:
                    where = f"validation predictions in epoch {self._epoch()}"
                else:
                    where = "test predictions"
                raise NonFiniteError(
                    f"non-finite {where} for utterances "
                    f"{', '.join(bad)} (non-finite features or audio, or a model that "
                    "diverged); nothing was written for this stage"
                )
            self.outputs.append((batch.id, predictions.exp().detach().cpu(), labels.cpu()))
        return loss

    def _epoch(self) -> int:
        return int(getattr(self.hparams.epoch_counter, "current", 0))

    def fit_batch(self, batch):
        """SpeechBrain's ``fit_batch``, remembering the batch's utterances for error messages."""
        self._batch_ids = list(batch.id)
        return super().fit_batch(batch)

    def check_loss_isfinite(self, loss):
        """Stop at the first non-finite training loss, naming the epoch and the utterances.

        SpeechBrain skips up to ``nonfinite_patience`` such batches with a warning, but their
        NaN still reaches the weights (or the input statistics), and the run then ends with a
        NaN model and exit status 0.
        """
        if not bool(torch.isfinite(loss).all()):
            ids = ", ".join(getattr(self, "_batch_ids", [])) or "unknown"
            raise NonFiniteError(
                f"the training loss is {float(loss.detach().float().reshape(-1)[0])} in epoch "
                f"{self._epoch()}, batch {self.step} (utterances {ids}): non-finite features or "
                "audio in these utterances, or a learning rate too high; training stopped, "
                "nothing of this epoch was saved"
            )

    def on_fit_start(self):
        super().on_fit_start()
        # Batches are perturbed only for a live encoder; the feature cache holds its own copies.
        speeds = _speeds(vars(self.hparams))
        live = "encoder" in self.modules
        self.speed_perturb = (
            SpeedPerturb(SAMPLE_RATE, speeds=speeds) if live and speeds != [100] else None
        )

    def on_stage_start(self, stage, epoch=None):
        self.outputs = []

    def _stage_metrics(self) -> tuple[dict, list]:
        decode = self.hparams.label_encoder.decode_ndim
        rows = []
        for ids, probs, labels in self.outputs:
            for utt, prob, label in zip(ids, probs, labels, strict=True):
                rows.append((utt, decode(int(label)), decode(int(prob.argmax())), prob.tolist()))
        classes = self.hparams.classes
        return classification_metrics([r[1] for r in rows], [r[2] for r in rows], classes), rows

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        metrics, rows = self._stage_metrics()
        stats = {"loss": stage_loss, **{k: metrics[k] for k in ("wa", "ua", "wf1")}}
        if stage == sb.Stage.VALID:
            annealing = self.hparams.lr_annealing
            if isinstance(annealing, sb.nnet.schedulers.NewBobScheduler):
                # NewBob minimises a positive metric: the UA error.
                old_lr, new_lr = annealing(100.0 - metrics["ua"])
            else:  # an epoch-indexed schedule (LinearScheduler, StepScheduler, ...)
                old_lr, new_lr = annealing(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr": old_lr, **self._block_weights()},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta={"ua": metrics["ua"]}, max_keys=["ua"])
            if hasattr(self.hparams.epoch_counter, "update_metric"):  # early stopping
                self.hparams.epoch_counter.update_metric(metrics["ua"])
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            self.test_metrics, self.test_rows = metrics, rows

    def _block_weights(self) -> dict:
        head = getattr(self.modules.head, "module", self.modules.head)  # unwrap DDP
        mmf = getattr(head, "mmf", None)
        if mmf is None or not hasattr(mmf, "block_weights"):
            return {}
        weights = mmf.block_weights().detach().cpu().tolist()
        return {f"w{b}": round(w, 3) for b, w in zip(mmf.blocks, weights, strict=True)}

    def init_optimizers(self):
        # Pretrained weights (the encoder's, or the head's retrained encoder blocks) get the
        # encoder optimiser and its learning rate; the rest of the head the main one.
        head = getattr(self.modules.head, "module", self.modules.head)  # unwrap DDP
        tuner = getattr(head, "block_tuner", None)
        encoder_params = list(tuner.parameters()) if tuner is not None else []
        tuned = {id(p) for p in encoder_params}
        self.optimizer = self.hparams.opt_class(
            [p for p in head.parameters() if id(p) not in tuned]
        )
        self.optimizers_dict = {"optimizer": self.optimizer}
        if not self.hparams.use_feature_cache and "encoder" in self.modules:
            encoder_params += [p for p in self.modules.encoder.parameters() if p.requires_grad]
        if encoder_params:
            self.encoder_optimizer = self.hparams.encoder_opt_class(encoder_params)
            self.optimizers_dict["encoder_optimizer"] = self.encoder_optimizer
        if self.checkpointer is not None:
            for name, optimizer in self.optimizers_dict.items():
                self.checkpointer.add_recoverable(name, optimizer)


def dataio_prepare(
    hparams: dict,
    feature_paths: dict | None,
    speaker_stats: dict | None = None,
    train_variants: dict | None = None,
    read_entry: Callable[[Path], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """DynamicItemDatasets for train/valid/test, sorted by duration for evaluation.

    With ``feature_paths`` (``{utterance id: cache entry}``) the pipeline yields the cached
    ``blocks`` (time-first) and ``ppg``, standardised per speaker when ``speaker_stats`` is
    given; otherwise the waveform ``sig``. ``train_variants`` (``{utterance id: [(voice, cache
    entry)]}``, e.g. speed-perturbed copies) makes the training set read one of an utterance's
    entries at random each time it is drawn; ``voice`` is appended to the speaker id to find its
    statistics (``""`` for the original, ``"@90"`` for the copy played at 90 %). ``read_entry``
    reads a cache entry as ``(blocks, ppg)`` (the cache's :meth:`FeatureCache.read_entry`, which
    recomputes a damaged entry); by default ``torch.load(weights_only=True)``.
    """
    label_encoder = hparams["label_encoder"]
    if read_entry is None:
        read_entry = _load_entry

    @sb.utils.data_pipeline.takes("emo")
    @sb.utils.data_pipeline.provides("emo", "emo_encoded")
    def label_pipeline(emo):
        yield emo
        yield label_encoder.encode_label_torch(emo)

    def feature_pipeline(variants: dict | None):
        @sb.utils.data_pipeline.takes("id", "spk_id")
        @sb.utils.data_pipeline.provides("blocks", "ppg")
        def read_features(utt_id, speaker):
            voice, path = "", feature_paths[utt_id]
            if variants is not None and utt_id in variants:
                choices = variants[utt_id]
                voice, path = choices[int(torch.randint(len(choices), ()))]
            blocks, ppg = read_entry(path)
            if speaker_stats is not None:
                blocks, ppg = normalize_speaker(blocks, ppg, speaker_stats[speaker + voice])
            yield blocks.transpose(0, 1)  # (T, n_blocks, D): padded along time
            yield ppg

        return read_features

    if feature_paths is not None:
        keys = ["id", "blocks", "ppg", "emo_encoded"]
    else:

        @sb.utils.data_pipeline.takes("wav", "start", "stop")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(wav, start, stop):
            return read_audio(wav, start, stop)

        items, keys = [audio_pipeline, label_pipeline], ["id", "sig", "emo_encoded"]

    datasets = {}
    for split in ("train", "valid", "test"):
        data = sb.dataio.dataio.load_data_json(hparams[f"{split}_annotation"])
        if split == "test" and not data:  # --test_fold=none: nothing to test
            datasets[split] = []
            continue
        for record in data.values():  # optional fields of the manifest, before the pipeline
            record.setdefault("start", None)  # takes its static keys from the records
            record.setdefault("stop", None)
        if feature_paths is not None:
            items = [feature_pipeline(train_variants if split == "train" else None)]
            items.append(label_pipeline)
        dataset = sb.dataio.dataset.DynamicItemDataset(data, dynamic_items=items, output_keys=keys)
        if split != "train":
            dataset = dataset.filtered_sorted(sort_key="duration")
        elif hparams["sorting"] in ("ascending", "descending"):
            # SpeechBrain's convention: a sorted training set is not shuffled (also under DDP).
            dataset = dataset.filtered_sorted(
                sort_key="duration", reverse=hparams["sorting"] == "descending"
            )
            hparams["train_dataloader_opts"]["shuffle"] = False
        elif hparams["sorting"] == "random":
            hparams["train_dataloader_opts"]["shuffle"] = True
        else:
            raise ValueError(
                f"sorting must be random, ascending or descending, not {hparams['sorting']!r}"
            )
        datasets[split] = dataset
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_iterables=[hparams["classes"]],
    )
    return datasets


def _load_entry(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    stored = torch.load(path, map_location="cpu", weights_only=True)
    return stored["blocks"], stored["ppg"]


def _read_manifests(hparams: dict) -> dict:
    records = {}
    for split in ("train", "valid", "test"):
        with open(hparams[f"{split}_annotation"]) as fh:
            records.update(json.load(fh))
    return records


def write_predictions(rows: list, classes: list[str], path: str | os.PathLike) -> None:
    """``utterance,true,predicted,<p(class)>...`` for every test utterance, written atomically.

    Raises
    ------
    ValueError
        If a probability is NaN or infinite (naming the utterance); nothing is written.

    Example
    -------
    >>> path = getfixture("tmp_path") / "predictions.csv"
    >>> write_predictions([("u1", "sad", "sad", [0.25, 0.75])], ["happy", "sad"], path)
    >>> path.read_text().splitlines()
    ['utterance,true,predicted,happy,sad', 'u1,sad,sad,0.250000,0.750000']
    >>> write_predictions([("u2", "sad", "sad", [float("nan"), 0.5])], ["happy", "sad"], path)
    Traceback (most recent call last):
        ...
    ValueError: predictions.csv: utterance u2 has a non-finite probability (nan)
    """
    path = Path(path)
    for utt, _, _, probs in rows:
        for p in probs:
            if not math.isfinite(p):
                raise ValueError(f"{path.name}: utterance {utt} has a non-finite probability ({p})")
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utterance", "true", "predicted", *classes])
        for utt, true, predicted, probs in rows:
            writer.writerow([utt, true, predicted, *(f"{p:.6f}" for p in probs)])


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
        be written.
    """
    import ruamel.yaml

    try:
        check_overrides(hparams_file, overrides)
        every = resolved_settings(hparams_file, overrides, include_locations=True)
        missing = _placeholders(hparams_file, overrides_to_dict(overrides))
    except OSError as err:
        raise RecipeError(_os_error(err)) from None
    except (ValueError, KeyError, ruamel.yaml.YAMLError) as err:
        raise RecipeError(f"{hparams_file}: {_one_line(err)}") from None
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
        _speeds(settings)
    except ValueError as err:
        raise RecipeError(f"{hparams_file}: {err}") from None
    if settings.get("tune_blocks"):  # retrained blocks read the cached block below them
        if settings.get("speaker_norm"):
            raise RecipeError(_SPEAKER_NORM_REFUSED.format(hparams_file))
        if settings.get("window", "fit") != "fit":
            raise RecipeError(_WINDOW_REFUSED.format(hparams_file))
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
            f"({existing}: {err.strerror or _one_line(err)})"
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
    names = ["test_metrics.json", "predictions.csv", "run_info.json", RUN_SETTINGS, "log.txt"]
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
def _locked(out: Path) -> Iterator[None]:
    """Hold ``FolderLock(out)`` in the main process (other DDP processes share its run)."""
    if not if_main_process():
        yield
        return
    with FolderLock(out):
        yield


_FEATURE_CACHE_ERRORS = getattr(features, "FeatureCacheError", ())


class _Progress:
    """How far the run got, for the wording of an error."""

    training = False


def run_training(prepare: Callable, argv: list[str] | None = None) -> dict:
    """Train and test one fold: the body of every emotion recipe's ``train.py``.

    ``prepare`` is the corpus' ``prepare_<corpus>`` function. Returns the test metrics. Errors
    end the process with one line on stderr: exit status 2 for bad input and files that cannot be
    read or written, 1 for a non-finite loss, 130 when interrupted (Ctrl-C or SIGTERM).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    progress = _Progress()
    try:
        with terminate_as_interrupt():
            return _train_and_test(prepare, argv, progress)
    except KeyboardInterrupt:
        _exit("interrupted; rerun the same command to resume", 130)
    except RecipeError as err:
        _exit(f"error: {err}", err.code)
    except FolderLockedError as err:
        _exit(f"error: {err}", 2)
    except _FEATURE_CACHE_ERRORS as err:  # one line naming the entry
        _exit(f"error: {err}", 2)
    except OSError as err:
        resume = "; rerun the same command to resume" if progress.training else ""
        _exit(f"error: {_os_error(err)}{resume}", 2)
    raise AssertionError("unreachable")  # pragma: no cover


def _exit(message: str, code: int) -> None:
    logger.debug(message)  # in log.txt when logging is set up
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


def _train_and_test(prepare: Callable, argv: list[str], progress: _Progress) -> dict:
    overwrite = any(arg in RECIPE_FLAGS for arg in argv)
    argv = [arg for arg in argv if arg not in RECIPE_FLAGS]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    settings, locations = check_run_settings(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    out = Path(locations["output_folder"])
    with _locked(out):
        note = None
        if if_main_process():
            note = claim_output_folder(out, settings, locations, overwrite)
        ddp_barrier()
        return _run(
            prepare, hparams_file, run_opts, overrides, {**settings, **locations}, note, progress
        )


def _run(
    prepare: Callable,
    hparams_file: str,
    run_opts: dict,
    overrides: str,
    prepare_args: dict,
    note: str | None,
    progress: _Progress,
) -> dict:
    """The run itself, once its settings are checked and its output folder is claimed."""
    sb.create_experiment_directory(
        experiment_directory=prepare_args["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if note:
        logger.info(note)
    summary = {}

    def _prepare():
        summary.update(
            prepare(
                prepare_args["data_folder"],
                prepare_args["train_annotation"],
                prepare_args["valid_annotation"],
                prepare_args["test_annotation"],
                test_fold=prepare_args["test_fold"],
                valid_split=prepare_args["valid_split"],
                valid_ratio=prepare_args["valid_ratio"],
                classes=prepare_args["classes"],
                seed=prepare_args["seed"],
            )
        )

    try:
        run_on_main(_prepare)
    except ValueError as err:  # LayoutError, a wrong test fold, a split that cannot be made
        raise RecipeError(_one_line(err)) from None
    if if_main_process():
        listed = write_skipped_files(summary.get("skipped") or [], prepare_args["output_folder"])
        if listed is not None:
            n = summary.get("n_skipped", len(summary["skipped"]))
            logger.info("preparation skipped %d files (list: %s)", n, listed)
    progress.training = True

    with open(hparams_file, encoding="utf-8") as fin:
        try:
            hparams = load_hyperpyyaml(fin, overrides)
        except ValueError as err:  # a setting refused by a lobe (e.g. blocks out of range)
            raise RecipeError(f"{hparams_file}: {_one_line(err)}") from None
    speeds = _speeds(hparams)
    if "pretrainer" in hparams:  # e.g. the stage-1 ASR checkpoint of ConformerBlocks
        run_on_main(hparams["pretrainer"].collect_files)
        hparams["pretrainer"].load_collected()

    modules = {"head": hparams["head"]}
    feature_paths = speaker_stats = train_variants = read_entry = None
    tuner = getattr(hparams["head"], "block_tuner", None)
    if getattr(tuner, "n_blocks", 0):  # retrained blocks read the cached block below them
        if hparams.get("speaker_norm", False):
            # The normalisation would standardise that block, far from the inputs their
            # pretrained weights expect.
            raise RecipeError(_SPEAKER_NORM_REFUSED.format(hparams_file))
        if getattr(hparams["encoder"], "window", "fit") != "fit":
            # With the 30 s window the encoder's blocks also attend to the padding, which the
            # retrained blocks (recomputed from the clip's own frames) never see.
            raise RecipeError(_WINDOW_REFUSED.format(hparams_file))
    if hparams["use_feature_cache"]:
        if not hparams["freeze_encoder"]:
            raise RecipeError(f"{hparams_file}: use_feature_cache needs freeze_encoder: True")
        cache = FeatureCache(hparams["encoder"], hparams["feature_cache"])
        read_entry = cache.read_entry
        records = _read_manifests(hparams)
        run_on_main(cache.precompute, kwargs={"utterances": records})
        feature_paths = cache.precompute(records, progress=False)  # all cached now: paths only
        if speeds != [100]:
            with open(hparams["train_annotation"]) as fh:
                train = {utt: records[utt] for utt in json.load(fh)}
            train_variants = {utt: [] for utt in train}
            for speed in speeds:
                if speed == 100:  # the original, cached above
                    for utt in train:
                        train_variants[utt].append(("", feature_paths[utt]))
                    continue
                kwargs = {"utterances": train, "speed": speed}
                run_on_main(cache.precompute, kwargs=kwargs)
                for utt, path in cache.precompute(**kwargs, progress=False).items():
                    train_variants[utt].append((f"@{speed}", path))
        if hparams.get("speaker_norm", False):
            # A speed-perturbed copy sounds like another voice: standardised with the
            # statistics of the same speaker's copies at that speed.
            entries = dict(feature_paths)
            speaker_of = {utt: record["spk_id"] for utt, record in records.items()}
            for utt, variants in (train_variants or {}).items():
                for voice, path in variants:
                    entries[utt + voice] = path
                    speaker_of[utt + voice] = speaker_of[utt] + voice
            speaker_stats = speaker_statistics(entries, speaker_of)
    else:
        if hparams.get("speaker_norm", False):
            raise RecipeError(
                f"{hparams_file}: speaker_norm needs the feature cache (use_feature_cache: True)"
            )
        modules["encoder"] = hparams["encoder"]
        if not hparams["freeze_encoder"]:  # fine-tuned weights: saved with the head, resumed
            hparams["checkpointer"].add_recoverable("encoder", hparams["encoder"])

    datasets = dataio_prepare(hparams, feature_paths, speaker_stats, train_variants, read_entry)
    hparams["checkpointer"] = SafeCheckpointer.replacing(hparams["checkpointer"])
    run_on_main(remove_broken_checkpoints, args=[hparams["checkpointer"].checkpoints_dir])
    brain = EmotionBrain(
        modules=modules,
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["test_dataloader_opts"],
    )
    if len(datasets["test"]) == 0:  # --test_fold=none: a final model trained on every fold
        logger.info("No test fold: trained on every fold; nothing to test")
        brain.test_metrics, brain.test_rows = {}, []
    else:
        brain.evaluate(
            datasets["test"], max_key="ua", test_loader_kwargs=hparams["test_dataloader_opts"]
        )
    result = {
        "fold": str(summary.get("test_fold", hparams["test_fold"])),
        "n_train": len(datasets["train"]),
        "n_valid": len(datasets["valid"]),
        "n_test": len(datasets["test"]),
        "classes": list(hparams["classes"]),
        **brain.test_metrics,
    }
    if if_main_process():
        out = Path(hparams["output_folder"])
        try:
            if brain.test_rows:
                write_predictions(
                    brain.test_rows, list(hparams["classes"]), out / "predictions.csv"
                )
            plain = (str, int, float, bool, type(None))
            write_json_atomic(
                {
                    "dataset": summary.get("corpus", "unknown"),
                    "backbone": getattr(
                        hparams["encoder"], "identity", type(hparams["encoder"]).__name__
                    ),
                    "hparams": {
                        k: v
                        for k, v in hparams.items()
                        if isinstance(v, plain)
                        or (isinstance(v, list) and all(isinstance(i, plain) for i in v))
                    },
                },
                out / "run_info.json",
            )
            # Written last: its presence marks the run as finished (cross-validation, export).
            # Without a test fold it holds the split sizes only.
            write_json_atomic(result, out / "test_metrics.json")
        except ValueError as err:  # a non-finite number: never written as NaN
            raise NonFiniteError(f"{out}: {_one_line(err)}; nothing more was written") from None
    return result
