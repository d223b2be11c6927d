"""Segment rules of :mod:`qieemo_lobes.segmentation`: per-frame speech scores -> segments.

The same rules serve both detectors of :mod:`qieemo_lobes.segmentation_vad` (Silero, energy).

Segment rules (:func:`scores_to_segments`), in this order
    1. Hysteresis: speech starts at the first frame with score >= ``threshold`` (0.5) and ends
       at the first frame with score < ``neg_threshold`` (``threshold - 0.15``).
    2. Merge: speech regions separated by less than ``min_silence_s`` (0.5 s) are joined.
    3. Pad: each region is widened by ``pad_s`` (0.2 s) either side, clipped to the file and
       never past the middle of the gap to its neighbour.
    4. Drop: regions shorter than ``min_speech_s`` (0.5 s, padding included) are dropped.
    5. Split: a region longer than ``max_segment_s`` (30 s) is cut, repeatedly, in the middle of
       its deepest pause (the last run of lowest-scoring frames) between ``max_segment_s / 2``
       from its start and ``max_segment_s``, keeping at least ``max_segment_s / 2`` for the
       remainder when the region is shorter than twice the maximum (without any pause the cut
       falls mid-window). No segment is longer than ``max_segment_s``.

Everything public here is re-exported by :mod:`qieemo_lobes.segmentation`.

Example
-------
>>> scores = np.r_[np.zeros(30), np.ones(60), np.zeros(40), np.ones(50), np.zeros(20)]
>>> segments = scores_to_segments(scores, frame_s=0.032, duration_s=len(scores) * 0.032)
>>> [(round(a, 3), round(b, 3)) for a, b in segments]
[(0.76, 3.08), (3.96, 5.96)]

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import math

import numpy as np

from qieemo_lobes.segmentation_vad import FRAME_S

__all__ = ["scores_to_segments"]


# ------------------------------------------------------------------------------------------------
# Frame scores -> segments
#
# SpeechBrain's VAD post-processing (speechbrain.inference.VAD) lives on a Pretrained interface
# that needs a hub model, and silero_vad's get_speech_timestamps_from_probs has no energy
# counterpart, so the rules are written once here for both detectors.


def scores_to_segments(
    scores: np.ndarray,
    frame_s: float = FRAME_S,
    duration_s: float | None = None,
    threshold: float = 0.5,
    neg_threshold: float | None = None,
    min_silence_s: float = 0.5,
    min_speech_s: float = 0.5,
    max_segment_s: float = 30.0,
    pad_s: float = 0.2,
) -> list[tuple[float, float]]:
    """Turn per-frame speech scores into ``(start_s, end_s)`` segments (rules in module doc).

    Arguments
    ---------
    scores : numpy.ndarray
        Speech score per frame.
    frame_s : float
        Frame hop in seconds.
    duration_s : float, optional
        Length of the recording (default: ``len(scores) * frame_s``).
    threshold : float
        Score at which speech starts.
    neg_threshold : float, optional
        Score below which speech ends (default ``threshold - 0.15``).
    min_silence_s : float
        Shorter pauses do not split a segment.
    min_speech_s : float
        Shorter segments (after padding) are dropped.
    max_segment_s : float
        Longer segments are split at their deepest pause.
    pad_s : float
        Context added either side.

    Returns
    -------
    list of (float, float)
        Sorted, non-overlapping segments in seconds, rounded to the millisecond; each
        ``end - start <= max_segment_s``.

    Example
    -------
    >>> s = np.r_[np.ones(625), np.full(5, 0.4), np.ones(1000)]  # 52 s of speech, one dip at 20 s
    >>> [(round(a, 2), round(b, 2)) for a, b in scores_to_segments(s, 0.032)]
    [(0.0, 20.06), (20.06, 36.13), (36.13, 52.16)]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if duration_s is None:
        duration_s = len(scores) * frame_s
    if neg_threshold is None:
        neg_threshold = threshold - 0.15
    if max_segment_s <= 2 * frame_s:
        raise ValueError(f"max_segment_s must exceed two frames, got {max_segment_s}")

    # 1. hysteresis, in frames [start, end)
    regions: list[list[int]] = []
    start = None
    for i, p in enumerate(scores):
        if start is None and p >= threshold:
            start = i
        elif start is not None and p < neg_threshold:
            regions.append([start, i])
            start = None
    if start is not None:
        regions.append([start, len(scores)])

    # 2. merge across short pauses
    min_gap = min_silence_s / frame_s
    merged: list[list[int]] = []
    for region in regions:
        if merged and region[0] - merged[-1][1] < min_gap:
            merged[-1][1] = region[1]
        else:
            merged.append(region)

    # 3. pad (in seconds), never past the middle of a gap, 4. drop short ones
    times = [[a * frame_s, min(b * frame_s, duration_s)] for a, b in merged]
    padded = []
    for k, (a, b) in enumerate(times):
        lo = 0.0 if k == 0 else (times[k - 1][1] + a) / 2
        hi = duration_s if k == len(times) - 1 else (b + times[k + 1][0]) / 2
        padded.append((max(lo, a - pad_s), min(hi, b + pad_s)))
    kept = [(a, b) for a, b in padded if b - a >= min_speech_s]

    # 5. split long ones at the deepest pause
    segments: list[tuple[float, float]] = []
    for a, b in kept:
        while b - a > max_segment_s:
            half = min(max_segment_s, b - a) / 2
            lo_f = math.ceil((a + half) / frame_s)
            hi_f = math.floor((a + min(max_segment_s, b - a - half)) / frame_s)
            hi_f = max(lo_f, hi_f)
            cut = int(_deepest_pause(scores, lo_f, hi_f)) * frame_s
            segments.append((a, cut))
            a = cut
        segments.append((a, b))
    # Report milliseconds; a piece that rounding made 1 ms too long loses that millisecond.
    rounded = [(round(a, 3), round(b, 3)) for a, b in segments]
    return [(a, b if b - a <= max_segment_s else round(b - 0.001, 3)) for a, b in rounded]


def _deepest_pause(scores: np.ndarray, lo: int, hi: int) -> int:
    """Frame in ``[lo, hi]`` at the middle of the last run of lowest scores.

    Cutting in the middle of a pause leaves half of it as context on either side; without any
    pause (all scores equal) the cut falls mid-window, which balances the pieces.
    """
    window = scores[lo : hi + 1]
    if len(window) == 0:
        return hi
    low = np.flatnonzero(window <= window.min() + 1e-6)
    run_start = low[-1]
    while run_start > 0 and run_start - 1 in low:
        run_start -= 1
    return lo + (run_start + low[-1] + 1) // 2
