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
``.m4a``/``.aac``/... here        ``unsupported audio format '.m4a' (...)``
silence, very quiet, DC only      ``silence only (no speech to classify)``
longer than ``max_seconds``       :class:`AudioTooLongError` (``too long for ...``)
================================  ======================================================

Reading is done by soundfile (libsndfile 1.2: WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF, AU, CAF,
W64). torchaudio 2.9+ only decodes through the optional ``torchcodec`` package (FFmpeg); it is
used as the fallback for the formats libsndfile cannot read (``.m4a``, ``.aac``, ...) where
``torchcodec`` is installed, and those files are reported as unsupported where it is not.

Channels are averaged to mono and the signal is resampled with torchaudio's sinc resampler
(``torchaudio.transforms.Resample``). "Silence only" means that no 32 ms frame of the mono
signal reaches :data:`SILENCE_DBFS` (-60 dB relative to full scale, RMS) once the frame's DC
offset and linear trend are removed (:func:`frame_dbfs`): digital silence, a quiet room and a
constant or drifting offset without sound (a recorder's DC) do not reach it, any normally
recorded speech does, quiet speech too (an EmoDB clip 40 dB down passes; every file of EmoDB,
RAVDESS, nEMO, EMOVO and TurEV-DB passes).

:func:`find_audio` reports a folder it cannot search (no permission, I/O error) as an error of
its own instead of skipping it silently.

:func:`stream_audio` reads a long file (a one-hour call) block by block and resamples each block
with context from its neighbours, so its output equals :func:`load_audio`'s while memory stays
bounded by the block size.

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

import functools
import glob
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio
from speechbrain.dataio.audio_io import AudioInfo

__all__ = [
    "AUDIO_EXTENSIONS",
    "SILENCE_DBFS",
    "AudioError",
    "AudioTooLongError",
    "audio_extensions",
    "audio_info",
    "check_audio",
    "check_samples",
    "decode_mono",
    "remove_dc",
    "find_audio",
    "frame_dbfs",
    "load_audio",
    "stream_audio",
]

# Extensions libsndfile 1.2 (bundled with soundfile >= 0.12) decodes; checked by tests.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav",
    ".wave",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".au",
    ".caf",
    ".w64",
)
# Audio formats libsndfile cannot decode; torchaudio reads them only through torchcodec (FFmpeg).
FALLBACK_EXTENSIONS: tuple[str, ...] = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".mka", ".amr")

# A file whose loudest 32 ms frame stays below this RMS level (dB re full scale) is "silence only".
SILENCE_DBFS: float = -60.0
SILENCE_FRAME_S: float = 0.032
SILENCE_PROBLEM = "silence only (no speech to classify)"
# Shorter clips hold no utterance to classify (and give the encoder too few frames to work on).
MIN_SECONDS: float = 0.1


