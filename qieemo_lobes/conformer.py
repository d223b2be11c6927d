"""A SpeechBrain Conformer ASR encoder that returns every block's output and the PPG.

``ConformerBlocks`` wraps the objects a SpeechBrain Conformer ASR recipe declares in its YAML
(``compute_features`` Fbank, ``normalize`` InputNormalization, ``CNN`` ConvolutionFrontEnd,
``Transformer`` TransformerASR with ``encoder_module: conformer`` and, optionally, ``ctc_lin``), so
a trained stage-1 checkpoint loads into those very objects through SpeechBrain's ``Pretrainer``
(see ``recipes/LibriSpeech/ASR/README.md`` for the checkpoint layout), and exposes them with the
encoder convention of this project::

    blocks, ppg = encoder(wavs, wav_lens)
    # blocks: (n_blocks, B, T, D) output of every Conformer block, before the final LayerNorm
    # ppg:    (B, T, P) the encoder output after its final LayerNorm (ppg="features", P = D),
    #         or the CTC posteriors, softmax probabilities over the tokens (ppg="ctc", P = vocab)

The encoder itself runs through ``TransformerASR.encode`` (same source projection, positional
encodings and masks); forward hooks on the encoder layers collect the block outputs. ``T`` is the
front end's frame count (40 ms frames with the recipes' 10 ms hop and stride-4 CNN).

Padding. SpeechBrain's stock path lets padding leak into the valid frames of a shorter utterance in
a batch in two places: the convolutional front end pads its input by reflection at the end of the
*batch*, not of each utterance, and the Conformer convolution module applies its depthwise
convolution before masking the padded frames. With ``exact_padding=True`` (default) both are
fixed: the features and the front end run per utterance on exactly its own samples (when the batch
holds different lengths), and a pre-hook zeroes the padded frames in front of every depthwise
convolution, as the zero padding of a lone utterance would. An utterance then gives the same
outputs alone or in any batch (to float rounding), and the padded frames of the outputs are zero.
With ``exact_padding=False`` the computation is exactly the recipe's (``TransformerASR.encode`` on
the batch), which is faster on large GPU batches. Both agree on a batch without padding.

Example
-------
>>> import torch
>>> from speechbrain.lobes.features import Fbank
>>> from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
>>> from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
>>> from speechbrain.nnet.linear import Linear
>>> from speechbrain.processing.features import InputNormalization
>>> _ = torch.manual_seed(0)
>>> encoder = ConformerBlocks(
...     compute_features=Fbank(n_mels=20),
...     normalize=InputNormalization(norm_type="sentence"),
...     cnn=ConvolutionFrontEnd(
...         input_shape=(8, 10, 20), num_blocks=2, num_layers_per_block=1,
...         out_channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2), residuals=(False, False),
...     ),
...     transformer=TransformerASR(
...         tgt_vocab=10, input_size=40, d_model=16, nhead=2, num_encoder_layers=3,
...         num_decoder_layers=0, d_ffn=32, kernel_size=7, encoder_module="conformer",
...         attention_type="RelPosMHAXL", normalize_before=True, causal=False,
...     ),
...     ctc_lin=Linear(input_size=16, n_neurons=10),
...     ppg="ctc",
... )
>>> wavs = torch.randn(2, 16000)
>>> blocks, ppg = encoder(wavs, torch.tensor([1.0, 0.5]))
>>> blocks.shape, ppg.shape
(torch.Size([3, 2, 26, 16]), torch.Size([2, 26, 10]))
>>> encoder.n_blocks, encoder.block_dim, encoder.ppg_dim
(3, 16, 10)
>>> bool(torch.allclose(ppg[0].sum(-1), torch.ones(26)))
True
>>> alone, _ = encoder(wavs[1:, :8000])
>>> bool(torch.allclose(alone[:, 0], blocks[:, 1, : alone.shape[2]], atol=1e-5))
True

Authors
 * qieemo contributors 2026
"""

from __future__ import annotations

import hashlib

import torch
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
from speechbrain.processing.features import InputNormalization
from torch import nn

PPG_TYPES = ("features", "ctc")


