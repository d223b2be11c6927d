"""Test-time adaptation (AdaBN) of a Qieemo head: :mod:`qieemo_lobes.adaptation`."""

from __future__ import annotations

import pytest
import torch

from qieemo_lobes.adaptation import AdaptationError, adapted, input_statistics
from qieemo_lobes.qieemo import QieemoHead, length_mask

N_BLOCKS, DIM = 3, 6


def make_head(**kwargs) -> QieemoHead:
    torch.manual_seed(0)
    options = dict(
        input_dim=DIM, ppg_dim=DIM, n_classes=4, n_encoder_blocks=N_BLOCKS, blocks=[2, 3],
        d_model=16, nhead=2, d_ffn=16,
    )  # fmt: skip
    return QieemoHead(**{**options, **kwargs}).eval()


def make_batch(n: int = 3, time: int = 12, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randn(N_BLOCKS, n, time, DIM, generator=generator) * 2 + 0.5
    ppg = torch.randn(n, time, DIM, generator=generator) - 1
    lengths = torch.linspace(1.0, 0.5, n)
    return blocks, ppg, lengths


def test_statistics_are_those_of_the_valid_frames_only():
    head = make_head(use_cma=True)
    blocks, ppg, lengths = make_batch()
    blocks[:, 2, 6:] = 1e3  # padding of the shortest clip: must not count
    ppg[2, 6:] = -1e3
    stats = input_statistics(head, [(blocks, ppg, lengths)])

    valid = length_mask(lengths, blocks.shape[2])
    read = blocks[1:].permute(1, 2, 0, 3)[valid].flatten(1)  # blocks 2 and 3, side by side
    assert stats.n_clips == 3 and stats.n_frames == int(valid.sum()) == 12 + 9 + 6
    assert torch.allclose(stats.block_mean, read.mean(0), atol=1e-5)
    assert torch.allclose(stats.block_var, read.var(0, unbiased=False), atol=1e-4)
    assert torch.allclose(stats.ppg_mean, ppg[valid].mean(0), atol=1e-5)
    assert torch.allclose(stats.ppg_var, ppg[valid].var(0, unbiased=False), atol=1e-4)

    # One clip at a time (no padding at all): the same statistics.
    one_by_one = [
        (blocks[:, i : i + 1, : int(n)], ppg[i : i + 1, : int(n)], torch.ones(1))
        for i, n in enumerate(valid.sum(1))
    ]
    again = input_statistics(head, one_by_one)
    assert torch.allclose(again.block_mean, stats.block_mean, atol=1e-5)
    assert torch.allclose(again.block_var, stats.block_var, atol=1e-4)


def test_adapted_head_undoes_a_per_feature_shift_of_the_domain():
    """A domain whose features are those of another, scaled and offset per feature (another
    microphone, another language's average), gets the same logits once each is adapted to
    its own statistics; with the training statistics it does not."""
    head = make_head(use_cma=True)
    blocks, ppg, lengths = make_batch(n=4)
    scale, offset = torch.rand(N_BLOCKS, 1, 1, DIM) + 0.5, torch.randn(N_BLOCKS, 1, 1, DIM) * 3
    shifted_blocks = blocks * scale + offset
    shifted_ppg = ppg * scale[-1, 0] + offset[-1, 0]
    with torch.inference_mode():
        unadapted = head(shifted_blocks, shifted_ppg, lengths)
        with adapted(head, input_statistics(head, [(blocks, ppg, lengths)])):
            reference = head(blocks, ppg, lengths)
        shifted_stats = input_statistics(head, [(shifted_blocks, shifted_ppg, lengths)])
        with adapted(head, shifted_stats):
            recovered = head(shifted_blocks, shifted_ppg, lengths)
    assert torch.allclose(recovered, reference, atol=1e-4)
    assert not torch.allclose(unadapted, reference, atol=1e-2)


def test_training_statistics_come_back_after_the_block_even_on_error():
    head = make_head()
    before = head.block_norm.running_mean.clone(), head.block_norm.running_var.clone()
    stats = input_statistics(head, [make_batch()[:2] + (torch.ones(3),)])
    with pytest.raises(RuntimeError, match="inside"):
        with adapted(head, stats):
            assert torch.equal(head.block_norm.running_var, stats.block_var)
            raise RuntimeError("inside")
    assert torch.equal(head.block_norm.running_mean, before[0])
    assert torch.equal(head.block_norm.running_var, before[1])
    assert not head.training  # input_statistics leaves the mode as it found it


def test_what_cannot_be_adapted_is_refused():
    with pytest.raises(AdaptationError, match="no input standardisation"):
        input_statistics(make_head(input_norm=False), [make_batch()])
    with pytest.raises(AdaptationError, match="no audio frame"):
        input_statistics(make_head(), [])
    stats = input_statistics(make_head(), [make_batch()])
    with pytest.raises(AdaptationError, match="another head"):
        with adapted(make_head(blocks=[3]), stats):
            pass
