"""Split a long recording (a conversation, a call) into speech segments for classification.

The emotion classifier works on utterances of a few seconds; a recording longer than about 30 s is
first cut into speech segments by a voice activity detector (VAD), streamed over
:func:`qieemo_lobes.audio.stream_audio` blocks so that a one-hour file is never in memory.

Detectors (``method``)
    ``"silero"``: the Silero VAD network from the ``silero-vad`` PyPI package, whose TorchScript
    model ships inside the package (``silero_vad/data/silero_vad.jit``): loading it reads that
    file and touches no network. It gives a speech probability per 32 ms frame. The torch-free
    path (``classify --backend onnx``) passes ``vad=``: the same network as ONNX, run by
    onnxruntime (:class:`qieemo_lobes.onnx_vad.SileroOnnx`).
    ``"energy"``: a frame-energy detector (below), needing nothing but numpy.
    ``"auto"`` (default): Silero where the package is installed and runs, else energy.

Energy detector
    Frame levels are RMS dB re full scale of 32 ms frames whose DC offset and linear trend are
    removed first (:func:`qieemo_lobes.audio.frame_dbfs`), so that a recorder's DC offset is not
    taken for sound (a constant offset would otherwise make the whole file one level, and every
    frame "speech"). After the pass, a threshold is set from
    the file's own level distribution: ``max(noise + (loud - noise) / 2, loud - 30 dB, -60 dB)``
    with ``noise`` the 10th and ``loud`` the 98th percentile of the frame levels; the per-frame
    score is ``sigmoid((level - threshold) / 3 dB)``, so the Silero thresholds apply unchanged.
    It handles clean and moderately noisy recordings; babble or music are called speech.

Segment rules (:func:`scores_to_segments`, the same for both detectors), in this order
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

Example
-------
>>> import numpy as np
>>> scores = np.r_[np.zeros(30), np.ones(60), np.zeros(40), np.ones(50), np.zeros(20)]
>>> segments = scores_to_segments(scores, frame_s=0.032, duration_s=len(scores) * 0.032)
>>> [(round(a, 3), round(b, 3)) for a, b in segments]
[(0.76, 3.08), (3.96, 5.96)]

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from qieemo_lobes.audio import SILENCE_DBFS, Resampler, frame_dbfs, stream_mono

if TYPE_CHECKING:
    import torch

# torch is imported only by the TorchScript Silero model and for tensors from
# iter_segment_waveforms: the ONNX path (qieemo_lobes.onnx_inference) segments without it.

__all__ = [
    "FRAME_S",
    "LONG_RECORDING_S",
    "SAMPLE_RATE",
    "SpeechSegmenter",
    "energy_scores",
    "frame_scores",
    "iter_segment_waveforms",
    "scores_to_segments",
    "segment_speech",
    "silero_available",
]

logger = logging.getLogger(__name__)

# Recordings longer than this are segmented before classification; shorter ones go whole.
LONG_RECORDING_S = 30.0
SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # Silero VAD's window at 16 kHz
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE  # 0.032 s
METHODS = ("auto", "silero", "energy")


# ------------------------------------------------------------------------------------------------
# Detectors


class FrameVAD(Protocol):
    """A stateful frame scorer: speech probabilities of consecutive 512-sample frames at 16 kHz."""

    def reset_states(self) -> None: ...

    def __call__(self, frames: np.ndarray) -> list[float]: ...


class _SileroJit:
    """The TorchScript Silero model on numpy frames ``(n, 512)``, in order (see :func:`_score_frames`).

    Each call is a handful of tiny ops, for which intra-op threads are pure overhead (measured
    10x slower with 2 threads on a busy 2-core machine), so torch runs single-threaded meanwhile
    and the caller's thread count is restored.
    """

    def __init__(self, model: torch.jit.ScriptModule):
        self.model = model

    def reset_states(self) -> None:
        self.model.reset_states()

    def __call__(self, frames: np.ndarray) -> list[float]:
        import torch

        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            with torch.inference_mode():
                return [float(self.model(torch.from_numpy(f), SAMPLE_RATE)) for f in frames]
        finally:
            torch.set_num_threads(threads)


@functools.cache
def _silero_model() -> FrameVAD:
    """Load the Silero VAD TorchScript model from the installed package (no network)."""
    import torch

    threads = torch.get_num_threads()
    try:
        # silero_vad.model calls torch.set_num_threads(1) at import time; undo that side effect.
        from silero_vad import load_silero_vad

        return _SileroJit(load_silero_vad(onnx=False))
    finally:
        torch.set_num_threads(threads)


def silero_available() -> bool:
    """Return whether the ``silero-vad`` package is installed and its model loads.

    Returns
    -------
    bool

    Example
    -------
    >>> isinstance(silero_available(), bool)
    True
    """
    try:
        _silero_model()
    except Exception:
        return False
    return True


def energy_scores(levels_db: np.ndarray, slope_db: float = 3.0) -> tuple[np.ndarray, float]:
    """Map frame levels to speech scores in [0, 1] with a threshold adapted to the file.

    Arguments
    ---------
    levels_db : numpy.ndarray
        RMS level per frame in dB re full scale (``-inf`` for digital silence).
    slope_db : float
        Width of the sigmoid around the threshold, in dB.

    Returns
    -------
    scores : numpy.ndarray
        ``sigmoid((level - threshold) / slope_db)`` per frame.
    threshold_db : float
        ``max(noise + (loud - noise) / 2, loud - 30, SILENCE_DBFS)``, ``noise`` and ``loud``
        being the 10th and 98th percentiles of the levels (floored at -100 dB).

    Example
    -------
    >>> levels = np.r_[np.full(50, -np.inf), np.full(50, -20.0)]
    >>> scores, thr = energy_scores(levels)
    >>> thr, round(float(scores[0]), 3), round(float(scores[-1]), 3)
    (-50.0, 0.0, 1.0)
    """
    levels = np.maximum(np.asarray(levels_db, dtype=np.float64), -100.0)
    if levels.size == 0:
        return levels.astype(np.float32), SILENCE_DBFS
    noise, loud = np.percentile(levels, [10, 98])
    threshold = float(max(noise + 0.5 * (loud - noise), loud - 30.0, SILENCE_DBFS))
    scores = 1.0 / (1.0 + np.exp(-(levels - threshold) / slope_db))
    return scores.astype(np.float32), threshold


def frame_scores(
    path: str | os.PathLike,
    method: str = "auto",
    block_seconds: float = 60.0,
    *,
    resampler: Callable[[int, int], Resampler] | None = None,
    vad: Callable[[], FrameVAD] | None = None,
) -> tuple[np.ndarray, str, float]:
    """Stream a file at 16 kHz and score each 32 ms frame for speech.

    Memory holds one block of audio plus one float per frame (450 kB for an hour).

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.
    method : {"auto", "silero", "energy"}
        The detector; ``"auto"`` falls back to energy (with a logged warning) where Silero is not
        installed or fails.
    block_seconds : float
        Length of the audio blocks read at a time.
    resampler : callable, optional
        Resampler factory for :func:`~qieemo_lobes.audio.stream_mono` (default torchaudio's).
    vad : callable, optional
        Returns the Silero model to use (default: the TorchScript one of the ``silero-vad``
        package); it may raise, like a missing package.

    Returns
    -------
    scores : numpy.ndarray
        Speech score in [0, 1] per frame (the last partial frame zero-padded).
    method_used : str
        ``"silero"`` or ``"energy"``.
    duration_s : float
        Duration of the 16 kHz stream.

    Raises
    ------
    qieemo_lobes.audio.AudioError
        For unreadable input (missing, empty, corrupt, truncated, NaN/inf).
    ImportError, RuntimeError
        With ``method="silero"`` when Silero is not installed or fails.

    Example
    -------
    >>> import soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "z.wav", np.r_[np.zeros(8000), 0.1 * np.ones(8000)], 16000)
    >>> scores, used, duration = frame_scores(tmp / "z.wav", method="energy")
    >>> len(scores), used, duration
    (32, 'energy', 1.0)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = None
    if method in ("auto", "silero"):
        try:
            model = (vad or _silero_model)()
            model.reset_states()
        except Exception as err:
            if method == "silero":
                raise
            logger.warning("Silero VAD unavailable (%s); using the energy detector", err)
            model = None
    use_silero = model is not None

    probs: list[float] = []
    levels: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float32)
    n_samples = 0
    for block in stream_mono(path, block_seconds, SAMPLE_RATE, resampler):
        n_samples += len(block)
        x = np.concatenate([carry, block])
        n_frames = len(x) // FRAME_SAMPLES
        carry = x[n_frames * FRAME_SAMPLES :]
        frames = x[: n_frames * FRAME_SAMPLES].reshape(n_frames, FRAME_SAMPLES)
        probs_or_none = _score_frames(model, frames, path, method) if use_silero else None
        if use_silero and probs_or_none is None:
            use_silero = False
        elif use_silero:
            probs += probs_or_none
        levels.append(_levels_db(frames))
    if len(carry):
        last = np.pad(carry, (0, FRAME_SAMPLES - len(carry)))[None]
        if use_silero:
            more = _score_frames(model, last, path, method)
            use_silero = more is not None
            probs += more or []
        # The level of a partial frame is measured on its real samples only.
        levels.append(_levels_db(carry[None]))

    duration = n_samples / SAMPLE_RATE
    if use_silero:
        return np.asarray(probs, dtype=np.float32), "silero", duration
    all_levels = np.concatenate(levels) if levels else np.zeros(0)
    return energy_scores(all_levels)[0], "energy", duration


