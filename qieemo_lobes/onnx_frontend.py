"""Whisper's log-mel front end in numpy, for the ONNX encoder (no torch, no librosa).

The same computation as :func:`qieemo_lobes.encoders.log_mel` / ``log_mel_batch`` (what
:class:`~qieemo_lobes.whisper_torch.TorchWhisperBlocks` feeds its encoder): an STFT of 400
samples (25 ms) every :data:`HOP` = 160 samples (10 ms), periodic Hann window, centred frames
(reflection padding, as ``torch.stft``), the last frame dropped; power spectrum; Whisper's mel
filter bank (Slaney, 80 bands for whisper-base, stored with the ONNX model as ``mel_filters.npy``
by :mod:`qieemo_lobes.export_onnx`, so that no filter design runs here); ``log10`` floored at
``1e-10``; per utterance, values below its maximum minus 8 raised to it; ``(x + 4) / 4``.

The STFT runs in float64 and the result is cast to float32: within 1e-7 of ``encoders.log_mel``
run in float64. Its float32 run (the torch path's) differs from those exact values by its own
rounding, up to 3e-5 (mean 1e-7) on EmoDB and RAVDESS clips (``tests/test_onnx.py``).

Example
-------
>>> filters = np.full((2, 201), 1e-3, dtype=np.float32)
>>> mel = log_mel(np.zeros(1600, dtype=np.float32), filters)
>>> mel.shape, float(mel.max())  # silence: log10(1e-10) everywhere, then (x + 4) / 4
((2, 10), -1.5)
>>> mels, mel_frames, valid = log_mel_batch([np.zeros(1600), np.zeros(3200)], filters, fit=True)
>>> mels.shape, mel_frames.tolist(), valid
((2, 2, 20), [10, 20], 10)
"""

from __future__ import annotations

import numpy as np

__all__ = ["HOP", "N_FFT", "WINDOW_SAMPLES", "log_mel", "log_mel_batch", "window_spans"]

N_FFT = 400
HOP = 160
WINDOW_SAMPLES = 30 * 16000  # Whisper's 30-second window
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float64)


def log_mel(wav: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Whisper's normalised log-mel ``(n_mels, len(wav) // 160)`` of one utterance.

    Arguments
    ---------
    wav : numpy.ndarray
        ``(samples,)`` at 16 kHz, at least 201 samples (reflection padding).
    filters : numpy.ndarray
        The mel filter bank ``(n_mels, 201)``.

    Returns
    -------
    numpy.ndarray
        float32.
    """
    wav = np.asarray(wav, dtype=np.float64)
    padded = np.pad(wav, N_FFT // 2, mode="reflect")
    n_frames = len(wav) // HOP  # torch.stft gives one more; Whisper drops it
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, N_FFT),
        strides=(padded.strides[0] * HOP, padded.strides[0]),
        writeable=False,
    )
    spectrum = np.fft.rfft(frames * _HANN, axis=1)
    power = spectrum.real**2 + spectrum.imag**2  # (frames, 201)
    mel = filters.astype(np.float64) @ power.T  # (n_mels, frames)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def log_mel_batch(
    wavs: list[np.ndarray], filters: np.ndarray, fit: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """Log-mels of a batch (at most 30 s each): ``(mels (B, n_mels, F), mel_frames (B,), valid)``.

    As :func:`qieemo_lobes.encoders.log_mel_batch`: an utterance of ``n`` samples has
    ``n // 160`` mel frames (at least 2) and ``(n // 160 + 1) // 2`` encoder frames; ``valid``
    is the longest utterance's number of encoder frames. ``fit=False`` (Whisper's ``"30s"``
    window): every utterance zero-padded to 30 s, 3000 mel frames each. Mel frames past an
    utterance's end are zero.
    """
    lengths = [len(w) for w in wavs]
    if fit:
        mel_frames = np.array([max(n // HOP, 2) for n in lengths], dtype=np.int64)
    else:
        mel_frames = np.full(len(wavs), WINDOW_SAMPLES // HOP, dtype=np.int64)
    mels = np.zeros((len(wavs), filters.shape[0], int(mel_frames.max())), dtype=np.float32)
    for i, wav in enumerate(wavs):
        wav = np.asarray(wav, dtype=np.float32)
        if not fit:
            wav = np.pad(wav, (0, WINDOW_SAMPLES - len(wav)))
        padded = wav if len(wav) >= 2 * HOP else np.pad(wav, (0, 2 * HOP - len(wav)))
        frames = int(mel_frames[i])
        mels[i, :, :frames] = log_mel(padded, filters)[:, :frames]
    valid = (max(max(n // HOP, 2) for n in lengths) + 1) // 2
    return mels, mel_frames, valid


def window_spans(lengths: list[int]) -> list[tuple[int, list[int], list[int]]]:
    """The 30-second windows of a batch: ``(start sample, active rows, their lengths)`` each.

    As :func:`qieemo_lobes.encoders.encode_in_windows`: utterances over 30 s are encoded as
    consecutive 30 s windows whose frames are concatenated; a window holds the rows still running.

    Example
    -------
    >>> window_spans([16000, 500000])
    [(0, [0, 1], [16000, 480000]), (480000, [1], [20000])]
    """
    spans = []
    for start in range(0, max(max(lengths), 1), WINDOW_SAMPLES):
        rows = [i for i, n in enumerate(lengths) if n - start > 0]
        spans.append((start, rows, [min(lengths[i] - start, WINDOW_SAMPLES) for i in rows]))
    return spans
