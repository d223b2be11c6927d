"""Data preparation of nEMO, EMOVO and TurEV-DB: layouts, quirks, folds, CLI, real copies.

Fixture corpora in each layout (the original WAV releases and the shared FLAC copies) are
written to ``tmp_path`` with short real audio (a tone over low noise, never silence); the
shared copies under ``../shared/data`` are scanned once per module each.
"""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from qieemo_lobes.manifests_folds import fold_names, split_for_test_fold
from qieemo_lobes.manifests_scan import LayoutError, Utterance
from tests.conftest import REPO_ROOT, SHARED_DATA

# corpus: (recipe folder, shared copy folder)
RECIPES = {"nemo": ("nEMO", "nemo"), "emovo": ("EMOVO", "emovo"), "turev": ("TurEV-DB", "turev")}


def recipe_dir(corpus: str) -> Path:
    return REPO_ROOT / "recipes" / RECIPES[corpus][0] / "emotion"


def load_recipe(corpus: str) -> ModuleType:
    path = recipe_dir(corpus) / f"{corpus}_prepare.py"
    spec = importlib.util.spec_from_file_location(f"{corpus}_prepare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nemo() -> ModuleType:
    return load_recipe("nemo")


@pytest.fixture(scope="module")
def emovo() -> ModuleType:
    return load_recipe("emovo")


@pytest.fixture(scope="module")
def turev() -> ModuleType:
    return load_recipe("turev")


# ---------------------------------------------------------------------------------------------
# Audio and checks
# ---------------------------------------------------------------------------------------------


def write_audio(path: Path, sr: int = 16000, seconds: float = 0.3, channels: int = 1) -> Path:
    """A short tone over low noise (never silence); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    rng = np.random.default_rng(len(path.name))
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / sr) + 0.01 * rng.standard_normal(n)
    data = np.stack([tone, 0.5 * tone], axis=1) if channels == 2 else tone
    sf.write(path, data.astype("float32"), sr, subtype="PCM_16")
    return path


def reasons_by_name(scan) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in scan.skipped}


def check_leave_one_speaker_out(records: list[Utterance]) -> None:
    """One fold per speaker, named by it; every fold's splits are speaker independent."""
    assert {r.fold for r in records} == {r.speaker for r in records}
    assert all(r.fold == r.speaker for r in records)
    for k, name in enumerate(fold_names(records), start=1):
        splits = split_for_test_fold(records, k, valid_split="speaker", valid_ratio=0.2)
        speakers = {split: {r.speaker for r in rs} for split, rs in splits.items()}
        assert speakers["test"] == {name}
        assert speakers["valid"] and not speakers["valid"] & speakers["train"]
        assert name not in speakers["train"] | speakers["valid"]
        assert sum(len(rs) for rs in splits.values()) == len(records)


# ---------------------------------------------------------------------------------------------
# nEMO
# ---------------------------------------------------------------------------------------------

NEMO_HEADER = "file_id\temotion\traw_text\tnormalized_text\tspeaker_id\tgender\tage"
# (file stem, emotion column, raw text, speaker): three speakers, every emotion
NEMO_ROWS = [
    ("SB0_anger_1", "anger", "Ala ma kota.", "SB0"),
    ("SB0_fear_1", "fear", "Ala ma kota.", "SB0"),
    ("SB0_happiness_2", "happiness", 'Mówi "dzień dobry".', "SB0"),
    ("KD0_neutral_1", "neutral", "Ala ma kota.", "KD0"),
    ("KD0_sadness_2", "sadness", 'Mówi "dzień dobry".', "KD0"),
    ("WR0_surprised_1", "surprised", "Ala ma kota.", "WR0"),
    ("WR0_anger_2", "anger", 'Mówi "dzień dobry".', "WR0"),
]
NEMO_LABELS = {
    "SB0_anger_1": "angry",
    "SB0_fear_1": "fearful",
    "SB0_happiness_2": "happy",
    "KD0_neutral_1": "neutral",
    "KD0_sadness_2": "sad",
    "WR0_surprised_1": "surprised",
    "WR0_anger_2": "angry",
}


def nemo_line(stem: str, emotion: str, text: str, speaker: str) -> str:
    """A data.tsv row as the release writes it: .wav id, speaker padded with spaces."""
    normalized = text.lower().strip(".").replace('"', "")
    return f"{stem}.wav\t{emotion}\t{text}\t{normalized}\t        {speaker}\tfemale\t27"


def make_nemo(root: Path, suffix: str = ".wav", sr: int = 24000, rows=NEMO_ROWS) -> Path:
    """The original release (``.wav``, 24 kHz) or the FLAC copy (``.flac``, 16 kHz)."""
    for stem, *_ in rows:
        write_audio(root / "samples" / f"{stem}{suffix}", sr=sr)
    lines = [NEMO_HEADER, *(nemo_line(*row) for row in rows)]
    (root / "data.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_nemo_original_release(tmp_path, nemo):
    root = make_nemo(tmp_path / "nEMO")
    scan = nemo.list_utterances(root)
    summary = scan.summary()
    assert {r.utt_id: r.label for r in scan.records} == NEMO_LABELS
    assert summary["speakers"] == {"KD0": 2, "SB0": 3, "WR0": 2}  # leading spaces stripped
    assert summary["folds"] == {"KD0": 2, "SB0": 3, "WR0": 2}
    assert summary["skipped"] == []
    assert summary["audio_formats"] == {".wav": 7}
    assert summary["n_sentences"] == 2
    rec = {r.utt_id: r for r in scan.records}["SB0_happiness_2"]
    assert rec.wav == str(root / "samples" / "SB0_happiness_2.wav")
    assert rec.duration == pytest.approx(0.3)
    # the transcript, quotes and all (tabs only separate fields)
    assert scan.transcripts["SB0_happiness_2"] == 'Mówi "dzień dobry".'
    assert set(scan.transcripts) == set(NEMO_LABELS)
    check_leave_one_speaker_out(scan.records)
    # the folder above the release is accepted too
    assert nemo.list_utterances(tmp_path).summary()["n_utterances"] == 7


def test_nemo_flac_copy_and_quirks(tmp_path, nemo):
    root = make_nemo(tmp_path / "nemo", suffix=".flac", sr=16000)
    table = root / "data.tsv"
    samples = root / "samples"
    extra_rows = [
        nemo_line("KD0_anger_3", "anger", "Brak pliku.", "KD0"),  # listed, no audio
        nemo_line("KD0_contempt_4", "contempt", "Nieznana emocja.", "KD0"),
        nemo_line("SB0_fear_5", "fear", "Zły mówca.", "KD0"),  # name says SB0
        "WR0_neutral_6.wav\tneutral\ttekst",  # truncated row: no speaker
        "",  # a blank line
    ]
    with open(table, "a", encoding="utf-8") as fh:
        fh.write("\n".join(extra_rows) + "\n")
    for stem in ("KD0_contempt_4", "SB0_fear_5", "WR0_neutral_6", "TP0_sadness_7"):
        write_audio(samples / f"{stem}.flac")
    write_audio(samples / "SB0_anger_1.wav", sr=24000)  # both formats: the .wav named is used
    (samples / "._SB0_fear_1.flac").write_bytes(b"\x00\x05macOS resource fork")
    scan = nemo.list_utterances(root)
    summary = scan.summary()
    assert {r.utt_id: r.label for r in scan.records} == NEMO_LABELS
    assert summary["audio_formats"] == {".flac": 6, ".wav": 1}
    assert {r.utt_id: r for r in scan.records}["SB0_anger_1"].wav.endswith("SB0_anger_1.wav")
    assert summary["ignored_resource_files"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "KD0_anger_3.wav": "audio file not found (no KD0_anger_3.wav or KD0_anger_3.flac)",
        "KD0_contempt_4.flac": "unknown nEMO emotion 'contempt' (data.tsv:10)",
        "SB0_fear_5.flac": (
            "file name says speaker SB0, emotion fear; data.tsv:11 says speaker KD0, emotion fear"
        ),
        "WR0_neutral_6.flac": "empty speaker_id (data.tsv:12)",
        "TP0_sadness_7.flac": "not listed in data.tsv (no label)",
        "SB0_anger_1.flac": "same utterance as SB0_anger_1.wav, which is used",
    }
    # every file in samples/ is either used or skipped with its reason
    listed = {Path(r.wav).name for r in scan.records} | set(reasons)
    assert {p.name for p in samples.iterdir() if not p.name.startswith("._")} <= listed


def test_nemo_classes_filter(tmp_path, nemo):
    root = make_nemo(tmp_path / "nEMO", suffix=".flac", sr=16000)
    scan = nemo.list_utterances(root, classes=["angry", "happy", "neutral", "sad"])
    assert scan.summary()["classes"] == {"angry": 2, "happy": 1, "neutral": 1, "sad": 1}
    assert scan.summary()["excluded"] == {"fearful": 1, "surprised": 1}
    assert set(scan.transcripts) == {r.utt_id for r in scan.records}


def test_nemo_wrong_roots(tmp_path, nemo):
    with pytest.raises(LayoutError, match="nEMO: <root>/data.tsv") as err:
        nemo.list_utterances(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(LayoutError, match="does not exist"):
        nemo.list_utterances(tmp_path / "nowhere")
    (tmp_path / "data.tsv").write_text(NEMO_HEADER + "\n")
    with pytest.raises(LayoutError, match="no samples/ folder beside"):
        nemo.list_utterances(tmp_path)
    (tmp_path / "samples").mkdir()
    (tmp_path / "data.tsv").write_text("file\temotion\tspeaker\na.wav\tanger\tSB0\n")
    with pytest.raises(LayoutError, match="data.tsv: header file,emotion,speaker lacks"):
        nemo.list_utterances(tmp_path)
    (tmp_path / "data.tsv").write_bytes(b"\xff\xfe\x00binary\x00")
    with pytest.raises(LayoutError, match="data.tsv: not UTF-8 text"):
        nemo.list_utterances(tmp_path)
    # rows but no audio at all: one line naming the layout, never an empty dataset
    (tmp_path / "data.tsv").write_text(NEMO_HEADER + "\n" + nemo_line(*NEMO_ROWS[0]) + "\n")
    with pytest.raises(LayoutError, match="no usable utterances.*audio file not found") as err:
        nemo.list_utterances(tmp_path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# EMOVO
# ---------------------------------------------------------------------------------------------

EMOVO_CODES = {
    "dis": "disgust",
    "gio": "happy",
    "neu": "neutral",
    "pau": "fearful",
    "rab": "angry",
    "sor": "surprised",
    "tri": "sad",
}
EMOVO_SPEAKERS = ("f1", "f2", "m1")


def make_emovo(root: Path, suffix: str = ".wav", sr: int = 48000, channels: int = 2) -> Path:
    """Every emotion of sentence b1 and two of n5 per speaker (three speakers)."""
    for spk in EMOVO_SPEAKERS:
        for code in EMOVO_CODES:
            write_audio(root / spk / f"{code}-{spk}-b1{suffix}", sr=sr, channels=channels)
        for code in ("rab", "tri"):
            write_audio(root / spk / f"{code}-{spk}-n5{suffix}", sr=sr, channels=channels)
    return root


def test_emovo_original_release(tmp_path, emovo):
    """48 kHz WAV, stereo but one mono file, inside the release's EMOVO/ folder."""
    root = make_emovo(tmp_path / "EMOVO")
    write_audio(root / "m1" / "neu-m1-b1.wav", sr=48000, channels=1)  # the one mono file
    (root / "documents").mkdir()
    (root / "documents" / "EMOVO.pdf").write_bytes(b"%PDF-1.4")
    scan = emovo.list_utterances(tmp_path)  # the folder above EMOVO/
    summary = scan.summary()
    assert summary["n_utterances"] == 27
    assert summary["classes"] == {
        "angry": 6, "disgust": 3, "fearful": 3, "happy": 3, "neutral": 3, "sad": 6,
        "surprised": 3,
    }  # fmt: skip
    assert summary["speakers"] == {"f1": 9, "f2": 9, "m1": 9}
    assert summary["folds"] == {"f1": 9, "f2": 9, "m1": 9}
    assert summary["skipped"] == [] and summary["data_folder"] == str(root)
    assert summary["n_sentences"] == 2 and summary["audio_formats"] == {".wav": 27}
    recs = {r.utt_id: r for r in scan.records}
    assert recs["gio-f2-b1"].label == "happy" and recs["pau-m1-b1"].label == "fearful"
    assert sf.info(recs["rab-f1-n5"].wav).channels == 2
    assert recs["rab-f1-n5"].duration == pytest.approx(0.3)
    assert recs["neu-m1-b1"].duration == pytest.approx(0.3)
    check_leave_one_speaker_out(scan.records)


def test_emovo_flac_copy_and_quirks(tmp_path, emovo):
    root = make_emovo(tmp_path / "emovo", suffix=".flac", sr=16000, channels=1)
    (root / "m1").rename(root / "M1")  # folder names in any case
    write_audio(root / "M1" / "RAB-M1-D2.flac")  # upper-case name
    write_audio(root / "f1" / "dis-f2-b2.flac")  # speaker f2 in f1's folder
    write_audio(root / "f2" / "xyz-f2-b1.flac")  # unknown emotion code
    write_audio(root / "f2" / "dis_f2_b3.flac")  # not the pattern
    (root / "f2" / "._dis-f2-b1.flac").write_bytes(b"\x00\x05macOS resource fork")
    scan = emovo.list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 28
    assert summary["speakers"] == {"f1": 9, "f2": 9, "m1": 10}
    assert {r.utt_id: r.label for r in scan.records}["rab-m1-d2"] == "angry"
    assert summary["ignored_resource_files"] == 1
    assert reasons_by_name(scan) == {
        "dis-f2-b2.flac": "speaker f2 in the file name, but in folder f1",
        "xyz-f2-b1.flac": "unknown EMOVO emotion code 'xyz'",
        "dis_f2_b3.flac": "file name is not EMOVO's <emotion>-<speaker>-<sentence> pattern",
    }
    check_leave_one_speaker_out(scan.records)


def test_emovo_wrong_roots(tmp_path, emovo):
    make_nemo(tmp_path / "nEMO")
    with pytest.raises(LayoutError, match=r"EMOVO: <root>/\{f1,f2,f3,m1,m2,m3\}") as err:
        emovo.list_utterances(tmp_path / "nEMO")
    assert "\n" not in str(err.value)
    write_audio(tmp_path / "only" / "f1" / "hello.wav")
    with pytest.raises(LayoutError, match="no usable utterances.*hello.wav.*expected EMOVO"):
        emovo.list_utterances(tmp_path / "only")


# ---------------------------------------------------------------------------------------------
# TurEV-DB
# ---------------------------------------------------------------------------------------------

TUREV_CODES = {"Angry": "kz", "Calm": "sk", "Happy": "mt", "Sad": "hl"}
# speaker: emotion folders (1157 recorded only Angry and Sad, as in the release)
TUREV_SPEAKERS = {
    "1157": ("Angry", "Sad"),
    "1234": ("Angry", "Calm", "Happy", "Sad"),
    "7895": ("Angry", "Calm", "Happy", "Sad"),
}
TUREV_WORDS = ("acik", "kedi")


def make_turev(root: Path, suffix: str = ".wav", sr: int = 44100) -> Path:
    for spk, folders in TUREV_SPEAKERS.items():
        for folder in folders:
            for word in TUREV_WORDS:
                name = f"{spk}_{TUREV_CODES[folder]}_{word}{suffix}"
                write_audio(root / folder / name, sr=sr)
    write_audio(root / "Sad" / f"7895_hl_ogul1{suffix}", sr=sr)  # the release's numbered word
    return root


def test_turev_original_release(tmp_path, turev):
    """44.1 kHz WAV under the repository's ``Sound Source/`` folder."""
    root = make_turev(tmp_path / "TurEV-DB" / "Sound Source")
    scan = turev.list_utterances(tmp_path / "TurEV-DB")
    summary = scan.summary()
    assert summary["n_utterances"] == 21
    assert summary["classes"] == {"angry": 6, "calm": 4, "happy": 4, "sad": 7}
    assert summary["speakers"] == {"1157": 4, "1234": 8, "7895": 9}
    assert summary["folds"] == {"1157": 4, "1234": 8, "7895": 9}
    assert summary["skipped"] == [] and summary["data_folder"] == str(root)
    assert summary["numbered_words"] == {"7895_hl_ogul1": "ogul"}
    assert summary["n_words"] == 3 and summary["audio_formats"] == {".wav": 21}
    recs = {r.utt_id: r for r in scan.records}
    assert recs["1234_sk_kedi"].label == "calm"  # its own class, not neutral
    assert recs["7895_hl_ogul1"].label == "sad" and recs["7895_hl_ogul1"].speaker == "7895"
    assert recs["1157_kz_acik"].duration == pytest.approx(0.3)
    check_leave_one_speaker_out(scan.records)
    # the fold of 1157 holds only angry and sad, like the release
    assert {r.label for r in scan.records if r.fold == "1157"} == {"angry", "sad"}


def test_turev_flac_copy_and_quirks(tmp_path, turev):
    root = make_turev(tmp_path / "turev", suffix=".flac", sr=16000)
    (root / "Happy").rename(root / "happy")  # folder names in any case
    write_audio(root / "Sad" / "1234_mt_deve.flac")  # happy's code in the Sad folder
    write_audio(root / "Calm" / "1234_xx_deve.flac")  # unknown code
    write_audio(root / "Calm" / "1234_sk.flac")  # no word
    write_audio(root / "Angry" / "kz_1234_deve.flac")  # fields out of order
    (root / "Angry" / "._1157_kz_acik.flac").write_bytes(b"\x00\x05macOS resource fork")
    scan = turev.list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 21
    assert summary["classes"] == {"angry": 6, "calm": 4, "happy": 4, "sad": 7}
    assert summary["ignored_resource_files"] == 1
    pattern = "file name is not TurEV-DB's <speaker>_<code>_<word> pattern"
    assert reasons_by_name(scan) == {
        "1234_mt_deve.flac": "emotion code mt (happy) disagrees with folder Sad",
        "1234_xx_deve.flac": "unknown TurEV-DB emotion code 'xx'",
        "1234_sk.flac": pattern,
        "kz_1234_deve.flac": pattern,
    }
    four = turev.list_utterances(root, classes=["angry", "sad"]).summary()
    assert four["classes"] == {"angry": 6, "sad": 7} and four["excluded"] == {"calm": 4, "happy": 4}


def test_turev_wrong_roots(tmp_path, turev):
    make_emovo(tmp_path / "EMOVO", suffix=".flac", sr=16000, channels=1)
    with pytest.raises(LayoutError, match=r"TurEV-DB: <root>/\{Angry,Calm,Happy,Sad\}") as err:
        turev.list_utterances(tmp_path)
    assert "\n" not in str(err.value)
    # the folder holding the emotion folders is looked for up to two levels down, no deeper
    make_turev(tmp_path / "a" / "b" / "c" / "d", suffix=".flac", sr=16000)
    with pytest.raises(LayoutError, match="no Angry/Calm/Happy/Sad folders"):
        turev.list_utterances(tmp_path / "a")
    assert turev.list_utterances(tmp_path / "a" / "b").summary()["n_utterances"] == 21


# ---------------------------------------------------------------------------------------------
# Manifests, signature, docstrings, hyperparameters
# ---------------------------------------------------------------------------------------------

FIXTURES = {
    "nemo": lambda root: make_nemo(root, ".flac", 16000),
    "emovo": lambda root: make_emovo(root, ".flac", 16000, 1),
    "turev": lambda root: make_turev(root, ".flac", 16000),
}


@pytest.mark.parametrize("corpus", sorted(RECIPES))
def test_prepare_writes_manifests(tmp_path, corpus):
    module = load_recipe(corpus)
    root = FIXTURES[corpus](tmp_path / corpus)
    paths = [tmp_path / "out" / f"{s}.json" for s in ("train", "valid", "test")]
    prepare = getattr(module, f"prepare_{corpus}")
    summary = prepare(root, *paths, test_fold=2, valid_ratio=0.2, seed=7)
    speakers = list(summary["folds"])
    assert summary["test_fold"] == speakers[1]
    train, valid, test = (json.loads(p.read_text()) for p in paths)
    assert {e["spk_id"] for e in test.values()} == {speakers[1]}
    assert len(train) + len(valid) + len(test) == summary["n_utterances"]
    valid_speakers = {e["spk_id"] for e in valid.values()}
    assert len(valid_speakers) == 1 and not valid_speakers & {e["spk_id"] for e in train.values()}
    entry = next(iter(test.values()))
    assert set(entry) == {"wav", "emo", "spk_id", "fold", "duration"} and os.path.isfile(
        entry["wav"]
    )
    again = prepare(root, *paths, test_fold=2, valid_ratio=0.2, seed=7)
    assert again["skipped_preparation"] is True


def test_same_signature_as_emodb():
    spec = importlib.util.spec_from_file_location(
        "emodb_prepare", REPO_ROOT / "recipes" / "EmoDB" / "emotion" / "emodb_prepare.py"
    )
    emodb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emodb)
    reference = inspect.signature(emodb.prepare_emodb)
    for corpus in RECIPES:
        prepare = getattr(load_recipe(corpus), f"prepare_{corpus}")
        assert inspect.signature(prepare) == reference, corpus


@pytest.mark.parametrize("corpus", sorted(RECIPES))
def test_docstring_examples(corpus):
    module = load_recipe(corpus)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 1


@pytest.mark.parametrize("corpus", sorted(RECIPES))
def test_hparams(corpus, tmp_path):
    import torch
    from hyperpyyaml import load_hyperpyyaml

    module = load_recipe(corpus)
    labels = module.EMOTIONS if hasattr(module, "EMOTIONS") else module.CODES
    path = recipe_dir(corpus) / "hparams" / "qieemo.yaml"
    with open(path) as fh:
        hparams = load_hyperpyyaml(fh, {"data_folder": str(tmp_path)})
    assert hparams["classes"] == sorted(set(labels.values()))
    assert hparams["n_classes"] == len(hparams["classes"])
    assert hparams["output_folder"] == f"results/{RECIPES[corpus][0]}/qieemo/fold_1"
    assert hparams["encoder_source"] == "whisper-base" and hparams["window"] == "fit"
    assert hparams["fusion_blocks"] == [2, 3] and hparams["use_cma"] is False
    assert hparams["freeze_encoder"] is True and hparams["use_feature_cache"] is True
    assert hparams["speed_perturb"] == [100] and hparams["tune_blocks"] == 0
    assert hparams["number_of_epochs"] == 15 and hparams["valid_split"] == "speaker"
    head = hparams["head"].eval()
    with torch.no_grad():
        logits = head(torch.randn(6, 2, 30, 512), torch.randn(2, 30, 512), torch.tensor([1, 0.5]))
    assert logits.shape == (2, hparams["n_classes"]) and bool(logits.isfinite().all())


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_script(corpus: str, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, str(recipe_dir(corpus) / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_summary_and_write(tmp_path):
    root = make_turev(tmp_path / "turev", suffix=".flac", sr=16000)
    done = run_script("turev", "turev_prepare.py", f"--data_folder={root}", "--summary")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["n_utterances"] == 21 and list(summary["folds"]) == ["1157", "1234", "7895"]
    out = tmp_path / "out"
    done = run_script(
        "turev",
        "turev_prepare.py",
        f"--data_folder={root}",
        f"--save_folder={out}",
        "--test_fold=3",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f"turev: test fold 7895: train 8, valid 4, test 9 (written in {out})"
    ]
    valid = json.loads((out / "valid.json").read_text())
    assert {e["spk_id"] for e in valid.values()} == {"1157"}


@pytest.mark.parametrize(
    ("corpus", "script", "expected"),
    [
        ("nemo", "nemo_prepare.py", "expected nEMO: <root>/data.tsv"),
        ("emovo", "emovo_prepare.py", "expected EMOVO: <root>/{f1,f2,f3,m1,m2,m3}"),
        ("turev", "turev_prepare.py", "expected TurEV-DB: <root>/{Angry,Calm,Happy,Sad}"),
        ("turev", "cross_validate.py", "expected TurEV-DB: <root>/{Angry,Calm,Happy,Sad}"),
    ],
)
def test_cli_wrong_root(tmp_path, corpus, script, expected):
    args = [f"--data_folder={tmp_path}"]
    if script == "cross_validate.py":
        hparams = recipe_dir(corpus) / "hparams" / "qieemo.yaml"
        args = [str(hparams), *args, f"--output_folder={tmp_path / 'cv'}"]
    else:
        args.append("--summary")
    done = run_script(corpus, script, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert expected in lines[0] and str(tmp_path) in lines[0]


# ---------------------------------------------------------------------------------------------
# Real corpora (../shared/data): one scan of each per module
# ---------------------------------------------------------------------------------------------


def shared_copy(corpus: str) -> Path:
    folder = SHARED_DATA / RECIPES[corpus][1]
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def nemo_real(nemo):
    return nemo.list_utterances(shared_copy("nemo"))


@pytest.fixture(scope="module")
def emovo_real(emovo):
    return emovo.list_utterances(shared_copy("emovo"))


@pytest.fixture(scope="module")
def turev_real(turev):
    return turev.list_utterances(shared_copy("turev"))


def test_real_nemo(nemo_real):
    summary = nemo_real.summary()
    assert summary["n_utterances"] == 2243  # data/README.md: 2243 of the 4481 utterances
    speakers = ["EB0", "IC0", "KD0", "KS0", "MK0", "MP0", "SM0", "TP0", "WR0"]
    assert list(summary["speakers"]) == speakers and list(summary["folds"]) == speakers
    assert summary["skipped"] == [] and summary["audio_formats"] == {".flac": 2243}
    # per class, as the emotion column of data.tsv counts them (read here independently)
    rows = (SHARED_DATA / "nemo" / "data.tsv").read_text(encoding="utf-8").splitlines()[1:]
    column = Counter(line.split("\t")[1] for line in rows if line.strip())
    names = {"anger": "angry", "fear": "fearful", "happiness": "happy", "neutral": "neutral"}
    names |= {"sadness": "sad", "surprised": "surprised"}
    assert summary["classes"] == {names[e]: n for e, n in sorted(column.items())}
    assert len(nemo_real.transcripts) == 2243 and summary["n_sentences"] == 45
    check_leave_one_speaker_out(nemo_real.records)


def test_real_emovo(emovo_real):
    summary = emovo_real.summary()
    assert summary["n_utterances"] == 588
    assert summary["classes"] == dict.fromkeys(sorted(EMOVO_CODES.values()), 84)
    speakers = ["f1", "f2", "f3", "m1", "m2", "m3"]
    assert summary["speakers"] == dict.fromkeys(speakers, 98)
    assert list(summary["folds"]) == speakers
    assert summary["skipped"] == [] and summary["n_sentences"] == 14
    check_leave_one_speaker_out(emovo_real.records)


def test_real_turev(turev_real):
    summary = turev_real.summary()
    assert summary["n_utterances"] == 1735
    assert summary["classes"] == {"angry": 487, "calm": 408, "happy": 357, "sad": 483}
    speakers = ["1157", "1234", "1358", "1984", "6783", "7895"]
    assert list(summary["speakers"]) == speakers and list(summary["folds"]) == speakers
    assert summary["skipped"] == []
    assert summary["n_words"] == 82  # data/README.md: 82 words
    assert summary["numbered_words"] == {"7895_hl_ogul1": "ogul"}
    assert {r.label for r in turev_real.records if r.speaker == "1157"} == {"angry", "sad"}
    check_leave_one_speaker_out(turev_real.records)
