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

Example
-------
>>> metrics = classification_metrics(["sad", "sad", "happy"], ["sad", "happy", "happy"], ["happy", "sad"])
>>> round(metrics["wa"], 2), metrics["ua"], metrics["confusion"]
(66.67, 75.0, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from speechbrain.augment.time_domain import SpeedPerturb
from speechbrain.utils.distributed import ddp_barrier, if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from qieemo_lobes.augmentation import AugmentationError, cache_copies, copies_of, live_augmenter
from qieemo_lobes.calibration import calibration_report
from qieemo_lobes.checkpoints import SafeCheckpointer, remove_broken_checkpoints
from qieemo_lobes.errors import NonFiniteError, RecipeError, one_line, os_error_line
from qieemo_lobes.features import (
    SAMPLE_RATE,
    FeatureCache,
    FeatureCacheError,
    normalize_speaker,
    read_audio,
    speaker_statistics,
)
from qieemo_lobes.files import (
    FolderLockedError,
    atomic_open,
    terminate_as_interrupt,
    write_json_atomic,
)
from qieemo_lobes.run_folder import (
    check_run_settings,
    claim_output_folder,
    locked_output_folder,
    write_skipped_files,
)
from qieemo_lobes.run_settings import RECIPE_FLAGS, training_speeds
from qieemo_lobes.sampling import balanced_sampler
from qieemo_lobes.sharding import fill_cache, precompute_shared

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


class EmotionBrain(sb.Brain):
    """Encoder (or cached encoder outputs) -> Qieemo head -> log-probabilities over emotions."""

    def _wrap_distributed(self):
        """DDP as SpeechBrain wraps it, except on CPU (gloo): SpeechBrain converts every
        BatchNorm to SyncBatchNorm, which runs on GPUs only, so on CPU the head's BatchNorm
        layers (input standardisation, attentive pooling) stay per process."""
        if not (self.distributed_launch and self.device == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=None, find_unused_parameters=self.find_unused_parameters
                )

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
            if stage == sb.Stage.TRAIN and getattr(self, "corruption", None) is not None:
                augmenter, corrupter = self.corruption
                corrupter.set_batch(batch.id, self._epoch())
                try:
                    wavs, lens = augmenter(wavs, lens)
                except AugmentationError as err:  # e.g. ffmpeg failed on a clip
                    raise RecipeError(str(err)) from None
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
            self.outputs.append((batch.id, predictions.detach().cpu(), labels.cpu()))
        return loss

    def log_probabilities(self, dataset, loader_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log-probabilities (n, n_classes), labels (n,))`` of ``dataset`` with the weights
        loaded now (after :meth:`evaluate`: the best checkpoint), in the loader's order."""
        kwargs = {**loader_kwargs, "ckpt_prefix": None}  # evaluate() may have added it already
        loader = self.make_dataloader(dataset, sb.Stage.TEST, **kwargs)
        self.on_stage_start(sb.Stage.TEST)
        self.modules.eval()
        with torch.no_grad():
            for batch in loader:
                predictions = self.compute_forward(batch, sb.Stage.TEST)
                self.compute_objectives(predictions, batch, sb.Stage.TEST)
        return self.stacked_outputs()

    def stacked_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probabilities and labels the last evaluation stage collected."""
        n_classes = len(self.hparams.classes)
        log_probs = [p for _, p, _ in self.outputs] or [torch.zeros(0, n_classes)]
        labels = [y for _, _, y in self.outputs] or [torch.zeros(0, dtype=torch.long)]
        return torch.cat(log_probs), torch.cat(labels)

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
        speeds = training_speeds(vars(self.hparams))
        live = "encoder" in self.modules
        self.speed_perturb = (
            SpeedPerturb(SAMPLE_RATE, speeds=speeds) if live and speeds != [100] else None
        )
        # Corrupted copies likewise: on the fly for a live encoder only.
        try:
            self.corruption = live_augmenter(vars(self.hparams)) if live else None
        except AugmentationError as err:  # e.g. babble with a single training speaker
            raise RecipeError(str(err)) from None

    def on_stage_start(self, stage, epoch=None):
        self.outputs = []

    def _stage_metrics(self) -> tuple[dict, list]:
        decode = self.hparams.label_encoder.decode_ndim
        rows = []
        for ids, log_probs, labels in self.outputs:
            for utt, prob, label in zip(ids, log_probs.exp(), labels, strict=True):
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
    statistics (``""`` for the original, ``"@90"`` for the copy played at 90 %, ``"@aug1"`` for
    the first corrupted copy). ``read_entry`` reads a cache entry as ``(blocks, ppg)`` (the
    cache's :meth:`FeatureCache.read_entry`, which recomputes a damaged entry); by default
    ``torch.load(weights_only=True)``.
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
        elif hparams.get("balanced_sampling", "none") != "none":
            sampler = balanced_sampler(data, hparams["balanced_sampling"], hparams["seed"])
            hparams["train_dataloader_opts"]["sampler"] = sampler
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
    except (FolderLockedError, FeatureCacheError) as err:  # one line naming the folder or entry
        _exit(f"error: {err}", 2)
    except OSError as err:
        resume = "; rerun the same command to resume" if progress.training else ""
        _exit(f"error: {os_error_line(err)}{resume}", 2)
    raise AssertionError("unreachable")  # pragma: no cover


def _exit(message: str, code: int) -> None:
    logger.debug(message)  # in log.txt when logging is set up
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


def _train_and_test(prepare: Callable, argv: list[str], progress: _Progress) -> dict:
    """Check the settings, claim the output folder, then run."""
    overwrite = any(arg in RECIPE_FLAGS for arg in argv)
    argv = [arg for arg in argv if arg not in RECIPE_FLAGS]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    settings, locations = check_run_settings(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    out = Path(locations["output_folder"])
    with locked_output_folder(out):
        note = None
        if if_main_process():
            note = claim_output_folder(out, settings, locations, overwrite)
        ddp_barrier()
        sb.create_experiment_directory(
            experiment_directory=str(out), hyperparams_to_save=hparams_file, overrides=overrides
        )
        if note:
            logger.info(note)
        summary = _prepare_data(prepare, {**settings, **locations})
        progress.training = True
        hparams = _load_hparams(hparams_file, overrides)
        result, predictions, calibration = _train_and_evaluate(hparams, run_opts, summary)
        if if_main_process():
            _write_results(hparams, summary, result, predictions, calibration)
        return result


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


def _cached_inputs(hparams: dict) -> dict:
    """Fill the feature cache; the pipeline's cache entries and statistics.

    Under DDP every process encodes its share of the missing entries
    (:func:`qieemo_lobes.sharding.fill_cache`), then all wait for each other.

    Returns the keyword arguments of :func:`dataio_prepare` for a frozen, cached encoder:
    ``feature_paths``, ``train_variants`` (speed-perturbed and corrupted copies of the training
    clips), ``speaker_stats`` (with ``speaker_norm``) and ``read_entry``.
    """
    cache = FeatureCache(hparams["encoder"], hparams["feature_cache"])
    records = _read_manifests(hparams)
    feature_paths = fill_cache(cache, records)
    train_variants = None
    speeds = training_speeds(hparams)
    if speeds != [100] or copies_of(hparams):
        with open(hparams["train_annotation"]) as fh:
            train = {utt: records[utt] for utt in json.load(fh)}
        train_variants = {utt: [] for utt in train}
        for speed in speeds:
            if speed == 100:  # the original, cached above
                for utt in train:
                    train_variants[utt].append(("", feature_paths[utt]))
                continue
            for utt, path in fill_cache(cache, train, speed=speed).items():
                train_variants[utt].append((f"@{speed}", path))
        if copies_of(hparams):  # made from the original speed only
            try:
                corrupted = cache_copies(cache, train, hparams, run_on_main=precompute_shared)
            except AugmentationError as err:  # e.g. babble with a single training speaker
                raise RecipeError(str(err)) from None
            for utt, variants in corrupted.items():
                train_variants[utt].extend(variants)
    speaker_stats = None
    if hparams.get("speaker_norm", False):
        # A speed-perturbed copy sounds like another voice: standardised with the
        # statistics of the same speaker's copies at that speed (corrupted copy k: with those
        # of the speaker's k-th copies).
        entries = dict(feature_paths)
        speaker_of = {utt: record["spk_id"] for utt, record in records.items()}
        for utt, variants in (train_variants or {}).items():
            for voice, path in variants:
                entries[utt + voice] = path
                speaker_of[utt + voice] = speaker_of[utt] + voice
        if hparams.get("norm_group", "speaker") == "fold":
            speaker_stats = _fold_statistics(entries, records, train_variants, cache.read_entry)
        else:
            speaker_stats = speaker_statistics(entries, speaker_of, read=cache.read_entry)
    return {
        "feature_paths": feature_paths,
        "train_variants": train_variants,
        "speaker_stats": speaker_stats,
        "read_entry": cache.read_entry,
    }


def _fold_statistics(
    entries: dict[str, Path], records: dict, train_variants: dict | None, read: Callable
) -> dict[str, dict]:
    """``norm_group: fold``: every speaker standardised with the statistics of its whole fold.

    With a CSV whose fold is the corpus (the cross-corpus benchmark's manifests) this is
    per-corpus normalisation: the held-out corpus' statistics come from its own unlabelled audio
    (transductive, like per-speaker normalisation). Returned keyed by speaker (and voice), as
    :func:`dataio_prepare` looks them up.
    """
    fold_of: dict[str, str] = {}
    for record in records.values():
        fold = str(record.get("fold", ""))
        if fold_of.setdefault(record["spk_id"], fold) != fold:
            raise RecipeError(
                f"norm_group fold: speaker {record['spk_id']} is in folds "
                f"{fold_of[record['spk_id']]} and {fold}; each speaker must be in one fold"
            )
    group_of = {utt: fold_of[record["spk_id"]] for utt, record in records.items()}
    for utt, variants in (train_variants or {}).items():
        for voice, _ in variants:
            group_of[utt + voice] = group_of[utt] + voice
    by_fold = speaker_statistics(entries, group_of, read=read)
    voices = {voice for variants in (train_variants or {}).values() for voice, _ in variants}
    return {
        speaker + voice: by_fold[fold + voice]
        for speaker, fold in fold_of.items()
        for voice in voices | {""}
        if fold + voice in by_fold
    }


def _train_and_evaluate(hparams: dict, run_opts: dict, summary: dict) -> tuple[dict, list, dict]:
    """Fit the Brain, test its best checkpoint and calibrate it on the validation set.

    Returns the test metrics (with the split sizes), the test predictions, one row per
    utterance (none without a test fold), and the calibration report (``calibration.json``).
    """
    modules = {"head": hparams["head"]}
    if hparams["use_feature_cache"]:
        inputs = _cached_inputs(hparams)
    else:
        inputs = {"feature_paths": None}
        modules["encoder"] = hparams["encoder"]
        if not hparams["freeze_encoder"]:  # fine-tuned weights: saved with the head, resumed
            hparams["checkpointer"].add_recoverable("encoder", hparams["encoder"])
    datasets = dataio_prepare(hparams, **inputs)
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
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["test_dataloader_opts"],
    )
    test = None
    if len(datasets["test"]) == 0:  # --test_fold=none: a final model trained on every fold
        logger.info("No test fold: trained on every fold; nothing to test")
        brain.test_metrics, brain.test_rows = {}, []
        brain.on_evaluate_start(max_key="ua")  # the best checkpoint, for the calibration
    else:
        brain.evaluate(
            datasets["test"], max_key="ua", test_loader_kwargs=hparams["test_dataloader_opts"]
        )
        test = brain.stacked_outputs()
    valid = brain.log_probabilities(datasets["valid"], hparams["test_dataloader_opts"])
    calibration = calibration_report(valid, test)
    logger.info(
        "Calibration: temperature %s (%d validation utterances); validation ECE %s -> %s %%",
        calibration["temperature"],
        calibration["n_valid"],
        calibration["ece_valid_before"],
        calibration["ece_valid_after"],
    )
    result = {
        "fold": str(summary.get("test_fold", hparams["test_fold"])),
        "n_train": len(datasets["train"]),
        "n_valid": len(datasets["valid"]),
        "n_test": len(datasets["test"]),
        "classes": list(hparams["classes"]),
        **brain.test_metrics,
    }
    return result, brain.test_rows, calibration


def _write_results(
    hparams: dict, summary: dict, result: dict, predictions: list, calibration: dict
) -> None:
    """``predictions.csv``, ``run_info.json``, ``calibration.json`` and, last,
    ``test_metrics.json``; never a NaN."""
    out = Path(hparams["output_folder"])
    plain = (str, int, float, bool, type(None))
    run_info = {
        "dataset": summary.get("corpus", "unknown"),
        "backbone": getattr(hparams["encoder"], "identity", type(hparams["encoder"]).__name__),
        "hparams": {
            k: v
            for k, v in hparams.items()
            if isinstance(v, plain)
            or (isinstance(v, list) and all(isinstance(i, plain) for i in v))
        },
    }
    try:
        if predictions:
            write_predictions(predictions, list(hparams["classes"]), out / "predictions.csv")
        write_json_atomic(run_info, out / "run_info.json")
        write_json_atomic(calibration, out / "calibration.json")
        # Written last: its presence marks the run as finished (cross-validation, export).
        # Without a test fold it holds the split sizes only.
        write_json_atomic(result, out / "test_metrics.json")
    except ValueError as err:  # a non-finite number: never written as NaN
        raise NonFiniteError(f"{out}: {one_line(err)}; nothing more was written") from None
