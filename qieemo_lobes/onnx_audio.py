"""Audio input for the torch-free ONNX path: torchaudio's resampler in numpy, whole files, streams.

``classify --backend onnx`` reads audio exactly as the torch path does (:mod:`qieemo_lobes.audio`:
the same decoding, soundfile then ffmpeg, the same checks and one-line problems), except that it
resamples with :class:`SincResampler`, a numpy copy of ``torchaudio.transforms.Resample`` (its
default ``sinc_interp_hann`` kernel, 6 zero crossings, roll-off 0.99: the same kernel, built the
same way, applied as the same strided convolution). Why not ``soxr`` or
``scipy.signal.resample_poly``: both are good resamplers but other filters, so a 22.05 kHz clip
would reach the model as a slightly different signal than on the torch path; this copy matches
torchaudio to float rounding (about 1e-7 on EmoDB's 22.05 kHz clips) and needs nothing but numpy.
A 16 kHz file is not resampled at all.

Example
-------
>>> import numpy as np
>>> resample = SincResampler(22050, 16000)
>>> resample.width, len(resample(np.zeros(22050, dtype=np.float32)))
(9, 16000)
>>> tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
>>> y = SincResampler(44100, 16000)(tone)
>>> len(y), round(float(np.abs(y[1000:-1000]).max()), 2)
(16000, 1.0)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator

import numpy as np

from qieemo_lobes.audio import check_samples, decode_mono, stream_mono

__all__ = ["SincResampler", "load_audio", "remove_dc", "sinc_resampler", "stream_audio"]


class SincResampler:
    """``torchaudio.transforms.Resample(orig_sr, new_sr)`` in numpy (default arguments).

    Arguments
    ---------
    orig_sr : int
        Input sample rate.
    new_sr : int
        Output sample rate.
    lowpass_filter_width : int
        Zero crossings of the windowed sinc each side (torchaudio's default 6).
    rolloff : float
        Cut-off as a fraction of the lower Nyquist frequency (torchaudio's default 0.99).
    """

    def __init__(
        self, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
    ):
        gcd = math.gcd(int(orig_sr), int(new_sr))
        self.orig, self.new = int(orig_sr) // gcd, int(new_sr) // gcd
        base = min(self.orig, self.new) * rolloff
        self.width = math.ceil(lowpass_filter_width * self.orig / base)
        # As torchaudio's _get_sinc_resample_kernel: output phases in float32 (an integer tensor
        # divided by an int), input positions in float64, the kernel cast to float32 at the end.
        idx = np.arange(-self.width, self.width + self.orig, dtype=np.float64)[None, :] / self.orig
        phase = np.arange(0, -self.new, -1).astype(np.float32) / np.float32(self.new)
        t = (phase.astype(np.float64)[:, None] + idx) * base
        t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
        window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t *= math.pi
        with np.errstate(invalid="ignore", divide="ignore"):
            kernels = np.where(t == 0, 1.0, np.sin(t) / t)
        kernels *= window * (base / self.orig)
        self.kernel = np.ascontiguousarray(kernels.T, dtype=np.float32)  # (taps, new)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Resample ``samples`` ``(n,)``: ``ceil(n * new / orig)`` float32 samples."""
        samples = np.asarray(samples, dtype=np.float32)
        length = len(samples)
        if self.orig == self.new:
            return samples.copy()
        padded = np.pad(samples, (self.width, self.width + self.orig))
        taps = self.kernel.shape[0]
        n_frames = (len(padded) - taps) // self.orig + 1
        frames = np.lib.stride_tricks.as_strided(
            padded,
            shape=(n_frames, taps),
            strides=(padded.strides[0] * self.orig, padded.strides[0]),
            writeable=False,
        )
        out = (frames @ self.kernel).reshape(-1)
        # torchaudio: ceil of a float32 tensor holding new * length / orig.
        return out[: math.ceil(np.float32(self.new * length / self.orig))]


@functools.lru_cache(maxsize=16)
def sinc_resampler(orig_sr: int, new_sr: int) -> SincResampler:
    """A shared :class:`SincResampler` per pair of rates (building its kernel takes ~5 ms)."""
    return SincResampler(orig_sr, new_sr)


def load_audio(path: str | os.PathLike, target_sr: int = 16000) -> np.ndarray:
    """:func:`qieemo_lobes.audio.load_audio` without torch: float32 samples at ``target_sr``.

    The same decoding and checks (every problem an :class:`~qieemo_lobes.audio.AudioError`).
    """
    mono, rate = decode_mono(path)
    check_samples(path, mono, rate)
    if rate == target_sr:
        return mono
    return sinc_resampler(rate, target_sr)(mono)


def stream_audio(
    path: str | os.PathLike, block_seconds: float = 30.0, target_sr: int = 16000
) -> Iterator[np.ndarray]:
    """:func:`qieemo_lobes.audio.stream_audio` without torch: numpy blocks, numpy resampler."""
    return stream_mono(path, block_seconds, target_sr, sinc_resampler)


def remove_dc(wavs: list[np.ndarray]) -> list[np.ndarray]:
    """Each waveform minus its mean (:func:`qieemo_lobes.audio.remove_dc` before padding).

    Example
    -------
    >>> [w.tolist() for w in remove_dc([np.array([0.5, 0.75, 0.25, 0.5]), np.array([0.5, 0.0])])]
    [[0.0, 0.25, -0.25, 0.0], [0.25, -0.25]]
    """
    return [(w - w.mean(dtype=np.float64)).astype(np.float32) for w in wavs]
