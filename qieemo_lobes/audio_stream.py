"""Streaming a long audio file block by block, resampled as in one pass, in bounded memory.

:func:`stream_audio` (tensors) and :func:`stream_mono` (numpy, for the torch-free ONNX path)
read a long file (a one-hour call) a block at a time and resample each block with real samples
of its neighbours as context, so the blocks concatenate to :func:`qieemo_lobes.audio.load_audio`'s
waveform. The resampler is torchaudio's sinc resampler (:func:`torch_resampler`, also what
``load_audio`` uses), or any :class:`Resampler` passed in. Problems are :class:`AudioError` lines,
as everywhere in :mod:`qieemo_lobes.audio`, which re-exports this module's public names.

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from qieemo_lobes.audio_decode import open_info, read_blocks, to_mono
from qieemo_lobes.audio_errors import AudioError

if TYPE_CHECKING:
    import torch
    import torchaudio

__all__ = ["Resampler", "check_finite", "stream_audio", "stream_mono", "torch_resampler"]


@functools.lru_cache(maxsize=16)
def torch_resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    import torchaudio

    return torchaudio.transforms.Resample(orig_sr, new_sr)


class Resampler(Protocol):
    """What :func:`stream_mono` resamples with: float32 samples in, float32 samples out.

    ``width``: input samples either side of an output sample that the kernel reaches.
    """

    width: int

    def __call__(self, samples: np.ndarray) -> np.ndarray: ...


class _TorchResampler:
    """torchaudio's resampler (:func:`torch_resampler`) on numpy arrays."""

    def __init__(self, orig_sr: int, new_sr: int):
        self.transform = torch_resampler(orig_sr, new_sr)
        self.width = int(getattr(self.transform, "width", 64))

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.transform(torch.from_numpy(samples)).numpy()


def check_finite(path: str, mono: np.ndarray) -> None:
    """Raise :class:`AudioError` when ``mono`` holds NaN or infinite samples."""
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or infinite samples")


def _resample_context(resampler: Resampler, orig: int) -> int:
    """Input samples of context each side that make block-wise resampling exact.

    The sinc kernel of torchaudio reaches ``resampler.width`` input samples either side of an
    output sample; the context is rounded up to a multiple of the reduced input rate ``orig``
    so that the output samples of a block fall on the same phases as in a whole-file pass.
    """
    width = int(getattr(resampler, "width", 64))
    return orig * math.ceil((width + orig + 1) / orig)


def stream_audio(
    path: str | os.PathLike, block_seconds: float = 30.0, target_sr: int = 16000
) -> Iterator[torch.Tensor]:
    """Yield a long file as consecutive mono float32 blocks at ``target_sr``.

    Only one block (plus a little resampler context) is in memory at a time, so a one-hour file
    streams in bounded memory. Concatenating the blocks gives :func:`~qieemo_lobes.audio.load_audio`'s waveform
    (within float rounding): each block is resampled with real neighbouring samples as context.
    Every block but the last has the same length, about ``block_seconds * target_sr``.

    The file is checked as in :func:`~qieemo_lobes.audio.load_audio` (missing, empty, zero length, corrupt,
    truncated, NaN/inf) except for silence, which is the segmenter's business; problems found
    while decoding are raised when reached, after the earlier blocks have been yielded.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file (any format of :func:`~qieemo_lobes.audio.audio_extensions`; a file that only ffmpeg reads
        is streamed from ffmpeg's output, a block at a time too).
    block_seconds : float
        Block length in seconds.
    target_sr : int
        Output sample rate.

    Yields
    ------
    torch.Tensor
        Shape ``(samples,)``, float32.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "long.flac", np.random.uniform(-0.5, 0.5, 48000 * 5), 48000)
    >>> blocks = list(stream_audio(tmp / "long.flac", block_seconds=2.0))
    >>> [len(b) for b in blocks]
    [32000, 32000, 16000]
    """
    import torch

    for block in stream_mono(path, block_seconds, target_sr):
        yield torch.from_numpy(block)


def stream_mono(
    path: str | os.PathLike,
    block_seconds: float = 30.0,
    target_sr: int = 16000,
    resampler: Callable[[int, int], Resampler] | None = None,
) -> Iterator[np.ndarray]:
    """The blocks of :func:`stream_audio` as float32 numpy arrays, with the checks it makes.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.
    block_seconds : float
        Block length in seconds.
    target_sr : int
        Output sample rate.
    resampler : callable, optional
        ``resampler(orig_sr, new_sr)`` returns the :class:`Resampler` to use; default
        torchaudio's (``torchaudio.transforms.Resample``), which imports torch. The ONNX path
        passes :class:`qieemo_lobes.onnx_audio.SincResampler`, its numpy copy.

    Yields
    ------
    numpy.ndarray
        Shape ``(samples,)``, float32.
    """
    path = os.fspath(path)
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    info = open_info(path)
    if info.frames == 0:
        raise AudioError(path, "no audio samples (zero length)")
    rate = int(info.samplerate)
    g = math.gcd(rate, target_sr)
    orig, new = rate // g, target_sr // g
    resample = None
    if rate != target_sr:
        resample = (resampler or _TorchResampler)(rate, target_sr)
    context = _resample_context(resample, orig) if resample is not None else 0
    # Blocks hold a whole number of resampling periods (``orig`` input -> ``new`` output samples).
    block = orig * max(1, round(block_seconds * rate / orig))

    def emit(left: np.ndarray, body: np.ndarray, right: np.ndarray, last: bool) -> np.ndarray:
        if resample is None:
            return body.copy()
        y = resample(np.concatenate([left, body, right]))
        start = len(left) // orig * new
        n_out = math.ceil(len(body) * new / orig) if last else len(body) // orig * new
        return y[start : start + n_out].copy()

    n_read = 0
    left = np.zeros(0, dtype=np.float32)
    pending = np.zeros(0, dtype=np.float32)
    # read_blocks raises a truncation after the last block, before the last output block.
    for chunk in read_blocks(path, info, block):
        n_read += len(chunk)
        mono = to_mono(chunk)
        check_finite(path, mono)
        pending = np.concatenate([pending, mono])
        while len(pending) >= block + context:
            yield emit(left, pending[:block], pending[block : block + context], False)
            left = np.concatenate([left, pending[:block]])[len(left) + block - context :]
            pending = pending[block:]
    if n_read == 0:
        raise AudioError(path, "no audio samples (zero length)")
    if len(pending):
        yield emit(left, pending, np.zeros(0, dtype=np.float32), True)
