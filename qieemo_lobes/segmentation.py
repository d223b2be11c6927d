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
    ``"energy"``: a frame-energy detector (:mod:`qieemo_lobes.segmentation_vad`), needing
    nothing but numpy.
    ``"auto"`` (default): Silero where the package is installed and runs, else energy.

The parts
    :mod:`qieemo_lobes.segmentation_vad`: the detectors, a speech score per 32 ms frame of a
    streamed file (:func:`frame_scores`), and the energy detector's rule.
    :mod:`qieemo_lobes.segmentation_rules`: the segment rules, the same for both detectors
    (:func:`scores_to_segments`: hysteresis, merge, pad, drop, split at the deepest pause; no
    segment longer than ``max_segment_s``).
    This module: the front ends, :class:`SpeechSegmenter` and :func:`segment_speech` (file ->
    segments), and :func:`iter_segment_waveforms` (the segments' audio, streaming the file once).
    It is the segmentation API: the public names of the parts are re-exported here.

Example
-------
>>> from qieemo_lobes import segmentation_rules
>>> scores_to_segments is segmentation_rules.scores_to_segments  # re-exported here
True
>>> SpeechSegmenter(method="energy").method
'energy'

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from qieemo_lobes.audio import Resampler, stream_mono
from qieemo_lobes.segmentation_rules import scores_to_segments
from qieemo_lobes.segmentation_vad import (  # noqa: F401  (FRAME_SAMPLES: re-exported)
    FRAME_S,
    FRAME_SAMPLES,
    METHODS,
    SAMPLE_RATE,
    FrameVAD,
    energy_scores,
    frame_scores,
    silero_available,
)

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

# Recordings longer than this are segmented before classification; shorter ones go whole.
LONG_RECORDING_S = 30.0


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
