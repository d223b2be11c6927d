"""Classify with an ONNX model folder and onnxruntime: no torch, SpeechBrain or transformers.

An ONNX model folder (written by ``python -m qieemo_lobes.export_onnx MODEL_DIR OUT_DIR`` from a
model folder) holds

- ``encoder.onnx``: Whisper's encoder up to the highest block the head reads (and the final layer
  norm, the PPG, only for a head with cross-modal attention), dynamic batch and time: inputs
  ``mels`` ``(B, n_mels, frames)`` and ``mel_frames`` ``(B,)``, outputs ``blocks``
  ``(n_read, B, ceil(frames / 2), D)`` (the blocks listed in ``config.json``) and maybe ``ppg``;
- ``head.onnx``: the Qieemo head: inputs ``blocks``, ``lengths`` (relative, SpeechBrain's
  convention) and maybe ``ppg``; output ``logits`` ``(B, n_classes)``;
- ``mel_filters.npy`` (Whisper's mel filter bank), ``labels.json``, ``config.json`` (sample rate,
  front end, window, DC removal, temperature, blocks, opset, the source model's fingerprint),
  ``silero_vad.onnx`` (:mod:`qieemo_lobes.onnx_vad`) and the source's ``MODEL_CARD.md``.

:class:`OnnxRecognizer` runs the torch path's steps in numpy around the two graphs: DC removal
(each clip's mean), Whisper's log-mel (:mod:`qieemo_lobes.onnx_frontend`), the ``fit`` window
(the clip's own frames; over 30 s, consecutive 30 s windows), the head with relative lengths,
``softmax(logits / temperature)``. Probabilities match
:class:`~qieemo_lobes.interfaces.EmotionRecognizer` within 1e-3 (``tests/test_onnx.py``, real
EmoDB and RAVDESS clips, padded batches, a recording over 30 s). It also carries what
:mod:`qieemo_lobes.classify_engine` needs to run it: :meth:`OnnxRecognizer.load`,
:meth:`~OnnxRecognizer.segmenter`, :meth:`~OnnxRecognizer.segment_waveforms`,
:meth:`~OnnxRecognizer.probabilities`.

Nothing in an ONNX folder is code: it is checked (files, JSON, shapes, finite numbers) and any
problem is one :class:`OnnxModelError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qieemo_lobes.onnx_audio import load_audio, remove_dc, sinc_resampler
from qieemo_lobes.onnx_frontend import log_mel_batch, window_spans
from qieemo_lobes.onnx_vad import SileroOnnx

__all__ = [
    "CONFIG_FILE",
    "ENCODER_FILE",
    "FILTERS_FILE",
    "FORMAT",
    "HEAD_FILE",
    "LABELS_FILE",
    "OnnxModelError",
    "OnnxRecognizer",
    "is_onnx_folder",
    "source_fingerprint",
]

FORMAT = "qieemo-onnx"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
ENCODER_FILE = "encoder.onnx"
HEAD_FILE = "head.onnx"
LABELS_FILE = "labels.json"
FILTERS_FILE = "mel_filters.npy"
# The files of a model folder whose content defines the model (its ONNX copy's fingerprint).
SOURCE_FILES = ("hyperparams.yaml", "head.ckpt", "label_encoder.ckpt")


class OnnxModelError(Exception):
    """An ONNX model folder cannot be used; ``str()`` is one line naming the file."""


def is_onnx_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` has an ONNX model's ``config.json`` (not whether the rest is sound)."""
    return (Path(folder) / CONFIG_FILE).is_file()


def source_fingerprint(model_dir: str | os.PathLike) -> str:
    """SHA-256 of a model folder's defining files (hyperparams, head, labels), 16 hex digits.

    Example
    -------
    >>> len(source_fingerprint(Path(__file__).parent / "default_model"))
    16
    """
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        path = Path(model_dir) / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _session(path: Path, threads: int | None, providers: list[str]) -> Any:
    """An onnxruntime session on ``path``; a file that does not load is one line naming it."""
    import onnxruntime as ort

    if not path.is_file():
        raise OnnxModelError(f"{path}: missing (not a complete ONNX model folder)")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not for users
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: on a shared 2-core machine a spinning pool stalls
    # every other process (see classify_process.passive_openmp for the same reason with torch).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # InvalidProtobuf, Fail...: a damaged or foreign file
        message = _one_line(err)
        if "opset" in message.lower():  # an onnxruntime older than the model
            raise OnnxModelError(
                f"{path}: onnxruntime {ort.__version__} cannot run this model's opset (needs "
                "onnxruntime >= 1.21 for opset 22; or export with a lower --opset)"
            ) from None
        raise OnnxModelError(f"{path}: not a usable ONNX model ({message[:300]})") from None


