"""Signal levels of :mod:`qieemo_lobes.audio`: the silence check and the DC offset.

"Silence only" means that no 32 ms frame of the mono signal reaches :data:`SILENCE_DBFS` (-60 dB
relative to full scale, RMS) once the frame's DC offset and linear trend are removed
(:func:`frame_dbfs`): digital silence, a quiet room and a constant or drifting offset without
sound (a recorder's DC) do not reach it, any normally recorded speech does, quiet speech too (an
EmoDB clip 40 dB down passes, and espeak-ng speech peaking at -45 dBFS has its loudest frame near
-55 dBFS; every file of EmoDB, RAVDESS, nEMO, EMOVO and TurEV-DB passes). Clipped speech is
speech: it passes, and is classified as it is.

Everything here is re-exported by :mod:`qieemo_lobes.audio`.

Authors
-------
 * qieemo project
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qieemo_lobes.audio_errors import AudioError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SILENCE_DBFS",
    "SILENCE_FRAME_S",
    "SILENCE_PROBLEM",
    "check_not_silent",
    "frame_dbfs",
    "remove_dc",
]

# A file whose loudest 32 ms frame stays below this RMS level (dB re full scale) is "silence only".
SILENCE_DBFS: float = -60.0
SILENCE_FRAME_S: float = 0.032
SILENCE_PROBLEM = "silence only (no speech to classify)"


def frame_dbfs(
    mono: np.ndarray, sample_rate: int, frame_s: float = SILENCE_FRAME_S, detrend: bool = True
) -> np.ndarray:
    """RMS level of consecutive frames in dB re full scale (-inf for digital silence).

    By default each frame's DC offset and linear trend are removed first (a least-squares line,
    as ``scipy.signal.detrend`` fits, in closed form: scipy solves one ``lstsq`` per block of
    frames, which made the check of a whole corpus 10x slower), so that a constant or slowly drifting offset, which is no sound,
    does not count as level: a recorder's DC offset would otherwise pass for speech. Speech
    (a fundamental frequency over 60 Hz: about two periods or more per 32 ms frame) keeps
    practically all of its level: the loudest frame of a clip loses 0.005 dB (median over the
    6535 files of five emotion corpora).

    Arguments
    ---------
    mono : numpy.ndarray
        1-D signal, full scale = 1.0.
    sample_rate : int
        Its sample rate.
    frame_s : float
        Frame length in seconds; a last partial frame is measured as it is.
    detrend : bool
        Remove each frame's offset and linear trend before measuring (False: plain RMS).

    Returns
    -------
    numpy.ndarray
        One level per frame.

    Example
    -------
    >>> tone = 0.1 * np.sqrt(2) * np.sin(2 * np.pi * 250 * np.arange(1024) / 16000)
    >>> frame_dbfs(tone + 0.5, 16000).round(1)  # the tone's level, not its offset's
    array([-20., -20.])
    >>> frame_dbfs(np.full(1024, 0.5), 16000)
    array([-inf, -inf])
    >>> frame_dbfs(np.full(1024, 0.1), 16000, detrend=False).round(1)
    array([-20., -20.])
    """
    frame = max(1, round(frame_s * sample_rate))
    mono = np.asarray(mono)
    n_full = len(mono) // frame
    end = n_full * frame
    pieces = [mono[a : min(a + frame * 4096, end)] for a in range(0, end, frame * 4096)]
    if len(mono) > n_full * frame:
        pieces.append(mono[n_full * frame :])
    powers = []
    for piece in pieces:  # bounded memory: 4096 frames at a time
        rows = piece.astype(np.float64).reshape(-1, min(frame, len(piece)))
        if detrend:
            rows = _remove_line(rows)
        powers.append(np.square(rows).mean(axis=1))
    power = np.concatenate(powers) if powers else np.zeros(0)
    with np.errstate(divide="ignore"):
        # Detrending leaves rounding noise (~1e-33) on a constant: that is digital silence.
        return 10.0 * np.log10(np.where(power < 1e-20, 0.0, power))


def _remove_line(rows: np.ndarray) -> np.ndarray:
    """Each row minus its least-squares line ``a + b t`` (closed form, no solver)."""
    t = np.arange(rows.shape[1], dtype=np.float64)
    t -= t.mean()
    centred = rows - rows.mean(axis=1, keepdims=True)
    norm = float(t @ t)
    if norm == 0.0:  # a one-sample row: only its mean
        return centred
    return centred - np.outer(centred @ t / norm, t)


def check_not_silent(path: str, mono: np.ndarray, sample_rate: int) -> None:
    """Raise :class:`AudioError` (:data:`SILENCE_PROBLEM`) when no frame reaches :data:`SILENCE_DBFS`.

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> quiet = 10 ** (-45 / 20) * np.sin(2 * np.pi * 200 * t)  # peaks at -45 dBFS
    >>> check_not_silent("quiet.wav", quiet, 16000)  # quiet, not silent: no error
    >>> check_not_silent("hum.wav", quiet / 100, 16000)
    Traceback (most recent call last):
    ...
    qieemo_lobes.audio_errors.AudioError: hum.wav: silence only (no speech to classify)
    """
    levels = frame_dbfs(mono, sample_rate)
    if levels.size == 0 or levels.max() < SILENCE_DBFS:
        raise AudioError(path, SILENCE_PROBLEM)


def remove_dc(wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
    """Each waveform minus its mean over its own length (padding stays zero).

    A DC offset is no sound, but Whisper's log-mel puts it in its lowest band, and the
    per-utterance normalisation of the log-mel then lowers every other band: with the default
    model, a 0.1 offset under an espeak-ng clip moved "sad" from 0.48 to 0.70, and an offset alone
    (no speech) came out "sad". Training clips have next to no offset (EmoDB: -3e-4), so for them
    this changes little, and an offset recording is classified as if recorded without it. The
    model sees its input through this function in training (the recipe's
    :func:`qieemo_lobes.features.read_audio`) and at inference
    (:meth:`qieemo_lobes.interfaces.EmotionRecognizer.classify_batch`). The silence check
    (:func:`frame_dbfs`) ignores offsets the same way.

    Arguments
    ---------
    wavs : torch.Tensor
        ``(batch, samples)``, zero-padded.
    wav_lens : torch.Tensor
        ``(batch,)`` lengths relative to the longest (SpeechBrain convention).

    Returns
    -------
    torch.Tensor
        ``(batch, samples)``.

    Example
    -------
    >>> import torch
    >>> remove_dc(torch.tensor([[0.5, 0.7, 0.3, 0.5], [0.6, 0.2, 0.0, 0.0]]), torch.tensor([1.0, 0.5]))
    tensor([[ 0.0000,  0.2000, -0.2000,  0.0000],
            [ 0.2000, -0.2000,  0.0000,  0.0000]])
    """
    import torch  # imported here: the silence check and frame levels need only numpy

    n_samples = (wav_lens * wavs.shape[1]).round().long().clamp(min=1)
    inside = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < n_samples[:, None]
    mean = (wavs * inside).sum(dim=1, keepdim=True) / n_samples[:, None]
    return torch.where(inside, wavs - mean, torch.zeros_like(wavs))
