"""Whisper's encoder architecture with random weights: the "trained from scratch" backbone.

The Qieemo paper (arXiv 2503.22687) contrasts its pretrained ASR encoder with the same backbone
trained from scratch (IEMOCAP WA 57.57 against 76.42). :class:`ScratchWhisperBlocks` builds the
architecture of an offline Whisper alias (``"whisper-base"``: 6 blocks of 512, 8 heads;
``"whisper-tiny.en"``: 4 blocks of 384, 6 heads) with no ASR pretraining at all: PyTorch's
default initialisation of every convolution, linear layer and layer norm, drawn from
``torch.manual_seed(seed)`` in a forked random state (the caller's random state is left as it
was), and Whisper's fixed sinusoidal positional embedding (part of the architecture, not
learned). The front end (log-mel, windows, masking) is Whisper's, shared with
:class:`~qieemo_lobes.whisper_torch.TorchWhisperBlocks`.

It is a drop-in for :class:`~qieemo_lobes.encoders.WhisperBlocks` in a recipe (same
``blocks, ppg = encoder(wavs, wav_lens)`` convention, ``n_blocks``, ``block_dim``, ``ppg_dim``,
``identity``, ``freeze`` and ``unfreeze_top``). Its ``identity`` names the architecture and the
seed and hashes the weights themselves, so the feature cache never mixes it with the pretrained
encoder, nor two seeds (nor two PyTorch versions that would draw other weights from a seed).

Recipes select it with an override of the ``encoder`` node (a list of arguments, so that
HyperPyYAML replaces the node instead of merging it into the ``WhisperBlocks`` one) and a source
name that the recorded settings show::

    python cross_validate.py hparams/qieemo.yaml ... --encoder_source=scratch-whisper-base \\
      "--encoder=!new:qieemo_lobes.scratch_encoder.ScratchWhisperBlocks [!ref <encoder_source>, null, !ref <window>, !ref <freeze_encoder>, !ref <unfreeze_top>]"

(:data:`RECIPE_OVERRIDE` is that override.) ``--tune_blocks`` must stay 0 (the block tuner loads
pretrained blocks by ``encoder_source``).

Example
-------
>>> encoder = ScratchWhisperBlocks("scratch-whisper-tiny.en", window="fit", seed=3)
>>> blocks, ppg = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
>>> blocks.shape, ppg.shape
(torch.Size([4, 2, 50, 384]), torch.Size([2, 50, 384]))
>>> encoder.identity.startswith("scratch-whisper-tiny.en-seed3-fit-")
True
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn

from qieemo_lobes.encoders import encode_in_windows, log_mel_batch
from qieemo_lobes.whisper_torch import N_FFT, AudioEncoder, mel_filters

__all__ = ["ARCHITECTURES", "RECIPE_OVERRIDE", "ScratchWhisperBlocks", "sinusoids"]

# The encoder sizes of the offline aliases (as read from their weights by
# qieemo_lobes.whisper_torch.load_encoder_state; tests/test_paper.py checks they agree).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "whisper-base": {
        "n_mels": 80,
        "n_ctx": 1500,
        "n_state": 512,
        "n_head": 8,
        "n_layer": 6,
        "n_mlp": 2048,
    },
    "whisper-tiny.en": {
        "n_mels": 80,
        "n_ctx": 1500,
        "n_state": 384,
        "n_head": 6,
        "n_layer": 4,
        "n_mlp": 1536,
    },
}
PREFIX = "scratch-"
# The recipe override that builds this encoder from the recipe's own settings (see above).
RECIPE_OVERRIDE = (
    "--encoder=!new:qieemo_lobes.scratch_encoder.ScratchWhisperBlocks "
    "[!ref <encoder_source>, null, !ref <window>, !ref <freeze_encoder>, !ref <unfreeze_top>]"
)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed positional embedding ``(length, channels)``: sines then cosines.

    Example
    -------
    >>> sinusoids(3, 4)[0].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float64))
    scaled = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1).float()


def architecture_of(source: str) -> str:
    """The alias whose architecture ``source`` names: ``"scratch-whisper-base"`` or
    ``"whisper-base"`` -> ``"whisper-base"``.

    Example
    -------
    >>> architecture_of("scratch-whisper-base")
    'whisper-base'
    >>> architecture_of("whisper-large")
    Traceback (most recent call last):
        ...
    ValueError: unknown architecture 'whisper-large' (known: scratch-whisper-base, scratch-whisper-tiny.en)
    """
    name = source[len(PREFIX) :] if source.startswith(PREFIX) else source
    if name not in ARCHITECTURES:
        known = ", ".join(PREFIX + k for k in ARCHITECTURES)
        raise ValueError(f"unknown architecture {source!r} (known: {known})")
    return name


class ScratchWhisperBlocks(nn.Module):
    """Whisper's encoder with random weights, returning every block's output and the PPG.

    Arguments
    ---------
    source : str
        The architecture: ``"scratch-whisper-base"`` (or ``"whisper-base"``),
        ``"scratch-whisper-tiny.en"``.
    save_path : str, optional
        Ignored (accepted so that a ``WhisperBlocks`` node's arguments fit); nothing is read.
    window : str
        ``"30s"`` or ``"fit"``, as for ``WhisperBlocks``.
    freeze : bool
        Keep the random weights fixed (no gradients). ``False`` trains them (live encoder,
        ``use_feature_cache: False``).
    unfreeze_top : int
        With ``freeze=False``: train only the top ``unfreeze_top`` blocks and the final layer norm
        (0 trains the whole encoder).
    seed : int
        Seed of the random weights.
    """

    def __init__(
        self,
        source: str = "scratch-whisper-base",
        save_path: str | None = None,
        window: str = "fit",
        freeze: bool = True,
        unfreeze_top: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        del save_path  # nothing to read: the weights are drawn here
        if window not in ("30s", "fit"):
            raise ValueError(f"window must be '30s' or 'fit', not {window!r}")
        self.architecture = architecture_of(source)
        self.source = PREFIX + self.architecture
        self.window = window
        self.freeze = bool(freeze)
        self.seed = int(seed)
        sizes = ARCHITECTURES[self.architecture]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = AudioEncoder(**sizes)
        with torch.no_grad():
            self.encoder.positional_embedding.copy_(sinusoids(sizes["n_ctx"], sizes["n_state"]))
            for block in self.encoder.blocks:  # Whisper's key projection has no bias
                n = sizes["n_state"]
                block.attn.qkv.bias[n : 2 * n] = 0.0
        self.register_buffer("mel_filters", mel_filters(sizes["n_mels"]), persistent=False)
        self.register_buffer("stft_window", torch.hann_window(N_FFT), persistent=False)
        self.n_blocks = sizes["n_layer"]
        self.block_dim = sizes["n_state"]
        self.ppg_dim = self.block_dim
        self.max_frames = sizes["n_ctx"]
        self._identity = self._make_identity()
        if self.freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        elif unfreeze_top:
            self.encoder.requires_grad_(False)
            for module in [*self.encoder.blocks[-int(unfreeze_top) :], self.encoder.ln_post]:
                module.requires_grad_(True)

    def _make_identity(self) -> str:
        digest = hashlib.sha1(f"{self.source}|seed={self.seed}|{self.window}".encode())
        for name, tensor in sorted(self.encoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        return f"{self.source}-seed{self.seed}-{self.window}-{digest.hexdigest()[:10]}"

    @property
    def identity(self) -> str:
        """The feature cache's key: architecture, seed, window and a hash of the initial weights
        (the weights this encoder was built with, even after training)."""
        return self._identity

    def train(self, mode: bool = True) -> ScratchWhisperBlocks:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode a batch: ``(blocks (n_blocks, B, T, D), ppg (B, T, D))``, as ``WhisperBlocks``."""
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        if self.freeze:
            with torch.no_grad():
                return encode_in_windows(wavs, wav_lens, self._encode_window)
        return encode_in_windows(wavs, wav_lens, self._encode_window)

    def _encode_window(self, wavs: Tensor, n_samples: Tensor) -> tuple[Tensor, Tensor]:
        fit = self.window == "fit"
        mels, mel_frames, valid = log_mel_batch(
            wavs, n_samples, fit, self.mel_filters, self.stft_window
        )
        blocks, ppg = self.encoder(mels, mel_frames if fit else None)
        return torch.stack([x[:, :valid] for x in blocks]), ppg[:, :valid]
