"""The probe of the paper study (``benchmarks/paper.py``, section 1): where emotion lives.

Standardise + logistic regression (C = :data:`PROBE_C`) on the time-mean of every whisper-base
block and of its final output, read from the feature cache (missing clips encoded first when
allowed), leave-one-fold-out over the recipe's folds, with the UA of the pooled predictions and
its 95 % speaker-bootstrap interval; an inner cross-validation on the training folds chooses the
block of the ``best_block`` system. The result of one corpus is kept in a JSON file and reused
while its inputs (encoder identity, clips, labels, speakers, folds) are the same.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import baselines
import numpy as np
import paper_report
from paper_archive import load_json_gz, save_json_gz
from paper_plan import SCRATCH_SEED, SCRATCH_SOURCE

from qieemo_lobes.files import write_json_atomic

PROBE_C = 0.1
PROBE_ENCODER = "whisper-base"

# --------------------------------------------------------------------------------------------------
# Probe (section 1)
# --------------------------------------------------------------------------------------------------


@functools.cache
def probe_encoder_identity(kind: str) -> str:
    """The feature cache identity of the probed encoder: ``pretrained`` (whisper-base, fit
    window) or ``scratch`` (the random encoder of ``from_scratch``)."""
    if kind == "scratch":
        from qieemo_lobes.scratch_encoder import ScratchWhisperBlocks

        return ScratchWhisperBlocks(SCRATCH_SOURCE, window="fit", seed=SCRATCH_SEED).identity
    from qieemo_lobes.encoders import WhisperBlocks

    return WhisperBlocks.identity_for(PROBE_ENCODER, "fit")


def _probe_digest(identity: str, items: list[dict], inner: bool) -> str:
    # paths relative to the corpus folder: the same probe on another checkout or machine
    root = os.path.commonpath([item["path"] for item in items]) if len(items) > 1 else ""
    h = hashlib.sha1(f"{identity}|C={PROBE_C}|inner={inner}\n".encode())
    for item in items:
        name = os.path.relpath(item["path"], root) if root else Path(item["path"]).name
        h.update(f"{name}\t{item['label']}\t{item['speaker']}\t{item['fold']}\n".encode())
    return h.hexdigest()


def block_means(items: list[dict], cache: Path, identity: str, encode: bool) -> np.ndarray | None:
    """``(n_blocks + 1, N, D)`` time-means of every block and of the final output; None when a
    clip is not cached and ``encode`` is False (else missing clips are encoded first)."""
    from qieemo_lobes.features import FeatureCache, looks_complete, read_entry_file

    reader = FeatureCache(SimpleNamespace(identity=identity), str(cache))
    entries = [reader.entry(item["path"]) for item in items]
    missing = {
        str(i): {"wav": items[i]["path"]} for i, e in enumerate(entries) if not looks_complete(e)
    }
    if missing:
        if not encode:
            return None
        from qieemo_lobes.whisper_torch import TorchWhisperBlocks

        print(f"paper: probe: encoding {len(missing)} clips missing from {cache} ...", flush=True)
        FeatureCache(TorchWhisperBlocks(PROBE_ENCODER, window="fit"), str(cache)).precompute(
            missing
        )
    means = []
    for entry in entries:
        blocks, ppg = read_entry_file(entry)
        blocks, ppg = blocks.float(), ppg.float()
        means.append(np.concatenate([blocks.mean(1).numpy(), ppg.mean(0, keepdim=True).numpy()]))
    return np.stack(means, axis=1)


def corpus_probe(
    items: list[dict],
    cache: Path,
    path: Path,
    kind: str = "pretrained",
    encode: bool = False,
    inner: bool = True,
    archive: Path | None = None,
) -> dict[str, Any] | None:
    """The per-block probe of one corpus (kept in ``path`` and, compressed, in ``archive``;
    reused from either while its inputs are the same); None when its features are not all
    cached and ``encode`` is False.

    Returns
    -------
    dict
        ``blocks``: ``{"1": {...}, ..., "final": {...}}`` with ``ua`` (pooled predictions),
        ``ci_low``/``ci_high`` (95 %, speaker bootstrap), ``ua_mean_folds``, ``ua_folds``;
        ``predictions`` per block, ``labels``, ``speakers``; with ``inner``, ``inner_choice``
        (the block chosen by inner CV in each outer fold, 1-based) and ``chosen_block`` (the one
        most folds chose); ``n_blocks``, ``identity``, ``wall_time_s``.
    """
    from qieemo_lobes.stats import speaker_bootstrap_ci

    identity = probe_encoder_identity(kind)
    digest = _probe_digest(identity, items, inner)
    for kept in (paper_report.read_json(path), archive and load_json_gz(archive)):
        if isinstance(kept, dict) and kept.get("digest") == digest:
            if archive is not None and not archive.is_file():
                save_json_gz(archive, kept)
            return kept
    start = time.time()
    means = block_means(items, cache, identity, encode and kind == "pretrained")
    if means is None:
        return None
    y = np.array([item["label"] for item in items])
    folds = np.array([item["fold"] for item in items])
    speakers = np.array([str(item["speaker"]) for item in items])
    n_blocks = means.shape[0] - 1
    names = [str(b) for b in range(1, n_blocks + 1)] + ["final"]
    blocks, predictions = {}, {}
    for name, X in zip(names, means, strict=True):
        result = baselines.probe_baseline(X, y, folds, C=PROBE_C)
        ua, low, high = speaker_bootstrap_ci(y, result["predictions"], speakers, seed=0)
        blocks[name] = {
            "ua": ua,
            "ci_low": low,
            "ci_high": high,
            "ua_mean_folds": result["mean"]["UA"],
            "ua_folds": [f["UA"] for f in result["folds"]],
        }
        predictions[name] = [str(p) for p in result["predictions"]]
    out: dict[str, Any] = {
        "digest": digest,
        "identity": identity,
        "kind": kind,
        "n_blocks": n_blocks,
        "blocks": blocks,
        "predictions": predictions,
        "labels": [str(v) for v in y],
        "speakers": [str(s) for s in speakers],
    }
    if inner:
        chosen = baselines.best_block_probe(means[:n_blocks], y, folds, C=PROBE_C, select="inner")
        choice = [int(b) + 1 for b in chosen["best_block"]]
        counts = Counter(choice)
        out["inner_choice"] = choice
        out["chosen_block"] = min(b for b, n in counts.items() if n == max(counts.values()))
        out["inner_ua_mean_folds"] = chosen["result"]["mean"]["UA"]
    out["wall_time_s"] = time.time() - start
    write_json_atomic(out, path)
    if archive is not None:
        save_json_gz(archive, out)
    return out
