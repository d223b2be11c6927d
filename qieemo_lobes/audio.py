"""Robust audio input: find audio files, load them whole or stream them, fail with one clear line.

Every problem with an input file is raised as :class:`AudioError`, whose ``str()`` is one line
``<path>: <problem>`` that a batch command can print and carry on with the next file:

================================  ======================================================
input                             problem
================================  ======================================================
missing path                      ``no such file or directory``
FIFO, device, socket              ``not a regular file (FIFO)`` (never opened, so never blocks)
0-byte file                       ``empty file (0 bytes)``
valid header, no samples          ``no audio samples (zero length)``
text file named ``.wav``          ``not an audio file (text content)``
damaged / unknown content         ``not a readable audio file (corrupt or unknown format)``
damaged data after a good header  ``corrupt or truncated audio data (...)``
truncated file                    ``truncated audio file (...)``
NaN or inf samples                ``contains NaN or infinite samples``
under :data:`MIN_SECONDS`         ``too short (...)``
``.m4a``/``.aac``/... w/o ffmpeg  ``cannot decode .m4a audio: install ffmpeg to read ...``
silence, very quiet, DC only      ``silence only (no speech to classify)``
longer than ``max_seconds``       :class:`AudioTooLongError` (``too long for ...``)
================================  ======================================================

Decoding (:mod:`qieemo_lobes.audio_decode`): soundfile (libsndfile 1.2) reads WAV (PCM, float,
8 kHz mu-law and A-law, ADPCM, GSM), FLAC, OGG Vorbis, Opus, MP3, AIFF, AU, CAF and W64; what it
cannot open (M4A/AAC, WebM, WMA, AMR, 3GP, G.722/G.726 WAV, ...) is decoded by the ``ffmpeg``
program (:mod:`qieemo_lobes.audio_ffmpeg`), where it is installed. ``classify``, data
preparation (:func:`check_audio`) and training (:func:`qieemo_lobes.features.read_audio`) all
decode through it, so what one accepts, the others accept.

Channels are averaged to mono and the signal is resampled with torchaudio's sinc resampler
(``torchaudio.transforms.Resample``; the torch-free path of :mod:`qieemo_lobes.onnx_audio` passes
its numpy copy of that resampler to :func:`stream_mono`). torch and torchaudio are imported only
by the functions that return tensors, so that finding, checking and decoding files needs neither.
"Silence only" (:mod:`qieemo_lobes.audio_levels`) means
that no 32 ms frame of the mono signal reaches :data:`SILENCE_DBFS` (-60 dB relative to full
scale, RMS) once the frame's DC offset and linear trend are removed (:func:`frame_dbfs`): quiet
speech passes (peaking at -45 dBFS, say), clipped speech too.

:func:`find_audio` reports a folder it cannot search (no permission, I/O error) as an error of
its own instead of skipping it silently.

:func:`stream_audio` (:mod:`qieemo_lobes.audio_stream`) reads a long file (a one-hour call) block by block and resamples each block
with context from its neighbours, so its output equals :func:`load_audio`'s while memory stays
bounded by the block size.

This module is the package's audio API; the modules named above hold the parts and their names
are re-exported here.

Example
-------
>>> import numpy as np, soundfile as sf
>>> tmp = getfixture("tmp_path")
>>> t = np.arange(44100) / 44100
>>> sf.write(tmp / "tone.wav", 0.1 * np.sin(2 * np.pi * 440 * t), 44100)
>>> load_audio(tmp / "tone.wav").shape
torch.Size([16000])
>>> sf.write(tmp / "quiet.wav", np.zeros(8000), 8000)
>>> try:
...     load_audio(tmp / "quiet.wav")
... except AudioError as err:
...     print(err.problem)
silence only (no speech to classify)

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from qieemo_lobes.audio_decode import (
    AUDIO_EXTENSIONS,
    audio_extensions,
    audio_info,
    read_all,
    read_segment,
    to_mono,
)
from qieemo_lobes.audio_errors import AudioError, AudioTooLongError, os_problem
from qieemo_lobes.audio_ffmpeg import FFMPEG_EXTENSIONS, find_ffmpeg
from qieemo_lobes.audio_levels import (
    SILENCE_DBFS,
    SILENCE_FRAME_S,
    SILENCE_PROBLEM,
    check_not_silent,
    frame_dbfs,
    remove_dc,
)
from qieemo_lobes.audio_stream import (
    Resampler,
    check_finite,
    stream_audio,
    stream_mono,
    torch_resampler,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUDIO_EXTENSIONS",
    "Resampler",
    "FFMPEG_EXTENSIONS",
    "SILENCE_DBFS",
    "SILENCE_FRAME_S",
    "SILENCE_PROBLEM",
    "AudioError",
    "AudioTooLongError",
    "audio_extensions",
    "audio_info",
    "check_audio",
    "check_samples",
    "decode_mono",
    "remove_dc",
    "find_audio",
    "find_ffmpeg",
    "frame_dbfs",
    "load_audio",
    "read_segment",
    "stream_audio",
    "stream_mono",
]

# The name of FFMPEG_EXTENSIONS before ffmpeg decoded them (torchaudio + torchcodec did).
FALLBACK_EXTENSIONS = FFMPEG_EXTENSIONS
# Shorter clips hold no utterance to classify (and give the encoder too few frames to work on).
MIN_SECONDS: float = 0.1


# ------------------------------------------------------------------------------------------------
# Finding files


def _is_audio_name(path: str, extensions: Sequence[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def find_audio(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files, directories and glob patterns into a list of audio files.

    A file named explicitly is kept whatever its extension (:func:`load_audio` then says what is
    wrong with it). Directories are searched recursively and globs are expanded (``**`` spans
    directories), both keeping only names with an audio extension (:data:`AUDIO_EXTENSIONS` and
    :data:`FFMPEG_EXTENSIONS`, case-insensitive; the latter whether ffmpeg is installed or not,
    so that without it each such file gets its "install ffmpeg" line instead of being skipped
    silently). Directory entries and glob matches are sorted, arguments keep their order, and a
    file reached twice (also through a symlink) is listed once.

    Arguments
    ---------
    paths : sequence of str or os.PathLike
        Files, directories or glob patterns.

    Returns
    -------
    files : list of str
        The audio files, in a deterministic order, without duplicates.
    errors : list of (str, str)
        ``(path, problem)`` for each argument that yielded nothing: a missing path
        (``"no such file or directory"``), a pattern matching no audio file, a directory
        without audio files; and for each folder that could not be searched
        (``"cannot search this folder (permission denied)"``), whose files are then missing
        from ``files``.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> (tmp / "sub").mkdir()
    >>> sf.write(tmp / "sub" / "b.flac", np.zeros(160), 16000)
    >>> sf.write(tmp / "a.wav", np.zeros(160), 16000)
    >>> files, errors = find_audio([tmp, tmp / "a.wav", tmp / "nope.wav"])
    >>> [os.path.relpath(f, tmp) for f in files]
    ['a.wav', 'sub/b.flac']
    >>> errors[0][1]
    'no such file or directory'
    """
    extensions = AUDIO_EXTENSIONS + FFMPEG_EXTENSIONS
    files: list[str] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            found = []
            visited: set[str] = set()
            walk_errors: list[OSError] = []  # folders os.walk could not list
            for root, dirs, names in os.walk(path, onerror=walk_errors.append, followlinks=True):
                # Follow symlinked folders, but never into one already searched (no cycles).
                visited.add(os.path.realpath(root))
                dirs[:] = sorted(
                    d for d in dirs if os.path.realpath(os.path.join(root, d)) not in visited
                )
                found += [os.path.join(root, n) for n in names if _is_audio_name(n, extensions)]
            errors += sorted(
                (
                    path if err.filename is None else os.fspath(err.filename),
                    f"cannot search this folder ({os_problem(err)})",
                )
                for err in walk_errors
            )
            if not found and not walk_errors:
                errors.append((path, "no audio files in directory"))
            for f in sorted(found):
                add(f)
        elif os.path.exists(path):
            add(path)
        elif glob.has_magic(path):
            # ``**`` follows symlinked folders, loops included: of the names of one file, keep
            # the shortest.
            shortest: dict[str, str] = {}
            for m in glob.glob(path, recursive=True):
                if os.path.isfile(m) and _is_audio_name(m, extensions):
                    key = os.path.realpath(m)
                    if key not in shortest or (len(m), m) < (len(shortest[key]), shortest[key]):
                        shortest[key] = m
            matches = sorted(shortest.values())
            if not matches:
                errors.append((path, "no audio files match this pattern"))
            for m in matches:
                add(m)
        else:
            errors.append((path, "no such file or directory"))
    return files, errors


