"""The Qieemo emotion head: multi-block fusion, cross-modal attention, pooling, classifier.

Qieemo (arXiv 2503.22687) reads emotion from a frozen, pretrained ASR encoder. Its intermediate
blocks carry the acoustic (emotion) information and its final output, the phonetic posteriorgram
(PPG), carries the text. The stage-2 model trained on top of the encoder is built here:

1. :class:`MultiBlockFusion` (MMF, :mod:`qieemo_lobes.multi_block_fusion`) weights the chosen encoder blocks, stacks them as channels and
   merges them with a 2-D convolution into one emotion feature sequence.
2. :class:`CrossModalAttention` (CMA, :mod:`qieemo_lobes.cross_modal_attention`) lets the emotion features (queries) attend to the PPG
   (keys and values).
3. Pooling over time (masked mean, or SpeechBrain's attentive statistics pooling from ECAPA-TDNN).
4. A linear or small MLP classifier returning logits.

:class:`QieemoHead` assembles the four for HyperPyYAML and implements the ablations
``use_mmf=False`` (the last encoder block alone, projected) and ``use_cma=False`` (no PPG).

Encoder convention: an encoder returns ``(blocks, ppg)`` with ``blocks`` of shape
``(n_blocks, batch, time, dim)`` holding every block's output (block ``k``, 1-based, is
``blocks[k - 1]``) and ``ppg`` of shape ``(batch, time, ppg_dim)``. ``lengths`` are SpeechBrain
relative lengths in [0, 1]; frame ``t`` of an utterance is valid when ``t < round(length * time)``.

Authors
 * qieemo project
"""

from __future__ import annotations

import torch
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from torch import nn

from qieemo_lobes.cross_modal_attention import CrossModalAttention
from qieemo_lobes.encoders import length_mask
from qieemo_lobes.multi_block_fusion import MultiBlockFusion

__all__ = [
    "length_mask",
    "MultiBlockFusion",
    "CrossModalAttention",
    "MeanPooling",
    "QieemoHead",
]


class MeanPooling(nn.Module):
    """Mean over the valid frames of each utterance.

    SpeechBrain's ``StatisticsPooling(return_std=False)`` computes the same mean but loops over
    the utterances in Python and adds random noise to the mean even in eval mode, which would make
    logits irreproducible; this masked mean is vectorised and deterministic.

    Example
    -------
    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> MeanPooling()(x, torch.tensor([2 / 3]))
    tensor([[2.]])
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pools ``x`` of shape ``(batch, time, dim)`` to ``(batch, dim)``.

        Arguments
        ---------
        x : torch.Tensor
            Frame features, shape ``(batch, time, dim)``.
        lengths : torch.Tensor or None
            Relative lengths, shape ``(batch,)``.

        Returns
        -------
        pooled : torch.Tensor
            Shape ``(batch, dim)``.
        """
        if lengths is None:
            return x.mean(dim=1)
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1)
        return x.masked_fill(~mask, 0.0).sum(dim=1) / mask.sum(dim=1)


