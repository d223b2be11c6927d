"""The two graphs :mod:`qieemo_lobes.export_onnx` exports: Whisper's encoder and the Qieemo head.

Both are the model's own modules and weights, rearranged for ``torch.onnx.export`` (torch's
``torch.export``-based exporter) with a dynamic batch and time axis:

- :class:`EncoderGraph`: ``(mels, mel_frames) -> blocks[, ppg]``. Whisper's encoder
  (:class:`~qieemo_lobes.whisper_torch.AudioEncoder`) run up to the highest block that the head
  reads, returning only those blocks (and the final layer norm's output, the PPG, only for a head
  with cross-modal attention, which then needs every block). The ``fit`` window's masking is
  always applied (mel frames past an utterance's end zeroed before the second convolution, never
  attended to); with every utterance at full length it changes nothing, so one graph serves both
  windows.
- :class:`HeadGraph`: ``(blocks, lengths[, ppg]) -> logits``. :class:`~qieemo_lobes.qieemo.QieemoHead`
  in eval mode, written without data-dependent shapes: the head cuts the frames padded in every
  utterance (``int(n_frames.max())``), which the exporter cannot trace; here the longest
  utterance has relative length 1 (as ``batch_pad_right`` and the ONNX path give), so that cut
  is the identity and the time axis comes from the input's shape. Input standardisation
  (``input_norm``) uses the running statistics as eval-mode ``BatchNorm1d`` does, on the valid
  frames; a ``WhisperBlockTuner`` recomputes its blocks from the block below them.

Example
-------
>>> from qieemo_lobes.qieemo import QieemoHead
>>> head = QieemoHead(input_dim=8, ppg_dim=8, n_classes=3, blocks=[2, 3], n_encoder_blocks=4,
...                   d_model=8, nhead=2, d_ffn=16, use_cma=False, frame_stride=2).eval()
>>> graph = HeadGraph(head, encoder_blocks=[2, 3])
>>> blocks, lengths = torch.randn(4, 2, 9, 8), torch.tensor([1.0, 0.5])
>>> expected = head(blocks, torch.zeros(2, 9, 8), lengths)
>>> bool(torch.allclose(graph(blocks[1:3], lengths), expected, atol=1e-6))
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qieemo_lobes.encoders import length_mask
from qieemo_lobes.qieemo import QieemoHead
from qieemo_lobes.whisper_torch import AudioEncoder

__all__ = ["EncoderGraph", "HeadGraph", "head_reads"]


def head_reads(head: QieemoHead) -> tuple[list[int], bool]:
    """The encoder outputs a head needs: (1-based block ids, sorted; whether it reads the PPG).

    The blocks it reads (MMF's, or the last one without MMF), less those a block tuner
    recomputes, plus the block the tuner starts from.

    Example
    -------
    >>> head = QieemoHead(input_dim=8, ppg_dim=8, n_classes=2, blocks=[3, 2], n_encoder_blocks=6,
    ...                   d_model=8, nhead=2, d_ffn=16, use_cma=False)
    >>> head_reads(head)
    ([2, 3], False)
    """
    read = set((head.read_index + 1).tolist())
    tuned = _tuned_ids(head)
    needed = read - set(tuned)
    if tuned:
        needed.add(tuned[0] - 1)
    return sorted(needed), bool(head.use_cma)


def _tuned_ids(head: QieemoHead) -> list[int]:
    tuner = head.block_tuner
    if tuner is None or int(getattr(tuner, "n_blocks", 0)) == 0:
        return []
    return list(range(tuner.first_block, tuner.first_block + tuner.n_blocks))


class EncoderGraph(nn.Module):
    """Whisper's encoder up to the head's highest block: ``(mels, mel_frames) -> blocks[, ppg]``.

    Arguments
    ---------
    encoder : AudioEncoder
        The encoder (weights of :class:`~qieemo_lobes.whisper_torch.TorchWhisperBlocks`).
    blocks : list of int
        1-based ids of the blocks to return, in that order.
    ppg : bool
        Also return the PPG (then every block runs).
    """

    def __init__(self, encoder: AudioEncoder, blocks: list[int], ppg: bool):
        super().__init__()
        self.encoder = encoder
        self.block_ids = list(blocks)
        self.ppg = ppg
        self.n_run = len(encoder.blocks) if ppg else max(blocks)

    def forward(self, mels: Tensor, mel_frames: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        enc = self.encoder
        x = F.gelu(enc.conv1(mels))
        frames = torch.arange(x.shape[-1], device=mels.device)[None, :] < mel_frames[:, None]
        x = x * frames.unsqueeze(1).to(x.dtype)
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.positional_embedding[: x.shape[1]]
        valid = (
            torch.arange(x.shape[1], device=mels.device)[None, :] < ((mel_frames + 1) // 2)[:, None]
        )
        mask = valid[:, None, None, :]  # the keys each query may attend to
        outputs = {}
        for block_id, block in enumerate(enc.blocks[: self.n_run], start=1):
            x = block(x, mask)
            outputs[block_id] = x
        blocks = torch.stack([outputs[b] for b in self.block_ids])
        if self.ppg:
            return blocks, enc.ln_post(x)
        return blocks


class HeadGraph(nn.Module):
    """The Qieemo head on the encoder's outputs: ``(blocks, lengths[, ppg]) -> logits``.

    Arguments
    ---------
    head : QieemoHead
        The trained head (put in eval mode here).
    encoder_blocks : list of int
        1-based ids of the blocks in the ``blocks`` input, in that order (:func:`head_reads`).
    """

    def __init__(self, head: QieemoHead, encoder_blocks: list[int]):
        super().__init__()
        self.head = head.eval()
        self.position = {b: i for i, b in enumerate(encoder_blocks)}
        self.read_ids = (head.read_index + 1).tolist()
        self.tuned = _tuned_ids(head)

    def forward(self, blocks: Tensor, lengths: Tensor, ppg: Tensor | None = None) -> Tensor:
        h = self.head
        time = blocks.shape[2]
        n_frames = torch.round(lengths.float() * time).long().clamp(1, time)
        tuned = self._tune(blocks, n_frames, time) if self.tuned else {}
        read = torch.stack(
            [tuned[b] if b in tuned else blocks[self.position[b]] for b in self.read_ids]
        ).float()
        ppg = ppg.float() if h.use_cma and ppg is not None else None
        if h.frame_stride > 1:
            read = h._average_frames(read, n_frames, time_dim=2)
            if ppg is not None:
                ppg = h._average_frames(ppg, n_frames, time_dim=1)
            n_frames = (n_frames + h.frame_stride - 1) // h.frame_stride
            time = read.shape[2]
        lengths = n_frames.float() / time
        if h.block_norm is not None:
            read, ppg = self._standardize(read, ppg, lengths)
        x = h.mmf.fuse(read, lengths) if h.use_mmf else h.last_block(read[0])
        if h.use_cma:
            x = h.cma(x, ppg, lengths)
        if h.pooling == "attentive":
            x = x.masked_fill(~length_mask(lengths, time).unsqueeze(-1), 0.0)
            pooled = _attentive_pool(h.pool, x.transpose(1, 2), (n_frames.float() - 0.5) / time)
        else:
            pooled = h.pool(x, lengths)
        return h.classifier(pooled)

    def _tune(self, blocks: Tensor, n_frames: Tensor, time: int) -> dict[int, Tensor]:
        """The tuner's blocks, from the block below them (``WhisperBlockTuner.forward``)."""
        mask = length_mask(n_frames.float() / time, time)[:, None, None, :]
        x = blocks[self.position[self.tuned[0] - 1]].float()
        out = {}
        for block_id, block in zip(self.tuned, self.head.block_tuner.blocks, strict=True):
            x = block(x, mask)
            out[block_id] = x
        return out

    def _standardize(
        self, read: Tensor, ppg: Tensor | None, lengths: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Eval-mode ``input_norm`` on the valid frames (padded frames zero, as the head's)."""
        h = self.head
        valid = length_mask(lengths, read.shape[2])  # (B, T)
        n_read, dim = read.shape[0], read.shape[3]
        read = torch.where(
            valid[None, :, :, None], _normalise(h.block_norm, read, (n_read, 1, 1, dim)), 0.0
        )
        if h.ppg_norm is not None and ppg is not None:
            ppg = torch.where(valid[:, :, None], _normalise(h.ppg_norm, ppg, (-1,)), 0.0)
        return read, ppg


def _attentive_pool(pool: nn.Module, x: Tensor, lengths: Tensor) -> Tensor:
    """SpeechBrain's ``AttentiveStatisticsPooling.forward`` ``(B, C, L) -> (B, 2C)``.

    The same operations; only its mask is built from the input's shape (SpeechBrain's
    ``length_to_mask`` takes ``len(lengths)``, which the exporter fixes to the example's batch).
    """
    frames = x.shape[-1]

    def statistics(weights: Tensor) -> tuple[Tensor, Tensor]:
        mean = (weights * x).sum(2)
        var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(2)
        return mean, torch.sqrt(var.clamp(pool.eps))

    positions = torch.arange(frames, device=x.device, dtype=lengths.dtype)[None, :]
    mask = (positions < (lengths * frames)[:, None]).to(x.dtype).unsqueeze(1)  # (B, 1, L)
    attn = x
    if pool.global_context:
        mean, std = statistics(mask / mask.sum(dim=2, keepdim=True))
        attn = torch.cat(
            [x, mean.unsqueeze(2).expand(-1, -1, frames), std.unsqueeze(2).expand(-1, -1, frames)],
            dim=1,
        )
    attn = pool.conv(pool.tanh(pool.tdnn(attn)))
    attn = F.softmax(attn.masked_fill(mask == 0, float("-inf")), dim=2)
    return torch.cat(statistics(attn), dim=1)


def _normalise(norm: nn.BatchNorm1d, x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``(x - running_mean) / sqrt(running_var + eps)``, the statistics viewed as ``shape``."""
    mean = norm.running_mean.view(shape)
    var = norm.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + norm.eps)
