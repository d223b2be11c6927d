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

Example
-------
>>> metrics = classification_metrics(["sad", "sad", "happy"], ["sad", "happy", "happy"], ["happy", "sad"])
>>> round(metrics["wa"], 2), metrics["ua"], metrics["confusion"]
(66.67, 75.0, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from speechbrain.augment.time_domain import SpeedPerturb
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from qieemo_lobes.features import (
    SAMPLE_RATE,
    FeatureCache,
    normalize_speaker,
    read_audio,
    speaker_statistics,
)
from qieemo_lobes.files import write_json_atomic

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
            self.outputs.append((batch.id, predictions.exp().detach().cpu(), labels.cpu()))
        return loss

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
) -> dict:
    """DynamicItemDatasets for train/valid/test, sorted by duration for evaluation.

    With ``feature_paths`` (``{utterance id: cache entry}``) the pipeline yields the cached
    ``blocks`` (time-first) and ``ppg``, standardised per speaker when ``speaker_stats`` is
    given; otherwise the waveform ``sig``. ``train_variants`` (``{utterance id: [(voice, cache
    entry)]}``, e.g. speed-perturbed copies) makes the training set read one of an utterance's
    entries at random each time it is drawn; ``voice`` is appended to the speaker id to find its
    statistics (``""`` for the original, ``"@90"`` for the copy played at 90 %).
    """
    label_encoder = hparams["label_encoder"]

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
            stored = torch.load(path, map_location="cpu")
            blocks, ppg = stored["blocks"], stored["ppg"]
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


def _read_manifests(hparams: dict) -> dict:
    records = {}
    for split in ("train", "valid", "test"):
        with open(hparams[f"{split}_annotation"]) as fh:
            records.update(json.load(fh))
    return records


def write_predictions(rows: list, classes: list[str], path: str | os.PathLike) -> None:
    """``utterance,true,predicted,<p(class)>...`` for every test utterance (temp file + rename)."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, suffix=".tmp", delete=False, newline=""
    ) as tmp:
        writer = csv.writer(tmp)
        writer.writerow(["utterance", "true", "predicted", *classes])
        for utt, true, predicted, probs in rows:
            writer.writerow([utt, true, predicted, *(f"{p:.6f}" for p in probs)])
    os.replace(tmp.name, path)


def run_training(prepare: Callable, argv: list[str] | None = None) -> dict:
    """Train and test one fold: the body of every emotion recipe's ``train.py``.

    ``prepare`` is the corpus' ``prepare_<corpus>`` function. Returns the test metrics.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as fin:
        try:
            hparams = load_hyperpyyaml(fin, overrides)
            speeds = _speeds(hparams)
        except ValueError as err:  # a setting refused (e.g. blocks out of range)
            raise SystemExit(f"error: {hparams_file}: {err}") from None
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    summary = {}

    def _prepare():
        summary.update(
            prepare(
                hparams["data_folder"],
                hparams["train_annotation"],
                hparams["valid_annotation"],
                hparams["test_annotation"],
                test_fold=hparams["test_fold"],
                valid_split=hparams["valid_split"],
                valid_ratio=hparams["valid_ratio"],
                classes=hparams["classes"],
                seed=hparams["seed"],
            )
        )

    run_on_main(_prepare)
    if "pretrainer" in hparams:  # e.g. the stage-1 ASR checkpoint of ConformerBlocks
        run_on_main(hparams["pretrainer"].collect_files)
        hparams["pretrainer"].load_collected()

    modules = {"head": hparams["head"]}
    feature_paths = speaker_stats = train_variants = None
    tuner = getattr(hparams["head"], "block_tuner", None)
    if getattr(tuner, "n_blocks", 0):  # retrained blocks read the cached block below them
        if hparams.get("speaker_norm", False):
            # The normalisation would standardise that block, far from the inputs their
            # pretrained weights expect.
            raise SystemExit(
                f"error: {hparams_file}: speaker_norm standardises the cached block that the "
                "retrained encoder blocks read; use it with --tune_blocks=0"
            )
        if getattr(hparams["encoder"], "window", "fit") != "fit":
            # With the 30 s window the encoder's blocks also attend to the padding, which the
            # retrained blocks (recomputed from the clip's own frames) never see.
            raise SystemExit(
                f"error: {hparams_file}: the retrained encoder blocks need window: fit (with the "
                "30 s window they would not start from the pretrained blocks); use --tune_blocks=0"
            )
    if hparams["use_feature_cache"]:
        if not hparams["freeze_encoder"]:
            raise SystemExit(f"error: {hparams_file}: use_feature_cache needs freeze_encoder: True")
        cache = FeatureCache(hparams["encoder"], hparams["feature_cache"])
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
            raise SystemExit(
                f"error: {hparams_file}: speaker_norm needs the feature cache "
                "(use_feature_cache: True)"
            )
        modules["encoder"] = hparams["encoder"]
        if not hparams["freeze_encoder"]:  # fine-tuned weights: saved with the head, resumed
            hparams["checkpointer"].add_recoverable("encoder", hparams["encoder"])

    datasets = dataio_prepare(hparams, feature_paths, speaker_stats, train_variants)
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
        if brain.test_rows:
            write_predictions(brain.test_rows, list(hparams["classes"]), out / "predictions.csv")
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
    return result
