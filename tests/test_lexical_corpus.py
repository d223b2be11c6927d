"""Tests for benchmarks/lexical_corpus.py: a corpus where only the words carry the emotion."""

from __future__ import annotations

import doctest
import importlib.util
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import lexical_corpus as lc  # noqa: E402
import lexical_sentences  # noqa: E402
import lexical_synthesis  # noqa: E402
import lexical_text_check  # noqa: E402

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)"
)


def _custom_prepare():
    path = REPO / "recipes" / "custom" / "emotion" / "custom_prepare.py"
    spec = importlib.util.spec_from_file_location("custom_prepare_for_lexical_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, list[dict[str, str]]]:
    """4 classes x 6 sentences (4 train, 2 test) x 3 voices (2 train, 1 test): 40 clips."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    out = tmp_path_factory.mktemp("lexical")
    summary = lc.make_corpus(out, n_sentences=6, n_voices=3, seed=0, progress=False)
    return out, summary, lc.read_manifest(out / lc.MANIFEST)


def _by_fold(rows, key):
    return {fold: {r[key] for r in rows if r["fold"] == fold} for fold in ("train", "test")}


# ---------------------------------------------------------------------------------- splits


def test_splits_have_disjoint_voices_and_every_class(tiny) -> None:
    _, summary, rows = tiny
    assert summary["n_utterances"] == len(rows) == 4 * (4 * 2 + 2 * 1)
    speakers, voices = _by_fold(rows, "speaker"), _by_fold(rows, "voice")
    assert speakers == {"train": {"v01", "v02"}, "test": {"v03"}}
    assert voices == {"train": {"en-us", "en-gb+f3"}, "test": {"en-us+m3"}}
    assert _by_fold(rows, "label") == {"train": set(lc.CLASSES), "test": set(lc.CLASSES)}


def test_test_sentences_are_held_out(tiny) -> None:
    _, _, rows = tiny
    texts, templates = _by_fold(rows, "text"), _by_fold(rows, "template")
    assert not texts["train"] & texts["test"]
    assert not templates["train"] & templates["test"]
    for label in lc.CLASSES:
        train = [r for r in rows if r["fold"] == "train" and r["label"] == label]
        test = [r for r in rows if r["fold"] == "test" and r["label"] == label]
        # The feeling word of a test sentence was never heard in training, its description
        # word was (the label stays in the text).
        assert not {r["feel_word"] for r in test} & {r["feel_word"] for r in train}
        assert {r["desc_word"] for r in test} <= {r["desc_word"] for r in train}
        assert {r["unseen_words"] for r in test} == {"1"}
        assert {r["unseen_words"] for r in train} == {"0"}
        # Each class' own words only.
        assert {r["feel_word"] for r in train + test} <= set(lc.FEEL_WORDS[label])
        assert {r["desc_word"] for r in train + test} <= set(lc.DESC_WORDS[label])


def test_word_lists_are_disjoint_between_classes() -> None:
    words = [w for c in lc.CLASSES for w in lc.FEEL_WORDS[c] + lc.DESC_WORDS[c]]
    assert len(words) == len(set(words))
    fillers = {w for ws in lc.FILLERS.values() for w in ws}
    assert not fillers & set(words)
    assert all(len(lc.FEEL_WORDS[c]) == 20 and len(lc.DESC_WORDS[c]) == 16 for c in lc.CLASSES)


# ------------------------------------------------------------- only the words carry the label


def test_only_the_emotional_words_differ_between_classes(tiny) -> None:
    folder, _, rows = tiny
    skeletons = defaultdict(set)
    voices = defaultdict(set)
    for r in rows:
        name = Path(r["path"]).stem.split("_")[2]  # tr003 / te001: the sentence skeleton
        text = r["text"].replace(r["feel_word"], "<feel>").replace(r["desc_word"], "<desc>")
        skeletons[(r["fold"], name)].add(text)
        voices[(r["fold"], r["label"])].add(r["voice"])
    assert all(len(texts) == 1 for texts in skeletons.values())
    for fold in ("train", "test"):
        assert len({frozenset(voices[(fold, c)]) for c in lc.CLASSES}) == 1
    # The same prosody for every utterance, recorded per utterance and in the settings.
    assert {(r["speed"], r["pitch"], r["amplitude"]) for r in rows} == {
        (str(lc.SPEED), str(lc.PITCH), str(lc.AMPLITUDE))
    }
    settings = json.loads((folder / lc.SETTINGS).read_text())
    command = settings["espeak"]["command"]
    assert command[command.index("-s") + 1] == str(lc.SPEED)
    assert command[command.index("-p") + 1] == str(lc.PITCH)
    assert command[command.index("-a") + 1] == str(lc.AMPLITUDE)
    assert settings["voices"] == {
        "train": {"v01": "en-us", "v02": "en-gb+f3"},
        "test": {"v03": "en-us+m3"},
    }


def test_wavs_are_16k_mono_speech(tiny) -> None:
    folder, _, rows = tiny
    for r in rows:
        wav, rate = sf.read(folder / r["path"], dtype="float32")
        assert rate == 16000 and wav.ndim == 1, r["path"]
        assert 0.5 <= len(wav) / rate <= 8.0, r["path"]
        assert np.sqrt(np.mean(wav**2)) > 0.01 and np.abs(wav).max() <= 1.0, r["path"]
        assert sf.info(str(folder / r["path"])).subtype == "PCM_16"
    # Nothing else in the folder: no temporary files left.
    assert sorted(p.name for p in folder.iterdir()) == [lc.MANIFEST, lc.SETTINGS, "wavs"]
    assert len(list((folder / "wavs").iterdir())) == len(rows)


def test_custom_recipe_reads_the_manifest(tiny) -> None:
    folder, _, rows = tiny
    scan = _custom_prepare().list_utterances(folder / lc.MANIFEST)
    summary = scan.summary()
    assert scan.skipped == []
    assert summary["n_utterances"] == len(rows)
    assert sorted(summary["folds"]) == ["test", "train"]
    assert summary["speaker_independent"] is True
    assert summary["classes"] == {c: 10 for c in lc.CLASSES}
    # The folder holds one CSV, so it can be given as the data folder too.
    assert len(_custom_prepare().list_utterances(folder).records) == len(rows)


def test_labels_are_recoverable_from_the_transcripts(tiny) -> None:
    folder, _, _ = tiny
    check = lc.corpus_text_check(folder)
    assert check["chance"] == 25.0 and check["n_test"] == 8
    assert check["ua"] >= 90.0  # 100 measured: the description words name the class
    assert check["ua_unseen_words"] >= 90.0


def test_text_only_baseline_at_chance_when_every_sentence_has_every_label() -> None:
    sentences = [f"the {w} stood near the {v}" for w in ("cat", "dog", "car") for v in "abcd"]
    labels = ["angry", "happy", "neutral", "sad"]
    texts = [s for s in sentences for _ in labels]
    y = labels * len(sentences)
    out = lc.text_only_baseline(texts, y, texts, y)
    # One prediction per sentence, and every sentence holds each class once: UA is exactly 25.
    assert out["ua"] == pytest.approx(25.0) and out["chance"] == 25.0
    with pytest.raises(ValueError, match="different lengths"):
        lc.text_only_baseline(texts, y[:-1], texts, y)


# ------------------------------------------------------------------- determinism, resuming


def test_plan_is_deterministic_from_the_seed() -> None:
    first = lc.plan_corpus(n_sentences=8, n_voices=3, seed=3)
    assert lc.plan_corpus(n_sentences=8, n_voices=3, seed=3) == first
    other = lc.plan_corpus(n_sentences=8, n_voices=3, seed=4)
    assert [r["text"] for r in other] != [r["text"] for r in first]
    # Default size: 4 classes x 60 sentences (45 train, 15 test) x 6 voices (4 train, 2 test).
    rows = lc.plan_corpus()
    assert len(rows) == 4 * (45 * 4 + 15 * 2)
    assert len({r["path"] for r in rows}) == len(rows)
    no_held = lc.make_sentences(8, seed=3, held_out_words=0)
    assert {r["unseen_words"] for r in no_held} == {0}


@needs_espeak
def test_rerun_keeps_valid_wavs_and_writes_the_same_manifest(tmp_path: Path) -> None:
    summary = lc.make_corpus(tmp_path, n_sentences=2, n_voices=2, seed=1, progress=False)
    assert (summary["n_utterances"], summary["synthesised"]) == (8, 8)
    manifest = (tmp_path / lc.MANIFEST).read_bytes()
    again = lc.make_corpus(tmp_path, n_sentences=2, n_voices=2, seed=1, progress=False)
    assert (again["synthesised"], again["kept"]) == (0, 8)
    assert (tmp_path / lc.MANIFEST).read_bytes() == manifest
    rows = lc.read_manifest(tmp_path / lc.MANIFEST)
    first = tmp_path / rows[0]["path"]
    audio = first.read_bytes()
    first.unlink()
    (tmp_path / rows[1]["path"]).write_bytes(b"RIFF")  # a damaged file is written again
    resumed = lc.make_corpus(tmp_path, n_sentences=2, n_voices=2, seed=1, progress=False)
    assert (resumed["synthesised"], resumed["kept"]) == (2, 6)
    assert first.read_bytes() == audio  # espeak-ng is deterministic
    assert (tmp_path / lc.MANIFEST).read_bytes() == manifest


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(lc.CorpusError, match="program not found") as info:
        lc.make_corpus(tmp_path, espeak="no-such-espeak")
    assert "\n" not in str(info.value)
    for kwargs, message in [
        ({"n_voices": 1}, "n_voices"),
        ({"n_voices": 3, "n_test_voices": 3}, "n_test_voices"),
        ({"n_sentences": 1}, "n_sentences"),
        ({"held_out_words": 20}, "held_out_words"),
    ]:
        with pytest.raises(lc.CorpusError, match=message):
            lc.plan_corpus(**kwargs)
    assert not (tmp_path / lc.MANIFEST).exists()


@needs_espeak
def test_unknown_voice_is_reported() -> None:
    with pytest.raises(lc.CorpusError, match="voice xx-none") as info:
        lc.synthesize("hello", "xx-none")
    assert "\n" not in str(info.value)


def test_module_doctests() -> None:
    """The examples of lexical_corpus.py and of the modules it is made of (it re-exports them)."""
    for module in (lc, lexical_sentences, lexical_synthesis, lexical_text_check):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__


# ------------------------------------------------------------------------------------ nEMO


def test_nemo_transcripts_carry_no_label(shared_data: Path) -> None:
    nemo = shared_data / "nemo"
    if not (nemo / "data.tsv").is_file():
        pytest.skip(f"nEMO not found under {shared_data}")
    out = lc.nemo_text_check(nemo, n_boot=500)
    assert out["n_classes"] == 6 and out["n_speakers"] == 9
    # Every sentence is spoken in every emotion, so the text-only classifier is at chance:
    # measured on the shared 2243-utterance subset, 17.1 mean over the 9 speaker folds and
    # 16.2 pooled, chance 16.7.
    assert abs(out["ua_mean"] - out["chance"]) <= 10
    assert abs(out["ua_pooled"] - out["chance"]) <= 10
    assert out["ci_low"] < out["chance"] + 5
