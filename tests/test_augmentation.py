"""Training-time corruption augmentation (``augment_copies``, ``augment_corruptions``).

With the feature cache every training clip gets its corrupted copies encoded once (never a
validation or test clip), the same copy in every run with the same seed; without the cache the
training batches are corrupted on the fly; settings that cannot work are one line.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest
import torch

from qieemo_lobes.augmentation import (
    AugmentationError,
    CorruptBatch,
    check_augmentation,
    corrupted_copies,
    live_augmenter,
)
from qieemo_lobes.features import content_key, read_audio, read_entry_file
from qieemo_lobes.recipe import run_training
from qieemo_lobes.run_settings import settings_difference
from tests.conftest import TINY_WHISPER
from tests.test_emotion_recipe import RECIPE, SPEAKERS, train_fold

PER_EMOTION = 2  # clips per speaker and emotion: ~40 clips, ~20 of them for training
TINY = [
    *TINY_WHISPER,
    "--number_of_epochs=1",
    "--batch_size=8",
    "--valid_split=utterance",
    "--valid_ratio=0.25",
    "--test_fold=1",
    "--speed_perturb=[100]",
]
AUGMENT = ["--augment_copies=2", "--augment_corruptions=[white,gain]"]
SETTINGS = {"augment_copies": 2, "augment_corruptions": ["white", "gain"], "seed": 1986}


@pytest.fixture(scope="module")
def small(tmp_path_factory, emodb_dir) -> Path:
    """Three EmoDB speakers, two clips of each emotion each, linked into a root of their own."""
    root = tmp_path_factory.mktemp("emodb_small")
    count: collections.Counter = collections.Counter()
    for wav in sorted(emodb_dir.glob("*.wav")):
        speaker, emotion = wav.name[:2], wav.name[5]
        if speaker in SPEAKERS and count[speaker, emotion] < PER_EMOTION:
            count[speaker, emotion] += 1
            os.symlink(wav, root / wav.name)
    return root


def _cache_entries(cache: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in cache.rglob("*.pt")}


def _manifest(run: Path, split: str) -> dict:
    return json.loads((run / f"{split}.json").read_text())


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, small):
    """One run with 2 corrupted copies per training clip, and the cache it filled."""
    root = tmp_path_factory.mktemp("augmented")
    run, cache = root / "run", root / "cache"
    result = train_fold(small, run, f"--feature_cache={cache}", *TINY, *AUGMENT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, cache, result


def test_copies_are_cached_for_training_clips_only(cached_run):
    run, cache, result = cached_run
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert "ua" in metrics and metrics["n_train"] > 10
    line = "augmentation: 2 corrupted copies per training clip from [white, gain]"
    assert line in (run / "log.txt").read_text()
    assert "corrupted copies" in result.stderr  # the encoding's progress bar
    entries = list(cache.rglob("*.pt"))
    for split in ("train", "valid", "test"):
        for record in _manifest(run, split).values():
            key = content_key(record["wav"])
            (original,) = [e for e in entries if e.stem == key]
            copies = sorted(e for e in entries if e.stem.startswith(f"{key}_aug"))
            if split != "train":
                assert copies == [], (split, record["wav"])
                continue
            assert [c.stem.split("_aug")[1][0] for c in copies] == ["1", "2"]
            blocks, _ = read_entry_file(original)
            for copy in copies:
                corrupted, _ = read_entry_file(copy)
                assert corrupted.shape == blocks.shape  # same length, time-aligned
                assert not torch.equal(corrupted, blocks)
    assert len([e for e in entries if "_aug" in e.name]) == 2 * metrics["n_train"]


def test_a_second_run_reuses_the_copies(cached_run, small, tmp_path):
    _, cache, _ = cached_run
    before = _cache_entries(cache)
    result = train_fold(
        small, tmp_path / "again", f"--feature_cache={cache}", *TINY, *AUGMENT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _cache_entries(cache) == before  # nothing encoded again, nothing added


def test_a_copy_is_the_same_in_every_run_and_another_with_another_seed(cached_run):
    run, cache, _ = cached_run
    train = _manifest(run, "train")
    entries = {path.name for path in cache.rglob("*.pt")}
    for index in (1, 2):
        first = corrupted_copies(train, SETTINGS, index)
        again = corrupted_copies(train, SETTINGS, index)
        other = corrupted_copies(train, {**SETTINGS, "seed": 7}, index)
        for utt, copy in first.items():
            assert f"{copy.key}{copy.suffix}.pt" in entries  # what the run cached
            assert again[utt].suffix == copy.suffix
            assert other[utt].suffix != copy.suffix  # never confused with another seed's
        for utt in sorted(first)[:4]:
            wav = read_audio(train[utt]["wav"])
            assert torch.equal(first[utt](wav), again[utt](wav))
            if first[utt].corruption.name == other[utt].corruption.name == "white":
                assert not torch.equal(first[utt](wav), other[utt](wav))


def test_copies_of_one_clip_use_other_corruptions_and_babble_never_its_speaker(cached_run):
    run, _, _ = cached_run
    train = _manifest(run, "train")
    settings = {**SETTINGS, "augment_corruptions": ["white", "gain", "babble"]}
    one, two = (corrupted_copies(train, settings, k) for k in (1, 2))
    assert all(one[u].corruption.name != two[u].corruption.name for u in train)
    babble = [c for c in [*one.values(), *two.values()] if c.corruption.name == "babble"]
    assert babble
    training_files = {record["wav"] for record in train.values()}
    for copy in babble:
        assert copy.talkers and all(spk != copy.speaker for spk, *_ in copy.talkers)
        assert {wav for _, wav, *_ in copy.talkers} <= training_files
    single = {u: r for u, r in train.items() if r["spk_id"] == train[min(train)]["spk_id"]}
    with pytest.raises(AugmentationError, match="babble needs training clips of at least two"):
        corrupted_copies(single, settings, 1)


def test_bad_augmentation_settings_are_one_line(tmp_path, monkeypatch, capsys, small):
    monkeypatch.chdir(RECIPE)
    monkeypatch.setenv("QIEEMO_FFMPEG", "/nonexistent")
    cases = [
        (["--augment_copies=2", "--augment_corruptions=[white,whte]"], "unknown corruption 'whte'"),
        (["--augment_copies=-1"], "augment_copies must not be negative"),
        (
            ["--augment_copies=2", "--augment_corruptions=[white,mp3]"],
            "mp3 cannot be made on this machine (ffmpeg not found",
        ),
    ]
    for i, (overrides, problem) in enumerate(cases):
        out, cache = tmp_path / f"run{i}", tmp_path / f"cache{i}"
        argv = ["hparams/qieemo.yaml", f"--data_folder={small}", f"--output_folder={out}"]
        argv += [f"--feature_cache={cache}", *overrides]
        with pytest.raises(SystemExit) as stop:
            run_training(lambda *args, **kwargs: {}, argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: hparams/qieemo.yaml: ")
        assert problem in err, err
        if "mp3" in problem:
            assert err.endswith("install ffmpeg or drop mp3 from augment_corruptions")
        assert not out.exists() and not cache.exists()  # nothing built, nothing trained
    # Off, the list is not checked against the machine: ffmpeg is needed only when used.
    check_augmentation({"augment_copies": 0, "augment_corruptions": ["mp3"]})


def test_older_runs_without_the_settings_resume():
    old = {"lr": 0.001, "seed": 1986}  # recorded before augmentation existed
    assert settings_difference(old, {**SETTINGS, "lr": 0.001, "augment_copies": 0}) == []
    assert settings_difference(old, {**SETTINGS, "lr": 0.001}) == [
        "augment_copies: (unset) -> 2",
        "augment_corruptions: (unset) -> [white, gain]",
    ]


def test_live_batches_are_corrupted_on_the_fly_deterministically(cached_run):
    run, _, _ = cached_run
    train = _manifest(run, "train")
    settings = {**SETTINGS, "augment_corruptions": ["babble", "gain"]}
    augmenter, corrupter = live_augmenter({**settings, "train_annotation": run / "train.json"})
    ids = sorted(train)[:6]
    wavs = [read_audio(train[utt]["wav"]) for utt in ids]
    batch = torch.zeros(len(wavs), max(len(w) for w in wavs))
    for i, wav in enumerate(wavs):
        batch[i, : len(wav)] = wav
    lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])

    def corrupted(epoch: int) -> torch.Tensor:
        corrupter.set_batch(ids, epoch)
        out, out_lens = augmenter(batch, lens)
        assert out.shape == batch.shape and torch.equal(out_lens, lens)
        return out

    out = corrupted(1)
    drawn = {utt: corrupter.draw(utt) for utt in ids}  # epoch 1's draws
    assert any(drawn.values()) and torch.equal(out, corrupted(1))  # the same draw again
    assert not torch.equal(out, corrupted(2))
    for i, utt in enumerate(ids):
        n = len(wavs[i])
        assert not out[i, n:].any()  # padding stays zero
        changed = not torch.equal(out[i, :n], batch[i, :n])
        assert changed == (drawn[utt] is not None), utt
    assert isinstance(corrupter, CorruptBatch)


def test_live_encoder_trains_with_augmentation(tmp_path, small):
    """Frozen encoder without the cache: the training batches are corrupted on the fly."""
    run = tmp_path / "run"
    result = train_fold(small, run, *TINY, *AUGMENT, "--use_feature_cache=False", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ua" in json.loads((run / "test_metrics.json").read_text())
    assert "(live encoder: drawn on the fly" in (run / "log.txt").read_text()
