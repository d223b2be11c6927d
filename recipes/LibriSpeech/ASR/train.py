#!/usr/bin/env python3
"""Stage 1 of qieemo: a Conformer-CTC ASR model trained on LibriSpeech (or a corpus in its format).

Fbank -> InputNormalization -> ConvolutionFrontEnd -> TransformerASR (Conformer encoder) -> CTC head,
with characters or a small unigram vocabulary from SpeechBrain's SentencePiece wrapper, greedy CTC
decoding, and WER / CER from ``ErrorRateStats``. An attention decoder can be added
(``num_decoder_layers > 0`` and ``ctc_weight < 1``): it then only adds its loss during training,
decoding stays greedy CTC.

The trained encoder is the ASR backbone of the emotion recipes, read through
``qieemo_lobes.conformer.ConformerBlocks``; at the end ``<output_folder>/pretrained/`` holds the
evaluated model for ``speechbrain.utils.parameter_transfer.Pretrainer`` (see README.md).

To run it::

    python train.py hparams/conformer_small.yaml --data_folder /path/to/LibriSpeech
    torchrun --nproc_per_node=4 train.py hparams/conformer_small.yaml --data_folder ...
    python train.py hparams/conformer_tiny.yaml --data_folder /tmp/synth/LibriSpeech --device cpu

Outputs in ``<output_folder>``: ``train.csv`` / ``<split>.csv`` manifests, ``tokenizer/``,
``save/CKPT+*`` checkpoints (a rerun resumes from the latest), ``train_log.txt``, ``wer_<split>.txt``,
``test_metrics.json`` (``{"wer", "cer", "n_test", "splits"}``, percent, pooled over the test splits),
``untrained_metrics.json`` (same fields, the randomly initialised model, when
``untrained_baseline: True``) and ``pretrained/``.

Authors
 * qieemo contributors 2026, after SpeechBrain's recipes/LibriSpeech/ASR/CTC/train.py
   (Titouan Parcollet, Shucong Zhang, Adel Moumen and others)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.edit_distance import wer_summary
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from librispeech_prepare import PreparationError, prepare_librispeech  # noqa: E402

from qieemo_lobes.files import write_json_atomic  # noqa: E402


class ASR(sb.core.Brain):
    """Conformer-CTC (optionally joint CTC / attention) ASR."""

    @property
    def use_decoder(self) -> bool:
        return self.hparams.num_decoder_layers > 0 and self.hparams.ctc_weight < 1.0

    def compute_forward(self, batch, stage):
        """Waveforms -> CTC log-probabilities (and decoder log-probabilities, if any)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        tokens_bos, _ = batch.tokens_bos

        if stage == sb.Stage.TRAIN and hasattr(self.hparams, "wav_augment"):
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
            tokens_bos = self.hparams.wav_augment.replicate_labels(tokens_bos)

        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens, epoch=self.hparams.epoch_counter.current)
        if stage == sb.Stage.TRAIN and hasattr(self.hparams, "fea_augment"):
            feats, wav_lens = self.hparams.fea_augment(feats, wav_lens)
            tokens_bos = self.hparams.fea_augment.replicate_labels(tokens_bos)

        src = self.modules.CNN(feats)
        p_seq = None
        if self.use_decoder:
            enc_out, dec_out = self.modules.Transformer(
                src, tokens_bos, wav_lens, pad_idx=self.hparams.pad_index
            )
            p_seq = self.hparams.log_softmax(self.modules.seq_lin(dec_out))
        else:
            enc_out = _unwrap(self.modules.Transformer).encode(src, wav_lens)
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(enc_out))

        hyps = None
        if stage != sb.Stage.TRAIN:
            hyps = sb.decoders.ctc_greedy_decode(p_ctc, wav_lens, blank_id=self.hparams.blank_index)
        return p_ctc, p_seq, wav_lens, hyps

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss (+ attention loss); error rates on valid / test."""
        p_ctc, p_seq, wav_lens, hyps = predictions
        tokens, tokens_lens = batch.tokens
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        if stage == sb.Stage.TRAIN:
            for name in ("wav_augment", "fea_augment"):
                if hasattr(self.hparams, name):
                    augment = getattr(self.hparams, name)
                    tokens = augment.replicate_labels(tokens)
                    tokens_lens = augment.replicate_labels(tokens_lens)
                    tokens_eos = augment.replicate_labels(tokens_eos)
                    tokens_eos_lens = augment.replicate_labels(tokens_eos_lens)

        loss = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        if p_seq is not None:
            loss_seq = self.hparams.seq_cost(p_seq, tokens_eos, length=tokens_eos_lens)
            loss = self.hparams.ctc_weight * loss + (1 - self.hparams.ctc_weight) * loss_seq

        if stage != sb.Stage.TRAIN:
            predicted = [decode_words(self.tokenizer, h) for h in hyps]
            targets = [wrd.split() for wrd in batch.wrd]
            self.wer_metric.append(batch.id, predicted, targets)
            self.cer_metric.append(batch.id, predicted, targets)
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

    def on_stage_start(self, stage, epoch):
        if stage != sb.Stage.TRAIN:
            self.cer_metric = self.hparams.cer_computer()
            self.wer_metric = self.hparams.wer_computer()

    def on_stage_end(self, stage, stage_loss, epoch):
        stage_stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            return
        stage_stats["CER"] = self.cer_metric.summarize("error_rate")
        stage_stats["WER"] = self.wer_metric.summarize("error_rate")

        if stage == sb.Stage.VALID:
            epoch_stats = {
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "steps": self.optimizer_step,
            }
            self.hparams.train_logger.log_stats(
                stats_meta=epoch_stats, train_stats=self.train_stats, valid_stats=stage_stats
            )
            self.checkpointer.save_and_keep_only(
                meta={"CER": stage_stats["CER"], "WER": stage_stats["WER"], "epoch": epoch},
                min_keys=["CER"],
                num_to_keep=self.hparams.avg_checkpoints,
            )
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stage_stats,
            )
            if if_main_process():
                with open(self.hparams.wer_file, "w", encoding="utf-8") as handle:
                    self.wer_metric.write_stats(handle)
            self.test_scores = (list(self.wer_metric.scores), list(self.cer_metric.scores))

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the best checkpoint, then average the ``model`` of the best ``avg_checkpoints``."""
        super().on_evaluate_start(max_key=max_key, min_key=min_key)
        ckpts = self.checkpointer.find_checkpoints(max_key=max_key, min_key=min_key)
        ckpts = ckpts[: self.hparams.avg_checkpoints]
        if len(ckpts) > 1:
            averaged = sb.utils.checkpoints.average_checkpoints(ckpts, recoverable_name="model")
            self.hparams.model.load_state_dict(averaged, strict=True)
            logger.info("Averaged the model of the %d best checkpoints", len(ckpts))
        self.hparams.model.eval()