class AudioError(Exception):
    """A problem with one input file; ``str()`` is the single line ``<path>: <problem>``.

    Arguments
    ---------
    path : str or os.PathLike
        The file concerned.
    problem : str
        What is wrong with it, in a few words (line breaks are folded into spaces).

    Example
    -------
    >>> str(AudioError("a.wav", "empty file (0 bytes)"))
    'a.wav: empty file (0 bytes)'
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(self.path, self.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class AudioTooLongError(AudioError):
    """The file is longer than the whole-file limit; read it with :func:`stream_audio` instead.

    Arguments
    ---------
    path : str or os.PathLike
        The file concerned.
    duration_s : float
        Its duration in seconds.
    max_seconds : float
        The limit it exceeds.

    Example
    -------
    >>> err = AudioTooLongError("call.wav", 3600.0, 600.0)
    >>> print(err)
    call.wav: too long for whole-file loading (3600.0 s > 600.0 s); stream or segment it instead
    """

    def __init__(self, path: str | os.PathLike, duration_s: float, max_seconds: float):
        self.duration_s = float(duration_s)
        self.max_seconds = float(max_seconds)
        super().__init__(
            path,
            f"too long for whole-file loading ({self.duration_s:.1f} s > {self.max_seconds:.1f} s);"
            " stream or segment it instead",
        )
        self.args = (self.path, self.duration_s, self.max_seconds)


# ------------------------------------------------------------------------------------------------
# Finding files


@functools.cache
def _torchcodec_available() -> bool:
    try:
        import torchcodec  # noqa: F401
    except Exception:  # ImportError, or a broken FFmpeg install raising on import
        return False
    return True


def audio_extensions() -> tuple[str, ...]:
    """Return the file extensions that can actually be decoded in this environment.

    Returns
    -------
    tuple of str
        :data:`AUDIO_EXTENSIONS`, plus :data:`FALLBACK_EXTENSIONS` where ``torchcodec`` is
        installed.

    Example
    -------
    >>> ".flac" in audio_extensions()
    True
    """
    if _torchcodec_available():
        return AUDIO_EXTENSIONS + FALLBACK_EXTENSIONS
    return AUDIO_EXTENSIONS


def _is_audio_name(path: str, extensions: Sequence[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def find_audio(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files, directories and glob patterns into a list of audio files.

    A file named explicitly is kept whatever its extension (:func:`load_audio` then says what is
    wrong with it). Directories are searched recursively and globs are expanded (``**`` spans
    directories), both keeping only names with a decodable audio extension
    (:func:`audio_extensions`, case-insensitive). Directory entries and glob matches are sorted,
    arguments keep their order, and a file reached twice (also through a symlink) is listed once.

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
    extensions = audio_extensions()
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
                    f"cannot search this folder ({_os_problem(err)})",
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
# Checking and opening a file

# libsndfile notes a WAV data chunk that claims more bytes than the file holds as
# "data : <declared> (should be <actual>)" in its log (``sf.info(path).extra_info``).
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming WAV writers put in the header when they do not know the length.
_WAV_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 8}


def _looks_like_text(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _os_problem(err: OSError) -> str:
    """``PermissionError(13, "Permission denied")`` -> ``"permission denied"``."""
    text = err.strerror or type(err).__name__
    return text[:1].lower() + text[1:]


# What a file that is neither a regular file nor a directory is, for messages.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _check_path(path: str) -> None:
    """Refuse what is not a readable, non-empty regular file, from ``stat`` alone.

    Nothing is opened: opening a FIFO would block until a writer comes, and reading
    ``/dev/zero`` would never end.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "no such file or directory") from None
    except OSError as err:  # a folder on the way without permission, a symlink loop...
        raise AudioError(path, f"cannot open ({_os_problem(err)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(path, "is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "special file")
        raise AudioError(path, f"not a regular file ({kind})")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")
    if info.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _unreadable(path: str, err: Exception, decoding: bool = False) -> AudioError:
    """Turn a libsndfile failure to open (or, ``decoding``, to decode) into a one-line problem."""
    message = " ".join(str(err).split())
    # libsndfile's "Error opening '<path>': <what>." -> "<what>" (the path is already named).
    message = re.sub(r"^Error(?: opening '.*?')?\s*:\s*", "", message).rstrip(".")
    if decoding:  # the header was fine, the data is not
        return AudioError(path, f"corrupt or truncated audio data ({message})")
    if "not recognised" in message.lower():
        ext = os.path.splitext(path)[1].lower()
        if _looks_like_text(path):
            return AudioError(path, "not an audio file (text content)")
        if ext in FALLBACK_EXTENSIONS:
            return AudioError(
                path,
                f"unsupported audio format '{ext}' (soundfile cannot decode it and torchaudio "
                "needs torchcodec with FFmpeg; convert it to WAV or FLAC)",
            )
        return AudioError(path, "not a readable audio file (corrupt or unknown format)")
    if "malformed" in message.lower() or "lost sync" in message.lower():
        return AudioError(path, f"corrupt or truncated audio file ({message})")
    return AudioError(path, f"cannot read audio ({message})")


