"""The model side of :mod:`qieemo_lobes.robustness`: a run or model folder as a classifier.

A recipe run is exported to a temporary model folder (:func:`model_folder`, through
:func:`qieemo_lobes.export.export_model`, which checks its head first); the folder is loaded
with :class:`~qieemo_lobes.interfaces.EmotionRecognizer` only when a condition has to be
computed (:class:`LazyRecognizer`), so a run whose conditions are all kept loads nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = [
    "AdaptingRecognizer",
    "Classifier",
    "LazyRecognizer",
    "ModelError",
    "model_digest",
    "model_folder",
    "recognizer_classifier",
]

Classifier = Callable[[list[torch.Tensor]], list[str]]


class ModelError(Exception):
    """A run that cannot be exported (``str()``: one line)."""


def recognizer_classifier(recognizer) -> Classifier:
    """A :data:`Classifier` from an :class:`~qieemo_lobes.interfaces.EmotionRecognizer`."""

    def classify(wavs: list[torch.Tensor]) -> list[str]:
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        return list(recognizer.classify_batch(padded, lengths / lengths.max())[3])

    return classify


def model_digest(folder: Path) -> str:
    """SHA-256 (16 hex digits) of a model folder's weights, labels and settings (comments of
    ``hyperparams.yaml``, which name the exported run's path, left out)."""
    h = hashlib.sha256()
    for name in ("head.ckpt", "label_encoder.ckpt"):
        h.update((folder / name).read_bytes())
    settings = (folder / "hyperparams.yaml").read_text().splitlines()
    h.update("\n".join(s for s in settings if not s.lstrip().startswith("#")).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def model_folder(source: Path) -> Iterator[Path]:
    """``source`` itself for a model folder; a run is exported to a temporary model folder."""
    if (source / "head.ckpt").is_file():
        yield source
        return
    from qieemo_lobes.export import ExportError, export_model

    with tempfile.TemporaryDirectory(prefix="qieemo-robustness-") as tmp:
        try:
            yield export_model(source, Path(tmp) / "model")
        except ExportError as err:
            raise ModelError(str(err)) from None


class LazyRecognizer:
    """Loads the model folder only when a condition has to be computed."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        self.folder, self.device, self.classify, self.recognizer = folder, device, None, None

    def load(self):
        """The folder's :class:`~qieemo_lobes.interfaces.EmotionRecognizer` (loaded once)."""
        if self.recognizer is None:
            from qieemo_lobes.interfaces import EmotionRecognizer

            self.recognizer = EmotionRecognizer.from_hparams(
                source=str(self.folder), run_opts={"device": self.device}
            )
        return self.recognizer

    def __call__(self, wavs: list[torch.Tensor]) -> list[str]:
        if self.classify is None:
            self.classify = recognizer_classifier(self.load())
        return self.classify(wavs)


class AdaptingRecognizer(LazyRecognizer):
    """The model adapted (AdaBN, :mod:`qieemo_lobes.adaptation`) to the clips of each call:
    ``whole_condition`` asks :func:`qieemo_lobes.robustness.evaluate` for all of a condition's
    clips at once, so each condition is classified with the input statistics of its own
    corrupted clips (transductive). Every clip is encoded once, alone (no padding)."""

    whole_condition = True

    def __call__(self, wavs: list[torch.Tensor]) -> list[str]:
        from qieemo_lobes.adaptation import adapted, input_statistics

        recognizer = self.load()
        encoded = list(recognizer.encode_clips(wavs))
        head = recognizer.mods.head
        with torch.inference_mode(), adapted(head, input_statistics(head, encoded)):
            best = [int(head(*clip).argmax(-1)) for clip in encoded]
        return [recognizer.labels[k] for k in best]
