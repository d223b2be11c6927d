"""ConformerBlocks: same numbers as SpeechBrain's TransformerASR, padding, freezing, Pretrainer."""

from __future__ import annotations

import pytest
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
from speechbrain.nnet.linear import Linear
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.parameter_transfer import Pretrainer

from qieemo_lobes.conformer import ConformerBlocks

N_MELS, D_MODEL, VOCAB, N_LAYERS = 40, 32, 12, 3


def make_modules(seed: int) -> dict:
    """The objects a Conformer-CTC recipe declares (small sizes), with a fitted normaliser."""
    torch.manual_seed(seed)
    normalize = InputNormalization(norm_type="global", update_until_epoch=100)
    return {
        "compute_features": Fbank(n_mels=N_MELS),
        "normalize": normalize,
        "cnn": ConvolutionFrontEnd(
            input_shape=(8, 10, N_MELS),
            num_blocks=2,
            num_layers_per_block=1,
            out_channels=(16, 16),
            kernel_sizes=(3, 3),
            strides=(2, 2),
            residuals=(False, False),
        ),
        "transformer": TransformerASR(
            tgt_vocab=VOCAB,
            input_size=16 * N_MELS // 4,
            d_model=D_MODEL,
            nhead=4,
            num_encoder_layers=N_LAYERS,
            num_decoder_layers=0,
            d_ffn=64,
            kernel_size=15,
            dropout=0.1,
            encoder_module="conformer",
            attention_type="RelPosMHAXL",
            normalize_before=True,
            causal=False,
        ),
        "ctc_lin": Linear(input_size=D_MODEL, n_neurons=VOCAB),
    }


def fit_normalizer(mods: dict, wavs: torch.Tensor) -> None:
    mods["normalize"].train()
    mods["normalize"](mods["compute_features"](wavs), torch.ones(len(wavs)))
    mods["normalize"].eval()


