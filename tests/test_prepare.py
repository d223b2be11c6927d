"""Data preparation of the emotion corpora: layouts, summaries, folds, splits, skip, CLI.

Small fixtures in every documented layout are written to ``tmp_path`` with real (tiny) audio;
the real EmoDB and RAVDESS copies under ``../shared/data`` are scanned as well.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from qieemo_lobes.manifests_folds import (
    contiguous_group_folds,
    fold_names,
    resolve_test_fold,
    split_for_test_fold,
)
from qieemo_lobes.manifests_scan import LayoutError, Utterance

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "iemocap": "IEMOCAP",
    "emodb": "EmoDB",
    "ravdess": "RAVDESS",
    "cremad": "CREMA-D",
    "urdu": "URDU",
    "custom": "custom",
}


def recipe_path(corpus: str) -> Path:
    return REPO_ROOT / "recipes" / RECIPES[corpus] / "emotion" / f"{corpus}_prepare.py"


def load_recipe(corpus: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{corpus}_prepare", recipe_path(corpus))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipes() -> dict[str, ModuleType]:
    return {corpus: load_recipe(corpus) for corpus in RECIPES}


# ---------------------------------------------------------------------------------------------
# Fixture corpora
# ---------------------------------------------------------------------------------------------


def write_audio(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    """A tiny real audio file (a 220 Hz tone: neither too short nor silent, so ``classify``
    would take it); the format follows the suffix (.wav or .flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    signal = 0.1 * np.sin(2 * np.pi * 220 * np.arange(n) / sr).astype("float32")
    sf.write(path, signal, sr, subtype="PCM_16")
    return path


def write_junk(path: Path, data: bytes = b"\x00\x05Mac OS X resource fork junk") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_empty_wav(path: Path) -> Path:
    """A well-formed wav header with zero frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(0, dtype="float32"), 16000)
    return path


# (dialog suffix, utterance suffix, label, wav present)
IEMOCAP_DIALOGS = {
    "F_impro01": [
        ("F000", "neu", True),
        ("M000", "hap", True),
        ("F001", "exc", True),
        ("M001", "ang", True),
        ("F002", "sad", True),
        ("M002", "fru", True),
        ("F003", "xxx", True),
    ],
    "M_script01_1": [
        ("F000", "sad", True),
        ("M000", "neu", True),
        ("M001", "ang", False),  # labelled, wav missing
        ("F001", "sur", True),
    ],
}


def make_iemocap(parent: Path, sessions: tuple[int, ...] = (1, 2, 3)) -> Path:
    root = parent / "IEMOCAP_full_release"
    for n in sessions:
        session = root / f"Session{n}"
        emo_dir = session / "dialog" / "EmoEvaluation"
        for suffix, utts in IEMOCAP_DIALOGS.items():
            dialog = f"Ses0{n}{suffix}"
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            t = 1.0
            for utt_suffix, code, present in utts:
                utt = f"{dialog}_{utt_suffix}"
                lines.append(f"[{t:.4f} - {t + 1.5:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.0000]")
                lines += [
                    "C-E2:\tAnger;\t()",
                    "C-E3:\tSadness;\t()",
                    "A-E3:\tval 3; act 2;\t()",
                    "",
                ]
                t += 2.0
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                if present:
                    write_audio(wav)
                    write_junk(wav.parent / f"._{wav.name}")
            emo_dir.mkdir(parents=True, exist_ok=True)
            (emo_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
            # A macOS resource file that would add a label if it were read as one.
            decoy_line = f"[1.0 - 2.0]\t{dialog}_F099\tang\t[1, 1, 1]\n"
            write_junk(emo_dir / f"._{dialog}.txt", decoy_line.encode())
            # Per-annotator subfolders: decoy label files in the summary-line format.
            for sub in ("Categorical", "Attribute", "Self-evaluation"):
                decoy = emo_dir / sub / f"{dialog}_e1_cat.txt"
                decoy.parent.mkdir(parents=True, exist_ok=True)
                decoy.write_text(decoy_line + f"[1.0 - 2.0]\t{dialog}_F000\tang\t[1, 1, 1]\n")
            write_audio(session / "sentences" / "wav" / dialog / f"{dialog}_F099.wav")
        # a transcription folder that is not a label source either
        (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
    return root


EMODB_GOOD = {
    "03a01Fa": "happy",
    "03a01Wa": "angry",
    "03b02Nc": "neutral",
    "08a01Lb": "bored",
    "08a02Ea": "disgust",
    "08b01Ta": "sad",
    "09a01Aa": "fearful",
    "09a04Fd": "happy",
}


def make_emodb(root: Path, subfolder: str | None = "wav", sr: int = 16000) -> Path:
    audio = root / subfolder if subfolder else root
    for stem in EMODB_GOOD:
        write_audio(audio / f"{stem}.wav", seconds=0.1, sr=sr)
    write_audio(audio / "03a05Xa.wav")  # unknown emotion letter
    write_audio(audio / "readme.wav")  # not the naming pattern
    write_junk(audio / "09b03Wa.wav", b"RIFF garbage, not a wav")  # corrupt
    write_empty_wav(audio / "08b02Na.wav")  # zero length
    write_junk(audio / "._03a01Fa.wav")  # macOS resource file
    (root / "erkennung.txt").write_text("not audio\n")
    if subfolder:
        (root / "lablaut").mkdir()
    return root


RAVDESS_GOOD = {
    # actor: [(emotion code, label)]
    1: [("01", "neutral"), ("05", "angry")],
    2: [("02", "calm"), ("03", "happy")],
    5: [("04", "sad"), ("06", "fearful")],
    6: [("07", "disgust"), ("08", "surprised")],
    9: [("03", "happy"), ("04", "sad")],
    24: [("05", "angry"), ("01", "neutral")],
}


def make_ravdess(root: Path) -> Path:
    for actor, items in RAVDESS_GOOD.items():
        folder = root / f"Actor_{actor:02d}"
        for i, (code, _) in enumerate(items):
            stem = f"03-01-{code}-01-01-0{i + 1}-{actor:02d}"
            if actor == 24:  # the original release: 48 kHz .wav
                write_audio(folder / f"{stem}.wav", seconds=0.25, sr=48000)
            else:
                write_audio(folder / f"{stem}.flac", seconds=0.1, sr=16000)
    write_audio(root / "Actor_01" / "03-02-03-01-01-01-01.wav")  # song
    write_audio(root / "Actor_02" / "01-01-03-01-01-01-02.wav")  # audio-video modality
    write_audio(root / "Actor_05" / "03-01-09-01-01-01-05.flac")  # unknown emotion
    write_audio(root / "Actor_06" / "notes.wav")  # not the naming pattern
    write_junk(root / "Actor_09" / "._03-01-03-01-01-01-09.flac")
    return root


CREMAD_GOOD = {
    "1001_DFA_ANG_XX": "angry",
    "1001_IEO_HAP_HI": "happy",
    "1002_DFA_NEU_XX": "neutral",
    "1003_ITS_SAD_LO": "sad",
    "1004_TIE_FEA_MD": "fearful",
    "1005_DFA_DIS_XX": "disgust",
    "1006_MTI_ANG_XX": "angry",
    "1007_WSI_NEU_XX": "neutral",
}


def make_cremad(root: Path) -> Path:
    audio = root / "AudioWAV"
    for stem in CREMAD_GOOD:
        write_audio(audio / f"{stem}.wav")
    write_empty_wav(audio / "1003_IEO_SAD_HI.wav")
    write_audio(audio / "1002_DFA_XYZ_XX.wav")
    return root


URDU_GOOD = {
    "Angry": ["SM1_F1_A001", "SM2_F3_A002", "SF1_F2_A003", "SM3_F4_A004"],
    "Happy": ["SM1_F1_H001", "SF2_F5_H002", "SM4_F6_H003"],
    "Neutral": ["SM2_F3_N001", "SF1_F2_N002", "SM4_F6_N003"],
    "Sad": ["SM3_F4_S001", "SF2_F5_S002", "SM1_F1_S003", "SM1_F1_S004"],
}


def make_urdu(root: Path) -> Path:
    for folder, stems in URDU_GOOD.items():
        for stem in stems:
            write_audio(root / folder / f"{stem}.wav")
    write_audio(root / "Sad" / "SM2_F3_H009.wav")  # letter disagrees with folder
    write_audio(root / "Happy" / "happy_clip.wav")  # not the naming pattern
    write_junk(root / "Angry" / "SM1_F1_A099.wav")  # corrupt
    return root


# ---------------------------------------------------------------------------------------------
# Split invariants
# ---------------------------------------------------------------------------------------------


def check_splits(
    splits: dict[str, list[Utterance]],
    records: list[Utterance],
    test_name: str,
    valid_split: str,
) -> None:
    ids = {k: {r.utt_id for r in v} for k, v in splits.items()}
    assert not ids["train"] & ids["valid"]
    assert not ids["train"] & ids["test"]
    assert not ids["valid"] & ids["test"]
    assert ids["train"] | ids["valid"] | ids["test"] == {r.utt_id for r in records}
    assert {r.fold for r in splits["test"]} == {test_name}
    fold_speakers = {r.speaker for r in records if r.fold == test_name}
    assert {r.speaker for r in splits["test"]} == fold_speakers
    assert test_name not in {r.fold for r in splits["train"] + splits["valid"]}
    assert splits["train"]
    if valid_split == "speaker":
        valid_speakers = {r.speaker for r in splits["valid"]}
        assert valid_speakers
        assert not valid_speakers & {r.speaker for r in splits["train"]}


def check_every_fold(records: list[Utterance], valid_split: str = "speaker") -> None:
    for k, name in enumerate(fold_names(records), start=1):
        splits = split_for_test_fold(records, k, valid_split=valid_split, valid_ratio=0.2)
        check_splits(splits, records, name, valid_split)


# ---------------------------------------------------------------------------------------------
# IEMOCAP
# ---------------------------------------------------------------------------------------------


def test_iemocap_summary(tmp_path, recipes):
    root = make_iemocap(tmp_path)
    scan = recipes["iemocap"].list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 21
    assert summary["classes"] == {"angry": 3, "happy": 6, "neutral": 6, "sad": 6}
    assert summary["speakers"] == {
        "Ses01F": 4, "Ses01M": 3, "Ses02F": 4, "Ses02M": 3, "Ses03F": 4, "Ses03M": 3,
    }  # fmt: skip
    assert summary["folds"] == {"Session1": 7, "Session2": 7, "Session3": 7}
    assert summary["excluded"] == {"frustrated": 3, "surprised": 3, "xxx": 3}
    assert summary["sessions_missing"] == ["Session4", "Session5"]
    assert summary["ignored_resource_files"] == 6  # the ._ label files, 2 per session
    assert sorted(s["path"] for s in summary["skipped"]) == sorted(
        str(root / f"Session{n}/sentences/wav/Ses0{n}M_script01_1/Ses0{n}M_script01_1_M001.wav")
        for n in (1, 2, 3)
    )
    assert {s["reason"] for s in summary["skipped"]} == {"audio file not found"}
    ids = {r.utt_id: r for r in scan.records}
    assert not any(i.endswith("F099") for i in ids)  # decoys never read
    rec = ids["Ses01F_impro01_M000"]
    assert (rec.speaker, rec.label, rec.fold) == ("Ses01M", "happy", "Session1")
    assert ids["Ses02F_impro01_F001"].label == "happy"  # exc -> happy
    assert ids["Ses01F_impro01_F000"].label == "neutral"  # not the decoy's 'ang'
    assert rec.duration == pytest.approx(0.2)
    assert rec.wav == str(root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav")
    # the parent of IEMOCAP_full_release is accepted too
    assert recipes["iemocap"].list_utterances(tmp_path).summary()["n_utterances"] == 21
    check_every_fold(scan.records)
    check_every_fold(scan.records, "utterance")


def test_iemocap_explicit_classes(tmp_path, recipes):
    root = make_iemocap(tmp_path, sessions=(1,))
    classes = ["angry", "happy", "neutral", "sad", "frustrated", "surprised"]
    summary = recipes["iemocap"].list_utterances(root, classes=classes).summary()
    assert summary["classes"] == {
        "angry": 1, "frustrated": 1, "happy": 2, "neutral": 2, "sad": 2, "surprised": 1,
    }  # fmt: skip
    assert summary["excluded"] == {"xxx": 1}
    only_sad = recipes["iemocap"].list_utterances(root, classes=["sad"]).summary()
    assert only_sad["classes"] == {"sad": 2}
    assert only_sad["n_excluded"] == 11 - 2  # 11 summary lines in Session1, 2 of them sad


def test_iemocap_wrong_root(tmp_path, recipes):
    with pytest.raises(LayoutError, match="IEMOCAP_full_release/Session1..Session5"):
        recipes["iemocap"].list_utterances(tmp_path)
    with pytest.raises(LayoutError, match="does not exist"):
        recipes["iemocap"].list_utterances(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# EmoDB
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", ["wav", None])
def test_emodb_summary(tmp_path, recipes, subfolder):
    root = make_emodb(tmp_path / "emodb", subfolder=subfolder)
    scan = recipes["emodb"].list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 8
    assert summary["classes"] == {
        "angry": 1, "bored": 1, "disgust": 1, "fearful": 1, "happy": 2, "neutral": 1, "sad": 1,
    }  # fmt: skip
    assert summary["speakers"] == {"03": 3, "08": 3, "09": 2}
    assert summary["folds"] == {"03": 3, "08": 3, "09": 2}
    assert summary["ignored_resource_files"] == 1
    audio = root / subfolder if subfolder else root
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"03a05Xa.wav", "readme.wav", "09b03Wa.wav", "08b02Na.wav"}
    assert "emotion letter" in reasons["03a05Xa.wav"]
    assert "pattern" in reasons["readme.wav"]
    assert reasons["09b03Wa.wav"] == "not an audio file (text content)"
    assert reasons["08b02Na.wav"] == "no audio samples (zero length)"
    assert {r.utt_id: r.label for r in scan.records} == EMODB_GOOD
    assert all(Path(r.wav).parent == audio for r in scan.records)
    check_every_fold(scan.records)


def test_emodb_classes_filter(tmp_path, recipes):
    root = make_emodb(tmp_path / "emodb")
    four = ["angry", "happy", "neutral", "sad"]
    summary = recipes["emodb"].list_utterances(root, classes=four).summary()
    assert summary["classes"] == {"angry": 1, "happy": 2, "neutral": 1, "sad": 1}
    assert summary["excluded"] == {"bored": 1, "disgust": 1, "fearful": 1}
    assert summary["classes_kept"] == four
    with pytest.raises(ValueError, match="no utterance of classes"):
        recipes["emodb"].list_utterances(root, classes=["calm"])


def test_emodb_wrong_root(tmp_path, recipes):
    make_ravdess(tmp_path / "ravdess")
    with pytest.raises(LayoutError, match="EmoDB: <root>/03a01Fa.wav"):
        recipes["emodb"].list_utterances(tmp_path / "ravdess")
    # audio files but none usable: one error naming the layout, never an empty dataset
    write_audio(tmp_path / "other" / "hello.wav")
    with pytest.raises(LayoutError, match="no usable utterances.*hello.wav.*expected EmoDB"):
        recipes["emodb"].list_utterances(tmp_path / "other")


# ---------------------------------------------------------------------------------------------
# RAVDESS
# ---------------------------------------------------------------------------------------------


def test_ravdess_summary(tmp_path, recipes):
    root = make_ravdess(tmp_path / "ravdess")
    scan = recipes["ravdess"].list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 12
    assert summary["classes"] == {
        "angry": 2, "calm": 1, "disgust": 1, "fearful": 1, "happy": 2, "neutral": 2, "sad": 2,
        "surprised": 1,
    }  # fmt: skip
    assert summary["speakers"] == {a: 2 for a in ("01", "02", "05", "06", "09", "24")}
    assert summary["folds"] == {
        "actors01-04": 4, "actors05-08": 4, "actors09-12": 2, "actors21-24": 2,
    }  # fmt: skip
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {
        "03-02-03-01-01-01-01.wav", "01-01-03-01-01-01-02.wav", "03-01-09-01-01-01-05.flac",
        "notes.wav",
    }  # fmt: skip
    assert "vocal channel 02" in reasons["03-02-03-01-01-01-01.wav"]
    assert "modality 01" in reasons["01-01-03-01-01-01-02.wav"]
    assert summary["ignored_resource_files"] == 1
    wav48 = {r.utt_id: r for r in scan.records}["03-01-05-01-01-01-24"]
    assert wav48.wav.endswith(".wav") and wav48.duration == pytest.approx(0.25)
    check_every_fold(scan.records)


def test_ravdess_zip_top_folder(tmp_path, recipes):
    make_ravdess(tmp_path / "Audio_Speech_Actors_01-24")
    assert recipes["ravdess"].list_utterances(tmp_path).summary()["n_utterances"] == 12


# ---------------------------------------------------------------------------------------------
# CREMA-D, URDU
# ---------------------------------------------------------------------------------------------


def test_cremad_summary(tmp_path, recipes):
    root = make_cremad(tmp_path / "CREMA-D")
    scan = recipes["cremad"].list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 8
    assert summary["classes"] == {
        "angry": 2, "disgust": 1, "fearful": 1, "happy": 1, "neutral": 2, "sad": 1,
    }  # fmt: skip
    assert summary["speakers"] == {
        "1001": 2, "1002": 1, "1003": 1, "1004": 1, "1005": 1, "1006": 1, "1007": 1,
    }  # fmt: skip
    # 7 actors in 5 contiguous runs: 2, 2, 1, 1, 1
    assert summary["folds"] == {
        "actors1001-1002": 3, "actors1003-1004": 2, "actors1005": 1, "actors1006": 1,
        "actors1007": 1,
    }  # fmt: skip
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "1003_IEO_SAD_HI.wav": "no audio samples (zero length)",
        "1002_DFA_XYZ_XX.wav": "unknown CREMA-D emotion code XYZ",
    }
    assert {r.utt_id: r.label for r in scan.records} == CREMAD_GOOD
    # the AudioWAV folder itself is accepted too
    assert recipes["cremad"].list_utterances(root / "AudioWAV").summary()["n_utterances"] == 8
    check_every_fold(scan.records)


def test_contiguous_folds_for_91_actors():
    folds = contiguous_group_folds([str(a) for a in range(1001, 1092)], 5, "actors")
    sizes = {name: list(folds.values()).count(name) for name in dict.fromkeys(folds.values())}
    assert sizes == {
        "actors1001-1019": 19, "actors1020-1037": 18, "actors1038-1055": 18,
        "actors1056-1073": 18, "actors1074-1091": 18,
    }  # fmt: skip


def test_urdu_summary(tmp_path, recipes):
    root = make_urdu(tmp_path / "URDU")
    scan = recipes["urdu"].list_utterances(root)
    summary = scan.summary()
    assert summary["n_utterances"] == 14
    assert summary["classes"] == {"angry": 4, "happy": 3, "neutral": 3, "sad": 4}
    assert summary["speakers"] == {"SF1": 2, "SF2": 2, "SM1": 4, "SM2": 2, "SM3": 2, "SM4": 2}
    assert sorted(summary["folds"]) == ["fold1", "fold2", "fold3", "fold4", "fold5"]
    assert sum(summary["folds"].values()) == 14
    folds_of = {}
    for r in scan.records:
        folds_of.setdefault(r.speaker, set()).add(r.fold)
    assert all(len(f) == 1 for f in folds_of.values())  # speaker independent
    assert max(summary["folds"].values()) - min(summary["folds"].values()) <= 4
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"SM2_F3_H009.wav", "happy_clip.wav", "SM1_F1_A099.wav"}
    assert "disagrees with folder Sad" in reasons["SM2_F3_H009.wav"]
    assert reasons["SM1_F1_A099.wav"] == "not a readable audio file (corrupt or unknown format)"
    # parent folder accepted
    assert recipes["urdu"].list_utterances(tmp_path).summary()["n_utterances"] == 14
    check_every_fold(scan.records)
    # folds do not move when classes are filtered
    sad = recipes["urdu"].list_utterances(root, classes=["sad"])
    assert {r.utt_id: r.fold for r in sad.records} == {
        r.utt_id: r.fold for r in scan.records if r.label == "sad"
    }
    with pytest.raises(LayoutError, match=r"Angry,Happy,Neutral,Sad"):
        recipes["urdu"].list_utterances(tmp_path / "URDU" / "Sad")


# ---------------------------------------------------------------------------------------------
# Custom CSV
# ---------------------------------------------------------------------------------------------


def make_custom(root: Path, columns: str, rows: list[str]) -> Path:
    for i in range(20):
        write_audio(root / "audio" / f"clip{i:02d}.wav", seconds=0.5)
    csv_path = root / "corpus.csv"
    csv_path.write_text(columns + "\n" + "\n".join(rows) + "\n")
    return csv_path


LABELS_12 = ["Anger", "sad", "happy", "neutral"] * 3


def test_custom_with_folds(tmp_path, recipes):
    rows = [f"audio/clip{i:02d}.wav,{lab},s{i % 4},F{i % 3}" for i, lab in enumerate(LABELS_12)]
    rows += ["audio/missing.wav,sad,s1,F1", "audio/clip00.wav,,s1,F1"]
    csv_path = make_custom(tmp_path, "path,label,speaker,fold", rows)
    scan = recipes["custom"].list_utterances(tmp_path)  # the folder with one .csv
    summary = scan.summary()
    assert summary["n_utterances"] == 12
    assert summary["classes"] == {"angry": 3, "happy": 3, "neutral": 3, "sad": 3}
    assert summary["folds"] == {"F0": 4, "F1": 4, "F2": 4}
    assert summary["speakers"] == {"s0": 3, "s1": 3, "s2": 3, "s3": 3}
    assert summary["speaker_independent"] is False  # s0 is in F0, F1 and F2
    reasons = sorted(s["reason"] for s in summary["skipped"])
    assert reasons == ["audio file not found", "empty label"]
    assert scan.records[0].wav == str(tmp_path / "audio" / "clip00.wav")
    assert recipes["custom"].list_utterances(csv_path).summary()["n_utterances"] == 12


def test_custom_grouped_by_speaker(tmp_path, recipes):
    rows = [f"audio/clip{i:02d}.wav,{lab},spk{i % 6}" for i, lab in enumerate(LABELS_12)]
    make_custom(tmp_path, "path,label,speaker", rows)
    scan = recipes["custom"].list_utterances(tmp_path / "corpus.csv")
    summary = scan.summary()
    assert summary["n_utterances"] == 12
    assert list(summary["folds"]) == [f"fold{k}" for k in range(1, 6)]
    assert sorted(summary["folds"].values()) == [2, 2, 2, 2, 4]  # 6 speakers of 2 in 5 folds
    assert summary["speaker_independent"] is True
    check_every_fold(scan.records)


def test_custom_stratified_not_speaker_independent(tmp_path, recipes):
    labels = ["Anger", "sad", "happy", "neutral"] * 5
    rows = [f"audio/clip{i:02d}.wav,{lab}" for i, lab in enumerate(labels)]
    make_custom(tmp_path, "path,label", rows)
    scan = recipes["custom"].list_utterances(tmp_path / "corpus.csv")
    summary = scan.summary()
    assert summary["speaker_independent"] is False
    assert "NOT speaker independent" in summary["fold_rule"]
    assert summary["speakers"] == {"unknown": 20}
    assert summary["folds"] == {f"fold{k}": 4 for k in range(1, 6)}
    # stratified: each fold holds one utterance of each class
    for label in ("angry", "happy", "neutral", "sad"):
        per_fold = [
            sum(r.fold == f and r.label == label for r in scan.records) for f in summary["folds"]
        ]
        assert per_fold == [1] * 5
    with pytest.raises(ValueError, match="valid_split='utterance'"):
        split_for_test_fold(scan.records, 1, valid_split="speaker")
    check_every_fold(scan.records, "utterance")


def test_custom_segments_and_bad_header(tmp_path, recipes):
    rows = [
        "audio/clip00.wav,sad,a,0.1,0.35",
        "audio/clip00.wav,happy,a,0.35,0.5",
        "audio/clip01.wav,sad,b,0.25,0.9",  # past the end of a 0.5 s file
        "audio/clip02.wav,sad,b,x,0.25",
    ]
    make_custom(tmp_path, "path,label,speaker,start,stop", rows)
    scan = recipes["custom"].list_utterances(tmp_path)
    entries = {r.utt_id: r.to_json() for r in scan.records}
    assert set(entries) == {"clip00_r2", "clip00_r3"}
    assert entries["clip00_r2"]["start"] == 0.1 and entries["clip00_r2"]["stop"] == 0.35
    assert entries["clip00_r2"]["duration"] == pytest.approx(0.25)
    reasons = sorted(s["reason"] for s in scan.skipped)
    assert reasons[0].startswith("segment 0.25-0.9 s outside")
    assert reasons[1].startswith("start/stop are not numbers")
    (tmp_path / "corpus.csv").write_text("file,emotion\naudio/clip00.wav,sad\n")
    with pytest.raises(LayoutError, match="header path,label"):
        recipes["custom"].list_utterances(tmp_path)


# ---------------------------------------------------------------------------------------------
# Audio that classify refuses never reaches a split
# ---------------------------------------------------------------------------------------------


def tone(seconds: float, sr: int = 16000) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(round(seconds * sr))) / sr)).astype(
        "float32"
    )


def write_refused(path: Path, problem: str) -> Path:
    """A wav that ``classify`` refuses: one NaN sample, 200 samples, cut short, or silence."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if problem == "nan":
        samples = tone(1.0)
        samples[8000] = np.nan  # one bad sample made a whole model NaN (issue 12)
        sf.write(path, samples, 16000, subtype="FLOAT")
    elif problem == "short":
        sf.write(path, tone(1.0)[:200], 16000)
    elif problem == "truncated":
        sf.write(path, tone(1.0), 16000, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # the header still declares the whole second
    elif problem == "silent":
        sf.write(path, np.zeros(16000, dtype="float32"), 16000)
    return path


REFUSED = {  # problem: (EmoDB file name, reason)
    "nan": ("03a02Wb.wav", "contains NaN or infinite samples"),
    "short": ("08a03Fa.wav", "too short (0.013 s; at least 0.1 s of audio needed)"),
    "truncated": ("09a05Nb.wav", "truncated audio file (header declares 32000 data bytes"),
    "silent": ("03a04Tc.wav", "silence only"),
}


@pytest.mark.parametrize("problem", sorted(REFUSED))
def test_audio_classify_refuses_is_skipped_from_every_split(tmp_path, recipes, problem):
    name, reason = REFUSED[problem]
    root = make_emodb(tmp_path / "emodb")
    write_refused(root / "wav" / name, problem)
    scan = recipes["emodb"].list_utterances(root)
    reasons = {Path(s["path"]).name: s["reason"] for s in scan.summary()["skipped"]}
    assert reasons[name].startswith(reason), reasons[name]
    assert {r.utt_id: r.label for r in scan.records} == EMODB_GOOD
    out = tmp_path / "out"
    paths = [out / f"{split}.json" for split in ("train", "valid", "test")]
    for fold in fold_names(scan.records):  # every split of every fold
        recipes["emodb"].prepare_emodb(root, *paths, test_fold=fold, valid_ratio=0.2)
        listed = set().union(*(json.loads(p.read_text()) for p in paths))
        assert listed == set(EMODB_GOOD)


def test_segments_are_checked_on_their_own_samples(tmp_path, recipes):
    """IEMOCAP-style turns of one recording: a silent, too short or NaN turn is skipped, the
    turns around it are kept; a truncated recording loses every turn."""
    audio = tmp_path / "audio"
    audio.mkdir()
    dialogue = np.concatenate([tone(0.5), np.zeros(8000, dtype="float32"), tone(0.5)])
    dialogue[int(1.25 * 16000)] = np.inf
    sf.write(audio / "dialogue.wav", dialogue, 16000, subtype="FLOAT")
    write_refused(audio / "cut.wav", "truncated")
    rows = [
        "audio/dialogue.wav,sad,a,0.0,0.5",  # speech: kept
        "audio/dialogue.wav,happy,b,0.5,1.0",  # silence only
        "audio/dialogue.wav,sad,a,0.2,0.25",  # 0.05 s: too short
        "audio/dialogue.wav,happy,b,1.0,1.5",  # holds the inf sample
        "audio/dialogue.wav,happy,b,0.4,0.6",  # speech then silence: kept
        "audio/cut.wav,sad,a,0.0,0.2",  # inside the part that is there, but the file is cut
    ]
    (tmp_path / "corpus.csv").write_text("path,label,speaker,start,stop\n" + "\n".join(rows))
    scan = recipes["custom"].list_utterances(tmp_path)
    kept = {(r.start, r.stop): r.duration for r in scan.records}
    assert kept == {(0.0, 0.5): pytest.approx(0.5), (0.4, 0.6): pytest.approx(0.2)}
    reasons = sorted(s["reason"] for s in scan.skipped)
    assert reasons[0] == "segment 0.2-0.25 s: too short (0.050 s; at least 0.1 s of audio needed)"
    assert reasons[1] == "segment 0.5-1.0 s: silence only (no speech to classify)"
    assert reasons[2] == "segment 1.0-1.5 s: contains NaN or infinite samples"
    assert reasons[3].startswith("truncated audio file (")
    assert len(reasons) == 4


# ---------------------------------------------------------------------------------------------
# Splits, test_fold, manifests, skip
# ---------------------------------------------------------------------------------------------


def test_resolve_test_fold():
    folds = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    assert resolve_test_fold(folds, 1) == "03"
    assert resolve_test_fold(folds, 10) == "16"  # an int is an index
    assert resolve_test_fold(folds, "10") == "10"  # a string naming a fold is that fold
    assert resolve_test_fold(["Session1", "Session2"], "2") == "Session2"
    assert resolve_test_fold(folds, "none") == "none"  # no test fold
    for bad in (0, 11, "Session9", True):
        with pytest.raises(ValueError):
            resolve_test_fold(folds, bad)


def test_valid_split_sizes_and_seed(tmp_path, recipes):
    records = recipes["ravdess"].list_utterances(make_ravdess(tmp_path / "r")).records
    a = split_for_test_fold(records, "actors21-24", valid_ratio=0.2, seed=3)
    b = split_for_test_fold(records, "actors21-24", valid_ratio=0.2, seed=3)
    assert a == b  # deterministic
    assert len({r.speaker for r in a["valid"]}) == 1  # 20% of 10 training utterances: one actor
    utt = split_for_test_fold(records, 4, valid_split="utterance", valid_ratio=0.3, seed=3)
    assert len(utt["valid"]) == 3 and len(utt["test"]) == 2
    none = split_for_test_fold(records, 4, valid_ratio=0)
    assert none["valid"] == [] and len(none["train"]) == 10
    final = split_for_test_fold(records, "none", valid_ratio=0.2, seed=3)  # a final model
    assert final["test"] == [] and len(final["train"]) + len(final["valid"]) == len(records)
    assert {r.speaker for r in final["valid"]}.isdisjoint(r.speaker for r in final["train"])
    with pytest.raises(ValueError, match="valid_split"):
        split_for_test_fold(records, 4, valid_split="random")


def test_prepare_writes_manifests_and_skips(tmp_path, recipes):
    root = make_emodb(tmp_path / "emodb")
    out = tmp_path / "out"
    paths = [out / f"{s}.json" for s in ("train", "valid", "test")]
    summary = recipes["emodb"].prepare_emodb(root, *paths, test_fold=2, valid_ratio=0.2, seed=7)
    assert summary["test_fold"] == "08"
    manifests = [json.loads(p.read_text()) for p in paths]
    assert [len(m) for m in manifests] == [summary["splits"][s] for s in ("train", "valid", "test")]
    assert set(manifests[2]) == {"08a01Lb", "08a02Ea", "08b01Ta"}
    entry = manifests[2]["08a01Lb"]
    assert entry == {
        "wav": str((root / "wav" / "08a01Lb.wav").absolute()),
        "emo": "bored",
        "spk_id": "08",
        "fold": "08",
        "duration": pytest.approx(0.1),
    }
    valid_spk = {e["spk_id"] for e in manifests[1].values()}
    assert len(valid_spk) == 1 and not valid_spk & {e["spk_id"] for e in manifests[0].values()}
    assert not list(out.glob("*.tmp"))

    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in paths]
    again = recipes["emodb"].prepare_emodb(root, *paths, test_fold=2, valid_ratio=0.2, seed=7)
    assert again["skipped_preparation"] is True and again["splits"] == summary["splits"]
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in paths] == stamps

    recipes["emodb"].prepare_emodb(root, *paths, test_fold=3, valid_ratio=0.2, seed=7)
    assert all(p.stat().st_ino != s[0] for p, s in zip(paths, stamps, strict=True))
    assert set(json.loads(paths[2].read_text())) == {"09a01Aa", "09a04Fd"}

    paths[1].unlink()  # a missing manifest forces a redo even with the same options
    recipes["emodb"].prepare_emodb(root, *paths, test_fold=3, valid_ratio=0.2, seed=7)
    assert paths[1].is_file()