# ------------------------------------------------------------------------------------------------
# Resampling and checks on samples


def _check_long_enough(path: str, n_samples: int, sample_rate: int) -> None:
    if n_samples < MIN_SECONDS * sample_rate:
        raise AudioError(
            path,
            f"too short ({n_samples / sample_rate:.3f} s; at least {MIN_SECONDS} s of audio needed)",
        )


# ------------------------------------------------------------------------------------------------
# Whole-file loading


def load_audio(
    path: str | os.PathLike, target_sr: int = 16000, max_seconds: float | None = None
) -> torch.Tensor:
    """Load a whole audio file as a mono float32 waveform at ``target_sr``.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file (any format of :func:`audio_extensions`).
    target_sr : int
        Output sample rate; any input rate (8, 22.05, 44.1, 48, 96 kHz, ...) is resampled with
        torchaudio's sinc resampler.
    max_seconds : float, optional
        Refuse files longer than this with :class:`AudioTooLongError` (checked from the header,
        before decoding) so that the caller can stream them instead. ``None``: no limit.

    Returns
    -------
    torch.Tensor
        Shape ``(samples,)``, float32, channels averaged.

    Raises
    ------
    AudioError
        For every problem in the table of the module docstring; ``str()`` is one line.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> tone = np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000)
    >>> sf.write(tmp / "st.wav", np.stack([0.2 * tone, 0.4 * tone], axis=1), 8000, subtype="FLOAT")
    >>> wav = load_audio(tmp / "st.wav")
    >>> wav.shape, wav.dtype, round(float(wav[8000:9000].max()), 2)
    (torch.Size([16000]), torch.float32, 0.3)
    """
    import torch

    path = os.fspath(path)
    mono, rate = _read_checked(path, max_seconds)
    wav = torch.from_numpy(mono)
    if rate != target_sr:
        with torch.inference_mode():
            wav = torch_resampler(rate, target_sr)(wav).clone()
    return wav


