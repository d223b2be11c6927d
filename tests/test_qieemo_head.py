"""Tests of the Qieemo head (qieemo_lobes.qieemo): shapes, masking, ablations, YAML, learning."""

from __future__ import annotations

import math

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from qieemo_lobes.qieemo import CrossModalAttention, MeanPooling, QieemoHead, length_mask

N_BLOCKS, BATCH, TIME, DIM, PPG_DIM, N_CLASSES = 4, 5, 24, 16, 10, 3
# Relative lengths: 24, 18, 12, 7 and 3 valid frames.
LENGTHS = torch.tensor([1.0, 0.75, 0.5, 0.3, 0.125])
ABLATIONS = [(True, True), (True, False), (False, True), (False, False)]


def make_head(**kwargs) -> QieemoHead:
    torch.manual_seed(0)
    config = dict(
        input_dim=DIM,
        ppg_dim=PPG_DIM,
        n_classes=N_CLASSES,
        blocks=[1, 3],
        n_encoder_blocks=N_BLOCKS,
        d_model=16,
        nhead=2,
        d_ffn=32,
        attention_channels=8,
    )
    config.update(kwargs)
    return QieemoHead(**config)


def make_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randn(N_BLOCKS, BATCH, TIME, DIM, generator=gen)
    ppg = torch.randn(BATCH, TIME, PPG_DIM, generator=gen)
    return blocks, ppg


def n_valid(lengths: torch.Tensor, time: int) -> list[int]:
    return [int(n) for n in length_mask(lengths, time).sum(1)]


@pytest.mark.parametrize("pooling", ["attentive", "mean"])
@pytest.mark.parametrize(("use_mmf", "use_cma"), ABLATIONS)
def test_shapes(use_mmf: bool, use_cma: bool, pooling: str) -> None:
    head = make_head(use_mmf=use_mmf, use_cma=use_cma, pooling=pooling, classifier_hidden=8)
    blocks, ppg = make_inputs()
    logits = head(blocks, ppg, LENGTHS)
    assert logits.shape == (BATCH, N_CLASSES)
    assert torch.isfinite(logits).all()
    assert head(blocks, ppg).shape == (BATCH, N_CLASSES)  # lengths default to full
    assert hasattr(head, "mmf") == use_mmf
    assert hasattr(head, "cma") == use_cma


def test_block_weights_normalised_and_trained() -> None:
    head = make_head(blocks=[1, 2, 4])
    weights = head.block_weights()
    assert torch.allclose(weights, torch.full((3,), 1 / 3))
    blocks, ppg = make_inputs()
    targets = torch.tensor([0, 1, 2, 0, 1])
    loss = torch.nn.functional.cross_entropy(head(blocks, ppg, LENGTHS), targets)
    loss.backward()
    grad = head.mmf.block_logits.grad
    assert grad is not None and grad.abs().sum() > 0
    torch.optim.SGD(head.parameters(), lr=1.0).step()
    weights = head.block_weights()
    assert not torch.allclose(weights, torch.full((3,), 1 / 3))
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert make_head(use_mmf=False).block_weights() is None


@pytest.mark.parametrize("frame_stride", [1, 2, 3])
@pytest.mark.parametrize("pooling", ["attentive", "mean"])
@pytest.mark.parametrize(("use_mmf", "use_cma"), ABLATIONS)
def test_padding_invariance(use_mmf: bool, use_cma: bool, pooling: str, frame_stride: int) -> None:
    head = make_head(
        use_mmf=use_mmf, use_cma=use_cma, pooling=pooling, cma_layers=2, frame_stride=frame_stride
    ).eval()
    blocks, ppg = make_inputs()
    with torch.no_grad():
        reference = head(blocks, ppg, LENGTHS)
        # Frames beyond each utterance's length: large garbage, then NaN.
        for fill in ("garbage", "nan"):
            blocks2, ppg2 = blocks.clone(), ppg.clone()
            for i, n in enumerate(n_valid(LENGTHS, TIME)):
                if fill == "nan":
                    blocks2[:, i, n:], ppg2[i, n:] = math.nan, math.nan
                else:
                    blocks2[:, i, n:] = 50 * torch.randn_like(blocks2[:, i, n:]) + 7
                    ppg2[i, n:] = 50 * torch.randn_like(ppg2[i, n:]) - 3
            torch.testing.assert_close(head(blocks2, ppg2, LENGTHS), reference)
        # A valid frame (the last one of utterance 3, next to its padding) does change the logits.
        blocks2, ppg2 = blocks.clone(), ppg.clone()
        last = n_valid(LENGTHS, TIME)[3] - 1
        blocks2[:, 3, last] += 5 * torch.randn(N_BLOCKS, DIM)
        ppg2[3, last] += 5 * torch.randn(PPG_DIM)
        changed = (head(blocks2, ppg2, LENGTHS) - reference).abs().amax(dim=1)
    assert changed[3] > 1e-4
    assert torch.all(changed[[0, 1, 2, 4]] < 1e-5)


