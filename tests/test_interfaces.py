"""Export + EmotionRecognizer round trip on a real (tiny) recipe run.

A whisper-tiny.en recipe run on three EmoDB speakers is trained once per test session
(:func:`tiny_run`), exported with ``python -m qieemo_lobes.export`` and loaded with
``EmotionRecognizer.from_hparams`` with the network blocked. The interface must reproduce the
probabilities the recipe wrote to ``predictions.csv`` for its test speaker, calibrated with the
temperature the run fitted on its validation utterances (``calibration.json``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from qieemo_lobes.calibration import MIN_VALID
from tests.conftest import REPO_ROOT, TINY_WHISPER

RECIPE = REPO_ROOT / "recipes" / "EmoDB" / "emotion"
SPEAKERS = ("03", "08")  # fold 1 tests speaker 03; validation: 20 % of speaker 08
TINY = [
    *TINY_WHISPER,
    "--number_of_epochs=8",
    "--test_fold=1",
    "--valid_split=utterance",
    "--valid_ratio=0.2",
]
# Probabilities from the interface (fp32 encoder outputs) against the recipe's (encoder outputs
# read back from the fp16 feature cache): measured differences are ~1e-5.
PROB_TOL = 2e-3


def tiny_run(
    tmp_path_factory, emodb_dir: Path, name: str = "qieemo_tiny_model", extra: tuple = ()
) -> tuple[Path, Path]:
    """``(run folder, exported model folder)``, trained and exported once per test session;
    ``extra``: hyperparameter overrides (replacing TINY's of the same name)."""
    root = tmp_path_factory.getbasetemp() / name
    run, model = root / "run", root / "model"
    if (model / "hyperparams.yaml").is_file():
        return run, model
    data = root / "emodb3"
    data.mkdir(parents=True, exist_ok=True)
    for wav in sorted(emodb_dir.glob("*.wav")):
        if wav.name[:2] in SPEAKERS and not (data / wav.name).exists():
            os.symlink(wav, data / wav.name)
    command = [
        sys.executable,
        "train.py",
        "hparams/qieemo.yaml",
        f"--data_folder={data}",
        f"--output_folder={run}",
        f"--feature_cache={root / 'features'}",
        *(arg for arg in TINY if arg.split("=")[0] not in {e.split("=")[0] for e in extra}),
        *extra,
    ]
    result = subprocess.run(command, cwd=RECIPE, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    export = subprocess.run(
        [sys.executable, "-m", "qieemo_lobes.export", str(run), str(model)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    return run, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, emodb_dir):
    return tiny_run(tmp_path_factory, emodb_dir)


def _load_offline(model: Path):
    """The exported model, loaded while every network connection fails."""
    from qieemo_lobes.interfaces import EmotionRecognizer

    def no_network(*args, **kwargs):
        raise OSError("network access attempted while loading a local model")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        return EmotionRecognizer.from_hparams(source=str(model))


def _predictions(run: Path) -> list[dict]:
    """The recipe's predictions.csv rows, each with its utterance's audio file."""
    test = json.loads((run / "test.json").read_text())
    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["wav"] = test[row["utterance"]]["wav"]
    return rows


@pytest.fixture(scope="module")
def recognizer(exported):
    return _load_offline(exported[1])


@pytest.fixture(scope="module")
def recipe_predictions(exported) -> list[dict]:
    return _predictions(exported[0])


def _best_checkpoint(run: Path) -> Path:
    """The checkpoint with the highest validation UA (ties: the most recent), read directly."""
    ckpts = []
    for ckpt in (run / "save").glob("CKPT+*"):
        meta = yaml.safe_load((ckpt / "CKPT.yaml").read_text())
        ckpts.append((meta["ua"], meta["unixtime"], ckpt))
    return max(ckpts)[2]


def _temperature(model: Path) -> float:
    """The model folder's calibration temperature (1 when it has none)."""
    for line in (model / "hyperparams.yaml").read_text().splitlines():
        if line.startswith("temperature:"):
            return float(line.split(":", 1)[1])
    return 1.0


def _calibrated(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log(probs) / T): what the interface returns for the recipe's probabilities."""
    return torch.softmax(probs.clamp_min(1e-12).log() / temperature, dim=-1)


def test_export_writes_a_small_complete_model_folder(exported):
    run, model = exported
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md",
        "head.ckpt",
        "hyperparams.yaml",
        "label_encoder.ckpt",
        "metadata.json",
    ]
    # Head weights only: the encoder comes from the weight packages.
    assert sum(p.stat().st_size for p in model.iterdir()) < 5_000_000
    best = _best_checkpoint(run)
    assert (model / "head.ckpt").read_bytes() == (best / "head.ckpt").read_bytes()
    assert (model / "label_encoder.ckpt").read_text() == (
        run / "save" / "label_encoder.txt"
    ).read_text()
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["checkpoint"] == best.name
    assert metadata["test_metrics"] == json.loads((run / "test_metrics.json").read_text())
    assert metadata["dataset"] == "emodb"
    text = (model / "hyperparams.yaml").read_text()
    assert "source: whisper-tiny.en" in text and "freeze: true" in text
    # An offline alias: the inference encoder is the plain-PyTorch one (no transformers).
    assert "encoder: !new:qieemo_lobes.whisper_torch.TorchWhisperBlocks" in text
    # The head (no CMA, blocks 1-2) reads neither the PPG nor blocks 3-4: they are not run.
    assert "use_cma: false" in text and "run_blocks: 2" in text
    assert "block_tuner" not in text  # --tune_blocks=0 (off): left out of the inference file
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert str(run) not in body  # nothing tied to the training machine's folders
    assert f"{metadata['test_metrics']['ua']:.1f} %" in (model / "README.md").read_text()


def test_interface_reproduces_the_recipe_test_predictions(recognizer, recipe_predictions):
    """classify_batch over the whole test speaker gives the recipe's predictions.csv (the
    recipe's features came from WhisperBlocks, the interface runs TorchWhisperBlocks)."""
    _assert_reproduces(recognizer, recipe_predictions)


def test_retrained_encoder_block_is_trained_exported_and_reproduced(tmp_path_factory, emodb_dir):
    """--tune_blocks=1: encoder block 2 of whisper-tiny.en is retrained (from the cached block 1)
    with the encoder optimiser; its weights travel in head.ckpt, the exported encoder runs block
    1 only, and the interface reproduces the recipe's test predictions."""
    from qieemo_lobes.whisper_torch import WhisperBlockTuner

    run, model = tiny_run(
        tmp_path_factory,
        emodb_dir,
        name="qieemo_tiny_tuned",
        extra=("--tune_blocks=1", "--tune_first_block=2", "--number_of_epochs=4"),
    )
    best = _best_checkpoint(run)
    assert (best / "encoder_optimizer.ckpt").is_file()
    head = torch.load(model / "head.ckpt", map_location="cpu", weights_only=True)
    pretrained = WhisperBlockTuner("whisper-tiny.en", first_block=2).state_dict()
    assert set(pretrained) == {k.removeprefix("block_tuner.") for k in head if "block_tuner." in k}
    changed = [k for k, v in pretrained.items() if not torch.equal(head[f"block_tuner.{k}"], v)]
    assert len(changed) == len(pretrained)  # every tensor trained
    text = (model / "hyperparams.yaml").read_text()
    assert "WhisperBlockTuner" in text and "run_blocks: 1" in text
    _assert_reproduces(_load_offline(model), _predictions(run))


def _assert_reproduces(recognizer, recipe_predictions: list[dict]) -> None:
    from qieemo_lobes.whisper_torch import TorchWhisperBlocks

    assert isinstance(recognizer.mods.encoder, TorchWhisperBlocks)
    labels = recognizer.labels
    assert labels == ["angry", "bored", "disgust", "fearful", "happy", "neutral", "sad"]
    from qieemo_lobes.audio import load_audio

    wavs = [load_audio(row["wav"]) for row in recipe_predictions]
    probs = []
    for first in range(0, len(wavs), 16):
        batch = torch.nn.utils.rnn.pad_sequence(wavs[first : first + 16], batch_first=True)
        lens = torch.tensor([len(w) for w in wavs[first : first + 16]]) / batch.shape[1]
        out_prob, _, _, _ = recognizer.classify_batch(batch, lens)
        probs.append(out_prob.exp())
    probs = torch.cat(probs)
    expected = torch.tensor([[float(row[c]) for c in labels] for row in recipe_predictions])
    expected = _calibrated(expected, recognizer.temperature)
    assert (probs - expected).abs().max() < PROB_TOL
    margin = expected.topk(2).values.diff(dim=1).abs().squeeze(1)
    for row, p, m in zip(recipe_predictions, probs, margin, strict=True):
        if m > 2 * PROB_TOL:  # a near tie may flip within the tolerance
            assert labels[int(p.argmax())] == row["predicted"], row["utterance"]
    # A trained model, not a constant: more than one class predicted on the test speaker.
    assert len({row["predicted"] for row in recipe_predictions}) > 1


def test_classify_file_returns_encoder_classifier_tuple(recognizer, recipe_predictions):
    labels = recognizer.labels
    for row in recipe_predictions[:6]:
        out_prob, score, index, text_lab = recognizer.classify_file(row["wav"])
        assert out_prob.shape == (1, len(labels)) and score.shape == index.shape == (1,)
        # log-probabilities, as EncoderClassifier returns them
        assert abs(float(out_prob.exp().sum()) - 1.0) < 1e-5
        assert float(score[0]) == pytest.approx(float(out_prob.max()))
        assert int(index[0]) == int(out_prob.argmax())
        assert text_lab == [labels[int(index[0])]]
        expected = torch.tensor([[float(row[c]) for c in labels]])
        expected = _calibrated(expected, recognizer.temperature)
        assert (out_prob.exp() - expected).abs().max() < PROB_TOL


def test_recipe_writes_calibration_json(exported):
    """The run fits a temperature on its validation utterances (never the test speaker) and
    gives the ECE and NLL before and after, on validation and test."""
    run, model = exported
    calibration = json.loads((run / "calibration.json").read_text())
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(calibration) >= {
        "temperature",
        "n_valid",
        "n_test",
        "ece_valid_before",
        "ece_valid_after",
        "nll_valid_before",
        "nll_valid_after",
        "ece_test_before",
        "ece_test_after",
        "nll_test_before",
        "nll_test_after",
    }
    # The tiny run validates on a dozen utterances: too few to fit T on (MIN_VALID), so T = 1.
    fitted = calibration["n_valid"] >= MIN_VALID
    assert calibration["fitted"] is fitted and ("note" in calibration) is not fitted
    temperature = calibration["temperature"]
    assert fitted or temperature == 1.0
    assert isinstance(temperature, float) and 0 < temperature < float("inf")
    assert calibration["n_valid"] == metrics["n_valid"] > 0
    assert calibration["n_test"] == metrics["n_test"] > 0
    for key, value in calibration.items():
        if key.startswith("ece_"):
            assert 0 <= value <= 100, (key, value)
        elif key.startswith("nll_"):
            assert 0 < value < float("inf"), (key, value)
    # T minimises the validation NLL, and T = 1 is in the search range.
    assert calibration["nll_valid_after"] <= calibration["nll_valid_before"] + 1e-6
    # The test numbers are those of the recipe's test predictions (before) and of the same
    # probabilities at T (after): the test fold is measured, never fitted on.
    from qieemo_lobes.calibration import expected_calibration_error

    rows = _predictions(run)
    labels = metrics["classes"]
    probs = torch.tensor([[float(row[c]) for c in labels] for row in rows], dtype=torch.float64)
    truth = torch.tensor([labels.index(row["true"]) for row in rows])
    for when, t in (("before", 1.0), ("after", temperature)):
        ece = expected_calibration_error(probs.clamp_min(1e-12).log(), truth, t)
        assert ece == pytest.approx(calibration[f"ece_test_{when}"], abs=0.5), when
    # The export carries T: the model folder's temperature is the run's.
    assert _temperature(model) == pytest.approx(temperature, abs=1e-6)


def test_classify_batch_divides_the_head_logits_by_the_temperature(recognizer, recipe_predictions):
    """out_prob.exp() == softmax(head logits / T), at the exported T and at another one; the
    labels never change."""
    from qieemo_lobes.audio import load_audio, remove_dc

    wavs = [load_audio(row["wav"]) for row in recipe_predictions[:4]]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs]) / batch.shape[1]
    with torch.no_grad():
        blocks, ppg = recognizer.mods.encoder(remove_dc(batch, lens), lens)
        logits = recognizer.mods.head(blocks, ppg, lens).float()
    exported_t = recognizer.temperature
    try:
        for temperature in (exported_t, 2.5):
            recognizer.temperature = temperature
            out_prob, score, index, _ = recognizer.classify_batch(batch, lens)
            expected = torch.softmax(logits / temperature, dim=-1)
            assert (out_prob.exp() - expected).abs().max() < 1e-5
            assert torch.equal(index, logits.argmax(-1))
            assert torch.allclose(score, out_prob.max(-1).values)
    finally:
        recognizer.temperature = exported_t