class QieemoHead(nn.Module):
    """The Qieemo stage-2 model: MMF -> CMA -> pooling -> classifier, returning logits.

    ``forward(blocks, ppg, lengths)`` takes the frozen encoder's outputs: ``blocks`` with every
    block ``(n_encoder_blocks, batch, time, input_dim)`` and ``ppg`` ``(batch, time, ppg_dim)``.
    The batch is first cut to its longest utterance, so frames padded in every utterance cost
    nothing. Padded frames never change the logits in eval mode (in training mode only through
    the BatchNorm statistics of the attentive pooling, as in ECAPA-TDNN).

    Input standardisation (``input_norm=True``): every feature of the blocks the head reads and of
    the PPG is standardised over the valid frames with ``nn.BatchNorm1d(affine=False,
    momentum=None)``: batch statistics in training, the cumulative average of all training batches
    in eval (the frozen encoder's outputs do not drift, so that average is the training set's
    statistics). Whisper's features differ several-fold in scale and offset between dimensions;
    standardised, EmoDB leave-one-speaker-out UA rose by about 3 points (84.8 to 87.6, a fixed
    training schedule in a scratch script outside the recipe, not a committed benchmark). Across
    corpora it did not help: training-set statistics do not transfer to another corpus (see the
    default model's card).

    Ablations: ``use_mmf=False`` replaces MMF by the last encoder block alone, projected to
    ``d_model`` (LayerNorm, non-linearity, linear); ``use_cma=False`` pools the emotion features
    directly and never reads the PPG.

    Arguments
    ---------
    input_dim : int
        Feature size of the encoder blocks.
    ppg_dim : int
        Feature size of the PPG.
    n_classes : int
        Number of emotion classes.
    blocks : list of int
        1-based ids of the encoder blocks fused by MMF.
    n_encoder_blocks : int
        Number of blocks the encoder returns (the last one is used when ``use_mmf=False``).
    d_model : int
        Size of the emotion features and of the attention.
    use_mmf : bool
        Fuse ``blocks`` with MMF; if False, use the last encoder block alone.
    use_cma : bool
        Let the emotion features attend to the PPG; if False, the PPG is ignored.
    cma_layers : int
        Number of cross-attention layers.
    nhead : int
        Number of attention heads.
    d_ffn : int
        Hidden size of the CMA feed-forward networks.
    pooling : str
        ``"attentive"`` (attentive statistics pooling, mean and std: ``2 * d_model`` features) or
        ``"mean"`` (masked mean: ``d_model`` features).
    attention_channels : int
        Hidden size of the attentive pooling.
    classifier_hidden : int
        Hidden size of a one-hidden-layer MLP classifier; 0 gives a linear classifier.
    dropout : float
        Dropout used throughout (MMF, CMA, before the classifier).
    kernel_size : int or tuple of int
        Kernel of the MMF convolution over ``(time, dim)``.
    activation : type
        Class of the non-linearity used throughout.
    frame_stride : int
        Average the encoder frames in non-overlapping windows of this many frames first (2: from
        Whisper's 50 to 25 frames a second), halving the head's cost; padded frames are excluded
        from every average.
    input_norm : bool
        Standardise the blocks read and the PPG per feature (see above).
    block_tuner : nn.Module, optional
        Applied to ``blocks`` first, ``block_tuner(blocks, lengths) -> blocks``: e.g.
        :class:`~qieemo_lobes.whisper_torch.WhisperBlockTuner`, trainable copies of encoder blocks
        recomputed from the (cached) block below them. Its weights live in the head's state dict.
        The PPG is not recomputed.

    Example
    -------
    >>> head = QieemoHead(input_dim=16, ppg_dim=10, n_classes=4, blocks=[2, 3],
    ...                   n_encoder_blocks=3, d_model=8, nhead=2, d_ffn=16)
    >>> blocks, ppg = torch.randn(3, 5, 20, 16), torch.randn(5, 20, 10)
    >>> head(blocks, ppg, torch.tensor([1.0, 0.9, 0.5, 0.5, 0.1])).shape
    torch.Size([5, 4])
    """

    def __init__(
        self,
        input_dim: int,
        ppg_dim: int,
        n_classes: int,
        blocks: list[int],
        n_encoder_blocks: int,
        d_model: int = 256,
        use_mmf: bool = True,
        use_cma: bool = True,
        cma_layers: int = 1,
        nhead: int = 4,
        d_ffn: int = 512,
        pooling: str = "attentive",
        attention_channels: int = 128,
        classifier_hidden: int = 0,
        dropout: float = 0.1,
        kernel_size: int | tuple[int, int] = (3, 3),
        activation: type[nn.Module] = nn.GELU,
        frame_stride: int = 1,
        input_norm: bool = True,
        block_tuner: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = frame_stride
        if max(blocks) > n_encoder_blocks:
            raise ValueError(f"blocks {list(blocks)} exceed n_encoder_blocks={n_encoder_blocks}")
        if pooling not in ("attentive", "mean"):
            raise ValueError(f'pooling must be "attentive" or "mean", got {pooling!r}')
        self.n_encoder_blocks = n_encoder_blocks
        self.use_mmf = use_mmf
        self.use_cma = use_cma
        self.pooling = pooling
        self.block_tuner = block_tuner

        # 0. Per-feature standardisation of what the head reads. Written here, not with
        # SpeechBrain's BatchNorm1d or InputNormalization: both would count padded frames (or
        # keep their statistics outside the module's state_dict, hence outside head.ckpt).
        read = list(blocks) if use_mmf else [n_encoder_blocks]
        self.register_buffer("read_index", torch.tensor(read) - 1, persistent=False)
        self.block_norm = self.ppg_norm = None
        if input_norm:
            self.block_norm = nn.BatchNorm1d(len(read) * input_dim, affine=False, momentum=None)
            if use_cma:
                self.ppg_norm = nn.BatchNorm1d(ppg_dim, affine=False, momentum=None)

        # 1. Emotion features (B, T, d_model).
        if use_mmf:
            self.mmf = MultiBlockFusion(
                input_dim, d_model, blocks, kernel_size, dropout=dropout, activation=activation
            )
        else:
            self.last_block = nn.Sequential(
                nn.LayerNorm(input_dim),
                activation(),
                nn.Dropout(dropout),
                nn.Linear(input_dim, d_model),
            )

        # 2. Cross-modal attention to the PPG.
        if use_cma:
            self.cma = CrossModalAttention(
                d_model, ppg_dim, d_model, nhead, cma_layers, d_ffn, dropout, activation
            )

        # 3. Pooling over time.
        if pooling == "attentive":
            self.pool = AttentiveStatisticsPooling(d_model, attention_channels=attention_channels)
            pooled_dim = 2 * d_model
        else:
            self.pool = MeanPooling()
            pooled_dim = d_model

        # 4. Classifier.
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if classifier_hidden > 0:
            layers += [
                nn.Linear(pooled_dim, classifier_hidden),
                activation(),
                nn.Dropout(dropout),
            ]
            pooled_dim = classifier_hidden
        layers.append(nn.Linear(pooled_dim, n_classes))
        self.classifier = nn.Sequential(*layers)

    def block_weights(self) -> torch.Tensor | None:
        """Returns MMF's softmax block weights, or ``None`` when ``use_mmf=False``."""
        return self.mmf.block_weights() if self.use_mmf else None

    def _standardize(self, read, ppg, lengths):
        """Standardise the valid frames of the blocks read and of the PPG (``input_norm``)."""
        valid = length_mask(lengths, read.shape[2])  # (B, T)
        frames = read.permute(1, 2, 0, 3)[valid]  # (N, C, D): the valid frames only
        normed = torch.zeros_like(read.permute(1, 2, 0, 3))
        normed[valid] = self.block_norm(frames.flatten(1)).view_as(frames)
        read = normed.permute(2, 0, 1, 3)
        if self.ppg_norm is not None:
            normed_ppg = torch.zeros_like(ppg)
            normed_ppg[valid] = self.ppg_norm(ppg[valid])
            ppg = normed_ppg
        return read, ppg

    def _average_frames(self, x, n_frames, time_dim):
        """Mean of every ``frame_stride`` valid frames of ``x`` along ``time_dim`` (1 or 2)."""
        stride, time = self.frame_stride, x.shape[time_dim]
        pad = -time % stride
        valid = nn.functional.pad(length_mask(n_frames.float() / time, time), (0, pad))  # (B, T)
        counts = valid.unflatten(1, (-1, stride)).sum(-1).clamp(min=1).to(x.dtype)
        if time_dim == 2:  # blocks (C, B, T, D)
            valid, counts = valid[None], counts[None]
        x = nn.functional.pad(x, (0, 0, 0, pad))
        # torch.where, not a product: padded frames may hold NaN, and NaN * 0 is NaN.
        x = torch.where(valid.unsqueeze(-1), x, 0.0)
        return x.unflatten(time_dim, (-1, stride)).sum(time_dim + 1) / counts.unsqueeze(-1)

    def forward(
        self, blocks: torch.Tensor, ppg: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Computes the emotion logits.

        Arguments
        ---------
        blocks : torch.Tensor
            All encoder block outputs, shape ``(n_encoder_blocks, batch, time, input_dim)``.
        ppg : torch.Tensor
            Final encoder output, shape ``(batch, time, ppg_dim)``.
        lengths : torch.Tensor or None
            Relative lengths, shape ``(batch,)``.

        Returns
        -------
        logits : torch.Tensor
            Shape ``(batch, n_classes)``.
        """
        n_blocks, batch, time, _ = blocks.shape
        if n_blocks != self.n_encoder_blocks:
            raise ValueError(
                f"QieemoHead expects {self.n_encoder_blocks} encoder blocks, got {n_blocks}"
            )
        if ppg.shape[:2] != (batch, time):
            raise ValueError(f"ppg shape {tuple(ppg.shape)} does not match blocks {blocks.shape}")
        if lengths is None:
            lengths = torch.ones(batch, device=blocks.device)

        # Cut the frames padded in every utterance; relative lengths become n_frames / time.
        # Only the blocks the head reads go further (and the PPG only to CMA), in its dtype.
        n_frames = torch.round(lengths.float() * time).long().clamp(1, time)
        time = int(n_frames.max())
        dtype = self.classifier[-1].weight.dtype
        blocks = blocks[:, :, :time]
        if self.block_tuner is not None:
            blocks = self.block_tuner(blocks, n_frames.float() / time)
        read = blocks.index_select(0, self.read_index).to(dtype)  # (C, B, T, D)
        ppg = ppg[:, :time].to(dtype) if self.use_cma else None
        if self.frame_stride > 1:
            read = self._average_frames(read, n_frames, time_dim=2)
            if ppg is not None:
                ppg = self._average_frames(ppg, n_frames, time_dim=1)
            n_frames = (n_frames + self.frame_stride - 1) // self.frame_stride
            time = int(n_frames.max())
        lengths = n_frames.float() / time
        if self.block_norm is not None:
            read, ppg = self._standardize(read, ppg, lengths)

        x = self.mmf.fuse(read, lengths) if self.use_mmf else self.last_block(read[0])
        if self.use_cma:
            x = self.cma(x, ppg, lengths)

        if self.pooling == "attentive":
            # Padded frames are zeroed (0 * NaN garbage would survive the attention mask).
            # AttentiveStatisticsPooling keeps frames with t < lengths * time (no rounding), so
            # pass half a frame less: float error in n / time * time cannot admit a padded frame.
            x = x.masked_fill(~length_mask(lengths, time).unsqueeze(-1), 0.0)
            pooled = self.pool(x.transpose(1, 2), (n_frames.float() - 0.5) / time).squeeze(-1)
        else:
            pooled = self.pool(x, lengths)
        return self.classifier(pooled)
