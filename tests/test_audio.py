"""Tests for qieemo_lobes.audio: finding, loading and streaming real audio files, and bad input."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qieemo_lobes.audio import (
    AUDIO_EXTENSIONS,
    SILENCE_DBFS,
    SILENCE_PROBLEM,
    AudioError,
    AudioTooLongError,
    audio_extensions,
    audio_info,
    check_audio,
    find_audio,
    load_audio,
    stream_audio,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def speechlike(seconds: float, sr: int) -> np.ndarray:
    """Noise with a syllable-rate envelope, far above the silence threshold."""
    n = round(seconds * sr)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / sr)
    return (0.2 * env * rng().standard_normal(n)).astype(np.float32)


def problem_of(path) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    err = info.value
    line = str(err)
    assert "\n" not in line and line.startswith(str(path)), line
    return err


# ------------------------------------------------------------------------------------------------
# find_audio


def test_find_audio_dirs_globs_missing(tmp_path: Path):
    (tmp_path / "d" / "z").mkdir(parents=True)
    (tmp_path / "d" / "a").mkdir()
    for rel in ["d/z/1.wav", "d/a/2.FLAC", "d/0.ogg", "top.wav"]:
        sf.write(tmp_path / rel, tone(0.1, 16000), 16000)
    (tmp_path / "d" / "notes.txt").write_text("not audio")
    (tmp_path / "d" / "a" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "top_link.wav").symlink_to(tmp_path / "top.wav")
    (tmp_path / "d" / "a" / "loop").symlink_to(tmp_path / "d", target_is_directory=True)

    files, errors = find_audio(
        [
            tmp_path / "top.wav",
            tmp_path / "d",
            str(tmp_path / "d" / "z" / "1.wav"),  # already found through the directory
            str(tmp_path / "*.wav"),  # top.wav again, and its symlink
            str(tmp_path / "missing.wav"),
            str(tmp_path / "*.mp3"),
            tmp_path / "empty_dir",
            tmp_path / "d" / "notes.txt",  # named explicitly: kept, load_audio will refuse it
        ]
    )
    rel = [str(Path(f).relative_to(tmp_path)) for f in files]
    assert rel == ["top.wav", "d/0.ogg", "d/a/2.FLAC", "d/z/1.wav", "d/notes.txt"]
    assert errors == [
        (str(tmp_path / "missing.wav"), "no such file or directory"),
        (str(tmp_path / "*.mp3"), "no audio files match this pattern"),
        (str(tmp_path / "empty_dir"), "no audio files in directory"),
    ]
    # Deterministic: the same call gives the same answer.
    assert (
        find_audio([tmp_path / "d", str(tmp_path / "**" / "*.wav")])[0]
        == find_audio([tmp_path / "d", str(tmp_path / "**" / "*.wav")])[0]
    )
    recursive, _ = find_audio([str(tmp_path / "**" / "*.wav")])
    assert [str(Path(f).relative_to(tmp_path)) for f in recursive] == ["d/z/1.wav", "top.wav"]


def test_find_audio_real_corpus(emodb_dir: Path, ravdess_dir: Path):
    files, errors = find_audio([emodb_dir, str(ravdess_dir / "Actor_01" / "*.flac")])
    assert errors == []
    assert sum(f.endswith(".wav") for f in files) == len(list(emodb_dir.glob("*.wav")))
    assert sum(f.endswith(".flac") for f in files) == len(
        list((ravdess_dir / "Actor_01").glob("*.flac"))
    )
    wav = load_audio(files[0])
    assert wav.shape == (32000,)  # EmoDB copy: 2.000 s at 22.05 kHz -> 16 kHz


# ------------------------------------------------------------------------------------------------
# Bad input, one case each


def test_missing_path(tmp_path: Path):
    assert problem_of(tmp_path / "nope.wav").problem == "no such file or directory"


def test_directory_is_not_a_file(tmp_path: Path):
    assert "directory" in problem_of(tmp_path).problem


def test_empty_file(tmp_path: Path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert problem_of(tmp_path / "empty.wav").problem == "empty file (0 bytes)"


def test_zero_length_audio(tmp_path: Path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    assert (tmp_path / "zero.wav").stat().st_size > 0  # a valid header, no samples
    assert problem_of(tmp_path / "zero.wav").problem == "no audio samples (zero length)"
    with pytest.raises(AudioError, match="zero length"):
        list(stream_audio(tmp_path / "zero.wav"))


@pytest.mark.parametrize(
    "kind", ["digital_zero", "dither_noise_-80dBFS", "quiet_tone_-66dBFS", "zero_flac_48k"]
)
def test_silence_only(tmp_path: Path, kind: str):
    sr = 48000 if kind == "zero_flac_48k" else 16000
    x = {
        "digital_zero": np.zeros(3 * sr),
        "dither_noise_-80dBFS": 1e-4 * rng().standard_normal(3 * sr),
        "quiet_tone_-66dBFS": tone(3, sr, amp=10 ** (-63 / 20)),  # RMS = amp / sqrt(2)
        "zero_flac_48k": np.zeros(3 * sr),
    }[kind]
    path = tmp_path / ("s.flac" if kind.endswith("flac_48k") else "s.wav")
    sf.write(path, x, sr, subtype="PCM_24")
    assert problem_of(path).problem == "silence only (no speech to classify)"


def test_quiet_but_audible_is_not_silence(tmp_path: Path):
    # 6 dB above the threshold: must load.
    amp = math.sqrt(2) * 10 ** ((SILENCE_DBFS + 6) / 20)
    sf.write(tmp_path / "q.wav", tone(1, 16000, amp=amp), 16000, subtype="PCM_24")
    assert load_audio(tmp_path / "q.wav").shape == (16000,)


@pytest.mark.parametrize("kind", ["constant_0.5", "dc_0.2_noise_-70dBFS", "drifting_offset"])
def test_dc_offset_without_sound_is_silence(tmp_path: Path, kind: str):
    """An offset is no sound: only what is left once it is removed counts as level."""
    sr = 16000
    t = np.arange(3 * sr) / sr
    x = {
        "constant_0.5": np.full(3 * sr, 0.5),
        "dc_0.2_noise_-70dBFS": 0.2 + 3e-4 * rng().standard_normal(3 * sr),
        "drifting_offset": 0.1 + 0.1 * t + 1e-4 * rng().standard_normal(3 * sr),
    }[kind]
    sf.write(tmp_path / "dc.wav", x, sr, subtype="PCM_16" if kind == "constant_0.5" else "FLOAT")
    assert problem_of(tmp_path / "dc.wav").problem == SILENCE_PROBLEM
    with pytest.raises(AudioError, match="silence only"):
        check_audio(tmp_path / "dc.wav")


QUIET_SPEECH = ["emodb", "emodb_-40dB", "emodb_-40dB_dc_0.3"] + [
    f"examples/{p.name}" for p in sorted((REPO_ROOT / "examples").glob("*.wav"))
]


@pytest.mark.parametrize("kind", QUIET_SPEECH)
def test_speech_is_not_silence(tmp_path: Path, emodb_dir: Path, kind: str):
    """Real speech passes the silence check, quiet (40 dB down) or on an offset."""
    if kind.startswith("examples/"):
        path = REPO_ROOT / kind
    else:
        x, sr = sf.read(emodb_dir / "03a01Fa.wav")
        gain = 0.01 if "-40dB" in kind else 1.0
        offset = 0.3 if "dc" in kind else 0.0
        path = tmp_path / "speech.wav"
        sf.write(path, gain * x + offset, sr, subtype="FLOAT")
    assert check_audio(path) == pytest.approx(audio_info(path).duration)


def test_fifo_and_devices_are_not_read(tmp_path: Path):
    """A FIFO or a character device is refused from ``stat`` alone, never opened (a FIFO
    without a writer would block; ``/dev/zero`` never ends)."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)

    def unblock() -> None:  # should anything open the FIFO to read anyway: fail, do not hang
        with contextlib.suppress(OSError):  # ENXIO: nobody is reading, all is well
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    rescue = threading.Timer(10.0, unblock)
    rescue.start()
    try:
        for read in (load_audio, check_audio, audio_info, lambda p: list(stream_audio(p))):
            with pytest.raises(AudioError) as info:
                read(fifo)
            assert info.value.problem == "not a regular file (FIFO)"
            with pytest.raises(AudioError) as info:
                read("/dev/zero")
            assert info.value.problem == "not a regular file (character device)"
    finally:
        rescue.cancel()


