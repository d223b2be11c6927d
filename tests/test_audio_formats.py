"""The audio users actually have (issue 14): telephone WAV, MP3, Opus, OGG, M4A, quiet, clipped.

One espeak-ng utterance is converted with ffmpeg into every format; each must decode to the
same speech (correlation with the WAV source, after resampling and the best alignment), pass
the checks of data preparation, read in training, and be classified by ``classify`` with the
built-in default model. Damaged compressed files and garbage containers are one line each, and
without ffmpeg a file only ffmpeg reads says to install it.

The clips are made once per module; the model is loaded once (``classify._load_model`` is
replaced by a loader returning it, as in ``tests/test_classify_hardening.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qieemo_lobes import classify
from qieemo_lobes.audio import (
    FFMPEG_EXTENSIONS,
    SILENCE_DBFS,
    AudioError,
    audio_extensions,
    frame_dbfs,
    load_audio,
    stream_audio,
)
from qieemo_lobes.audio_decode import open_info
from qieemo_lobes.audio_ffmpeg import FFMPEG_ENV, FFmpegInfo, find_ffmpeg
from qieemo_lobes.features import read_audio
from qieemo_lobes.manifests_scan import probe_audio

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_tools = pytest.mark.skipif(
    not HAVE_FFMPEG or shutil.which("espeak-ng") is None,
    reason="ffmpeg and espeak-ng needed to make the clips (apt-get install -y ffmpeg espeak-ng)",
)
TEXT = "I really cannot believe you did that again."
RATE = 16000

# name -> (ffmpeg output options, the ffmpeg encoder needed, read natively by soundfile)
CONVERSIONS = {
    "mulaw.wav": (["-ar", "8000", "-c:a", "pcm_mulaw"], "pcm_mulaw", True),
    "alaw.wav": (["-ar", "8000", "-c:a", "pcm_alaw"], "pcm_alaw", True),
    "speech.mp3": (["-c:a", "libmp3lame", "-b:a", "64k"], "libmp3lame", True),
    "speech.opus": (["-c:a", "libopus", "-b:a", "32k"], "libopus", True),
    "speech_opus.ogg": (["-c:a", "libopus", "-b:a", "32k"], "libopus", True),
    "speech_vorbis.ogg": (["-c:a", "libvorbis", "-q:a", "4"], "libvorbis", True),
    "speech.m4a": (["-c:a", "aac", "-b:a", "64k"], "aac", False),
}
LEVELS = ("quiet.wav", "clipped.wav")  # made with soundfile from the source
# name -> the start of its problem
BAD = {
    "noise.mp3": "not a readable audio file (corrupt or unknown format)",
    "cut.mp3": "truncated audio file",
    "cut_faststart.m4a": "truncated audio file",
    "cut_no_index.m4a": "not a readable audio file (corrupt or unknown format: moov atom not found",
    "broken.m4a": "not a readable audio file (corrupt or unknown format",
    "garbage.mka": "not a readable audio file (corrupt or unknown format",
}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def encoders() -> str:
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The source WAV (espeak-ng, 22.05 kHz), every conversion, the level copies, the bad files."""
    if not HAVE_FFMPEG or shutil.which("espeak-ng") is None:
        pytest.skip("ffmpeg and espeak-ng needed (apt-get install -y ffmpeg espeak-ng)")
    folder = tmp_path_factory.mktemp("formats")
    source = folder / "source" / "speech.wav"
    source.parent.mkdir()
    subprocess.run(["espeak-ng", "-w", str(source), TEXT], check=True)
    made = {"source": source}
    available = encoders()
    for name, (options, encoder, _) in CONVERSIONS.items():
        if f" {encoder} " in available:
            ffmpeg("-i", str(source), *options, str(folder / name))
            made[name] = folder / name
    x, rate = sf.read(source, dtype="float64")
    peak = np.abs(x).max()
    sf.write(folder / "quiet.wav", x / peak * 10 ** (-45 / 20), rate, subtype="PCM_16")
    sf.write(folder / "clipped.wav", np.clip(10 * x, -1, 1), rate, subtype="PCM_16")
    made.update({name: folder / name for name in LEVELS})

    bad = folder / "bad"
    bad.mkdir()
    rng = np.random.default_rng(14)
    (bad / "noise.mp3").write_bytes(rng.bytes(6000))
    mp3 = (folder / "speech.mp3").read_bytes()
    (bad / "cut.mp3").write_bytes(mp3[: len(mp3) // 2])
    ffmpeg("-i", str(source), "-c:a", "aac", "-movflags", "+faststart", str(folder / "fs.m4a"))
    m4a = (folder / "fs.m4a").read_bytes()
    (bad / "cut_faststart.m4a").write_bytes(m4a[: len(m4a) * 6 // 10])
    m4a = (folder / "speech.m4a").read_bytes()  # the index (moov) at the end: cut off
    (bad / "cut_no_index.m4a").write_bytes(m4a[: len(m4a) * 6 // 10])
    # An MPEG-4 header, then garbage; a Matroska (EBML) magic number, then garbage.
    (bad / "broken.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + rng.bytes(4000))
    (bad / "garbage.mka").write_bytes(b"\x1a\x45\xdf\xa3" + rng.bytes(4000))
    made.update({name: bad / name for name in BAD})
    return made


def converted(clips: dict[str, Path]) -> list[str]:
    return [name for name in CONVERSIONS if name in clips]


def aligned_correlation(ref: np.ndarray, x: np.ndarray, max_lag: int) -> tuple[float, int]:
    """The highest normalised correlation of ``x`` with ``ref`` over lags up to ``max_lag``."""
    n = len(ref) + len(x)
    size = 1 << math.ceil(math.log2(n))
    xc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    values = xc[lags % size]
    best = int(np.argmax(values))
    lag = int(lags[best])
    a, b = (ref[: len(x) - lag], x[lag:]) if lag >= 0 else (ref[-lag:], x[: len(ref) + lag])
    m = min(len(a), len(b))
    a, b = a[:m], b[:m]
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), lag


# ------------------------------------------------------------------------------------------------
# Decoding: the right samples, through soundfile where it reads the file, ffmpeg otherwise


@needs_tools
@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_each_format_decodes_to_the_source_speech(clips, name):
    if name not in clips:
        pytest.skip(f"this ffmpeg has no {CONVERSIONS[name][1]} encoder")
    path = clips[name]
    by_soundfile = CONVERSIONS[name][2]
    assert isinstance(open_info(str(path)), FFmpegInfo) is not by_soundfile
    ref = load_audio(clips["source"]).numpy()
    wav = load_audio(path).numpy()
    assert abs(len(wav) - len(ref)) < 0.1 * RATE  # codec padding at most
    corr, lag = aligned_correlation(ref, wav, max_lag=RATE // 20)
    assert corr > 0.9, (name, corr, lag)
    assert abs(lag) <= RATE // 20
    # Data preparation accepts it, training reads the same samples.
    duration, problem = probe_audio(path)
    assert problem is None and duration == pytest.approx(len(wav) / RATE, abs=1e-3)
    trained_on = read_audio(str(path)).numpy()
    np.testing.assert_allclose(trained_on, wav - wav.mean(), atol=2e-5)


@needs_tools
def test_m4a_streams_from_the_ffmpeg_pipe_as_loaded_whole(clips):
    whole = load_audio(clips["speech.m4a"])
    blocks = list(stream_audio(clips["speech.m4a"], block_seconds=0.37))
    assert len(blocks) > 3 and len({len(b) for b in blocks[:-1]}) == 1
    torch.testing.assert_close(torch.cat(blocks), whole, atol=1e-5, rtol=0)
    # A consumer that stops early stops ffmpeg (nothing is left running, nothing raised).
    stream = stream_audio(clips["speech.m4a"], block_seconds=0.1)
    next(stream)
    stream.close()


@needs_tools
def test_a_segment_of_an_m4a_reads_as_soundfile_would(clips):
    """A manifest's start/stop seconds cut an ffmpeg-decoded file as they cut a WAV."""
    whole = read_audio(str(clips["speech.m4a"]))
    part = read_audio(str(clips["speech.m4a"]), 0.5, 1.0)
    assert len(part) == RATE // 2
    assert aligned_correlation(whole[RATE // 2 : RATE].numpy(), part.numpy(), 0)[0] > 0.99


@needs_tools
def test_quiet_and_clipped_speech_are_speech(clips):
    quiet = load_audio(clips["quiet.wav"]).numpy()
    assert 20 * np.log10(np.abs(quiet).max()) == pytest.approx(-45, abs=1.0)
    assert SILENCE_DBFS < frame_dbfs(quiet, RATE).max() < -45  # above the threshold, not by much
    ref = load_audio(clips["source"]).numpy()
    assert aligned_correlation(ref, quiet, 0)[0] > 0.99
    clipped, _ = sf.read(clips["clipped.wav"])
    assert np.mean(np.abs(clipped) > 0.999) > 0.05  # really clipped
    assert probe_audio(clips["quiet.wav"])[1] is None
    assert probe_audio(clips["clipped.wav"])[1] is None


# ------------------------------------------------------------------------------------------------
# classify, end to end


@pytest.fixture(scope="module")
def recognizer():
    from qieemo_lobes.interfaces import EmotionRecognizer

    return EmotionRecognizer.from_hparams(source=str(classify.DEFAULT_MODEL_DIR))


@pytest.fixture
def run(monkeypatch, capfd, recognizer):
    """``run(*argv) -> (exit code, JSON records by file name, stderr)``, the default model."""
    monkeypatch.setattr(classify, "_load_model", lambda *args, **kwargs: recognizer)

    def run_main(*argv):
        code = classify.main([*map(str, argv), "--format", "json"], configure_process=False)
        out, err = capfd.readouterr()
        records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
        assert "Traceback" not in err, err
        return code, records, err

    return run_main


def assert_classified(record: dict) -> None:
    probabilities = record["probabilities"]
    assert record["label"] in probabilities, record
    assert all(math.isfinite(p) and 0 <= p <= 1 for p in probabilities.values())
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)


@needs_tools
def test_classify_every_format_and_one_line_per_damaged_file(run, clips):
    good = converted(clips) + list(LEVELS)
    folder = clips["quiet.wav"].parent  # every clip, and bad/ below it
    code, records, err = run(folder)
    assert code == 1
    for name in [*good, *BAD]:
        assert name in records, name
    for name in good:
        assert_classified(records[name])
    lines = err.splitlines()
    assert lines[-1] == f"classify: {len(BAD)} of {len(records)} inputs failed"
    assert len(lines) == len(BAD) + 1, err  # one line each: no decoder noise (libmpg123's notes)
    for name, problem in BAD.items():
        assert records[name]["error"].startswith(problem), (name, records[name]["error"])
        assert f"{clips[name]}: {records[name]['error']}" in lines


@needs_tools
def test_a_long_m4a_is_streamed_and_segmented(run, clips, tmp_path):
    """Over 30 s: classify segments it from ffmpeg's pipe, block by block."""
    x, rate = sf.read(clips["source"], dtype="float32")
    gap = np.zeros(3 * rate, dtype=np.float32)
    sf.write(tmp_path / "long.wav", np.concatenate([gap, *[np.r_[x, gap]] * 7]), rate)
    ffmpeg("-i", str(tmp_path / "long.wav"), "-c:a", "aac", str(tmp_path / "long.m4a"))
    code, records, err = run(tmp_path / "long.m4a")
    assert (code, err) == (0, "")
    record = records["long.m4a"]
    assert record["duration_s"] > 30 and len(record["segments"]) >= 5
    assert_classified(record)


def test_a_named_file_of_unknown_type_is_one_line(run, tmp_path):
    (tmp_path / "data.xyz").write_bytes(np.random.default_rng(1).bytes(3000))
    code, records, err = run(tmp_path / "data.xyz")
    assert code == 1
    problem = "not a readable audio file (corrupt or unknown format)"
    assert records["data.xyz"]["error"] == problem
    assert err.splitlines()[0] == f"{tmp_path / 'data.xyz'}: {problem}"


# ------------------------------------------------------------------------------------------------
# Without ffmpeg


def test_without_ffmpeg_a_file_only_ffmpeg_reads_says_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(FFMPEG_ENV, str(tmp_path / "no" / "ffmpeg"))
    assert find_ffmpeg() is None
    assert not set(FFMPEG_EXTENSIONS) & set(audio_extensions())
    body = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isomiso2" + bytes(range(256)) * 8
    (tmp_path / "voice.m4a").write_bytes(body)
    with pytest.raises(AudioError) as info:
        load_audio(tmp_path / "voice.m4a")
    assert str(info.value) == (
        f"{tmp_path / 'voice.m4a'}: cannot decode .m4a audio: install ffmpeg to read "
        ".m4a/.aac/.mp4/... files (soundfile cannot)"
    )
    assert probe_audio(tmp_path / "voice.m4a")[1] == info.value.problem


@needs_tools
def test_without_ffmpeg_soundfile_formats_are_still_classified(run, clips, monkeypatch, tmp_path):
    monkeypatch.setenv(FFMPEG_ENV, str(tmp_path / "no" / "ffmpeg"))
    natives = [name for name in converted(clips) if CONVERSIONS[name][2]]
    code, records, err = run(*(clips[name] for name in natives), clips["speech.m4a"])
    assert code == 1
    for name in natives:
        assert_classified(records[name])
    assert records["speech.m4a"]["error"].startswith("cannot decode .m4a audio: install ffmpeg")
    assert len(err.splitlines()) == 2  # the m4a's line and the count
