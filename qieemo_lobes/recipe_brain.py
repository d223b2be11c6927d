"""The emotion recipe's Brain: encoder (or cached encoder outputs) -> Qieemo head -> emotions.

:class:`EmotionBrain` is the :class:`speechbrain.core.Brain` that
:func:`qieemo_lobes.recipe.run_training` fits, tests and calibrates. Beyond SpeechBrain's loop it
perturbs live-encoder training batches (speed, corruptions), stops at the first non-finite loss
or prediction naming the utterances, anneals the learning rate on the validation UA, keeps the
best checkpoint by UA, and gives the encoder's weights their own optimiser.
"""

from __future__ import annotations

import speechbrain as sb
import torch
from speechbrain.augment.time_domain import SpeedPerturb

from qieemo_lobes.augmentation import AugmentationError, live_augmenter
from qieemo_lobes.errors import NonFiniteError, RecipeError
from qieemo_lobes.features import SAMPLE_RATE
from qieemo_lobes.recipe_results import classification_metrics
from qieemo_lobes.run_settings import training_speeds

__all__ = ["EmotionBrain"]


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
        """Log-probabilities over the classes for a batch.

        Training batches of a live encoder are augmented, corrupted and speed-perturbed first.

        Arguments
        ---------
        batch : PaddedBatch
            Cached ``blocks`` and ``ppg`` (feature cache) or the waveforms ``sig``.
        stage : sb.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        torch.Tensor
            ``(batch, n_classes)`` log-probabilities.
        """
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
        """The loss; outside training, also keep the predictions for the stage's metrics.

        Arguments
        ---------
        predictions : torch.Tensor
            The log-probabilities of :meth:`compute_forward`.
        batch : PaddedBatch
            The batch (``id``, ``emo_encoded``).
        stage : sb.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        torch.Tensor
            The loss (``compute_cost``).

        Raises
        ------
        NonFiniteError
            If a validation or test prediction is not finite (naming the utterances).
        """
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
        """The current epoch (0 before the first)."""
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
        """SpeechBrain's start of fit, then the live encoder's speed perturbation and corruption.

        Raises
        ------
        RecipeError
            If the corrupted copies cannot be made (e.g. babble with one training speaker).
        """
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
        """Start collecting the stage's predictions afresh.

        Arguments
        ---------
        stage : sb.Stage
            TRAIN, VALID or TEST.
        epoch : int, optional
            The current epoch.
        """
        self.outputs = []

    def _stage_metrics(self) -> tuple[dict, list]:
        """The collected predictions' metrics and rows ``(utt, true, predicted, probabilities)``."""
        decode = self.hparams.label_encoder.decode_ndim
        rows = []
        for ids, log_probs, labels in self.outputs:
            for utt, prob, label in zip(ids, log_probs.exp(), labels, strict=True):
                rows.append((utt, decode(int(label)), decode(int(prob.argmax())), prob.tolist()))
        classes = self.hparams.classes
        return classification_metrics([r[1] for r in rows], [r[2] for r in rows], classes), rows

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the stage; after validation anneal the learning rate and keep the best checkpoint.

        Arguments
        ---------
        stage : sb.Stage
            TRAIN, VALID or TEST.
        stage_loss : float
            The stage's average loss.
        epoch : int, optional
            The current epoch.
        """
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
        """The MMF fusion weights per encoder block (``w<block>``), for the training log."""
        head = getattr(self.modules.head, "module", self.modules.head)  # unwrap DDP
        mmf = getattr(head, "mmf", None)
        if mmf is None or not hasattr(mmf, "block_weights"):
            return {}
        weights = mmf.block_weights().detach().cpu().tolist()
        return {f"w{b}": round(w, 3) for b, w in zip(mmf.blocks, weights, strict=True)}

    def init_optimizers(self):
        """One optimiser for the head; the encoder's weights (pretrained) get their own."""
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