def test_padding_does_not_change_results(recognizer, recipe_predictions):
    """Utterances of different lengths batched together score as they do alone."""
    from qieemo_lobes.audio import load_audio

    rows = recipe_predictions[:3]
    wavs = [load_audio(row["wav"])[:n] for row, n in zip(rows, (16000, 24000, 32000), strict=True)]
    alone = torch.cat([recognizer.classify_batch(w)[0] for w in wavs])
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs]) / batch.shape[1]
    together = recognizer.classify_batch(batch, lens)[0]
    assert (alone.exp() - together.exp()).abs().max() < 1e-4


def test_classify_file_reads_other_rates_and_channels(recognizer, recipe_predictions, tmp_path):
    """A 48 kHz stereo copy of a clip gives (nearly) the clip's own result."""
    data, rate = sf.read(recipe_predictions[0]["wav"], dtype="float32")
    import torchaudio

    up = torchaudio.functional.resample(torch.from_numpy(data), rate, 48000).numpy()
    sf.write(tmp_path / "st48.flac", np.stack([up, up], axis=1), 48000)
    reference = recognizer.classify_file(recipe_predictions[0]["wav"])[0].exp()
    copy = recognizer.classify_file(tmp_path / "st48.flac")[0].exp()
    assert (reference - copy).abs().max() < 0.02