def speechlike(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Harmonic tones with a moving pitch and noise: a waveform with structure, not white noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000.0
    f0 = 100 + 80 * torch.rand(batch, 1, generator=gen)
    phase = 2 * torch.pi * torch.cumsum(f0 * (1 + 0.3 * torch.sin(3 * t)), dim=1) / 16000.0
    sig = sum(torch.sin(k * phase) / k for k in range(1, 6))
    return 0.1 * sig + 0.01 * torch.randn(batch, samples, generator=gen)


def recipe_encode(mods: dict, wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The recipe's own computation (train.py compute_forward, eval mode)."""
    feats = mods["normalize"](mods["compute_features"](wavs), lens)
    return mods["transformer"].encode(mods["cnn"](feats), lens)


@pytest.fixture(scope="module")
def mods() -> dict:
    mods = make_modules(seed=0)
    fit_normalizer(mods, speechlike(4, 32000, seed=1))
    return mods


@pytest.fixture(scope="module")
def wavs() -> torch.Tensor:
    return speechlike(3, 24000, seed=2)


def test_last_block_and_ppg_match_transformer_encode(mods, wavs):
    lens = torch.ones(len(wavs))
    enc = ConformerBlocks(**mods, ppg="features").eval()
    blocks, ppg = enc(wavs, lens)
    with torch.no_grad():
        ref = recipe_encode(mods, wavs, lens)
        final = mods["transformer"].encoder.norm(blocks[-1])
        ctc_ref = torch.softmax(mods["ctc_lin"](ref), dim=-1)
    assert blocks.shape == (N_LAYERS, 3, ref.shape[1], D_MODEL)
    assert (enc.n_blocks, enc.block_dim, enc.ppg_dim) == (N_LAYERS, D_MODEL, D_MODEL)
    torch.testing.assert_close(final, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ppg, ref, atol=1e-5, rtol=0)
    # The blocks differ from one another (each hook caught its own layer).
    assert all((blocks[i] - blocks[i + 1]).abs().max() > 1e-3 for i in range(N_LAYERS - 1))

    ctc = ConformerBlocks(**mods, ppg="ctc").eval()
    blocks_ctc, posteriors = ctc(wavs, lens)
    assert ctc.ppg_dim == VOCAB
    torch.testing.assert_close(posteriors, ctc_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks_ctc, blocks, atol=1e-6, rtol=0)


def test_recipe_path_on_padded_batch_when_exact_padding_off(mods, wavs):
    lens = torch.tensor([1.0, 0.7, 0.45])
    enc = ConformerBlocks(**mods, exact_padding=False).eval()
    _, ppg = enc(wavs, lens)
    with torch.no_grad():
        ref = recipe_encode(mods, wavs, lens)
    torch.testing.assert_close(ppg, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ppg_type", ["features", "ctc"])
def test_utterance_does_not_change_when_batched_with_longer_one(mods, wavs, ppg_type):
    enc = ConformerBlocks(**mods, ppg=ppg_type).eval()
    lens = torch.tensor([1.0, 0.7, 0.45])
    blocks, ppg = enc(wavs, lens)
    for i in (1, 2):
        n = int(round(float(lens[i]) * wavs.shape[1]))
        alone_blocks, alone_ppg = enc(wavs[i : i + 1, :n])
        frames = alone_blocks.shape[2]
        assert frames < blocks.shape[2]
        torch.testing.assert_close(blocks[:, i, :frames], alone_blocks[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(ppg[i, :frames], alone_ppg[0], atol=1e-4, rtol=0)
        # Padded frames are zero, not leftovers.
        assert blocks[:, i, frames:].abs().max() == 0
        assert ppg[i, frames:].abs().max() == 0


def test_freeze_and_train_modes(mods, wavs):
    frozen = ConformerBlocks(**mods)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not frozen.transformer.training
    blocks, ppg = frozen(wavs[:1])
    assert not blocks.requires_grad and not ppg.requires_grad

    fresh = make_modules(seed=3)
    fit_normalizer(fresh, wavs)
    tuned = ConformerBlocks(**fresh, ppg="ctc", freeze=False).train()
    assert tuned.transformer.training and not tuned.normalize.training
    _, ppg = tuned(wavs[:2], torch.tensor([1.0, 0.8]))
    ppg[..., 3].mean().backward()
    grads = [p.grad for p in tuned.transformer.encoder.layers[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_bad_arguments(mods):
    with pytest.raises(ValueError, match="ctc_lin"):
        ConformerBlocks(**{**mods, "ctc_lin": None}, ppg="ctc")
    with pytest.raises(ValueError, match="ppg"):
        ConformerBlocks(**mods, ppg="logits")


def test_pretrainer_round_trip(tmp_path, wavs):
    # "Train": a few optimiser steps, so that the weights are not those of any initialisation.
    trained = make_modules(seed=10)
    fit_normalizer(trained, speechlike(4, 32000, seed=11))
    model = torch.nn.ModuleList([trained["cnn"], trained["transformer"], trained["ctc_lin"]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        recipe_encode(trained, wavs, torch.ones(3)).pow(2).mean().backward()
        opt.step()
    # Saved as the recipe's Checkpointer does (recoverables "model" and "normalizer").
    ckpt = Checkpointer(tmp_path / "save", {"model": model, "normalizer": trained["normalize"]})
    folder = ckpt.save_checkpoint().path
    assert {p.name for p in folder.iterdir()} >= {"model.ckpt", "normalizer.ckpt"}

    before = ConformerBlocks(**trained, ppg="ctc").eval()
    want_blocks, want_ppg = before(wavs, torch.tensor([1.0, 0.6, 0.9]))

    fresh = make_modules(seed=20)
    fresh_model = torch.nn.ModuleList([fresh["cnn"], fresh["transformer"], fresh["ctc_lin"]])
    fit_normalizer(fresh, wavs)
    _, untouched = ConformerBlocks(**fresh, ppg="ctc").eval()(wavs, torch.tensor([1.0, 0.6, 0.9]))
    assert (untouched - want_ppg).abs().max() > 1e-2
    pretrainer = Pretrainer(
        collect_in=tmp_path / "collected",
        loadables={"model": fresh_model, "normalizer": fresh["normalize"]},
        paths={"model": str(folder / "model.ckpt"), "normalizer": str(folder / "normalizer.ckpt")},
    )
    pretrainer.collect_files()
    pretrainer.load_collected()
    after = ConformerBlocks(**fresh, ppg="ctc").eval()
    got_blocks, got_ppg = after(wavs, torch.tensor([1.0, 0.6, 0.9]))
    torch.testing.assert_close(got_blocks, want_blocks, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_ppg, want_ppg, atol=1e-6, rtol=0)
    assert torch.equal(fresh["normalize"].glob_mean, trained["normalize"].glob_mean)
