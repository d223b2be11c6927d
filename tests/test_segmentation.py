"""Tests for qieemo_lobes.segmentation on synthesised speech with known pauses."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qieemo_lobes import segmentation_vad
from qieemo_lobes.audio import AudioError, load_audio
from qieemo_lobes.segmentation import (
    FRAME_S,
    SpeechSegmenter,
    frame_scores,
    iter_segment_waveforms,
    scores_to_segments,
    segment_speech,
    silero_available,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "conversation.flac"
EXAMPLE_TSV = REPO_ROOT / "examples" / "conversation_segments.tsv"
PAD = 0.2  # SpeechSegmenter's default pad_s
# Onsets are sharp; Silero's probability decays ~0.1 s after the end of speech.
START_TOL, END_TOL = 0.1, 0.15

METHODS = [
    "energy",
    pytest.param(
        "silero",
        marks=pytest.mark.skipif(not silero_available(), reason="silero-vad not installed"),
    ),
]


def match(segments: list[tuple[float, float]], truth: list[tuple[float, float]]) -> None:
    """One segment per utterance, each at its utterance widened by the padding."""
    assert len(segments) == len(truth), (segments, truth)
    for (a, b), (ta, tb) in zip(segments, truth, strict=True):
        assert abs(a - max(0.0, ta - PAD)) < START_TOL, (a, b, ta, tb)
        assert abs(b - (tb + PAD)) < END_TOL, (a, b, ta, tb)


@pytest.fixture(scope="module")
def espeak_sequence(tmp_path_factory) -> tuple[Path, list[tuple[float, float]]]:
    """Three espeak-ng utterances (different voices) separated by 1.0 s and 1.6 s of silence,
    at 22.05 kHz stereo so that the segmenter's resampling and downmix are exercised too."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox needed (apt-get install -y espeak-ng sox)")
    tmp = tmp_path_factory.mktemp("espeak")
    sr = 22050
    utterances = [
        ("en-us+m3", "Please put the blue box on the table."),
        ("en-gb+f2", "I really did not expect that at all!"),
        ("de+m1", "Der Lappen liegt auf dem Eisschrank."),
    ]
    pauses = [0.6, 1.0, 1.6, 0.7]  # lead, between, between, tail
    pieces, truth, t = [np.zeros(round(pauses[0] * sr), np.float32)], [], pauses[0]
    for k, (voice, text) in enumerate(utterances):
        raw, utt = tmp / f"raw{k}.wav", tmp / f"utt{k}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
        # Trim espeak-ng's own leading/trailing silence so the true boundaries are known.
        subprocess.run(
            ["sox", str(raw), str(utt), "silence", "1", "0.05", "0.1%", "reverse",
             "silence", "1", "0.05", "0.1%", "reverse"],
            check=True,
        )  # fmt: skip
        x, rate = sf.read(utt, dtype="float32")
        assert rate == sr
        truth.append((t, t + len(x) / sr))
        pieces += [x, np.zeros(round(pauses[k + 1] * sr), np.float32)]
        t = truth[-1][1] + round(pauses[k + 1] * sr) / sr
    mono = np.concatenate(pieces)
    path = tmp / "sequence.wav"
    sf.write(path, np.stack([mono, 0.5 * mono], axis=1), sr, subtype="PCM_16")
    return path, truth


@pytest.fixture(scope="module")
def example_truth() -> list[tuple[float, float]]:
    with open(EXAMPLE_TSV, newline="") as f:
        return [(float(r["start_s"]), float(r["end_s"])) for r in csv.DictReader(f, delimiter="\t")]


# ------------------------------------------------------------------------------------------------
# Finding the speech


@pytest.mark.parametrize("method", METHODS)
def test_espeak_sequence_segments(espeak_sequence, method: str):
    path, truth = espeak_sequence
    segmenter = SpeechSegmenter(method=method)
    match(segmenter(path), truth)
    assert segmenter.last_method == method


@pytest.mark.parametrize("method", METHODS)
def test_example_conversation_segments(example_truth, method: str):
    """The committed ~46 s example: nine turns separated by 0.8-2.0 s pauses."""
    match(segment_speech(EXAMPLE, method=method), example_truth)


def test_auto_prefers_silero_and_falls_back(monkeypatch, espeak_sequence):
    path, truth = espeak_sequence
    segmenter = SpeechSegmenter(method="auto")
    segmenter(path)
    assert segmenter.last_method == ("silero" if silero_available() else "energy")

    def broken():
        raise ImportError("No module named 'silero_vad'")

    monkeypatch.setattr(segmentation_vad, "_silero_model", broken)
    match(segmenter(path), truth)
    assert segmenter.last_method == "energy"
    with pytest.raises(ImportError):
        SpeechSegmenter(method="silero")(path)


