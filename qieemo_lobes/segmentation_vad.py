"""Voice activity detection for :mod:`qieemo_lobes.segmentation`: a speech score per 32 ms frame.

A file is streamed at 16 kHz over :func:`qieemo_lobes.audio.stream_mono` blocks and each
512-sample frame is scored by the Silero VAD network (TorchScript from the ``silero-vad``
package, or the ONNX model passed as ``vad=``) or by the energy detector below; the scores are
then turned into segments by :func:`qieemo_lobes.segmentation_rules.scores_to_segments`.

Energy detector
    Frame levels are RMS dB re full scale of 32 ms frames whose DC offset and linear trend are
    removed first (:func:`qieemo_lobes.audio.frame_dbfs`), so that a recorder's DC offset is not
    taken for sound (a constant offset would otherwise make the whole file one level, and every
    frame "speech"). After the pass, a threshold is set from
    the file's own level distribution: ``max(noise + (loud - noise) / 2, loud - 30 dB, -60 dB)``
    with ``noise`` the 10th and ``loud`` the 98th percentile of the frame levels; the per-frame
    score is ``sigmoid((level - threshold) / 3 dB)``, so the Silero thresholds apply unchanged.
    It handles clean and moderately noisy recordings; babble or music are called speech.

Everything public here is re-exported by :mod:`qieemo_lobes.segmentation`.

Example
-------
>>> scores, threshold = energy_scores(np.r_[np.full(10, -80.0), np.full(10, -20.0)])
>>> threshold, [round(float(s), 2) for s in scores[[0, -1]]]
(-50.0, [0.0, 1.0])

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from qieemo_lobes.audio import SILENCE_DBFS, Resampler, frame_dbfs, stream_mono

if TYPE_CHECKING:
    import torch

# torch is imported only by the TorchScript Silero model: the ONNX path
# (qieemo_lobes.onnx_inference) scores frames without it.

__all__ = [
    "FRAME_S",
    "FRAME_SAMPLES",
    "METHODS",
    "SAMPLE_RATE",
    "FrameVAD",
    "energy_scores",
    "frame_scores",
    "silero_available",
]

# The logger keeps the name of the module these detectors come from (records unchanged).
logger = logging.getLogger("qieemo_lobes.segmentation")

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
