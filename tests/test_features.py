"""The frozen-feature cache: computed once, keyed so nothing stale is reused, resumable, and a
damaged entry recomputed (or refused in one line), never read as features."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from qieemo_lobes import features
from qieemo_lobes.encoders import WhisperBlocks
from qieemo_lobes.features import FeatureCache, FeatureCacheError, read_audio, speaker_statistics

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
        stored = torch.load(paths[utt], weights_only=True)
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


# ---------------------------------------------------------------------------------------------
# Damaged entries, non-finite outputs, a cache folder that cannot be written. A toy encoder
# (frames of the waveform) keeps these fast: what is tested is the cache, not the encoder.
# ---------------------------------------------------------------------------------------------


class ToyEncoder(torch.nn.Module):
    """``(blocks, ppg)`` from 20 ms frames of the waveform, times ``scale``; counts utterances."""

    identity = "toy"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.calls = 0

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        self.calls += wavs.shape[0]
        frames = wavs.unfold(1, 320, 320)[..., :4] * self.scale  # (B, T, 4)
        return torch.stack([frames, 2 * frames]), frames.sum(-1, keepdim=True)


@pytest.fixture()
def tones(tmp_path) -> dict[str, dict]:
    """Three short tones of different pitch, as manifest records."""
    folder = tmp_path / "tones"
    folder.mkdir()
    records = {}
    for i, hz in enumerate((220, 330, 440)):
        wav = folder / f"t{i}.wav"
        t = np.arange(8000) / 16000
        soundfile.write(wav, 0.1 * np.sin(2 * np.pi * hz * t), 16000)
        records[f"t{i}"] = {"wav": str(wav)}
    return records


def damage(path: Path, how: str) -> None:
    """Break a cache entry the ways a disk or a copy does."""
    if how == "missing":
        path.unlink()
    elif how == "cut short":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"\0" * 100)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "NaN values":
        blocks, ppg = torch.load(path, weights_only=True).values()
        torch.save({"blocks": torch.full_like(blocks, float("nan")), "ppg": ppg}, path)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("how", ["cut short", "garbage", "empty"])
def test_damaged_entry_is_recomputed_when_the_cache_is_filled(tmp_path, tones, caplog, how):
    encoder = ToyEncoder()
    cache = FeatureCache(encoder, tmp_path / "cache")
    paths = cache.precompute(tones, progress=False)
    expected = features.read_entry_file(paths["t1"])
    damage(paths["t1"], how)
    caplog.clear()
    cache.precompute(tones, progress=False)
    assert encoder.calls == len(tones) + 1  # that entry alone, again
    (warning,) = warnings_of(caplog)
    assert str(paths["t1"]) in warning and tones["t1"]["wav"] in warning
    for got, want in zip(features.read_entry_file(paths["t1"]), expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("how", ["missing", "cut short", "garbage", "NaN values"])
def test_read_entry_recomputes_a_missing_or_unreadable_entry(tmp_path, tones, caplog, how):
    """The data pipeline reads entries long after precompute: a damaged one is recomputed from
    its audio with one warning naming both, instead of failing at test time without a name."""
    encoder = ToyEncoder()
    cache = FeatureCache(encoder, tmp_path / "cache")
    paths = cache.precompute(tones, progress=False)
    expected = cache.read_entry(paths["t2"])
    damage(paths["t2"], how)
    caplog.clear()
    blocks, ppg = cache.read_entry(paths["t2"])
    assert torch.equal(blocks, expected[0]) and torch.equal(ppg, expected[1])
    assert encoder.calls == len(tones) + 1
    (warning,) = warnings_of(caplog)
    assert str(paths["t2"]) in warning and tones["t2"]["wav"] in warning
    assert "\n" not in warning
    caplog.clear()
    cache.read_entry(paths["t2"])  # repaired: read as it is
    assert encoder.calls == len(tones) + 1 and not warnings_of(caplog)


def test_load_recomputes_a_damaged_entry(tmp_path, tones, caplog):
    encoder = ToyEncoder()
    cache = FeatureCache(encoder, tmp_path / "cache")
    wav = tones["t0"]["wav"]
    expected = cache.load(wav, speed=90)
    damage(cache.entry(wav, speed=90), "cut short")
    caplog.clear()
    blocks, _ = cache.load(wav, speed=90)
    assert torch.equal(blocks, expected[0]) and encoder.calls == 2
    (warning,) = warnings_of(caplog)
    assert wav in warning


def test_an_entry_that_cannot_be_recomputed_is_one_line(tmp_path, tones):
    encoder = ToyEncoder()
    paths = FeatureCache(encoder, tmp_path / "cache").precompute(tones, progress=False)
    damage(paths["t0"], "garbage")
    # A cache that never saw this entry's audio cannot recompute it.
    with pytest.raises(FeatureCacheError) as err:
        FeatureCache(encoder, tmp_path / "cache").read_entry(paths["t0"])
    assert len(str(err.value).splitlines()) == 1
    assert str(err.value).startswith(f"{paths['t0']}: unreadable feature cache entry")
    assert "cannot be recomputed" in str(err.value)
    # Nor one whose audio is gone.
    cache = FeatureCache(encoder, tmp_path / "cache")
    path = cache.entry(tones["t1"]["wav"])
    damage(path, "missing")
    os.unlink(tones["t1"]["wav"])
    with pytest.raises(FeatureCacheError, match=f"^{tones['t1']['wav']}: cannot read the audio"):
        cache.read_entry(path)
    # Per-speaker statistics name a damaged entry too (or recompute it through the cache).
    with pytest.raises(FeatureCacheError, match="unreadable feature cache entry"):
        speaker_statistics({"t0": paths["t0"]}, {"t0": "s"})


@pytest.mark.parametrize("scale", [float("nan"), 1e6])  # NaN; beyond float16 (65504): inf
def test_non_finite_encoder_outputs_are_never_stored(tmp_path, tones, scale):
    one = {"t0": tones["t0"]}
    cache = FeatureCache(ToyEncoder(scale), tmp_path / "cache")
    with pytest.raises(FeatureCacheError) as err:
        cache.precompute(one, progress=False)
    message = str(err.value)
    assert message.startswith(f"{tones['t0']['wav']}: ") and "NaN or infinite" in message
    assert len(message.splitlines()) == 1
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_entries_have_the_permissions_of_new_files(tmp_path, tones):
    """Written through save_torch_atomic: 0666 less the umask, like any file the user writes
    (a temporary file renamed into place kept mkstemp's 0600)."""
    paths = FeatureCache(ToyEncoder(), tmp_path / "cache").precompute(tones, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in paths.values()} == {0o666 & ~umask}
    assert sorted(p.name for p in paths["t0"].parent.iterdir()) == [paths["t0"].name]


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path, tones, monkeypatch):
    """Tests run as root, which writes through any mode bits: a read-only folder is simulated
    by refusing every file or folder created under it."""
    root = tmp_path / "cache"
    root.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if os.fspath(path).startswith(str(root)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    encoder = ToyEncoder()
    cache = FeatureCache(encoder, root)
    expected = f"{root}: cannot write the feature cache (Permission denied)"
    with pytest.raises(FeatureCacheError) as err:
        cache.precompute(tones, progress=False)
    assert str(err.value) == expected
    assert encoder.calls == 0  # refused before encoding anything
    with pytest.raises(FeatureCacheError) as err:
        cache.load(tones["t0"]["wav"])
    assert str(err.value) == expected
