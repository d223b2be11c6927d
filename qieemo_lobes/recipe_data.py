"""The emotion recipe's data: datasets, the feature cache's entries and normalisation statistics.

:func:`dataio_prepare` builds the train/valid/test DynamicItemDatasets from the manifests:
waveforms for a live encoder, cached encoder outputs for a frozen one. For the latter
:func:`cached_inputs` fills the feature cache first (the original clips, the speed-perturbed and
corrupted copies of the training clips) and computes the statistics that standardise the
features per speaker (``speaker_norm``), or per fold with ``norm_group: fold``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import speechbrain as sb
import torch

from qieemo_lobes.augmentation import AugmentationError, cache_copies, copies_of
from qieemo_lobes.errors import RecipeError
from qieemo_lobes.features import FeatureCache, normalize_speaker, read_audio, speaker_statistics
from qieemo_lobes.run_settings import training_speeds
from qieemo_lobes.sampling import balanced_sampler
from qieemo_lobes.sharding import fill_cache, precompute_shared

__all__ = ["cached_inputs", "dataio_prepare"]


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

    The training set's order is set in ``hparams["train_dataloader_opts"]`` (``shuffle``, or a
    balanced ``sampler``), and the label encoder is loaded or created in ``save_folder``.

    Returns
    -------
    dict
        ``train``, ``valid`` and ``test`` datasets (``test``: an empty list without a test fold).
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
    """A cache entry as ``(blocks, ppg)``, read with ``torch.load(weights_only=True)``."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    return stored["blocks"], stored["ppg"]


def _read_manifests(hparams: dict) -> dict:
    """Every record of the train, valid and test manifests, by utterance id."""
    records = {}
    for split in ("train", "valid", "test"):
        with open(hparams[f"{split}_annotation"]) as fh:
            records.update(json.load(fh))
    return records


def cached_inputs(hparams: dict) -> dict:
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