def _sf_info(path: str):
    """``soundfile.info`` with every failure turned into :class:`AudioError`."""
    _check_path(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _unreadable(path, err) from None
    if info.format in ("WAV", "WAVEX", "RF64", "W64"):
        match = _WAV_DATA_LOG.search(info.extra_info or "")
        if match and int(match.group(1)) not in _WAV_UNKNOWN_SIZES:
            declared, actual = int(match.group(1)), int(match.group(2))
            if declared - actual > 1:  # 1 byte: a missing pad byte, harmless
                raise AudioError(
                    path,
                    f"truncated audio file (header declares {declared} data bytes, "
                    f"only {actual} present)",
                )
    if info.format == "OGG" and "lacks an end-of-stream" in (info.extra_info or ""):
        raise AudioError(path, "truncated audio file (last Ogg page lacks the end-of-stream flag)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(path, "not a readable audio file (invalid header)")
    return info


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the duration, sample rate and channel count of a file from its header.

    No samples are decoded, so this is instant on a one-hour file.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.

    Returns
    -------
    speechbrain.dataio.audio_io.AudioInfo
        ``sample_rate``, ``frames``, ``channels``, ``subtype``, ``format`` and ``duration``
        (seconds). For MP3 the frame count is libsndfile's estimate.

    Raises
    ------
    AudioError
        When the file is missing, empty, truncated or not readable audio.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "st.flac", np.zeros((48000, 2)), 48000)
    >>> info = audio_info(tmp / "st.flac")
    >>> info.duration, info.sample_rate, info.channels
    (1.0, 48000, 2)
    """
    path = os.fspath(path)
    _check_path(path)  # before anything opens it (a FIFO would block)
    if os.path.splitext(path)[1].lower() in FALLBACK_EXTENSIONS and _torchcodec_available():
        try:
            sf.info(path)
        except Exception:
            return _torchaudio_info(path)
    info = _sf_info(path)
    return AudioInfo(
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        subtype=str(info.subtype),
        format=str(info.format),
    )


# ------------------------------------------------------------------------------------------------
# Resampling and checks on samples


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_sr, new_sr)


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) float32, channels averaged."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return np.ascontiguousarray(samples, dtype=np.float32)


def _check_finite(path: str, mono: np.ndarray) -> None:
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or infinite samples")


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


def _check_long_enough(path: str, n_samples: int, sample_rate: int) -> None:
    if n_samples < MIN_SECONDS * sample_rate:
        raise AudioError(
            path,
            f"too short ({n_samples / sample_rate:.3f} s; at least {MIN_SECONDS} s of audio needed)",
        )


def _check_not_silent(path: str, mono: np.ndarray, sample_rate: int) -> None:
    levels = frame_dbfs(mono, sample_rate)
    if levels.size == 0 or levels.max() < SILENCE_DBFS:
        raise AudioError(path, SILENCE_PROBLEM)


# ------------------------------------------------------------------------------------------------
# torchaudio fallback (formats libsndfile cannot decode; needs torchcodec)


def _torchaudio_info(path: str) -> AudioInfo:
    try:
        from torchcodec.decoders import AudioDecoder

        meta = AudioDecoder(path).metadata
        rate, channels = int(meta.sample_rate), int(meta.num_channels)
        frames = int(round((meta.duration_seconds_from_header or 0.0) * rate))
    except Exception as err:
        raise AudioError(path, f"cannot read audio ({' '.join(str(err).split())})") from None
    ext = os.path.splitext(path)[1].lstrip(".").upper()
    return AudioInfo(sample_rate=rate, frames=frames, channels=channels, subtype="", format=ext)


def _load_torchaudio(path: str) -> tuple[np.ndarray, int]:
    try:
        waveform, rate = torchaudio.load(path)  # (channels, frames)
    except Exception as err:
        raise AudioError(path, f"cannot read audio ({' '.join(str(err).split())})") from None
    return waveform.numpy().T, int(rate)


# ------------------------------------------------------------------------------------------------
# Whole-file loading


def _read_all(path: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode a whole file to (frames, channels) float32 with all checks; returns (data, rate)."""
    _check_path(path)
    ext = os.path.splitext(path)[1].lower()
    try:
        info = _sf_info(path)
    except AudioError:
        if ext in FALLBACK_EXTENSIONS and _torchcodec_available():
            meta = _torchaudio_info(path)
            if max_seconds is not None and meta.duration > max_seconds:
                raise AudioTooLongError(path, meta.duration, max_seconds) from None
            return _load_torchaudio(path)
        raise
    if info.frames == 0:
        raise AudioError(path, "no audio samples (zero length)")
    duration = info.frames / info.samplerate
    if max_seconds is not None and duration > max_seconds:
        raise AudioTooLongError(path, duration, max_seconds)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _unreadable(path, err, decoding=True) from None
    _check_complete(path, info, len(data))
    return data, int(rate)


def _check_complete(path: str, info, n_read: int) -> None:
    """Compressed files (MP3, Vorbis, ...) store a frame count; decoding fewer means truncation."""
    if n_read == 0:
        raise AudioError(path, "no audio samples (zero length)")
    # MP3 frame counts are estimates: allow one MPEG frame (1152 samples) and 1 % of slack.
    slack = 0 if info.format in ("WAV", "FLAC", "AIFF") else max(1152, info.frames // 100)
    if n_read + slack < info.frames:
        raise AudioError(
            path,
            f"truncated audio file (header declares {info.frames} frames, only {n_read} decoded)",
        )


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
    path = os.fspath(path)
    mono, rate = _read_checked(path, max_seconds)
    wav = torch.from_numpy(mono)
    if rate != target_sr:
        with torch.inference_mode():
            wav = _resampler(rate, target_sr)(wav).clone()
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
    data, rate = _read_all(os.fspath(path), max_seconds)
    return _to_mono(data), rate


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
    _check_finite(path, mono)
    _check_not_silent(path, mono, sample_rate)


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
    >>> remove_dc(torch.tensor([[0.5, 0.7, 0.3, 0.5], [0.6, 0.2, 0.0, 0.0]]), torch.tensor([1.0, 0.5]))
    tensor([[ 0.0000,  0.2000, -0.2000,  0.0000],
            [ 0.2000, -0.2000,  0.0000,  0.0000]])
    """
    n_samples = (wav_lens * wavs.shape[1]).round().long().clamp(min=1)
    inside = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < n_samples[:, None]
    mean = (wavs * inside).sum(dim=1, keepdim=True) / n_samples[:, None]
    return torch.where(inside, wavs - mean, torch.zeros_like(wavs))


# ------------------------------------------------------------------------------------------------
# Streaming


def _resample_context(resampler: torchaudio.transforms.Resample, orig: int) -> int:
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
    streams in bounded memory. Concatenating the blocks gives :func:`load_audio`'s waveform
    (within float rounding): each block is resampled with real neighbouring samples as context.
    Every block but the last has the same length, about ``block_seconds * target_sr``.

    The file is checked as in :func:`load_audio` (missing, empty, zero length, corrupt,
    truncated, NaN/inf) except for silence, which is the segmenter's business; problems found
    while decoding are raised when reached, after the earlier blocks have been yielded.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file (formats of :data:`AUDIO_EXTENSIONS`).
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
    path = os.fspath(path)
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    info = _sf_info(path)
    if info.frames == 0:
        raise AudioError(path, "no audio samples (zero length)")
    rate = int(info.samplerate)
    g = math.gcd(rate, target_sr)
    orig, new = rate // g, target_sr // g
    resampler = _resampler(rate, target_sr) if rate != target_sr else None
    context = _resample_context(resampler, orig) if resampler is not None else 0
    # Blocks hold a whole number of resampling periods (``orig`` input -> ``new`` output samples).
    block = orig * max(1, round(block_seconds * rate / orig))

    def emit(left: np.ndarray, body: np.ndarray, right: np.ndarray, last: bool) -> torch.Tensor:
        if resampler is None:
            return torch.from_numpy(body.copy())
        x = torch.from_numpy(np.concatenate([left, body, right]))
        with torch.inference_mode():
            y = resampler(x)
        start = len(left) // orig * new
        n_out = math.ceil(len(body) * new / orig) if last else len(body) // orig * new
        return y[start : start + n_out].clone()

    n_read = 0
    left = np.zeros(0, dtype=np.float32)
    pending = np.zeros(0, dtype=np.float32)
    try:
        with sf.SoundFile(path) as f:
            eof = False
            while not eof:
                chunk = f.read(block, dtype="float32", always_2d=True)
                eof = len(chunk) < block
                n_read += len(chunk)
                mono = _to_mono(chunk)
                _check_finite(path, mono)
                pending = np.concatenate([pending, mono])
                while len(pending) >= block + context:
                    yield emit(left, pending[:block], pending[block : block + context], False)
                    left = np.concatenate([left, pending[:block]])[len(left) + block - context :]
                    pending = pending[block:]
            if n_read < info.frames:
                _check_complete(path, info, n_read)
            if len(pending):
                yield emit(left, pending, np.zeros(0, dtype=np.float32), True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _unreadable(path, err, decoding=True) from None
    if n_read == 0:
        raise AudioError(path, "no audio samples (zero length)")
