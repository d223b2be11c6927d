"""Cross-modal attention (CMA): the emotion features are the queries, the PPG the keys and values.

The second part of the Qieemo head (:mod:`qieemo_lobes.qieemo`): the encoder's final output
acts as a phonetic posteriorgram (PPG, the text), and CMA lets the fused emotion features read
it. Inputs are ``(batch, time, dim)`` with SpeechBrain relative ``lengths``.

Authors
 * qieemo project
"""

from __future__ import annotations

import torch
from speechbrain.nnet.attention import PositionalwiseFeedForward
from torch import nn

from qieemo_lobes.encoders import length_mask

__all__ = ["CrossModalAttention"]


class CrossModalAttention(nn.Module):
    """Cross-modal attention (CMA): emotion features query the PPG.

    Each layer is a pre-norm transformer decoder layer without self-attention whose two residual
    branches are gated by ``tanh(gate)`` with the gates initialised to zero, as in Flamingo's gated
    cross-attention (Alayrac et al., 2022)::

        x = x + tanh(g_attn) * Dropout(MHA(LayerNorm(x), ppg, ppg))
        x = x + tanh(g_ffn) * Dropout(FFN(LayerNorm(x)))

    At initialisation the layer is the identity, so training starts from the emotion features
    alone and opens the gates only as far as the PPG helps: with a few hundred training
    utterances, an ungated post-norm layer let the PPG swamp the emotion features in some folds.
    Keys and values are projected from ``kv_dim`` by ``nn.MultiheadAttention``'s own
    in-projection; the feed-forward network is SpeechBrain's ``PositionalwiseFeedForward``.
    Padded PPG frames are excluded with ``key_padding_mask``; padded query frames are computed
    but must be masked by whatever pools the output.

    Arguments
    ---------
    query_dim : int
        Size of the emotion features (queries); projected to ``d_model`` when different.
    kv_dim : int
        Size of the PPG frames (keys and values).
    d_model : int
        Attention size, also the size of the output.
    nhead : int
        Number of attention heads.
    num_layers : int
        Number of stacked cross-attention layers.
    d_ffn : int
        Hidden size of the position-wise feed-forward network.
    dropout : float
        Dropout on the attention weights and on both residual branches.
    activation : type
        Class of the feed-forward non-linearity.

    Example
    -------
    >>> cma = CrossModalAttention(query_dim=8, kv_dim=6, d_model=16, nhead=2, num_layers=2,
    ...                           d_ffn=32)
    >>> cma(torch.randn(3, 10, 8), torch.randn(3, 10, 6), torch.tensor([1.0, 0.5, 0.2])).shape
    torch.Size([3, 10, 16])
    """

    def __init__(
        self,
        query_dim: int,
        kv_dim: int,
        d_model: int = 256,
        nhead: int = 4,
        num_layers: int = 1,
        d_ffn: int = 512,
        dropout: float = 0.1,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.query_proj = nn.Identity() if query_dim == d_model else nn.Linear(query_dim, d_model)
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(
                d_model, nhead, dropout=dropout, kdim=kv_dim, vdim=kv_dim, batch_first=True
            )
            for _ in range(num_layers)
        )
        self.attn_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))
        self.attn_gate = nn.Parameter(torch.zeros(num_layers))
        self.ffn = nn.ModuleList(
            PositionalwiseFeedForward(
                d_ffn, input_size=d_model, dropout=dropout, activation=activation
            )
            for _ in range(num_layers)
        )
        self.ffn_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))
        self.ffn_gate = nn.Parameter(torch.zeros(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, ppg: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attends from the emotion features to the PPG.

        Arguments
        ---------
        query : torch.Tensor
            Emotion features, shape ``(batch, time, query_dim)``.
        ppg : torch.Tensor
            PPG, shape ``(batch, time_kv, kv_dim)``.
        lengths : torch.Tensor or None
            Relative lengths of the PPG, shape ``(batch,)``.

        Returns
        -------
        output : torch.Tensor
            Shape ``(batch, time, d_model)``.
        """
        padding = None
        if lengths is not None:
            padding = ~length_mask(lengths, ppg.shape[1])
            # Zero padded frames: masked keys get zero attention, but 0 * inf would still be NaN.
            ppg = ppg.masked_fill(padding.unsqueeze(-1), 0.0)
        x = self.query_proj(query)
        attn_gates, ffn_gates = torch.tanh(self.attn_gate), torch.tanh(self.ffn_gate)
        for i, (attn, attn_norm, ffn, ffn_norm) in enumerate(
            zip(self.attn, self.attn_norm, self.ffn, self.ffn_norm, strict=True)
        ):
            q = attn_norm(x)
            context, _ = attn(q, ppg, ppg, key_padding_mask=padding, need_weights=False)
            x = x + attn_gates[i] * self.dropout(context)
            x = x + ffn_gates[i] * self.dropout(ffn(ffn_norm(x)))
        return x
