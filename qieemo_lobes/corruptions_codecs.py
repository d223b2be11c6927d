"""Channel corruptions for :mod:`qieemo_lobes.corruptions`: telephone band and lossy codecs.

- :func:`telephone`: 8 kHz, 300-3400 Hz band-pass, G.711 mu-law, back to the input rate, all
  in-process (torchaudio + scipy), so it needs no ffmpeg.
- :func:`ffmpeg_codec`: encode with ffmpeg (``libgsm``, ``libmp3lame``, ``libopus``) and decode
  back, through pipes (no file is written), trimmed or padded to the input length and
  time-aligned with the input. torchaudio 2.11 has no ``apply_codec`` any more (it went with
  the sox backend), so ffmpeg is called directly.

Debian's ffmpeg decodes AMR-NB/WB but has no AMR encoder (``libopencore_amrnb`` is not built
in, see ``ffmpeg -encoders``), so there is no AMR corruption.

Example
-------
>>> import numpy as np
>>> wav = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
>>> telephone(wav, 16000).shape
(16000,)
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import numpy as np
import scipy.signal
import torch
import torchaudio.functional as AF

__all__ = ["CODECS", "CodecError", "codec_problems", "ffmpeg_codec", "ffmpeg_program", "telephone"]

TELEPHONE_RATE = 8000
TELEPHONE_BAND = (300.0, 3400.0)
# name -> (ffmpeg encoder, container (-f) to pipe the coded stream through, coding rate or None
# for the input rate, samples of delay the decoded stream keeps at the start).
# LAME delays its output by 576 samples (encoder) + 529 (decoder); ffmpeg removes this only from
# a file whose LAME header it could rewrite at the end, which a pipe is not, so it is cut here.
# The Ogg container carries Opus' pre-skip and ffmpeg applies it; GSM 06.10 adds no delay.
CODECS: dict[str, tuple[str, str, int | None, int]] = {
    "gsm": ("libgsm", "gsm", 8000, 0),
    "mp3": ("libmp3lame", "mp3", None, 576 + 529),
    "opus": ("libopus", "ogg", None, 0),
}


class CodecError(RuntimeError):
    """ffmpeg is missing, lacks an encoder, or failed (message: one line)."""


def ffmpeg_program() -> str | None:
    """Path of the ``ffmpeg`` program, ``None`` when it is not installed.

    ``$QIEEMO_FFMPEG`` names the program (as for decoding in :mod:`qieemo_lobes.audio`),
    otherwise it is looked up on ``PATH``.
    """
    return shutil.which(os.environ.get("QIEEMO_FFMPEG") or "ffmpeg")


@functools.lru_cache(maxsize=4)
def _encoders(program: str) -> frozenset[str]:
    try:
        out = subprocess.run(
            [program, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return frozenset()
    # Lines look like " A....D libmp3lame   libmp3lame MP3 (MPEG audio layer 3) (codec mp3)".
    return frozenset(p[1] for line in out.splitlines() if len(p := line.split()) > 1)


def codec_problems() -> dict[str, str]:
    """``{codec: one-line reason}`` for the :data:`CODECS` this machine's ffmpeg cannot make."""
    program = ffmpeg_program()
    if program is None:
        return {name: "ffmpeg not found (install the Debian package ffmpeg)" for name in CODECS}
    encoders = _encoders(program)
    return {
        name: f"this ffmpeg has no {encoder} encoder (see ffmpeg -encoders)"
        for name, (encoder, *_) in CODECS.items()
        if encoder not in encoders
    }


def _run(args: list[str], data: bytes) -> bytes:
    program = ffmpeg_program()
    if program is None:
        raise CodecError("ffmpeg not found (install the Debian package ffmpeg)")
    cmd = [program, "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True)
    except OSError as err:
        raise CodecError(f"cannot run ffmpeg: {err.strerror or err}") from err
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise CodecError(f"ffmpeg failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


def _fit(wav: np.ndarray, n: int) -> np.ndarray:
    """``wav`` cut or zero-padded at the end to ``n`` samples."""
    return np.pad(wav[:n], (0, max(0, n - len(wav)))).astype(np.float32)


def ffmpeg_codec(wav: np.ndarray, sample_rate: int, codec: str, kbps: float | None) -> np.ndarray:
    """``wav`` encoded with ``codec`` (a :data:`CODECS` name) at ``kbps`` and decoded again.

    Returns float32 samples at ``sample_rate``, as many as ``wav`` has, aligned with it.
    Raises :class:`CodecError` when ffmpeg is missing, lacks the encoder, or fails.
    """
    encoder, container, rate, delay = CODECS[codec]
    problem = codec_problems().get(codec)
    if problem:
        raise CodecError(problem)
    raw = ["-f", "f32le", "-ac", "1", "-ar", str(sample_rate)]
    encode = [*raw, "-i", "pipe:0", "-c:a", encoder]
    if rate is not None:
        encode += ["-ar", str(rate)]
    if kbps is not None:
        encode += ["-b:a", f"{kbps:g}k"]
    coded = _run([*encode, "-f", container, "pipe:1"], np.asarray(wav, "<f4").tobytes())
    decoded = _run(["-f", container, "-i", "pipe:0", *raw, "pipe:1"], coded)
    return _fit(np.frombuffer(decoded, dtype="<f4")[delay:], len(wav))


def telephone(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrow-band telephone channel: 8 kHz, 300-3400 Hz, G.711 mu-law, back to the input rate.

    The band-pass is a 4th-order Butterworth run forwards and backwards (scipy's
    ``sosfiltfilt``: zero phase, so the output stays time-aligned; torchaudio's biquads are
    causal and only 2nd order). mu-law is torchaudio's ``mu_law_encoding``/``decoding``
    (mu = 255, 256 levels): the continuous mu-law curve, within a fraction of a step of
    G.711's segmented table.
    """
    x = AF.resample(torch.as_tensor(wav, dtype=torch.float32), sample_rate, TELEPHONE_RATE)
    sos = scipy.signal.butter(4, TELEPHONE_BAND, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    x = torch.from_numpy(scipy.signal.sosfiltfilt(sos, x.numpy()).astype(np.float32))
    x = AF.mu_law_decoding(AF.mu_law_encoding(x.clamp(-1.0, 1.0), 256), 256)
    return _fit(AF.resample(x, TELEPHONE_RATE, sample_rate).numpy(), len(wav))