def _check_io(session: Any, path: Path, inputs: list[str], outputs: list[str]) -> None:
    """The graph has the inputs and outputs ``config.json`` says (one line naming it if not)."""
    have_in = [x.name for x in session.get_inputs()]
    have_out = [x.name for x in session.get_outputs()]
    if sorted(have_in) != sorted(inputs) or not set(outputs) <= set(have_out):
        raise OnnxModelError(
            f"{path}: inputs {have_in} and outputs {have_out}, expected {inputs} and {outputs}"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OnnxModelError(f"{path}: missing (not a complete ONNX model folder)") from None
    except (OSError, ValueError) as err:
        raise OnnxModelError(f"{path}: unreadable ({_one_line(err)})") from None


class OnnxRecognizer:
    """An ONNX model folder, ready to classify 16 kHz waveforms (numpy in, probabilities out).

    Arguments
    ---------
    folder : str or os.PathLike
        The ONNX model folder (``python -m qieemo_lobes.export_onnx``).
    threads : int, optional
        Intra-op threads of the encoder and head (default: onnxruntime's, one per core).
    device : str
        ``"cpu"`` or ``"cuda"`` (onnxruntime's CUDA provider, where installed).

    Raises
    ------
    OnnxModelError
        One line naming the file: missing, damaged, not this format, inconsistent.
    """

    backend = "onnx"

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, device: str = "cpu"):
        self.folder = Path(folder)
        config_path = self.folder / CONFIG_FILE
        config = _read_json(config_path)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise OnnxModelError(f"{config_path}: not a qieemo ONNX model configuration")
        try:
            self._configure(config)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise OnnxModelError(f"{config_path}: invalid ({_one_line(err)})") from None
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.encoder = _session(self._file(ENCODER_FILE), threads, providers)
        self.head = _session(self._file(HEAD_FILE), threads, providers)
        outputs = ["blocks", "ppg"] if self.uses_ppg else ["blocks"]
        _check_io(self.encoder, self._file(ENCODER_FILE), ["mels", "mel_frames"], outputs)
        inputs = ["blocks", "lengths", "ppg"] if self.uses_ppg else ["blocks", "lengths"]
        _check_io(self.head, self._file(HEAD_FILE), inputs, ["logits"])
        vad = self._file(config["vad"]) if config.get("vad") else None
        self.vad_path = vad if vad is not None and vad.is_file() else None
        self._vad: SileroOnnx | None = None

    def _configure(self, config: dict) -> None:
        """Read ``config.json``'s settings (a malformed value raises; see ``__init__``)."""
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"written by a newer qieemo (format {config['format_version']})")
        self.config = config
        self.sample_rate = int(config.get("sample_rate", 16000))
        self.temperature = float(config.get("temperature", 1.0))
        if not 0.0 < self.temperature < math.inf:
            raise ValueError("temperature must be a positive number")
        self.fit = config.get("window", "fit") == "fit"
        self.remove_dc = bool(config.get("remove_dc", True))
        self.uses_ppg = bool(config["encoder"].get("ppg", False))
        self.labels = self._labels(config)
        self.filters = self._filters(config)

    def _file(self, name: str) -> Path:
        """A file of the folder named by ``config.json`` (a plain name, never a path)."""
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise OnnxModelError(f"{self.folder / CONFIG_FILE}: {name!r} is not a file name")
        return self.folder / name

    def _labels(self, config: dict) -> list[str]:
        path = self._file(config.get("labels", LABELS_FILE))
        labels = _read_json(path)
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise OnnxModelError(f"{path}: expected a non-empty JSON list of labels")
        if len(labels) != int(config.get("n_classes", len(labels))):
            raise OnnxModelError(
                f"{path}: {len(labels)} labels, the head predicts {config['n_classes']} classes"
            )
        return labels

    def _filters(self, config: dict) -> np.ndarray:
        path = self._file(config.get("mel_filters", FILTERS_FILE))
        try:
            filters = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise OnnxModelError(f"{path}: missing (not a complete ONNX model folder)") from None
        except (OSError, ValueError) as err:
            raise OnnxModelError(f"{path}: unreadable ({_one_line(err)})") from None
        n_mels = int(config.get("n_mels", 80))
        if filters.shape != (n_mels, 201) or not np.isfinite(filters).all():
            raise OnnxModelError(f"{path}: expected {n_mels}x201 finite mel filters")
        return filters.astype(np.float32)

    # -- the model ---------------------------------------------------------------------------

    def logits(self, wavs: list[np.ndarray]) -> np.ndarray:
        """Logits ``(B, n_classes)`` of 16 kHz mono waveforms of any lengths (float32 numpy).

        Each waveform's DC offset is removed, then the batch is padded as SpeechBrain's
        ``batch_pad_right`` pads it for the torch path (relative lengths, the longest 1.0).
        """
        wavs = [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs]
        if self.remove_dc:
            wavs = remove_dc(wavs)
        lengths = [len(w) for w in wavs]
        blocks, ppg = self._encode(wavs, lengths)
        longest = max(lengths)
        feed = {
            "blocks": blocks,
            "lengths": np.array([n / longest for n in lengths], dtype=np.float32),
        }
        if self.uses_ppg:
            feed["ppg"] = ppg
        return self.head.run(["logits"], feed)[0]

    def _encode(self, wavs: list[np.ndarray], lengths: list[int]) -> tuple[np.ndarray, Any]:
        """The encoder's outputs for the batch, 30-second window by window, frames concatenated."""
        outputs = ["blocks", "ppg"] if self.uses_ppg else ["blocks"]
        pieces: list[list[np.ndarray]] = []
        for start, rows, chunk_lens in window_spans(lengths):
            chunk = [wavs[i][start : start + n] for i, n in zip(rows, chunk_lens, strict=True)]
            mels, mel_frames, valid = log_mel_batch(chunk, self.filters, self.fit)
            got = self.encoder.run(outputs, {"mels": mels, "mel_frames": mel_frames})
            got = [x[:, :, :valid] if k == 0 else x[:, :valid] for k, x in enumerate(got)]
            if len(rows) < len(wavs):  # utterances that ended earlier: zeros (padding)
                full = []
                for k, x in enumerate(got):
                    axis = 1 if k == 0 else 0
                    shape = list(x.shape)
                    shape[axis] = len(wavs)
                    padded = np.zeros(shape, dtype=x.dtype)
                    if axis == 1:
                        padded[:, rows] = x
                    else:
                        padded[rows] = x
                    full.append(padded)
                got = full
            pieces.append(got)
        blocks = np.concatenate([p[0] for p in pieces], axis=2)
        ppg = np.concatenate([p[1] for p in pieces], axis=1) if self.uses_ppg else None
        return blocks, ppg

    def classify_batch(self, wavs: list[np.ndarray]) -> np.ndarray:
        """Probabilities ``(B, n_classes)``: ``softmax(logits / temperature)`` (float32 math)."""
        z = self.logits(wavs).astype(np.float32) / np.float32(self.temperature)
        z = z - z.max(axis=-1, keepdims=True)
        log_prob = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return np.exp(log_prob)

    def classify_file(self, path: str | os.PathLike) -> tuple[list[float], str]:
        """Probabilities and label of one file classified whole (see :func:`load_audio`)."""
        probs = self.classify_batch([self.load(path)])[0].tolist()
        return probs, self.labels[int(np.argmax(probs))]

    # -- what classify_engine needs ----------------------------------------------------------

    def probabilities(self, wavs: list[np.ndarray]) -> list[list[float]]:
        """:meth:`classify_batch` as lists of floats, one per waveform."""
        return self.classify_batch(wavs).astype(np.float64).tolist()

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """A whole file at the model's rate, checked (:func:`qieemo_lobes.onnx_audio.load_audio`)."""
        return load_audio(path, target_sr=self.sample_rate)

    def _vad_model(self) -> SileroOnnx:
        if self._vad is None:
            self._vad = SileroOnnx(self.vad_path)
        return self._vad

    def segmenter(self):
        """The long-recording segmenter: Silero as ONNX when the folder has it, else energy."""
        from qieemo_lobes.segmentation import SpeechSegmenter

        if self.vad_path is None:
            return SpeechSegmenter(method="energy", resampler=sinc_resampler)
        return SpeechSegmenter(method="auto", resampler=sinc_resampler, vad=self._vad_model)

    def segment_waveforms(
        self, path: str | os.PathLike, spans: list[tuple[float, float]]
    ) -> Iterator[tuple[float, float, np.ndarray]]:
        """The waveforms of ``spans`` of ``path``, streamed once (as the torch path cuts them)."""
        from qieemo_lobes.segmentation import iter_segment_waveforms

        return iter_segment_waveforms(
            path, spans, self.sample_rate, resampler=sinc_resampler, tensors=False
        )