def decode_mono(
    path: str | os.PathLike, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """A whole file as mono float32 samples at its own rate, after the file-level checks.

    The file-level checks are those of :func:`load_audio` that concern the file rather than its
    samples: missing, empty, zero length, not audio, corrupt, truncated, too long for
    ``max_seconds``. :func:`check_samples` makes the others, e.g. on a segment of the file.

    Returns
    -------
    tuple
        ``(samples (frames,), sample_rate)``.
    """
    data, rate = read_all(os.fspath(path), max_seconds)
    return to_mono(data), rate


def check_samples(path: str | os.PathLike, mono: np.ndarray, sample_rate: int) -> None:
    """The checks of :func:`load_audio` on samples: too short, NaN or inf, silence only.

    Arguments
    ---------
    path : str or os.PathLike
        The file the samples come from (named in the error).
    mono : numpy.ndarray
        The samples (a whole file or a segment of it), full scale 1.0.
    sample_rate : int
        Their rate.

    Raises
    ------
    AudioError
        For the first problem found.
    """
    path = os.fspath(path)
    _check_long_enough(path, len(mono), sample_rate)
    check_finite(path, mono)
    check_not_silent(path, mono, sample_rate)


def _read_checked(path: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode a whole file to mono at its own rate, with every check of :func:`load_audio`."""
    mono, rate = decode_mono(path, max_seconds)
    check_samples(path, mono, rate)
    return mono, rate


def check_audio(path: str | os.PathLike) -> float:
    """Check that a file can be classified, as :func:`load_audio` does; returns its duration.

    The whole file is decoded (a header can lie about what follows) but not resampled: data
    preparation uses this so that a recipe never trains or tests on a file that ``classify``
    would refuse.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.

    Returns
    -------
    float
        Duration in seconds.

    Raises
    ------
    AudioError
        For every problem in the table of the module docstring; ``str()`` is one line.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "tone.wav", 0.1 * np.sin(np.arange(8000) / 5), 16000)
    >>> check_audio(tmp / "tone.wav")
    0.5
    >>> sf.write(tmp / "click.wav", 0.1 * np.sin(np.arange(200) / 5), 16000)
    >>> try:
    ...     check_audio(tmp / "click.wav")
    ... except AudioError as err:
    ...     print(err.problem)
    too short (0.013 s; at least 0.1 s of audio needed)
    """
    path = os.fspath(path)
    mono, rate = _read_checked(path, None)
    return len(mono) / rate
