"""The built-in default model: shipped, small, documented, and used when --model is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qieemo_lobes.classify import DEFAULT_MODEL_DIR
from tests.conftest import REPO_ROOT

CLASSES = ["angry", "happy", "neutral", "sad"]
EMODB_LETTERS = {"W": "angry", "F": "happy", "N": "neutral", "T": "sad"}


def test_the_model_folder_is_complete_small_and_documented():
    files = {p.name: p for p in DEFAULT_MODEL_DIR.iterdir()}
    for name in ("hyperparams.yaml", "head.ckpt", "label_encoder.ckpt", "MODEL_CARD.md"):
        assert name in files, f"{name} missing from {DEFAULT_MODEL_DIR}"
    assert sum(p.stat().st_size for p in files.values()) <= 20 * 2**20
    card = files["MODEL_CARD.md"].read_text()
    for needed in ("CC BY-NC-SA 4.0", "leave one corpus out", "tools/train_default_model.py"):
        assert needed.lower() in card.lower(), needed
    # The encoder is not shipped: it comes from the weight packages.
    assert "whisper-base" in files["hyperparams.yaml"].read_text()


def test_labels_are_the_four_emotions():
    from qieemo_lobes.interfaces import EmotionRecognizer

    recognizer = EmotionRecognizer.from_hparams(source=DEFAULT_MODEL_DIR)
    assert sorted(recognizer.labels) == CLASSES


def test_classify_uses_the_default_model_on_the_examples():
    """The README's quick start: no --model, the examples folder, one JSON line per audio file."""
    result = subprocess.run(
        [sys.executable, "-m", "qieemo_lobes.classify", "examples/", "--format", "json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    audio = sorted(
        p.name for p in (REPO_ROOT / "examples").iterdir() if p.suffix in {".wav", ".flac"}
    )
    assert sorted(records) == audio
    for record in records.values():
        assert record["label"] in CLASSES
        assert sum(record["probabilities"].values()) == pytest.approx(
            1.0, abs=4 * 0.5e-4 + 1e-9
        )  # rounded to 4 decimals
    assert len(records["conversation.flac"]["segments"]) >= 2  # a long recording is segmented


def test_the_shipped_weights_are_the_trained_ones(emodb_dir):
    """Sanity check on utterances it was trained on (4 speakers, the 4 classes): far above the 25 %
    of chance, so head.ckpt is the trained head (its cross-corpus accuracy is in the model card)."""
    from qieemo_lobes.interfaces import EmotionRecognizer

    clips = [
        p
        for p in sorted(emodb_dir.glob("*.wav"))
        if p.name[:2] in {"03", "09", "12", "15"} and p.name[5] in EMODB_LETTERS
    ]
    recognizer = EmotionRecognizer.from_hparams(source=DEFAULT_MODEL_DIR)
    correct = 0
    for clip in clips:
        _, _, _, label = recognizer.classify_file(str(clip))
        correct += label[0] == EMODB_LETTERS[clip.name[5]]
    assert len(clips) >= 40
    assert correct / len(clips) >= 0.6, f"{correct}/{len(clips)}"