@pytest.mark.parametrize("frame_stride", [1, 2])
@pytest.mark.parametrize("pooling", ["attentive", "mean"])
@pytest.mark.parametrize(("use_mmf", "use_cma"), ABLATIONS)
def test_batch_equals_single_utterances(
    use_mmf: bool, use_cma: bool, pooling: str, frame_stride: int
) -> None:
    """Each utterance of a padded batch gets the logits it gets alone, unpadded."""
    head = make_head(
        use_mmf=use_mmf, use_cma=use_cma, pooling=pooling, frame_stride=frame_stride
    ).eval()
    blocks, ppg = make_inputs()
    lengths = LENGTHS * 0.8  # no utterance fills the batch: exercises the cut to the longest
    with torch.no_grad():
        batch_logits = head(blocks, ppg, lengths)
        for i, n in enumerate(n_valid(lengths, TIME)):
            alone = head(blocks[:, i : i + 1, :n], ppg[i : i + 1, :n], torch.ones(1))
            torch.testing.assert_close(batch_logits[i : i + 1], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_cma", [True, False])
def test_cma_reads_ppg(use_cma: bool) -> None:
    head = make_head(use_cma=use_cma).eval()
    if use_cma:  # open the zero-initialised gates, as training does
        with torch.no_grad():
            head.cma.attn_gate.fill_(1.0)
            head.cma.ffn_gate.fill_(1.0)
    blocks, ppg = make_inputs()
    with torch.no_grad():
        delta = head(blocks, torch.randn_like(ppg), LENGTHS) - head(blocks, ppg, LENGTHS)
    if use_cma:
        assert delta.abs().amax(dim=1).min() > 1e-4  # every utterance
    else:
        assert delta.abs().max() == 0


def test_cma_starts_as_identity_and_learns_its_gates() -> None:
    """Zero gates: the PPG cannot change the output until training opens them."""
    torch.manual_seed(0)
    cma = CrossModalAttention(query_dim=8, kv_dim=6, d_model=8, nhead=2, d_ffn=16)
    query, ppg = torch.randn(3, 10, 8), torch.randn(3, 12, 6)
    assert torch.equal(cma(query, ppg), query)
    cma(query, ppg).square().sum().backward()
    assert cma.attn_gate.grad.abs().item() > 0 and cma.ffn_gate.grad.abs().item() > 0


@pytest.mark.parametrize("use_mmf", [True, False])
def test_block_selection(use_mmf: bool) -> None:
    """MMF reads only its blocks [1, 3]; without MMF only the last block (4) is read."""
    head = make_head(use_mmf=use_mmf).eval()
    blocks, ppg = make_inputs()
    read = {1, 3} if use_mmf else {N_BLOCKS}
    with torch.no_grad():
        reference = head(blocks, ppg, LENGTHS)
        for block in range(1, N_BLOCKS + 1):
            changed = blocks.clone()
            changed[block - 1] = torch.randn_like(changed[block - 1])
            delta = (head(changed, ppg, LENGTHS) - reference).abs().max()
            assert (delta > 1e-4) == (block in read), f"block {block}: {delta}"


def test_mean_pooling_matches_valid_frames() -> None:
    x = torch.randn(BATCH, TIME, 6)
    pooled = MeanPooling()(x, LENGTHS)
    for i, n in enumerate(n_valid(LENGTHS, TIME)):
        torch.testing.assert_close(pooled[i], x[i, :n].mean(0))


def test_bad_configuration_and_inputs() -> None:
    with pytest.raises(ValueError, match="n_encoder_blocks"):
        make_head(blocks=[2, 5])
    with pytest.raises(ValueError, match="pooling"):
        make_head(pooling="max")
    with pytest.raises(ValueError, match="1-based"):
        make_head(blocks=[0, 2])
    with pytest.raises(ValueError, match="odd"):
        make_head(kernel_size=(2, 3))
    blocks, ppg = make_inputs()
    with pytest.raises(ValueError, match="expects 4 encoder blocks, got 3"):
        make_head()(blocks[:3], ppg, LENGTHS)
    with pytest.raises(ValueError, match="ppg shape"):
        make_head()(blocks, ppg[:, :10], LENGTHS)


def test_hyperpyyaml() -> None:
    yaml = """
    n_blocks: 4
    embedding_model: !new:qieemo_lobes.qieemo.QieemoHead
        input_dim: 16
        ppg_dim: 10
        n_classes: 3
        blocks: [2, 4]
        n_encoder_blocks: !ref <n_blocks>
        d_model: 16
        nhead: 2
        d_ffn: 32
        cma_layers: 2
        pooling: mean
        classifier_hidden: 8
        kernel_size: [3, 5]
        activation: !name:torch.nn.ReLU
    """
    head = load_hyperpyyaml(yaml)["embedding_model"]
    assert isinstance(head, QieemoHead)
    assert head.mmf.blocks == [2, 4]
    assert head.mmf.conv.kernel_size == (3, 5)
    assert len(head.cma.attn) == 2
    assert isinstance(head.mmf.activation, torch.nn.ReLU)
    blocks, ppg = make_inputs()
    assert head(blocks, ppg, LENGTHS).shape == (BATCH, 3)


# --- Learning: a synthetic task that needs the right block AND the PPG ------------------------

T_LEARN, D_LEARN, P_LEARN = 24, 16, 8


def make_task(n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Label ``2a + b``: ``a`` is a frequency pattern on half the frames of block 2 only (blocks 1,
    3 and 4 carry the same patterns with random, unrelated labels), ``b`` a pattern in the PPG.
    Every frame is buried in unit Gaussian noise; frames beyond the lengths are garbage."""
    a = torch.randint(2, (n,), generator=gen)
    b = torch.randint(2, (n,), generator=gen)
    d = torch.arange(D_LEARN)
    patterns = torch.stack([torch.cos(2 * math.pi * f * d / D_LEARN) for f in (2, 3)])
    block_labels = torch.randint(2, (N_BLOCKS, n), generator=gen)
    block_labels[1] = a
    present = torch.rand(N_BLOCKS, n, T_LEARN, 1, generator=gen) < 0.5
    blocks = torch.randn(N_BLOCKS, n, T_LEARN, D_LEARN, generator=gen)
    blocks += present * patterns[block_labels].unsqueeze(2)
    ppg_patterns = 1.5 * torch.eye(P_LEARN)[:2]
    present = torch.rand(n, T_LEARN, 1, generator=gen) < 0.5
    ppg = torch.randn(n, T_LEARN, P_LEARN, generator=gen) + present * ppg_patterns[b].unsqueeze(1)
    lengths = 0.5 + 0.5 * torch.rand(n, generator=gen)
    for i, n_frames in enumerate(n_valid(lengths, T_LEARN)):
        blocks[:, i, n_frames:] = 10 * torch.randn(N_BLOCKS, T_LEARN - n_frames, D_LEARN)
        ppg[i, n_frames:] = 10 * torch.randn(T_LEARN - n_frames, P_LEARN)
    return blocks, ppg, lengths, 2 * a + b


def train_and_score(**kwargs) -> tuple[float, QieemoHead]:
    gen = torch.Generator().manual_seed(0)
    train, test = make_task(384, gen), make_task(256, gen)
    torch.manual_seed(0)
    head = QieemoHead(
        D_LEARN, P_LEARN, 4, [2, 3, 4], N_BLOCKS, d_model=32, nhead=2, d_ffn=64,
        attention_channels=32, dropout=0.0, **kwargs,
    )  # fmt: skip
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-3)
    for _ in range(150):
        idx = torch.randint(384, (32,), generator=gen)
        logits = head(train[0][:, idx], train[1][idx], train[2][idx])
        loss = torch.nn.functional.cross_entropy(logits, train[3][idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        predictions = head(test[0], test[1], test[2]).argmax(dim=1)
    return (predictions == test[3]).float().mean().item(), head


def test_learns_task_needing_block_and_ppg() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accuracy, head = train_and_score()
        # Chance is 0.25; each ablation can recover only one of the two bits (at most ~0.5).
        no_cma, _ = train_and_score(use_cma=False)
        no_mmf, _ = train_and_score(use_mmf=False)
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.85, accuracy
    assert no_cma < 0.65, no_cma
    assert no_mmf < 0.65, no_mmf
    weights = head.block_weights()
    assert weights.argmax().item() == 0, weights  # block 2, the only informative block


def test_frame_stride_averages_valid_frames_only() -> None:
    head = make_head(frame_stride=2)
    blocks = torch.arange(5.0)[None, None, :, None].expand(N_BLOCKS, 2, 5, 1)
    ppg = torch.arange(5.0)[None, :, None].expand(2, 5, 1)
    n_frames = torch.tensor([5, 3])
    averaged = head._average_frames(blocks, n_frames, time_dim=2)
    averaged_ppg = head._average_frames(ppg, n_frames, time_dim=1)
    assert averaged.shape[2] == averaged_ppg.shape[1] == 3
    assert averaged[0, 0, :, 0].tolist() == [0.5, 2.5, 4.0]  # last window holds one frame
    assert averaged[0, 1, :2, 0].tolist() == [0.5, 2.0]  # frame 3 (padding) is not averaged in
    assert averaged_ppg[1, :2, 0].tolist() == [0.5, 2.0]