def test_unsearchable_folder_is_reported(tmp_path: Path, monkeypatch):
    sf.write(tmp_path / "a.wav", speechlike(0.5, 16000), 16000)
    locked = tmp_path / "locked"
    (locked / "deeper").mkdir(parents=True)
    sf.write(locked / "deeper" / "b.wav", speechlike(0.5, 16000), 16000)
    scandir = os.scandir

    def scandir_as_non_root(path="."):  # tests run as root, who can read any folder
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_as_non_root)
    problem = "cannot search this folder (permission denied)"
    files, errors = find_audio([tmp_path])
    assert files == [str(tmp_path / "a.wav")] and errors == [(str(locked), problem)]
    # The folder given itself: one error, not also "no audio files in directory".
    assert find_audio([locked]) == ([], [(str(locked), problem)])


def test_corrupt_random_bytes(tmp_path: Path):
    (tmp_path / "noise.wav").write_bytes(rng().integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a readable audio file" in problem_of(tmp_path / "noise.wav").problem


def test_corrupt_flac_body(tmp_path: Path):
    sf.write(tmp_path / "c.flac", speechlike(2, 16000), 16000)
    data = bytearray((tmp_path / "c.flac").read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2000] = (
        rng().integers(0, 256, 2000, dtype=np.uint8).tobytes()
    )
    (tmp_path / "c.flac").write_bytes(bytes(data))
    assert "corrupt" in problem_of(tmp_path / "c.flac").problem


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_truncated_file(tmp_path: Path, fmt: str):
    full = tmp_path / f"full.{fmt}"
    sf.write(full, speechlike(3, 16000), 16000)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    assert load_audio(full).shape == (48000,)
    problem = problem_of(cut).problem
    assert "truncated" in problem, problem
    with pytest.raises(AudioError, match="truncated"):
        list(stream_audio(cut, block_seconds=0.5))


def test_text_file_named_wav(tmp_path: Path):
    (tmp_path / "readme.wav").write_text("This is not audio.\nJust a text file.\n")
    assert problem_of(tmp_path / "readme.wav").problem == "not an audio file (text content)"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_samples(tmp_path: Path, bad: float):
    x = speechlike(2, 16000)
    x[12345] = bad
    sf.write(tmp_path / "bad.wav", x, 16000, subtype="FLOAT")
    assert problem_of(tmp_path / "bad.wav").problem == "contains NaN or infinite samples"
    with pytest.raises(AudioError, match="NaN or infinite"):
        list(stream_audio(tmp_path / "bad.wav", block_seconds=0.5))


def test_unsupported_format(tmp_path: Path):
    # An MPEG-4 audio header: a real container that libsndfile does not decode.
    body = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isomiso2" + bytes(range(256)) * 8
    (tmp_path / "voice.m4a").write_bytes(body)
    err = problem_of(tmp_path / "voice.m4a")
    if ".m4a" not in audio_extensions():  # no ffmpeg here: reported, not attempted
        assert err.problem.startswith("cannot decode .m4a audio: install ffmpeg")
    else:  # ffmpeg finds no audio in it
        assert err.problem.startswith("not a readable audio file")


def test_too_long_for_whole_file(tmp_path: Path):
    sf.write(tmp_path / "long.flac", speechlike(12, 16000), 16000)
    with pytest.raises(AudioTooLongError) as info:
        load_audio(tmp_path / "long.flac", max_seconds=10)
    assert isinstance(info.value, AudioError)
    assert info.value.duration_s == pytest.approx(12.0)
    assert "too long" in str(info.value) and "\n" not in str(info.value)
    # The caller can stream it instead, or raise the limit.
    assert sum(len(b) for b in stream_audio(tmp_path / "long.flac", 5)) == 12 * 16000
    assert load_audio(tmp_path / "long.flac", max_seconds=13).shape == (12 * 16000,)


def test_audio_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(AudioTooLongError("x.wav", 100.0, 60.0)))
    assert str(err) == str(AudioTooLongError("x.wav", 100.0, 60.0))


