"""Opening and decoding audio files for :mod:`qieemo_lobes.audio`: soundfile first, then ffmpeg.

soundfile (libsndfile 1.2) reads what it can, exactly as before: WAV (PCM, float, 8 kHz
mu-law and A-law telephone audio, IMA/MS ADPCM, GSM 6.10), FLAC, OGG Vorbis, Opus, MP3, AIFF,
AU, CAF, W64. A file it cannot open (M4A/AAC, WebM, WMA, AMR, a G.722/G.726 WAV, ...) goes to
``ffmpeg`` (:mod:`qieemo_lobes.audio_ffmpeg`) where that is installed; a file neither reads keeps
soundfile's one-line problem, or ffmpeg's for the extensions only ffmpeg reads
(:data:`~qieemo_lobes.audio_ffmpeg.FFMPEG_EXTENSIONS`).

Everything here works on a file's own rate and channels; :mod:`qieemo_lobes.audio` resamples,
averages the channels and checks the samples. Every problem is an
:class:`~qieemo_lobes.audio_errors.AudioError`.

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from qieemo_lobes.audio_errors import AudioError, AudioTooLongError, os_problem
from qieemo_lobes.audio_ffmpeg import (
    FFMPEG_EXTENSIONS,
    FFmpegInfo,
    decode_blocks,
    find_ffmpeg,
    missing_ffmpeg_problem,
    probe,
)

if TYPE_CHECKING:
    from speechbrain.dataio.audio_io import AudioInfo

__all__ = [
    "AUDIO_EXTENSIONS",
    "audio_extensions",
    "audio_info",
    "check_path",
    "open_info",
    "read_all",
    "read_blocks",
    "read_segment",
    "to_mono",
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
# libsndfile decodes MPEG audio with libmpg123, which prints notes on damaged files ("Note:
# Illegal Audio-MPEG-Header ...", "[src/libmpg123/parse.c:...] warning: ...") straight to the
# process's stderr, also while libsndfile tries it on a file of unknown format: silenced.
TEXT_PROBLEM = "not an audio file (text content)"
UNKNOWN_PROBLEM = "not a readable audio file (corrupt or unknown format)"
# A whole file decoded by ffmpeg is read from its pipe in blocks of this many frames.
_WHOLE_FILE_BLOCK = 1 << 18


def audio_extensions() -> tuple[str, ...]:
    """Return the file extensions that can actually be decoded in this environment.

    Returns
    -------
    tuple of str
        :data:`AUDIO_EXTENSIONS`, plus :data:`~qieemo_lobes.audio_ffmpeg.FFMPEG_EXTENSIONS`
        where ``ffmpeg`` is installed.

    Example
    -------
    >>> ".flac" in audio_extensions()
    True
    """
    if find_ffmpeg() is not None:
        return AUDIO_EXTENSIONS + FFMPEG_EXTENSIONS
    return AUDIO_EXTENSIONS


# ------------------------------------------------------------------------------------------------
# Checking and opening a file

# libsndfile notes a WAV data chunk that claims more bytes than the file holds as
# "data : <declared> (should be <actual>)" in its log (``sf.info(path).extra_info``).
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming WAV writers put in the header when they do not know the length.
_WAV_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 8}

# What a file that is neither a regular file nor a directory is, for messages.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


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


def check_path(path: str) -> None:
    """Refuse what is not a readable, non-empty regular file, from ``stat`` alone.

    Nothing is opened: opening a FIFO would block until a writer comes, and reading
    ``/dev/zero`` would never end.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "no such file or directory") from None
    except OSError as err:  # a folder on the way without permission, a symlink loop...
        raise AudioError(path, f"cannot open ({os_problem(err)})") from None
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
    lower = message.lower()
    # libmpg123 answers "does not exist or is not a regular file" for an .mp3 that is no MPEG
    # audio; check_path has already found a regular file.
    if "not recognised" in lower or "does not exist or is not a regular file" in lower:
        if _looks_like_text(path):
            return AudioError(path, TEXT_PROBLEM)
        return AudioError(path, UNKNOWN_PROBLEM)
    if "malformed" in lower or "lost sync" in lower:
        return AudioError(path, f"corrupt or truncated audio file ({message})")
    return AudioError(path, f"cannot read audio ({message})")


@contextlib.contextmanager
def _quiet_mpeg(info: object = None) -> Iterator[None]:
    """Send libmpg123's notes on stderr (file descriptor 2) to /dev/null while soundfile works.

    ``info=None``: opening a file (libsndfile may try MPEG on anything); otherwise only while
    reading MPEG audio. The problem the notes describe is reported as an :class:`AudioError`
    instead, in one line. Another thread's messages in that moment would be lost too: soundfile
    calls are short, and nothing else in the package writes to stderr from a thread.
    """
    saved = None
    if info is None or str(getattr(info, "subtype", "")).startswith("MPEG"):
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to silence
            saved = None
    if saved is None:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_info(path: str) -> sf._SoundFileInfo | FFmpegInfo:
    """Check ``path`` and read its header: soundfile's info, or ffprobe's where soundfile fails.

    Raises
    ------
    AudioError
        Missing, not a regular file, empty, truncated, not audio neither can read.
    """
    check_path(path)
    try:
        with _quiet_mpeg():
            info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        return _ffmpeg_info(path, _unreadable(path, err))
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