class ConformerBlocks(nn.Module):
    """SpeechBrain Conformer ASR encoder returning ``(blocks, ppg)``.

    Arguments
    ---------
    compute_features : torch.nn.Module
        Waveform -> features, e.g. ``speechbrain.lobes.features.Fbank``: ``(B, S) -> (B, T, F)``.
    normalize : torch.nn.Module, optional
        Feature normalisation called as ``normalize(feats, lengths)``, e.g.
        ``speechbrain.processing.features.InputNormalization``. Its statistics are never updated
        here: it always runs in eval mode (stage 1 estimated them).
    cnn : torch.nn.Module
        The convolutional front end, e.g. ``speechbrain.lobes.models.convolution.ConvolutionFrontEnd``.
    transformer : speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
        The ASR transformer, with ``encoder_module="conformer"`` (``num_decoder_layers`` may be 0).
    ctc_lin : torch.nn.Module, optional
        The CTC output layer ``(B, T, D) -> (B, T, vocab)``; required for ``ppg="ctc"``.
    ppg : str
        ``"features"``: the encoder output after its final LayerNorm; ``"ctc"``: softmax of
        ``ctc_lin`` on it (probabilities, each frame sums to 1).
    freeze : bool
        If True (default, as in stage 2), no parameter gets gradients, the forward pass runs
        without autograd and every submodule stays in eval mode whatever ``train()`` is called with.
    exact_padding : bool
        If True (default), each utterance's outputs do not depend on what it is batched with (see
        the module docstring); if False, the recipe's batched computation, padding leaks included.
    """

    def __init__(
        self,
        compute_features: nn.Module,
        normalize: nn.Module | None,
        cnn: nn.Module,
        transformer: nn.Module,
        ctc_lin: nn.Module | None = None,
        ppg: str = "features",
        freeze: bool = True,
        exact_padding: bool = True,
    ):
        super().__init__()
        if ppg not in PPG_TYPES:
            raise ValueError(f"ppg must be one of {PPG_TYPES}, got {ppg!r}")
        if ppg == "ctc" and ctc_lin is None:
            raise ValueError('ppg="ctc" needs the CTC head (ctc_lin)')
        encoder = getattr(transformer, "encoder", None)
        if encoder is None or not hasattr(encoder, "layers") or not hasattr(encoder, "norm"):
            raise ValueError("transformer must be a TransformerASR whose encoder has layers + norm")
        self.compute_features = compute_features
        self.normalize = normalize
        self.cnn = cnn
        self.transformer = transformer
        self.ctc_lin = ctc_lin
        self.ppg = ppg
        self.freeze = freeze
        self.exact_padding = exact_padding

        self.n_blocks = len(encoder.layers)
        self.block_dim = int(encoder.norm.norm.normalized_shape[0])
        self.ppg_dim = self.block_dim if ppg == "features" else _out_features(ctc_lin)

        # Forward-scoped state read by the hooks; None outside forward(), so the hooks are inert
        # when someone else calls the same TransformerASR (e.g. the ASR recipe's own encode()).
        self._collected: dict[int, torch.Tensor] | None = None
        self._keep: torch.Tensor | None = None
        for index, layer in enumerate(encoder.layers):
            layer.register_forward_hook(self._collect_hook(index))
            for module in layer.modules():
                if isinstance(module, ConvolutionModule):
                    module.conv.register_forward_pre_hook(self._mask_conv_input)
        encoder.register_forward_pre_hook(self._collect_input, with_kwargs=True)

        if freeze:
            for param in self.parameters():
                param.requires_grad_(False)
        self.train(self.training)

    # ----------------------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """Feature-cache key: a hash of every weight and statistic, and the PPG type.

        Read it after the stage-1 checkpoint is loaded: other weights give another identity.
        """
        digest = hashlib.sha1(f"{self.ppg}|{self.exact_padding}".encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        if self.normalize is not None:  # its statistics are not all in state_dict
            for key, value in sorted(self.normalize._statistics_dict().items()):
                digest.update(
                    f"{key}={value}".encode()
                    if not torch.is_tensor(value)
                    else value.cpu().numpy().tobytes()
                )
        return f"conformer-{self.n_blocks}x{self.block_dim}-{self.ppg}-{digest.hexdigest()[:10]}"

    def train(self, mode: bool = True) -> ConformerBlocks:
        """Set train/eval mode; a frozen encoder and the normaliser always stay in eval mode."""
        super().train(mode and not self.freeze)
        if self.normalize is not None:
            self.normalize.eval()
        return self

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, samples)`` float waveforms at the sample rate of ``compute_features`` (16 kHz).
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths in (0, 1] (SpeechBrain convention); None: no padding.

        Returns
        -------
        blocks : torch.Tensor
            ``(n_blocks, B, T, block_dim)`` output of every encoder block (before the final norm).
        ppg : torch.Tensor
            ``(B, T, ppg_dim)`` the final encoder output (``ppg="features"``) or the CTC
            posteriors (``ppg="ctc"``, softmax probabilities).
        """
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be (batch, samples), got shape {tuple(wavs.shape)}")
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        wav_lens = wav_lens.to(wavs.device, torch.float32)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            src, src_lens = self._front_end(wavs, wav_lens)
            blocks, enc_out = self._encode(src, src_lens)
            if self.ppg == "ctc":
                ppg = torch.softmax(self.ctc_lin(enc_out), dim=-1)
            else:
                ppg = enc_out
            if self.exact_padding:
                valid = _length_mask(src_lens, src.shape[1])[..., None]
                blocks = blocks.masked_fill(~valid[None], 0.0)
                ppg = ppg.masked_fill(~valid, 0.0)
        return blocks, ppg

    # ----------------------------------------------------------------------------------------
    def _features(self, wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        feats = self.compute_features(wavs)
        if self.normalize is not None:
            if isinstance(self.normalize, InputNormalization):
                stats = self.normalize.glob_mean
                if stats.numel() and stats.device != feats.device:
                    # Its statistics are plain attributes, not buffers: Module.to() misses them.
                    self.normalize.to(feats.device)
            feats = self.normalize(feats, lens)
        return feats

    def _front_end(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features -> normalisation -> CNN; returns ``(src, relative src lengths)``."""
        n_samples = torch.round(wav_lens * wavs.shape[1]).long().clamp(1, wavs.shape[1])
        if not self.exact_padding or bool((n_samples == wavs.shape[1]).all()):
            return self.cnn(self._features(wavs, wav_lens)), wav_lens

        # Per utterance on exactly its own samples (see the module docstring): the features of
        # the valid frames and the reflection padding of the front end then match a lone run.
        feats = [
            self._features(wavs[i : i + 1, : int(n)], wav_lens.new_ones(1))
            for i, n in enumerate(n_samples)
        ]
        src = [self.cnn(f) for f in feats]
        lengths = torch.tensor([s.shape[1] for s in src], device=wavs.device)
        src = torch.cat([_pad_time(s, int(lengths.max())) for s in src])
        return src, lengths / lengths.max()

    def _encode(
        self, src: torch.Tensor, src_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``TransformerASR.encode``; return ``(stacked block outputs, final output)``."""
        self._collected = {}
        if self.exact_padding:
            self._keep = _length_mask(src_lens, src.shape[1])
        try:
            enc_out = self.transformer.encode(src, src_lens)
            if isinstance(enc_out, tuple):  # output_hidden_states=True
                enc_out = enc_out[0]
            blocks, previous = [], self._collected.get(-1)
            for index in range(self.n_blocks):
                # A layer skipped by LayerDrop (training only) is the identity.
                previous = self._collected.get(index, previous)
                blocks.append(previous)
        finally:
            self._collected, self._keep = None, None
        return torch.stack(blocks), enc_out

    # Hooks ------------------------------------------------------------------------------------
    def _collect_hook(self, index: int):
        def hook(module: nn.Module, args, output) -> None:
            if self._collected is not None:
                self._collected[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def _collect_input(self, module: nn.Module, args, kwargs) -> None:
        if self._collected is not None:
            self._collected[-1] = kwargs["src"] if "src" in kwargs else args[0]

    def _mask_conv_input(self, module: nn.Module, args):
        # Input of the depthwise convolution: (B, C, T). Zero the padded frames, exactly like the
        # convolution's own zero padding beyond the end of a lone utterance.
        if self._keep is None:
            return None
        x = args[0]
        return (x * self._keep[:, None, : x.shape[-1]].to(x.dtype),) + tuple(args[1:])


def _length_mask(rel_lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, max_len)`` bool, True on valid frames, with TransformerASR's rounding of lengths."""
    abs_len = torch.round(rel_lens * max_len)
    return torch.arange(max_len, device=rel_lens.device)[None, :] < abs_len[:, None]


def _pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dimension 1 (time) of ``x`` to ``length``."""
    if x.shape[1] == length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def _out_features(layer: nn.Module) -> int:
    """Output size of a linear head (``speechbrain.nnet.linear.Linear`` or ``torch.nn.Linear``)."""
    linear = getattr(layer, "w", layer)
    return int(linear.out_features)