# ------------------------------------------------------------------------------------------------
# Good input: rates, channels, formats


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000, 96000])
def test_resampled_to_right_length_and_pitch(tmp_path: Path, sr: int):
    seconds = 2.5
    sf.write(tmp_path / "t.wav", tone(seconds, sr, freq=1000.0), sr, subtype="PCM_16")
    wav = load_audio(tmp_path / "t.wav")
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert len(wav) == math.ceil(16000 * round(seconds * sr) / sr)
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert np.fft.rfftfreq(len(wav), 1 / 16000)[spectrum.argmax()] == pytest.approx(1000, abs=1)
    assert float(wav.abs().max()) == pytest.approx(0.3, abs=0.01)


def test_stereo_downmix_is_channel_mean(tmp_path: Path):
    left, right = tone(1, 16000, 300, 0.4), tone(1, 16000, 500, 0.2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wav = load_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(wav.numpy(), (left + right) / 2, atol=1e-6)
    info = audio_info(tmp_path / "st.wav")
    assert (info.channels, info.sample_rate, info.duration) == (2, 16000, 1.0)


@pytest.mark.parametrize("ext", AUDIO_EXTENSIONS)
def test_every_listed_extension_is_readable(tmp_path: Path, ext: str):
    formats = {".wave": "WAV", ".oga": "OGG", ".opus": "OGG", ".aif": "AIFF", ".aiff": "AIFF"}
    subtype = {".opus": "OPUS", ".mp3": "MPEG_LAYER_III"}.get(ext)
    sr = 48000 if ext == ".opus" else 16000
    path = tmp_path / f"x{ext}"
    sf.write(path, speechlike(1, sr), sr, format=formats.get(ext), subtype=subtype)
    wav = load_audio(path)
    assert abs(len(wav) - 16000) <= 1152 * 16000 // sr  # MP3 may pad one frame
    assert audio_info(path).channels == 1


def test_real_files_emodb_and_ravdess(emodb_dir: Path, ravdess_dir: Path):
    emodb = load_audio(emodb_dir / "03a01Fa.wav")
    assert audio_info(emodb_dir / "03a01Fa.wav").sample_rate == 22050
    assert emodb.shape == (32000,)
    flac = sorted((ravdess_dir / "Actor_01").glob("*.flac"))[0]
    assert len(load_audio(flac)) == audio_info(flac).frames  # already 16 kHz


# ------------------------------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
def test_stream_equals_whole_file(tmp_path: Path, sr: int):
    x = np.stack([speechlike(7.3, sr), speechlike(7.3, sr)], axis=1)
    sf.write(tmp_path / "s.wav", x, sr, subtype="FLOAT")
    whole = load_audio(tmp_path / "s.wav")
    for block_seconds in (0.37, 2.0, 60.0):
        blocks = list(stream_audio(tmp_path / "s.wav", block_seconds=block_seconds))
        assert len({len(b) for b in blocks[:-1]}) <= 1
        torch.testing.assert_close(torch.cat(blocks), whole, atol=1e-5, rtol=0)


def test_stream_twenty_minutes_in_bounded_memory(tmp_path: Path):
    """A 20-minute 48 kHz file (220 MB as float32) streams with a few MB of extra RSS."""
    path = tmp_path / "long.wav"
    minutes, sr = 20, 48000
    block = tone(10, sr, freq=300.0)
    with sf.SoundFile(path, "w", sr, 1, "PCM_16") as f:  # written block by block
        for _ in range(6 * minutes):
            f.write(block)
    assert audio_info(path).duration == pytest.approx(60 * minutes)
    # Run in a fresh process so that ru_maxrss (a high-water mark) is not set by earlier tests.
    script = textwrap.dedent(
        f"""
        import resource, torch
        torch.set_num_threads(1)
        from qieemo_lobes.audio import stream_audio
        path = {str(path)!r}
        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for _ in stream_audio(path, block_seconds=10):  # warm up allocator and resampler
            break
        before = peak_mb()
        n = sum(len(b) for b in stream_audio(path, block_seconds=10))
        print(n, peak_mb() - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout.split()
    n_samples, growth_mb = int(out[0]), float(out[1])
    assert n_samples == 60 * minutes * 16000
    whole_file_mb = 60 * minutes * 48000 * 4 / 2**20  # the decoded float32 signal
    assert growth_mb < 40, f"peak RSS grew by {growth_mb:.1f} MB (whole file: {whole_file_mb:.0f})"
