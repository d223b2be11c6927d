"""The probe of the cross-corpus matrix (``benchmarks/cross_corpus.py``): standardise + logistic
regression on the time-mean of one whisper-base block, the block chosen on the training corpora.

- :func:`probe_features`: the block means of every clip, from the feature cache (clips missing
  from it are encoded first);
- :func:`inner_folds`: the speaker-grouped folds of the block choice;
- :func:`fit_probe`: the probe fitted on a split's training corpora only
  (:class:`baselines.InnerCVBlockProbe`);
- :func:`run_probe`: one split's probe and its record (``WORK/probe/<split>.json``, reused
  while its utterances are the same).

``cross_corpus.py`` re-exports these names.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import baselines
import numpy as np
from corpora_classes import PROBE_C, PROBE_ENCODER, PROBE_INNER_FOLDS, Split
from cross_corpus_data import split_data

from qieemo_lobes.files import write_json_atomic

# A JSON object from a file, or None when it is missing, unreadable or not an object.
from qieemo_lobes.run_settings import read_settings_file as read_json_object


def probe_features(paths: Sequence[str], cache: Path) -> dict[str, np.ndarray]:
    """``{path: (n_blocks + 1, D)}``: time-mean of every whisper-base block (fit window) and of
    its final output, read from the feature cache; clips not in it are encoded first."""
    import accuracy

    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.features import FeatureCache, looks_complete

    paths = sorted(set(paths))
    identity = WhisperBlocks.identity_for(PROBE_ENCODER, "fit")
    reader = FeatureCache(SimpleNamespace(identity=identity), str(cache))
    missing = {
        str(i): {"wav": p} for i, p in enumerate(paths) if not looks_complete(reader.entry(p))
    }
    if missing:
        print(f"probe: encoding {len(missing)} clips missing from {cache} ...", flush=True)
        encoder = WhisperBlocks(PROBE_ENCODER, window="fit")
        FeatureCache(encoder, str(cache)).precompute(missing)
    means = accuracy.block_means([{"path": p} for p in paths], cache, speaker_norm=False)
    return {p: means[:, i] for i, p in enumerate(paths)}


def inner_folds(speakers: Sequence[str], n_folds: int = PROBE_INNER_FOLDS) -> np.ndarray:
    """Per-utterance inner fold of the probe's block choice: whole speakers, balanced sizes.

    Example
    -------
    >>> inner_folds(["a", "a", "b", "c"], 2).tolist()
    ['fold1', 'fold1', 'fold2', 'fold2']
    """
    from qieemo_lobes.manifests_folds import balanced_group_folds

    folds = balanced_group_folds(list(speakers), n_folds)
    if len(set(folds.values())) < 2:
        raise ValueError(
            f"the probe's block choice needs at least 2 training speakers, found {sorted(folds)}"
        )
    return np.array([folds[s] for s in speakers])


def fit_probe(
    means: dict[str, np.ndarray], train: Sequence[dict], C: float = PROBE_C
) -> baselines.InnerCVBlockProbe:
    """The probe fitted on ``train`` only: the block chosen by the inner speaker-grouped folds
    (:func:`inner_folds`), then refitted on every training utterance."""
    X = np.stack([means[u["path"]] for u in train])  # (N, n_blocks, D)
    y = np.array([u["label"] for u in train])
    model = baselines.InnerCVBlockProbe(n_blocks=X.shape[1], C=C, metric="UA")
    with warnings.catch_warnings():  # inner folds without some class: UA over those present
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        model.fit(X.reshape(len(X), -1), y, inner_folds([u["speaker"] for u in train]))
    return model


def _inputs_digest(train: Sequence[dict], test: Sequence[dict]) -> str:
    h = hashlib.sha1(f"{PROBE_ENCODER}|fit|C={PROBE_C}|folds={PROBE_INNER_FOLDS}\n".encode())
    for part, items in (("train", train), ("test", test)):
        for u in items:
            h.update(f"{part}\t{u['path']}\t{u['label']}\t{u['speaker']}\n".encode())
    return h.hexdigest()


def run_probe(
    split: Split,
    turev_calm: str,
    utterances: dict[str, list[dict]],
    work: Path,
    means: Callable[[], dict[str, np.ndarray]],
    models: dict,
) -> dict:
    """One split's probe (reused from ``WORK/probe/<split>.json`` while its utterances are the
    same); ``means()`` gives the block means, ``models`` keeps the probes fitted so far (one per
    training set, shared by its test corpora)."""
    from qieemo_lobes.recipe import classification_metrics

    name = split.name(turev_calm)
    train, test, classes = split_data(split, utterances)
    digest = _inputs_digest(train, test)
    path = work / "probe" / f"{name}.json"
    previous = read_json_object(path)
    if previous is not None and previous.get("inputs") == digest:
        print(f"probe {name}: finished earlier, kept", flush=True)
        return {**previous, "reused": True}
    start = time.time()
    features = means()
    key = _inputs_digest(train, [])
    if key not in models:
        models[key] = fit_probe(features, train)
    model = models[key]
    predicted = model.predict(np.stack([features[u["path"]] for u in test]).reshape(len(test), -1))
    truth = [u["label"] for u in test]
    metrics = classification_metrics(truth, list(predicted), classes)
    record = {
        "system": "probe",
        "train": list(split.train),
        "test": split.test,
        "classes": classes,
        "n_train": len(train),
        "n_test": len(test),
        **metrics,
        "block": model.best_block_ + 1,  # 1-based; n_blocks + 1 is the final output
        "inner_ua": [100.0 * s for s in model.inner_scores_],
        "wall_time_s": time.time() - start,
        "inputs": digest,
    }
    write_json_atomic(record, path)
    print(f"probe {name}: UA {record['ua']:.1f} (block {record['block']})", flush=True)
    return {**record, "reused": False}