def test_streaming_does_not_depend_on_block_size(espeak_sequence):
    path, _ = espeak_sequence
    for method in ["energy"] + (["silero"] if silero_available() else []):
        big, used, duration = frame_scores(path, method, block_seconds=60.0)
        small, _, _ = frame_scores(path, method, block_seconds=0.7)
        assert used == method and len(big) == len(small) == int(np.ceil(duration / FRAME_S))
        np.testing.assert_allclose(small, big, atol=1e-4)


def test_silence_and_unreadable_input(tmp_path: Path):
    sf.write(tmp_path / "silent.wav", np.zeros(5 * 16000), 16000)
    assert segment_speech(tmp_path / "silent.wav", method="energy") == []
    if silero_available():
        assert segment_speech(tmp_path / "silent.wav", method="silero") == []
    with pytest.raises(AudioError, match="no such file"):
        segment_speech(tmp_path / "missing.wav")


def test_energy_detector_ignores_a_dc_offset(tmp_path: Path, espeak_sequence):
    """An offset is no sound: alone it is no speech, under speech it changes no segment."""
    rng = np.random.default_rng(0)
    offset = 0.25 + 3e-4 * rng.standard_normal(35 * 16000)  # 35 s of offset and -70 dB noise
    sf.write(tmp_path / "offset.wav", offset, 16000, subtype="FLOAT")
    assert segment_speech(tmp_path / "offset.wav", method="energy") == []
    path, truth = espeak_sequence
    x, sr = sf.read(path)
    sf.write(tmp_path / "speech_on_offset.wav", x + 0.25, sr, subtype="FLOAT")
    match(segment_speech(tmp_path / "speech_on_offset.wav", method="energy"), truth)


# ------------------------------------------------------------------------------------------------
# Segment rules


def test_short_pauses_merged_and_blips_dropped(tmp_path: Path):
    rng = np.random.default_rng(0)
    sr = 16000

    def burst(seconds: float) -> np.ndarray:
        return (0.2 * rng.standard_normal(round(seconds * sr))).astype(np.float32)

    def gap(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * sr), np.float32)

    # 1.0 s burst, 0.2 s pause, 1.0 s burst (one segment), 1.5 s pause, 0.05 s click (dropped)
    x = np.concatenate([gap(1), burst(1), gap(0.2), burst(1), gap(1.5), burst(0.05), gap(1)])
    sf.write(tmp_path / "b.wav", x, sr)
    segments = segment_speech(tmp_path / "b.wav", method="energy")
    assert len(segments) == 1
    (a, b) = segments[0]
    assert abs(a - (1.0 - PAD)) < 0.05 and abs(b - (3.2 + PAD)) < 0.05


@pytest.mark.parametrize("max_segment_s", [3.0, 7.5, 30.0])
def test_no_segment_longer_than_max(example_truth, max_segment_s: float):
    segments = segment_speech(EXAMPLE, method="energy", max_segment_s=max_segment_s)
    assert segments and all(b - a <= max_segment_s for a, b in segments)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(segments, segments[1:], strict=False))
    # Splitting loses no speech: every utterance lies inside the union of the segments.
    for ta, tb in example_truth:
        covered = sum(max(0.0, min(b, tb) - max(a, ta)) for a, b in segments)
        assert covered == pytest.approx(tb - ta, abs=2 * FRAME_S)


def test_long_speech_without_pauses_is_split_at_the_deepest_dip():
    rng = np.random.default_rng(1)
    n = round(100 / FRAME_S)  # 100 s of uninterrupted speech ...
    scores = rng.uniform(0.7, 1.0, n)
    dip = round(21.0 / FRAME_S)  # ... with one shallow dip at 21 s (too short to split on)
    scores[dip : dip + 3] = 0.55
    segments = scores_to_segments(scores, FRAME_S, max_segment_s=30.0)
    assert all(b - a <= 30.0 for a, b in segments)
    assert segments[0][0] == 0.0 and segments[-1][1] == pytest.approx(n * FRAME_S)
    assert abs(segments[0][1] - 21.0) < 0.1  # first cut inside the dip
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(segments, segments[1:], strict=False))
    for max_segment_s in (1.0, 4.9, 29.99):  # random scores: the rule holds whatever the input
        cut = scores_to_segments(rng.uniform(0, 1, n), FRAME_S, max_segment_s=max_segment_s)
        assert all(0 < b - a <= max_segment_s for a, b in cut)


# ------------------------------------------------------------------------------------------------
# Waveforms for classification


def test_segment_waveforms_match_whole_file(espeak_sequence):
    path, _ = espeak_sequence
    segments = segment_speech(path, method="energy")
    whole = load_audio(path)
    got = list(iter_segment_waveforms(path, segments, block_seconds=1.3))
    assert [(a, b) for a, b, _ in got] == segments
    for a, b, wav in got:
        expected = whole[round(a * 16000) : round(b * 16000)]
        assert wav.dtype == torch.float32 and len(wav) == len(expected)
        torch.testing.assert_close(wav, expected, atol=1e-5, rtol=0)
