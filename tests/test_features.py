"""The frozen-feature cache: computed once, keyed so nothing stale is reused, resumable."""

from __future__ import annotations

import shutil

import pytest
import soundfile
import torch

from qieemo_lobes.encoders import WhisperBlocks
from qieemo_lobes.features import FeatureCache, read_audio

CLIPS = ["03a01Fa.wav", "08a04Wc.wav", "13b03Lb.wav", "16b10Wa.wav"]


class CountingEncoder(torch.nn.Module):
    """Wraps a real encoder and counts the utterances it encodes."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.identity = encoder.identity
        self.calls = 0

    def forward(self, wavs, wav_lens):
        self.calls += wavs.shape[0]
        return self.encoder(wavs, wav_lens)


@pytest.fixture(scope="module")
def tiny_fit():
    return WhisperBlocks("whisper-tiny.en", window="fit")


@pytest.fixture()
def corpus(tmp_path, emodb_dir):
    folder = tmp_path / "audio"
    folder.mkdir()
    for name in CLIPS:
        shutil.copy(emodb_dir / name, folder / name)
    return {name[:-4]: {"wav": str(folder / name)} for name in CLIPS}


def test_cached_features_equal_the_encoder_in_fp16(tmp_path, corpus, tiny_fit):
    cache = FeatureCache(tiny_fit, tmp_path / "cache")
    paths = cache.precompute(corpus, progress=False)
    assert set(paths) == set(corpus)
    for utt, record in corpus.items():
        wav = read_audio(record["wav"])
        blocks, ppg = tiny_fit(wav[None], torch.ones(1))
        stored = torch.load(paths[utt])
        assert stored["blocks"].dtype == torch.float16
        assert stored["blocks"].shape == (4, blocks.shape[2], 384)
        # Batched by length in precompute, alone here: equal up to fp16 rounding.
        assert torch.allclose(stored["blocks"].float(), blocks[:, 0], atol=2e-2, rtol=1e-2)
        assert torch.allclose(stored["ppg"].float(), ppg[0], atol=2e-2, rtol=1e-2)


def test_second_run_computes_nothing(tmp_path, corpus, tiny_fit):
    counting = CountingEncoder(tiny_fit)
    cache = FeatureCache(counting, tmp_path / "cache")
    cache.precompute(corpus, progress=False)
    assert counting.calls == len(corpus)
    cache.precompute(corpus, progress=False)
    cache.load(corpus["03a01Fa"]["wav"])
    assert counting.calls == len(corpus)


def test_resumes_after_interruption(tmp_path, corpus, tiny_fit):
    counting = CountingEncoder(tiny_fit)
    cache = FeatureCache(counting, tmp_path / "cache")
    first_two = dict(list(corpus.items())[:2])
    cache.precompute(first_two, progress=False)
    # A crash mid-write leaves only a temporary file, never a half entry under the real name.
    (cache.folder / "zz").mkdir(parents=True, exist_ok=True)
    (cache.folder / "zz" / "crashed.tmp").write_bytes(b"partial")
    cache.precompute(corpus, progress=False)
    assert counting.calls == len(corpus)  # only the two missing ones were added


def test_changed_audio_window_or_weights_are_never_stale(tmp_path, corpus, tiny_fit):
    cache = FeatureCache(tiny_fit, tmp_path / "cache")
    wav = corpus["03a01Fa"]["wav"]
    before = cache.entry(wav)
    cache.precompute(corpus, progress=False)
    old_blocks, _ = cache.load(wav)
    # Same file name, new content: a new key, and the new content's features.
    data, rate = soundfile.read(wav)
    soundfile.write(wav, data[::-1].copy(), rate)
    assert cache.entry(wav) != before
    new_blocks, _ = cache.load(wav)
    assert not torch.allclose(new_blocks.float(), old_blocks.float(), atol=1e-2)
    # Another window or other weights live in another folder.
    other_window = FeatureCache(WhisperBlocks("whisper-tiny.en", window="30s"), tmp_path / "cache")
    assert other_window.folder != cache.folder
    # A segment of a file is keyed by its bounds too.
    assert cache.entry(wav, 0.0, 1.0) != cache.entry(wav, 0.5, 1.5) != cache.entry(wav)


def test_segment_reads_only_its_samples(corpus):
    wav = corpus["03a01Fa"]["wav"]
    whole = read_audio(wav)
    part = read_audio(wav, 0.5, 1.25)
    assert abs(len(part) - 0.75 * 16000) <= 2
    start = int(0.5 * 16000)
    assert torch.allclose(part[100:-100], whole[start + 100 : start + len(part) - 100], atol=5e-3)


def test_each_file_is_hashed_once_per_run(tmp_path, corpus, tiny_fit, monkeypatch):
    """Entries for several speeds and passes hash a file once; a rewritten file again."""
    from qieemo_lobes import features

    hashed = []
    real = features.file_digest
    monkeypatch.setattr(features, "file_digest", lambda *a: hashed.append(a[0]) or real(*a))
    features._memo_digest.cache_clear()
    cache = FeatureCache(tiny_fit, tmp_path / "cache")
    for _ in range(2):
        for speed in (90, 100, 110):
            entries = {utt: cache.entry(r["wav"], speed=speed) for utt, r in corpus.items()}
    assert sorted(hashed) == sorted(r["wav"] for r in corpus.values())
    assert entries["03a01Fa"].name.endswith("_speed110.pt")
    wav = corpus["03a01Fa"]["wav"]
    data, rate = soundfile.read(wav)
    soundfile.write(wav, data[: len(data) // 2], rate)
    assert cache.entry(wav, speed=110) != entries["03a01Fa"]
    assert hashed.count(wav) == 2
