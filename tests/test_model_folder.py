"""A model folder is code: the safe loader refuses what qieemo_lobes.export never writes.

``EmotionRecognizer.from_hparams`` (``trust_code=False``, the default) checks ``hyperparams.yaml``
without constructing anything, and ``head.ckpt`` / ``label_encoder.ckpt`` with safe readers,
before SpeechBrain builds the model. Every payload here is live: with ``trust_code=True`` it runs
(the marker file appears), so each refusal is a real one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qieemo_lobes.classify import DEFAULT_MODEL_DIR
from qieemo_lobes.interfaces import EmotionRecognizer
from qieemo_lobes.model_folder import ModelFolderError, check_hyperparams, check_model_folder
from tests.conftest import REPO_ROOT
from tests.test_interfaces import exported  # noqa: F401 (the module fixture, shared)


def shipped_hyperparams() -> str:
    """The default model's inference file without its ``temperature`` line (the tests that
    mutate it set their own)."""
    text = (DEFAULT_MODEL_DIR / "hyperparams.yaml").read_text()
    return re.sub(r"^temperature: .*\n", "", text, flags=re.MULTILINE)


ENCODER_LINE = "encoder: !new:qieemo_lobes.whisper_torch.TorchWhisperBlocks"


def _copy_default(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    return model


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# Each payload replaces a node of the shipped model's hyperparams.yaml; MARKER is the file it
# creates when it runs. ``tag``: what the one-line refusal must name.
PAYLOADS = {
    "python_object_apply": (
        ENCODER_LINE,
        'encoder: !!python/object/apply:os.system ["touch MARKER"]\nunused:',
        "!!python/object/apply:os.system",
    ),
    "hyperpyyaml_apply": (
        ENCODER_LINE,
        'encoder: !apply:os.system ["touch MARKER"]\nunused:',
        "!apply:os.system",
    ),
    "foreign_new_class": (  # logging.FileHandler creates its file when constructed
        ENCODER_LINE,
        "encoder: !new:logging.FileHandler\n  filename: MARKER\nunused:",
        "!new:logging.FileHandler",
    ),
    "tuple_string": (  # HyperPyYAML parses "(...)" with PyYAML's unsafe loader
        "  source: whisper-base",
        '  source: "(!!python/object/apply:os.system [touch MARKER])"',
        "HyperPyYAML tuple",
    ),
    "temperature_apply": (  # the calibration temperature is a number, never a call
        "sample_rate: 16000",
        'temperature: !apply:os.system ["touch MARKER"]\nsample_rate: 16000',
        "!apply:os.system",
    ),
}


TRUSTED_LOAD = """
import sys
from qieemo_lobes.interfaces import EmotionRecognizer
EmotionRecognizer.from_hparams(source=sys.argv[1], trust_code=True)
"""


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_code_in_hyperparams_is_refused_and_never_runs(tmp_path, payload):
    old, new, tag = PAYLOADS[payload]
    model = _copy_default(tmp_path)
    marker = tmp_path / "MARKER"
    hparams = model / "hyperparams.yaml"
    text = shipped_hyperparams()  # the payloads bring their own temperature line
    assert old in text
    text = text.replace(old, new.replace("MARKER", str(marker)), 1)
    hparams.write_text(text)
    with pytest.raises(ModelFolderError) as refused:
        EmotionRecognizer.from_hparams(source=str(model))
    message = str(refused.value)
    line = _line_of(text, new.replace("MARKER", str(marker)).splitlines()[0])
    assert "\n" not in message
    assert message.startswith(f"{hparams.resolve()}:{line}: ") and tag in message, message
    assert "trust_code=True" in message
    assert not marker.exists()
    # The payload is live: trusting the folder runs it (SpeechBrain's behaviour). In a fresh
    # process, as classify loads a model: HyperPyYAML keeps global parser state between loads.
    trusted = subprocess.run(
        [sys.executable, "-c", TRUSTED_LOAD, str(model)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trusted.returncode != 0  # the payload's result is no encoder
    assert marker.exists(), trusted.stderr[-2000:]


@pytest.mark.parametrize(
    "old, new, problem",
    [
        (ENCODER_LINE, "encoder: !name:os.system\nunused:", "tag !name:os.system"),
        (ENCODER_LINE, "encoder: !module:os\nunused:", "tag !module:os"),
        (ENCODER_LINE, "encoder: !include:other.yaml\nunused:", "tag !include:other.yaml"),
        (ENCODER_LINE, "encoder: !!binary aGk=\nunused:", "tag !!binary"),
        ("    head: !ref <head>\n\npretrainer", "    head: !ref <head> + 1\n\npretrainer", "!ref"),
        ("    head: !ref <head>\n\npretrainer", "    head: !ref <encoder>\n\npretrainer", "!ref"),
        ("n_classes: 4\n\n", "n_classes: &n 4\nsample: *n\n\n", "anchors"),
        ("sample_rate: 16000", "sample_rate: 16000\nextra: 1", "unexpected key 'extra'"),
        (
            "    loadables:",
            "    paths:\n        head: /elsewhere/head.ckpt\n    loadables:",
            "paths",
        ),
        ("qieemo_lobes.qieemo.QieemoHead", "qieemo_lobes.encoders.WhisperBlocks", "head must be"),
        (
            "  n_encoder_blocks: 6",
            "  n_encoder_blocks: !new:qieemo_lobes.qieemo.QieemoHead",
            "only plain values",
        ),
        ("  n_encoder_blocks: 6", "  n_encoder_blocks: 6\n  n_encoder_blocks: 5", "duplicate key"),
    ],
)
def test_only_the_exported_structure_is_accepted(tmp_path, old, new, problem):
    """Other tags, expressions, anchors, keys and classes in the wrong place: one line each,
    naming the file and the line."""
    hparams = tmp_path / "hyperparams.yaml"
    text = shipped_hyperparams()
    assert old in text
    hparams.write_text(text.replace(old, new, 1))
    with pytest.raises(ModelFolderError) as refused:
        check_hyperparams(hparams)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{hparams}:"), message
    assert problem in message, message
    line = int(message[len(str(hparams)) + 1 :].split(":", 1)[0])
    changed = text.replace(old, new, 1).splitlines()
    assert any(part in changed[line - 1] for part in new.split("\n") if part.strip()), message


@pytest.mark.parametrize(
    "value",
    [
        "!new:qieemo_lobes.qieemo.QieemoHead",
        "!ref <n_classes>",
        "abc",
        '"1.5"',
        "-1.0",
        "0",
        "0.0",
        ".nan",
        ".inf",
        "1e999",
        "true",
        "null",
        "[1.5]",
        "{value: 1.5}",
    ],
)
def test_temperature_must_be_a_plain_positive_number(tmp_path, value):
    hparams = tmp_path / "hyperparams.yaml"
    text = shipped_hyperparams()
    text = text.replace("n_classes: 4\n", f"n_classes: 4\ntemperature: {value}\n", 1)
    hparams.write_text(text)
    with pytest.raises(ModelFolderError) as refused:
        check_hyperparams(hparams)
    message = str(refused.value)
    line = _line_of(text, "temperature:")
    assert "\n" not in message and message.startswith(f"{hparams}:{line}: "), message
    assert "temperature must be a positive number" in message, message


@pytest.mark.parametrize("value", ["1.5", "2", "0.05", "1.234567", "20.0"])
def test_temperature_of_an_export_is_accepted(tmp_path, value):
    """Exports of calibrated runs carry ``temperature: T`` (a plain top-level number)."""
    hparams = tmp_path / "hyperparams.yaml"
    text = shipped_hyperparams()
    text = text.replace("n_classes: 4\n", f"n_classes: 4\ntemperature: {value}\n", 1)
    hparams.write_text(text)
    check_hyperparams(hparams)


def test_block_tuner_of_an_export_is_accepted(tmp_path):
    """Exports of runs with a retrained encoder block carry a WhisperBlockTuner in the head."""
    hparams = tmp_path / "hyperparams.yaml"
    text = shipped_hyperparams()
    tuner = (
        "  block_tuner: !new:qieemo_lobes.whisper_torch.WhisperBlockTuner\n"
        "    source: whisper-base\n    first_block: 3\n    n_blocks: 1\n"
    )
    hparams.write_text(text.replace("  input_norm: false\n", "  input_norm: false\n" + tuner))
    check_hyperparams(hparams)


def test_shipped_model_and_a_fresh_export_pass(exported):  # noqa: F811
    """Both load by default (test_default_model and test_interfaces load them); here the check
    alone, and the head it returns is the one the folder holds."""
    for folder in (DEFAULT_MODEL_DIR, exported[1]):
        state = check_model_folder(folder)
        assert state.keys() == torch.load(folder / "head.ckpt", weights_only=True).keys()


def _damage_head(model: Path, damage: str) -> None:
    head = model / "head.ckpt"
    data = head.read_bytes()
    if damage.startswith("cut_"):
        head.write_bytes(data[: int(damage[4:])])
    elif damage in ("nan", "inf"):
        state = torch.load(head, weights_only=True)
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key].view(-1)[0] = float(damage)
        torch.save(state, head)
    elif damage == "pickled":
        torch.save({"weights": torch.zeros(2), "hook": shutil.rmtree}, head)


@pytest.mark.parametrize("trust_code", [False, True])
@pytest.mark.parametrize(
    "damage, problem",
    [
        ("cut_0", "truncated or corrupt checkpoint (EOFError)"),
        ("cut_1000", "truncated or corrupt checkpoint (PytorchStreamReader failed reading zip"),
        ("cut_30000", "truncated or corrupt checkpoint ("),  # [Errno 22] Invalid argument
        ("pickled", "holds Python objects, not only tensors"),
    ],
)
def test_damaged_head_checkpoint_is_named_in_one_line(tmp_path, damage, problem, trust_code):
    model = _copy_default(tmp_path)
    _damage_head(model, damage)
    with pytest.raises(ModelFolderError) as refused:
        EmotionRecognizer.from_hparams(source=str(model), trust_code=trust_code)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{model.resolve() / 'head.ckpt'}: {problem}"), message


@pytest.mark.parametrize("trust_code", [False, True])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_diverged_head_is_refused(tmp_path, value, trust_code):
    """A head trained on a NaN sample labels everything with confidence NaN: refused."""
    model = _copy_default(tmp_path)
    _damage_head(model, value)
    with pytest.raises(ModelFolderError) as refused:
        EmotionRecognizer.from_hparams(source=str(model), trust_code=trust_code)
    assert str(refused.value) == (
        f"{model.resolve() / 'head.ckpt'} holds NaN or infinite weights (training diverged)"
    )


ONE_LABEL = b"'angry' => 0\n================\n'starting_index' => 0\n"


@pytest.mark.parametrize("trust_code", [False, True])
@pytest.mark.parametrize(
    "content", [b"", b"garbage\n", b"\xff\xfe\x00", b"'angry' => 0\n", ONE_LABEL]
)
def test_damaged_label_encoder_is_named_in_one_line(tmp_path, content, trust_code):
    model = _copy_default(tmp_path)
    (model / "label_encoder.ckpt").write_bytes(content)
    with pytest.raises(ModelFolderError) as refused:
        EmotionRecognizer.from_hparams(source=str(model), trust_code=trust_code)
    message = str(refused.value)
    assert "\n" not in message
    labels = model.resolve() / "label_encoder.ckpt"
    if content == ONE_LABEL:  # whole, but one label for a 4-class head
        assert message.startswith(f"{labels}: label encoder holds 1 labels, the head predicts 4")
    else:
        assert message.startswith(f"{labels}: truncated or corrupt label encoder ("), message


def test_head_checkpoint_that_does_not_fit_is_refused(tmp_path):
    """SpeechBrain's Pretrainer only warns about missing weights (the head would run with random
    ones); the safe loader loads head.ckpt strictly."""
    model = _copy_default(tmp_path)
    state = torch.load(model / "head.ckpt", weights_only=True)
    state.pop("classifier.1.bias")
    torch.save(state, model / "head.ckpt")
    with pytest.raises(ModelFolderError) as refused:
        EmotionRecognizer.from_hparams(source=str(model))
    assert str(refused.value) == (
        f"{model.resolve() / 'head.ckpt'}: does not fit the head in hyperparams.yaml "
        '(Missing key(s) in state_dict: "classifier.1.bias".)'
    )


def test_a_hub_id_needs_trust(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFolderError, match="not a local model folder"):
        EmotionRecognizer.from_hparams(source="someone/emotion-model")