def decode_words(tokenizer, token_ids: list[int]) -> list[str]:
    """Token ids -> words. Ids beyond the tokenizer's vocabulary (``output_neurons`` may exceed
    it, e.g. for a character set that depends on the corpus) never occur in training targets;
    they are dropped like blanks."""
    vocab = tokenizer.sp.vocab_size()
    return tokenizer.sp.decode_ids([int(t) for t in token_ids if int(t) < vocab]).split()


def _unwrap(module):
    """The module inside a DistributedDataParallel wrapper (for its ``encode`` method)."""
    return getattr(module, "module", module)


def dataio_prepare(hparams, tokenizer):
    """DynamicItemDatasets for train / valid / each test split, with audio and text pipelines."""
    data = {}

    def load(csv_path):
        return sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=csv_path)

    train_data = load(hparams["train_csv"])
    max_len = {"duration": hparams["avoid_if_longer_than"]}
    if hparams["sorting"] in ("ascending", "descending"):
        train_data = train_data.filtered_sorted(
            sort_key="duration",
            reverse=hparams["sorting"] == "descending",
            key_max_value=max_len,
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif hparams["sorting"] == "random":
        train_data = train_data.filtered_sorted(key_max_value=max_len)
    else:
        raise ValueError("sorting must be random, ascending or descending")
    data["train"] = train_data
    data["valid"] = load(hparams["valid_csv"]).filtered_sorted(sort_key="duration")
    tests = {
        Path(p).stem: load(p).filtered_sorted(sort_key="duration") for p in hparams["test_csv"]
    }
    datasets = [data["train"], data["valid"], *tests.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens_bos", "tokens_eos", "tokens")
    def text_pipeline(wrd):
        yield wrd
        tokens_list = tokenizer.sp.encode_as_ids(wrd)
        yield torch.LongTensor([hparams["bos_index"]] + tokens_list)
        yield torch.LongTensor(tokens_list + [hparams["eos_index"]])
        yield torch.LongTensor(tokens_list)

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(
        datasets, ["id", "sig", "wrd", "tokens_bos", "tokens_eos", "tokens"]
    )
    return data["train"], data["valid"], tests


@torch.no_grad()
def evaluate_untrained(hparams, tokenizer, train_data, test_sets) -> dict:
    """WER / CER of the randomly initialised model (the contrast for the trained one).

    The untrained network needs feature statistics to run at all: a copy of the normaliser
    estimates them on the training set (the real normaliser is left untouched, so training is the
    same with or without this baseline). Uses the hparams modules directly (never DDP wrappers);
    under DDP every process must call it (the statistics update is an all-reduce).
    """
    normalize = copy.deepcopy(hparams["normalize"]).train()
    modules = [hparams["CNN"], hparams["Transformer"], hparams["ctc_lin"]]
    for module in modules:
        module.eval()
    loader = sb.dataio.dataloader.make_dataloader(train_data, batch_size=8)
    for batch in loader:
        wavs, lens = batch.sig
        normalize(hparams["compute_features"](wavs), lens)
    normalize.eval()
    wer, cer = hparams["wer_computer"](), hparams["cer_computer"]()
    n_test = 0
    for test_data in test_sets.values():
        for batch in sb.dataio.dataloader.make_dataloader(test_data, batch_size=8):
            wavs, lens = batch.sig
            src = hparams["CNN"](normalize(hparams["compute_features"](wavs), lens))
            enc = hparams["Transformer"].encode(src, lens)
            p_ctc = hparams["log_softmax"](hparams["ctc_lin"](enc))
            hyps = sb.decoders.ctc_greedy_decode(p_ctc, lens, blank_id=hparams["blank_index"])
            predicted = [decode_words(tokenizer, h) for h in hyps]
            targets = [w.split() for w in batch.wrd]
            wer.append(batch.id, predicted, targets)
            cer.append(batch.id, predicted, targets)
            n_test += len(batch.id)
    for module in modules:
        module.train()
    return {
        "wer": wer.summarize("error_rate"),
        "cer": cer.summarize("error_rate"),
        "n_test": n_test,
    }


def export_pretrained(hparams, tokenizer_file: str) -> None:
    """Write ``<output_folder>/pretrained/`` (the evaluated model) for ``Pretrainer``."""
    folder = Path(hparams["output_folder"]) / "pretrained"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".pretrained-"))
    torch.save(hparams["model"].state_dict(), staging / "model.ckpt")
    hparams["normalize"]._save(staging / "normalizer.ckpt")
    shutil.copyfile(tokenizer_file, staging / "tokenizer.ckpt")
    shutil.copyfile(
        Path(hparams["output_folder"]) / "hyperparams.yaml", staging / "hyperparams.yaml"
    )
    layout = {
        "model.ckpt": "state_dict of torch.nn.ModuleList([CNN, Transformer, ctc_lin]) "
        "(keys 0.* ConvolutionFrontEnd, 1.* TransformerASR, 2.* CTC Linear)",
        "normalizer.ckpt": "InputNormalization statistics (count, glob_mean, glob_std)",
        "tokenizer.ckpt": "SentencePiece model (token ids of ctc_lin's outputs, blank = 0)",
        "hyperparams.yaml": "the training hyperparameters (architecture of each module)",
    }
    (staging / "layout.json").write_text(json.dumps(layout, indent=2) + "\n")
    for item in staging.iterdir():
        os.replace(item, folder / item.name)
    staging.rmdir()