def test_same_signature_everywhere(recipes):
    import inspect

    signatures = {
        corpus: inspect.signature(getattr(module, f"prepare_{corpus}"))
        for corpus, module in recipes.items()
    }
    reference = signatures["emodb"]
    assert list(reference.parameters)[:9] == [
        "data_folder", "save_json_train", "save_json_valid", "save_json_test", "test_fold",
        "valid_split", "valid_ratio", "classes", "seed",
    ]  # fmt: skip
    assert all(sig == reference for sig in signatures.values())


def test_manifests_keeps_every_name_it_had_before_the_split():
    """Scripts outside the repository import these from ``qieemo_lobes.manifests``, whose scanning
    and fold code now lives in ``manifests_scan`` and ``manifests_folds``."""
    import qieemo_lobes.manifests as manifests

    before = {
        "AUDIO_EXTENSIONS", "FOLD_SEED", "NO_TEST_FOLD", "OPTIONS_FILE", "SPLITS", "VALID_SPLITS",
        "CorpusScan", "LayoutError", "ScanFunction", "Utterance", "balanced_group_folds",
        "contiguous_group_folds", "existing_folder", "fold_names", "is_resource_fork",
        "list_audio_files", "natural_key", "normalize_classes", "options_path",
        "prepare_manifests", "probe_audio", "resolve_test_fold", "run_cli", "skip",
        "split_for_test_fold", "stratified_folds", "summarize", "write_manifests",
    }  # fmt: skip
    assert before == set(manifests.__all__)
    assert all(hasattr(manifests, name) for name in manifests.__all__)
    assert manifests.Utterance is Utterance  # the same class, not a copy
    assert manifests.split_for_test_fold is split_for_test_fold


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_script(corpus: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, str(recipe_path(corpus)), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_summary_and_write(tmp_path):
    root = make_ravdess(tmp_path / "ravdess")
    done = run_script("ravdess", f"--data_folder={root}", "--summary")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["n_utterances"] == 12 and len(summary["folds"]) == 4
    out = tmp_path / "out"
    done = run_script("ravdess", f"--data_folder={root}", f"--save_folder={out}", "--test_fold=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f"ravdess: test fold actors01-04: train 6, valid 2, test 4 (written in {out})"
    ]
    test = json.loads((out / "test.json").read_text())
    assert {e["spk_id"] for e in test.values()} == {"01", "02"}


def test_cli_wrong_root(tmp_path):
    done = run_script("emodb", f"--data_folder={tmp_path}", "--summary")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "expected EmoDB: <root>/03a01Fa.wav or <root>/wav/03a01Fa.wav" in lines[0]
    missing = run_script("iemocap", f"--data_folder={tmp_path / 'nope'}", "--summary")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "IEMOCAP_full_release/Session1..Session5" in missing.stderr


# ---------------------------------------------------------------------------------------------
# Real corpora
# ---------------------------------------------------------------------------------------------


def test_real_emodb(emodb_dir, recipes):
    scan = recipes["emodb"].list_utterances(emodb_dir)
    summary = scan.summary()
    letters = {"W": 127, "L": 81, "N": 79, "F": 71, "A": 69, "T": 62, "E": 46}  # data/README.md
    names = recipes["emodb"].EMOTIONS
    assert summary["n_utterances"] == 535
    assert summary["classes"] == {names[k]: n for k, n in letters.items()}
    assert summary["classes"] == {
        "angry": 127, "bored": 81, "disgust": 46, "fearful": 69, "happy": 71, "neutral": 79,
        "sad": 62,
    }  # fmt: skip
    speakers = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    assert list(summary["folds"]) == speakers and list(summary["speakers"]) == speakers
    assert summary["skipped"] == []
    assert {r.duration for r in scan.records} == {2.0}  # this copy: every clip 2.000 s
    check_every_fold(scan.records)
    check_every_fold(scan.records, "utterance")


def test_real_ravdess(ravdess_dir, recipes):
    scan = recipes["ravdess"].list_utterances(ravdess_dir)
    summary = scan.summary()
    assert summary["n_utterances"] == 1434
    assert list(summary["folds"]) == [
        "actors01-04", "actors05-08", "actors09-12", "actors13-16", "actors17-20", "actors21-24",
    ]  # fmt: skip
    assert len(summary["speakers"]) == 24 and len(summary["classes"]) == 8
    assert summary["skipped"] == []
    # the six files missing from this copy (data/README.md) are from actors 1, 5 and 20
    assert summary["speakers"]["01"] == summary["speakers"]["05"] == summary["speakers"]["20"] == 58
    check_every_fold(scan.records)
    four = recipes["ravdess"].list_utterances(ravdess_dir, ["angry", "happy", "neutral", "sad"])
    four_summary = four.summary()
    assert four_summary["n_utterances"] + four_summary["n_excluded"] == 1434
    assert set(four_summary["excluded"]) == {"calm", "disgust", "fearful", "surprised"}