def _levels_db(frames: np.ndarray) -> np.ndarray:
    """Level of each row of ``frames`` (one frame each), without its DC offset and trend."""
    return frame_dbfs(frames.reshape(-1), SAMPLE_RATE, frame_s=frames.shape[1] / SAMPLE_RATE)


def _score_frames(model: FrameVAD, frames: np.ndarray, path, method: str) -> list[float] | None:
    """Silero probabilities of consecutive frames; None when it fails in ``auto`` mode.

    The model is stateful (an LSTM over consecutive 512-sample windows), so the frames go
    through one at a time, in order.
    """
    try:
        return model(frames)
    except Exception as err:
        if method == "silero":
            raise
        logger.warning("Silero VAD failed on %s (%s); using the energy detector", path, err)
        return None


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


# ------------------------------------------------------------------------------------------------
# Front ends


class SpeechSegmenter:
    """Speech segmenter for long recordings, configurable from HyperPyYAML.

    Arguments
    ---------
    method : {"auto", "silero", "energy"}
        The detector (see module docstring).
    threshold : float
        Score at which speech starts.
    min_silence_s : float
        Shorter pauses do not split a segment.
    min_speech_s : float
        Shorter segments are dropped.
    max_segment_s : float
        Longer segments are split at their deepest pause.
    pad_s : float
        Context added either side of each segment.
    block_seconds : float
        Length of the audio blocks streamed from the file.
    resampler : callable, optional
        Resampler factory for the audio stream (default torchaudio's; see
        :func:`~qieemo_lobes.audio.stream_mono`).
    vad : callable, optional
        Returns the Silero model (default the ``silero-vad`` package's TorchScript model; the
        ONNX path passes :class:`qieemo_lobes.onnx_vad.SileroOnnx`).

    Notes
    -----
    The Silero model is loaded once per process and shared; it keeps state between frames, so
    segment one file at a time per process (no concurrent calls from several threads).

    Example
    -------
    >>> import soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> rng = np.random.default_rng(0)
    >>> beep = 0.3 * rng.standard_normal(16000)
    >>> sf.write(tmp / "b.wav", np.r_[np.zeros(16000), beep, np.zeros(24000), beep], 16000)
    >>> seg = SpeechSegmenter(method="energy")
    >>> [(round(a, 2), round(b, 2)) for a, b in seg(tmp / "b.wav")], seg.last_method
    ([(0.79, 2.22), (3.29, 4.5)], 'energy')
    """

    def __init__(
        self,
        method: str = "auto",
        threshold: float = 0.5,
        min_silence_s: float = 0.5,
        min_speech_s: float = 0.5,
        max_segment_s: float = 30.0,
        pad_s: float = 0.2,
        block_seconds: float = 60.0,
        resampler: Callable[[int, int], Resampler] | None = None,
        vad: Callable[[], FrameVAD] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.threshold = threshold
        self.min_silence_s = min_silence_s
        self.min_speech_s = min_speech_s
        self.max_segment_s = max_segment_s
        self.pad_s = pad_s
        self.block_seconds = block_seconds
        self.resampler = resampler
        self.vad = vad
        self.last_method: str | None = None

    def __call__(self, path: str | os.PathLike) -> list[tuple[float, float]]:
        """Return the speech segments of ``path`` as ``(start_s, end_s)`` pairs.

        Arguments
        ---------
        path : str or os.PathLike
            The audio file.

        Returns
        -------
        list of (float, float)
            Empty when the file holds no speech (silence only).
        """
        scores, self.last_method, duration = frame_scores(
            path, self.method, self.block_seconds, resampler=self.resampler, vad=self.vad
        )
        return scores_to_segments(
            scores,
            FRAME_S,
            duration,
            threshold=self.threshold,
            min_silence_s=self.min_silence_s,
            min_speech_s=self.min_speech_s,
            max_segment_s=self.max_segment_s,
            pad_s=self.pad_s,
        )


def segment_speech(
    path: str | os.PathLike, method: str = "auto", **kwargs
) -> list[tuple[float, float]]:
    """Return the speech segments of a recording (``SpeechSegmenter(method, **kwargs)(path)``).

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.
    method : {"auto", "silero", "energy"}
        The detector.
    **kwargs
        Other :class:`SpeechSegmenter` arguments.

    Returns
    -------
    list of (float, float)

    Example
    -------
    >>> import soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "s.wav", np.zeros(16000), 16000)
    >>> segment_speech(tmp / "s.wav", method="energy")
    []
    """
    return SpeechSegmenter(method, **kwargs)(path)


def iter_segment_waveforms(
    path: str | os.PathLike,
    segments: Iterable[tuple[float, float]],
    target_sr: int = SAMPLE_RATE,
    block_seconds: float = 60.0,
    *,
    resampler: Callable[[int, int], Resampler] | None = None,
    tensors: bool = True,
) -> Iterator[tuple[float, float, torch.Tensor | np.ndarray]]:
    """Yield ``(start_s, end_s, waveform)`` for each segment, streaming the file once.

    The waveforms are cut from the same :func:`~qieemo_lobes.audio.stream_mono` signal the
    segmenter saw (mono, ``target_sr``), so memory holds one block plus one segment; segments
    are visited in order of their start.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.
    segments : iterable of (float, float)
        Segments in seconds, e.g. from :func:`segment_speech`.
    target_sr : int
        Sample rate of the waveforms.
    block_seconds : float
        Length of the audio blocks streamed from the file.
    resampler : callable, optional
        Resampler factory for the stream (default torchaudio's), as for the segmenter.
    tensors : bool
        Yield torch tensors (default) or, False, numpy arrays (no torch needed).

    Yields
    ------
    (float, float, torch.Tensor or numpy.ndarray)
        The segment and its float32 waveform of ``round(end * sr) - round(start * sr)`` samples
        (fewer if the segment runs past the end of the file).

    Example
    -------
    >>> import soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "r.wav", np.arange(48000) / 48000, 48000)
    >>> [(a, b, len(w)) for a, b, w in iter_segment_waveforms(tmp / "r.wav", [(0.5, 0.75)])]
    [(0.5, 0.75, 4000)]
    """
    todo = sorted((float(a), float(b)) for a, b in segments)
    if not todo:
        return
    k = 0
    offset = 0  # sample index of buf[0]
    if tensors:
        import torch

        wrap = torch.from_numpy
    else:
        wrap = np.asarray
    buf = np.zeros(0, dtype=np.float32)
    for block in stream_mono(path, block_seconds, target_sr, resampler):
        buf = np.concatenate([buf, block])
        while k < len(todo):
            a, b = todo[k]
            s, e = round(a * target_sr), round(b * target_sr)
            if offset + len(buf) < e:
                break
            yield a, b, wrap(buf[max(0, s - offset) : e - offset].copy())
            k += 1
        # Keep only what the remaining segments can still need.
        keep_from = round(todo[k][0] * target_sr) - offset if k < len(todo) else len(buf)
        keep_from = max(0, min(keep_from, len(buf)))
        buf = buf[keep_from:]
        offset += keep_from
        if k == len(todo):
            return
    while k < len(todo):  # segments reaching past the end of the stream
        a, b = todo[k]
        s = round(a * target_sr)
        yield a, b, wrap(buf[max(0, s - offset) :].copy())
        k += 1