def test_silence_is_an_audio_error_not_an_emotion(recognizer, tmp_path):
    from qieemo_lobes.audio import AudioError

    sf.write(tmp_path / "quiet.wav", np.zeros(32000), 16000)
    with pytest.raises(AudioError, match="silence only"):
        recognizer.classify_file(tmp_path / "quiet.wav")


def test_missing_model_folder_is_not_looked_up_online(tmp_path):
    from qieemo_lobes.interfaces import EmotionRecognizer

    with pytest.raises(FileNotFoundError, match="model folder not found"):
        EmotionRecognizer.from_hparams(source=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no hyperparams.yaml"):
        EmotionRecognizer.from_hparams(source=str(tmp_path))


def _export(run: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qieemo_lobes.export", str(run), str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_export_refuses_an_unfinished_run_in_one_line(exported, tmp_path):
    run, _ = exported
    unfinished = tmp_path / "run"
    shutil.copytree(run, unfinished, symlinks=True)
    (unfinished / "test_metrics.json").unlink()
    result = _export(unfinished, tmp_path / "model")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"export: {unfinished}: run not finished (no test_metrics.json)"
    ]
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("missing", "no such directory"),
        ("no_hparams", "not a recipe output folder (no hyperparams.yaml)"),
        ("no_checkpoint", "no checkpoint with head.ckpt"),
        ("no_labels", "no label encoder"),
    ],
)
def test_export_refuses_damaged_runs(exported, tmp_path, capsys, damage, problem):
    from qieemo_lobes.export import main

    run = tmp_path / "run"
    if damage != "missing":
        shutil.copytree(exported[0], run, symlinks=True)
    if damage == "no_hparams":
        (run / "hyperparams.yaml").unlink()
    elif damage == "no_checkpoint":
        for ckpt in (run / "save").glob("CKPT+*"):
            shutil.rmtree(ckpt)
    elif damage == "no_labels":
        (run / "save" / "label_encoder.txt").unlink()
    assert main([str(run), str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and problem in err[0]


TORCH_ENCODER = "qieemo_lobes.whisper_torch.TorchWhisperBlocks"
HF_ENCODER = "qieemo_lobes.encoders.WhisperBlocks"


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (
            ["source: whisper-tiny.en", "window: fit", "freeze: true", "unfreeze_top: 2"],
            TORCH_ENCODER,
        ),
        (["source: whisper-base", "save_path: /somewhere/cache"], TORCH_ENCODER),  # window 30s
        (["source: openai/whisper-base", "window: fit"], HF_ENCODER),  # not an offline alias
        (["source: whisper-base", "window: fit", "new_option: 1"], HF_ENCODER),  # unknown to it
    ],
)
def test_export_uses_torch_whisper_blocks_where_it_stands_in(arguments, expected):
    """Offline aliases get TorchWhisperBlocks; anything it cannot load keeps WhisperBlocks."""
    from qieemo_lobes.export_files import dump_node, inference_encoder, round_trip_yaml

    node = round_trip_yaml().load(
        "\n".join([f"encoder: !new:{HF_ENCODER}", *(f"  {a}" for a in arguments)])
    )
    encoder = inference_encoder(node["encoder"])
    assert encoder.tag.value == f"!new:{expected}"
    assert encoder["freeze"] is True and not {"unfreeze_top", "save_path"} & set(encoder)
    assert dump_node("encoder", encoder).startswith(f"encoder: !new:{expected}\n")
