"""Decoding with the ``ffmpeg`` program, for the audio files soundfile (libsndfile) cannot read.

libsndfile 1.2 reads WAV (PCM, float, mu-law, A-law, IMA/MS ADPCM, GSM 6.10), FLAC, OGG Vorbis,
Opus, MP3, AIFF, AU, CAF and W64. Everything else users record goes through ``ffmpeg``: M4A/MP4
(AAC, ALAC), raw ADTS AAC, WebM/Matroska, WMA, AMR and 3GP from phones, and WAV files holding a
codec libsndfile does not know (G.722, G.726 telephone audio). :func:`probe` reads the duration,
rate and channels with ``ffprobe``; :func:`decode_blocks` streams the decoded samples
(``ffmpeg -i FILE -f f32le -``, 32-bit float, the file's own rate and channels, so that
resampling and channel averaging are those of every other file) from a pipe, a block at a time.

One decoding path serves whole files and hour-long recordings alike: a whole file is its blocks
concatenated, so a long M4A streams in bounded memory like a long FLAC and there is no "short
file" path to keep consistent with it.

Where ``ffmpeg`` is missing (:func:`find_ffmpeg`, or ``$QIEEMO_FFMPEG`` pointing at no program),
such a file is refused with one line that says to install it (:func:`missing_ffmpeg_problem`).

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from qieemo_lobes.audio_errors import AudioError

__all__ = [
    "FFMPEG_ENV",
    "FFMPEG_EXTENSIONS",
    "FFmpegInfo",
    "decode_blocks",
    "find_ffmpeg",
    "missing_ffmpeg_problem",
    "probe",
]

# Extensions of audio that libsndfile cannot decode and ffmpeg can (checked by the tests).
FFMPEG_EXTENSIONS: tuple[str, ...] = (
    ".m4a",
    ".aac",
    ".mp4",
    ".3gp",
    ".wma",
    ".webm",
    ".mka",
    ".amr",
)
# Path of the ffmpeg program to use (ffprobe is taken from the same folder); a path that is not
# an executable program means "no ffmpeg".
FFMPEG_ENV = "QIEEMO_FFMPEG"
# Below this ffprobe score a format was guessed from the file name alone (random bytes named
# ``.aac`` or ``.flac`` score 1, real files 50 to 100): that is no audio file.
_MIN_PROBE_SCORE = 25
_PROBE_TIMEOUT_S = 60.0
# A message of ffmpeg's log at "-v level+warning": "[<component> @ 0x<address>] [error] <text>"
# (the component is optional); only errors explain a failure.
_LOG_ERROR = re.compile(r"^(?:\[[^\]]* @ [^\]]*\]\s*)?\[(?:error|fatal|panic)\]\s*(.*)$")


@dataclass(frozen=True)
class FFmpegInfo:
    """What ``ffprobe`` says about the first audio stream of a file.

    The attribute names are those of ``soundfile.info``'s result. ``estimated``: the frame count
    comes from the bit rate (raw ADTS AAC), so a shorter decode is no sign of truncation.
    """

    samplerate: int
    channels: int
    frames: int
    format: str
    subtype: str
    estimated: bool = False

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate


def find_ffmpeg() -> tuple[str, str] | None:
    """The ``(ffmpeg, ffprobe)`` programs to use, or ``None`` where either is missing.

    ``$QIEEMO_FFMPEG`` names the ffmpeg program (its ffprobe is the one in the same folder);
    otherwise both are looked up on ``PATH``.

    Example
    -------
    >>> monkeypatch = getfixture("monkeypatch")
    >>> monkeypatch.setenv(FFMPEG_ENV, "/nonexistent/ffmpeg")
    >>> find_ffmpeg() is None
    True
    """
    configured = os.environ.get(FFMPEG_ENV)
    if configured is not None:
        ffmpeg = shutil.which(configured)
        folder = os.path.dirname(ffmpeg) if ffmpeg else None
        ffprobe = shutil.which("ffprobe", path=folder) if folder else None
    else:
        ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    if ffmpeg is None or ffprobe is None:
        return None
    return ffmpeg, ffprobe


def missing_ffmpeg_problem(path: str) -> str:
    """The problem of a file only ffmpeg could decode, where ffmpeg is not installed.

    Example
    -------
    >>> missing_ffmpeg_problem("voice.m4a")
    'cannot decode .m4a audio: install ffmpeg to read .m4a/.aac/.mp4/... files (soundfile cannot)'
    """
    ext = os.path.splitext(path)[1].lower() or "this"
    shown = "/".join(FFMPEG_EXTENSIONS[:3])
    return f"cannot decode {ext} audio: install ffmpeg to read {shown}/... files (soundfile cannot)"


def _first_error(text: str, path: str) -> str:
    r"""The first error of ffmpeg's log ``text``, without its prefixes and the file's name.

    Example
    -------
    >>> log = "[mov @ 0x5] [warning] low score\n[mov @ 0x5] [error] moov atom not found\n"
    >>> _first_error(log + "[error] file:a.m4a: Invalid data found", "a.m4a")
    'moov atom not found'
    """
    for line in text.splitlines():
        match = _LOG_ERROR.match(line.strip())
        message = match.group(1).strip() if match else ""
        for name in (f"file:{path}: ", f"{path}: "):
            message = message.removeprefix(name)
        if message:
            return message[:160]
    return ""


def _input(path: str) -> list[str]:
    # "file:" so that a name such as "http:x.m4a" or "pipe:1" is read as a file, and only files.
    return ["-protocol_whitelist", "file", "-i", f"file:{path}"]


def probe(path: str, programs: tuple[str, str]) -> FFmpegInfo:
    """Duration, rate and channels of the first audio stream of ``path``, from ``ffprobe``.

    A file without a duration in its header is decoded once to count its samples.

    Raises
    ------
    AudioError
        Not a file ffmpeg recognises, no audio stream, ``ffprobe`` failing.
    """
    command = [programs[1], "-hide_banner", "-v", "level+warning", *_input(path)]
    command += ["-select_streams", "a:0", "-of", "json", "-show_entries"]
    command += [
        "stream=codec_name,sample_rate,channels,duration:format=format_name,duration,probe_score"
    ]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise AudioError(
            path, f"cannot read audio (ffprobe took over {_PROBE_TIMEOUT_S:.0f} s)"
        ) from None
    except OSError as err:
        raise AudioError(path, f"cannot read audio (cannot run ffprobe: {err})") from None
    unknown = "not a readable audio file (corrupt or unknown format)"
    if done.returncode != 0:
        detail = _first_error(done.stderr, path)
        raise AudioError(path, f"{unknown[:-1]}: {detail})" if detail else unknown)
    try:
        found = json.loads(done.stdout or "{}")
        fmt = found.get("format", {})
        streams = found.get("streams", [])
        score = int(fmt.get("probe_score", 0))
    except (ValueError, TypeError, AttributeError):
        raise AudioError(path, unknown) from None
    if score < _MIN_PROBE_SCORE:
        raise AudioError(path, unknown)
    if not streams:
        raise AudioError(path, "no audio stream in this file")
    stream = streams[0]
    try:
        rate, channels = int(stream.get("sample_rate", 0)), int(stream.get("channels", 0))
    except (TypeError, ValueError):
        rate = channels = 0
    if rate <= 0 or channels <= 0:
        raise AudioError(path, "not a readable audio file (invalid header)")
    info = FFmpegInfo(
        samplerate=rate,
        channels=channels,
        frames=0,
        format=str(fmt.get("format_name", "")).split(",")[0].upper(),
        subtype=str(stream.get("codec_name", "")).upper(),
        estimated="Estimating duration from bitrate" in done.stderr,
    )
    duration = _seconds(stream.get("duration")) or _seconds(fmt.get("duration"))
    if duration is None:  # no duration in the header: count the samples
        frames = sum(len(block) for block in decode_blocks(path, info, 1 << 18, programs[0]))
        return replace(info, frames=frames, estimated=False)
    return replace(info, frames=int(round(duration * rate)))


def _seconds(value: object) -> float | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if np.isfinite(seconds) and seconds > 0 else None


def decode_blocks(
    path: str, info: FFmpegInfo, block_frames: int, ffmpeg: str
) -> Iterator[np.ndarray]:
    """Yield the decoded samples of ``path`` as ``(frames, channels)`` float32 blocks.

    Every block but the last has ``block_frames`` frames, at ``info.samplerate``. Problems
    found once decoding ends (ffmpeg failing or reporting damaged data, fewer samples than the
    header declares) are raised after the blocks decoded so far have been yielded. Stopping
    early (closing the generator) stops ffmpeg.

    Raises
    ------
    AudioError
        ``corrupt or truncated audio data (...)``, ``truncated audio file (...)``,
        ``no audio samples (zero length)``.
    """
    command = [ffmpeg, "-nostdin", "-hide_banner", "-v", "level+error", *_input(path)]
    command += ["-map", "0:a:0", "-ac", str(info.channels), "-ar", str(info.samplerate)]
    command += ["-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    frame_bytes = 4 * info.channels
    n_read = 0
    # ffmpeg's log goes to a file: a pipe could fill up (a damaged file logs an error per
    # packet) and stall ffmpeg while this reads its output.
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
            )
        except OSError as err:
            raise AudioError(path, f"cannot read audio (cannot run ffmpeg: {err})") from None
        try:
            assert proc.stdout is not None
            while True:
                data = proc.stdout.read(block_frames * frame_bytes)
                usable = len(data) - len(data) % frame_bytes
                if usable:
                    block = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
                    n_read += usable // frame_bytes
                    yield block.reshape(-1, info.channels)
                if len(data) < block_frames * frame_bytes:
                    break
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # the caller stopped early, or an error: stop ffmpeg
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        log.seek(0)
        error = _first_error(log.read().decode("utf-8", "replace"), path)
    if returncode != 0 and n_read == 0:
        raise AudioError(path, f"not a readable audio file ({error or 'ffmpeg failed'})")
    if n_read == 0:
        raise AudioError(path, "no audio samples (zero length)")
    # Lossy codecs end on a whole codec frame (AAC: 1024 samples, WMA: 2048): allow that much,
    # and 1 % for containers whose duration is rounded.
    slack = max(2048, info.frames // 100)
    if not info.estimated and n_read + slack < info.frames:
        raise AudioError(
            path,
            f"truncated audio file (header declares {info.frames} frames, only {n_read} decoded)",
        )
    if returncode != 0 or error:
        raise AudioError(path, f"corrupt or truncated audio data ({error or 'ffmpeg failed'})")