def _ffmpeg_info(path: str, problem: AudioError) -> FFmpegInfo:
    """ffprobe's info on a file soundfile refused with ``problem``, or the right error.

    Text stays text. Where ffmpeg is missing, the extensions only ffmpeg reads get "install
    ffmpeg"; where both fail, those extensions get ffmpeg's problem and the others soundfile's
    (as before ffmpeg was used).
    """
    if problem.problem == TEXT_PROBLEM:
        raise problem
    ffmpeg_only = os.path.splitext(path)[1].lower() in FFMPEG_EXTENSIONS
    programs = find_ffmpeg()
    if programs is None:
        raise AudioError(path, missing_ffmpeg_problem(path)) if ffmpeg_only else problem
    try:
        return probe(path, programs)
    except AudioError as ffmpeg_problem:
        raise (ffmpeg_problem if ffmpeg_only else problem) from None


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the duration, sample rate and channel count of a file from its header.

    No samples are decoded, so this is instant on a one-hour file (except for a file that only
    ffmpeg reads and whose header gives no duration: it is decoded once to count its samples).

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.

    Returns
    -------
    speechbrain.dataio.audio_io.AudioInfo
        ``sample_rate``, ``frames``, ``channels``, ``subtype``, ``format`` and ``duration``
        (seconds). For MP3 (and AAC, Opus... through ffmpeg) the frame count is an estimate.

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
    from speechbrain.dataio.audio_io import AudioInfo  # imported here: it imports torch

    info = open_info(os.fspath(path))
    return AudioInfo(
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        subtype=str(info.subtype),
        format=str(info.format),
    )


# ------------------------------------------------------------------------------------------------
# Decoding


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) float32, channels averaged.

    Example
    -------
    >>> to_mono(np.array([[0.2, 0.4], [0.0, 1.0]]))
    array([0.3, 0.5], dtype=float32)
    """
    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return np.ascontiguousarray(samples, dtype=np.float32)


def check_complete(path: str, info: sf._SoundFileInfo | FFmpegInfo, n_read: int) -> None:
    """Compressed files (MP3, Vorbis, ...) store a frame count; decoding fewer means truncation."""
    if n_read == 0:
        raise AudioError(path, "no audio samples (zero length)")
    # MP3 frame counts are estimates (in a WAV file too): allow one MPEG frame (1152 samples)
    # and 1 % of slack.
    exact = info.format in ("WAV", "FLAC", "AIFF") and not info.subtype.startswith("MPEG")
    slack = 0 if exact else max(1152, info.frames // 100)
    if n_read + slack < info.frames:
        raise AudioError(
            path,
            f"truncated audio file (header declares {info.frames} frames, only {n_read} decoded)",
        )


def read_all(path: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode a whole file to (frames, channels) float32 with all checks; returns (data, rate).

    ``max_seconds``: a longer file (by its header) raises
    :class:`~qieemo_lobes.audio_errors.AudioTooLongError` before anything is decoded.
    """
    info = open_info(path)
    if info.frames == 0:
        raise AudioError(path, "no audio samples (zero length)")
    duration = info.frames / info.samplerate
    if max_seconds is not None and duration > max_seconds:
        raise AudioTooLongError(path, duration, max_seconds)
    if isinstance(info, FFmpegInfo):
        blocks = list(read_blocks(path, info, _WHOLE_FILE_BLOCK))
        return np.concatenate(blocks), info.samplerate
    try:
        with _quiet_mpeg(info):
            data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _unreadable(path, err, decoding=True) from None
    check_complete(path, info, len(data))
    return data, int(rate)


def read_blocks(
    path: str, info: sf._SoundFileInfo | FFmpegInfo, block: int
) -> Iterator[np.ndarray]:
    """Yield a file opened with :func:`open_info` as (frames, channels) float32 blocks.

    Every block but the last has ``block`` frames, at the file's own rate. A problem found while
    decoding (corrupt data, truncation) is raised when reached, after the blocks before it.
    """
    if isinstance(info, FFmpegInfo):
        programs = find_ffmpeg()
        if programs is None:  # uninstalled since open_info: the same line as then
            raise AudioError(path, missing_ffmpeg_problem(path))
        yield from decode_blocks(path, info, block, programs[0])
        return
    n_read = 0
    try:
        with _quiet_mpeg(info):
            f = sf.SoundFile(path)
        with f:
            while True:
                with _quiet_mpeg(info):
                    chunk = f.read(block, dtype="float32", always_2d=True)
                n_read += len(chunk)
                if len(chunk):
                    yield chunk
                if len(chunk) < block:
                    break
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _unreadable(path, err, decoding=True) from None
    if n_read < info.frames:
        check_complete(path, info, n_read)


def read_segment(
    path: str | os.PathLike, start: float | None = None, stop: float | None = None
) -> tuple[np.ndarray, int]:
    """Samples ``start``-``stop`` seconds (``None``: the ends) of a file: ((frames, channels), rate).

    soundfile reads only the segment; a file only ffmpeg reads is decoded whole (with the checks
    of :func:`read_all`) and cut. No other check: this is the training side's reader
    (:func:`qieemo_lobes.features.read_audio`), whose files data preparation has checked.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "r.wav", np.arange(16000) / 16000, 16000, subtype="FLOAT")
    >>> data, rate = read_segment(tmp / "r.wav", 0.5, 0.75)
    >>> data.shape, rate, float(data[0, 0])
    ((4000, 1), 16000, 0.5)
    """
    path = os.fspath(path)
    try:
        with _quiet_mpeg():
            info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError):
        data, rate = read_all(path, None)  # ffmpeg, or the one-line problem
    else:
        first = int(round((start or 0.0) * info.samplerate))
        last = int(round(stop * info.samplerate)) if stop is not None else -1
        with _quiet_mpeg(info):
            return sf.read(
                path, start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True
            )
    first = int(round((start or 0.0) * rate))
    last = int(round(stop * rate)) if stop is not None else len(data)
    return data[first:last], rate