def main(argv: list[str]) -> int:
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    try:
        run_on_main(
            prepare_librispeech,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["output_folder"],
                "tr_splits": hparams["train_splits"],
                "dev_splits": hparams["dev_splits"],
                "te_splits": hparams["test_splits"],
                "merge_lst": hparams["train_splits"],
                "merge_name": "train.csv",
                "skip_prep": hparams["skip_prep"],
            },
        )
    except PreparationError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1

    # Trained on the main process only (SentencePiece uses run_on_main), loaded everywhere.
    tokenizer = hparams["tokenizer"]()
    if tokenizer.sp.vocab_size() > hparams["output_neurons"]:
        print(
            f"train.py: the tokenizer has {tokenizer.sp.vocab_size()} tokens but "
            f"output_neurons is {hparams['output_neurons']}; raise output_neurons",
            file=sys.stderr,
        )
        return 1

    train_data, valid_data, test_sets = dataio_prepare(hparams, tokenizer)

    modules = dict(hparams["modules"])
    use_decoder = hparams["num_decoder_layers"] > 0 and hparams["ctc_weight"] < 1.0
    if use_decoder:
        modules["seq_lin"] = hparams["seq_lin"]
        hparams["checkpointer"].add_recoverable("seq_lin", hparams["seq_lin"])

    fresh = not hparams["checkpointer"].find_checkpoints()
    out = Path(hparams["output_folder"])
    if hparams.get("untrained_baseline") and fresh:
        # On every process: under DDP the normaliser's statistics update is a collective.
        untrained = evaluate_untrained(hparams, tokenizer, train_data, test_sets)
        if if_main_process():
            write_json_atomic(untrained, out / "untrained_metrics.json")
            logger.info("Untrained model: %s", untrained)

    asr_brain = ASR(
        modules=modules,
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.tokenizer = tokenizer

    train_loader_kwargs = hparams["train_dataloader_opts"]
    if hparams.get("dynamic_batching", False):
        from speechbrain.dataio.sampler import DynamicBatchSampler

        train_loader_kwargs = {
            "batch_sampler": DynamicBatchSampler(
                train_data,
                length_func=lambda x: float(x["duration"]),
                **hparams["dynamic_batch_sampler_train"],
            ),
            "num_workers": hparams["num_workers"],
        }

    asr_brain.fit(
        asr_brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_loader_kwargs,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    splits, all_wer, all_cer = {}, [], []
    for name, test_data in test_sets.items():
        asr_brain.hparams.wer_file = str(out / f"wer_{name}.txt")
        asr_brain.evaluate(
            test_data, min_key="CER", test_loader_kwargs=hparams["test_dataloader_opts"]
        )
        wer_scores, cer_scores = asr_brain.test_scores
        all_wer += wer_scores
        all_cer += cer_scores
        splits[name] = {
            "wer": wer_summary(wer_scores)["WER"],
            "cer": wer_summary(cer_scores)["WER"],
            "n_test": len(wer_scores),
        }

    if if_main_process():
        metrics = {
            "wer": wer_summary(all_wer)["WER"],
            "cer": wer_summary(all_cer)["WER"],
            "n_test": len(all_wer),
            "splits": splits,
        }
        write_json_atomic(metrics, out / "test_metrics.json")
        logger.info("Test metrics: %s", metrics)
        export_pretrained(hparams, tokenizer.prefix_model_file + ".model")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
