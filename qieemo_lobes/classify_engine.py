"""Classify audio files with a recognizer: the engine of ``python -m qieemo_lobes.classify``.

- :func:`plan_inputs` expands the command's paths (files, folders, globs) and reads each file's
  duration; an input that cannot be read is a :class:`FileResult` with its error from the start.
- :func:`classify_planned` classifies the rest. Recordings up to
  :data:`~qieemo_lobes.segmentation.LONG_RECORDING_S` are classified whole, in batches of files of
  similar length (at most ``batch_size`` files and :data:`BATCH_SECONDS` of padded audio); a batch
  the model fails on is retried file by file. Longer recordings are split into speech segments
  (:class:`~qieemo_lobes.segmentation.SpeechSegmenter`), each classified; the recording's
  probabilities are the segments' duration-weighted mean (:func:`aggregate`).
- Nothing raises for one file: a problem (unreadable audio, silence, a model failure,
  non-finite output: :data:`NON_FINITE_PROBLEM`) is that file's :attr:`FileResult.error`.
- The recognizer is an :class:`~qieemo_lobes.interfaces.EmotionRecognizer` (torch) or an
  :class:`~qieemo_lobes.onnx_inference.OnnxRecognizer` (``backend = "onnx"``: numpy audio,
  onnxruntime, its own segmenter). Nothing here imports torch until a torch recognizer runs.

Example
-------
>>> aggregate([(0.0, 1.0, [0.25, 0.75]), (1.0, 3.0, [0.625, 0.375])])
[0.5, 0.5]
>>> label_fields([0.25, 0.75], ["angry", "sad"])
{'label': 'sad', 'confidence': 0.75, 'probabilities': {'angry': 0.25, 'sad': 0.75}}
>>> top_labels([0.25, 0.15, 0.6], ["angry", "happy", "sad"], 2)
[{'label': 'sad', 'probability': 0.6}, {'label': 'angry', 'probability': 0.25}]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qieemo_lobes.interfaces import EmotionRecognizer
    from qieemo_lobes.onnx_inference import OnnxRecognizer

__all__ = [
    "BATCH_SECONDS",
    "NON_FINITE_PROBLEM",
    "SEGMENT_BUFFER_BATCHES",
    "FileResult",
    "aggregate",
    "classify_planned",
    "describe",
    "label_fields",
    "plan_inputs",
    "top_labels",
]

# Segments of a long recording are gathered this many batches at a time, then sorted by length.
SEGMENT_BUFFER_BATCHES = 4
# At most this much padded audio per batch: the encoder's attention grows with the square of the
# length: 2 segments of 26 s take 250 MB more than one (whisper-base), 8 well over 1 GB.
BATCH_SECONDS = 30.0
NON_FINITE_PROBLEM = "the model returned non-finite probabilities (damaged model?)"

# (start_s, end_s, probabilities) of a classified segment.
Segment = tuple[float, float, list[float]]


@dataclass
class FileResult:
    """The result for one input: probabilities (and segments) or an error."""

    path: str
    duration_s: float | None = None
    probabilities: list[float] | None = None
    segments: list[dict] = field(default_factory=list)
    error: str | None = None


def aggregate(segments: list[Segment]) -> list[float]:
    """Overall probabilities of a recording: the segments' probabilities, duration-weighted.

    Arguments
    ---------
    segments : list of (start_s, end_s, probabilities)
        The classified segments.

    Returns
    -------
    list of float
        The weighted mean, one value per class (sums to 1).
    """
    total = sum(end - start for start, end, _ in segments)
    n_classes = len(segments[0][2])
    return [
        sum((end - start) * probs[k] for start, end, probs in segments) / total
        for k in range(n_classes)
    ]


def label_fields(probs: list[float], labels: list[str]) -> dict[str, Any]:
    """The record fields of ``probs``: ``label`` (the argmax), ``confidence``, ``probabilities``.

    Probabilities are rounded to 4 decimals.
    """
    best = max(range(len(probs)), key=probs.__getitem__)
    return {
        "label": labels[best],
        "confidence": round(probs[best], 4),
        "probabilities": {lab: round(p, 4) for lab, p in zip(labels, probs, strict=True)},
    }


def top_labels(
    probs: list[float], labels: list[str], k: int, first: str | None = None
) -> list[dict[str, Any]]:
    """The ``k`` most probable labels, most probable first: ``[{"label", "probability"}]``.

    Ties keep the model's class order, except that ``first`` (the record's label, when given)
    comes before the labels it ties with, so that the first entry is always the record's label.
    Probabilities are rounded to 4 decimals.
    """
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], labels[i] != first, i))
    return [{"label": labels[i], "probability": round(probs[i], 4)} for i in order[:k]]


def describe(err: BaseException) -> str:
    """``RuntimeError("x\ny")`` -> ``"RuntimeError: x y"`` (one line)."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}{': ' + message if message else ''}"


def _unexpected(err: Exception) -> str:
    return f"cannot classify ({describe(err)})"


class _ModelProblem(Exception):
    """The model could not classify something; ``str()`` is the problem for the file's line."""


class _TorchBackend:
    """How the engine reads audio for an :class:`EmotionRecognizer` and runs it (torch).

    :class:`~qieemo_lobes.onnx_inference.OnnxRecognizer` has the same four methods itself.
    """

    def __init__(self, recognizer: EmotionRecognizer):
        self.recognizer = recognizer

    def segmenter(self) -> Callable[[str], list]:
        from qieemo_lobes.segmentation import SpeechSegmenter

        return SpeechSegmenter()

    def load(self, path: str):
        from qieemo_lobes.audio import load_audio

        return load_audio(path, target_sr=self.recognizer.sample_rate)

    def segment_waveforms(self, path: str, spans: list) -> Iterator[tuple[float, float, Any]]:
        from qieemo_lobes.segmentation import iter_segment_waveforms

        return iter_segment_waveforms(path, spans, self.recognizer.sample_rate)

    def probabilities(self, wavs: list) -> list[list[float]]:
        import torch
        from speechbrain.utils.data_utils import batch_pad_right

        padded, lens = batch_pad_right(wavs)
        out_prob, _, _, _ = self.recognizer.classify_batch(padded, torch.as_tensor(lens))
        return out_prob.exp().cpu().tolist()


class _Engine:
    """Runs a recognizer over files: short ones batched by length, long ones segmented."""

    def __init__(self, recognizer: EmotionRecognizer | OnnxRecognizer, batch_size: int):
        self.recognizer = recognizer
        onnx = getattr(recognizer, "backend", "torch") == "onnx"
        self.backend = recognizer if onnx else _TorchBackend(recognizer)
        self.batch_size = batch_size
        self.segmenter = self.backend.segmenter()

    def _classify(self, wavs: list) -> list[list[float]]:
        return self.backend.probabilities(wavs)

    def _classify_each(self, wavs: list) -> list[list[float] | str]:
        """Probabilities for each waveform, or the problem that stopped the model on it.

        A batch that raises is retried one waveform at a time, so that one waveform the model
        cannot handle (or a batch too large for memory) never costs the others their result.
        """
        try:
            results: list = self._classify(wavs)
        except Exception as err:
            if len(wavs) == 1:
                return [_unexpected(err)]
            results = []
            for wav in wavs:
                try:
                    results += self._classify([wav])
                except Exception as one_err:
                    results.append(_unexpected(one_err))
        return [
            probs
            if isinstance(probs, str) or all(map(math.isfinite, probs))
            else NON_FINITE_PROBLEM
            for probs in results
        ]

    def batches(self, items: list, seconds: Callable[[Any], float]) -> Iterator[list]:
        """Split ``items`` into batches of similar length (``seconds(item)``).

        A batch holds at most ``batch_size`` items and :data:`BATCH_SECONDS` of padded audio
        (its size times its longest item), and at least one item.
        """
        batch: list = []
        for item in sorted(items, key=seconds):
            if batch and (
                len(batch) == self.batch_size or (len(batch) + 1) * seconds(item) > BATCH_SECONDS
            ):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def short_files(self, items: list[tuple[int, str, float]]) -> Iterator[tuple[int, FileResult]]:
        """Classify whole files, ``items`` of ``(index, path, duration_s)``, by similar length."""
        from qieemo_lobes.audio import AudioError

        for batch in self.batches(items, seconds=lambda item: item[2]):
            loaded = []
            for index, path, duration in batch:
                try:
                    wav = self.backend.load(path)
                except AudioError as err:
                    yield index, FileResult(path, duration, error=err.problem)
                    continue
                except Exception as err:  # anything else reading it: still one line, go on
                    yield index, FileResult(path, duration, error=_unexpected(err))
                    continue
                loaded.append((index, path, len(wav) / self.recognizer.sample_rate, wav))
            if not loaded:
                continue
            results = self._classify_each([wav for *_, wav in loaded])
            for (index, path, duration, _), probs in zip(loaded, results, strict=True):
                if isinstance(probs, str):
                    yield index, FileResult(path, duration, error=probs)
                else:
                    yield index, FileResult(path, duration, probs)

    def long_file(self, path: str, duration: float) -> FileResult:
        """Segment a long recording and classify every speech segment."""
        from qieemo_lobes.audio import SILENCE_PROBLEM, AudioError

        try:
            spans = self.segmenter(path)
            classified = self._classify_spans(path, spans) if spans else []
        except AudioError as err:
            return FileResult(path, duration, error=err.problem)
        except _ModelProblem as err:
            return FileResult(path, duration, error=str(err))
        except Exception as err:  # anything else: one line for this file, the run goes on
            return FileResult(path, duration, error=_unexpected(err))
        if not classified:
            return FileResult(path, duration, error=SILENCE_PROBLEM)
        return self._segmented_result(path, duration, classified)

    def _classify_spans(self, path: str, spans: list) -> list[Segment]:
        """Stream the speech segments ``spans`` of ``path`` and classify them, a buffer at a time.

        Segments shorter than :data:`~qieemo_lobes.audio.MIN_SECONDS` are skipped.
        """
        from qieemo_lobes.audio import MIN_SECONDS

        rate = self.recognizer.sample_rate
        classified: list[Segment] = []
        buffer: list[tuple[float, float, object]] = []
        limit = self.batch_size * SEGMENT_BUFFER_BATCHES
        for start, end, wav in self.backend.segment_waveforms(path, spans):
            if len(wav) >= MIN_SECONDS * rate:  # as load_audio: too short to classify
                buffer.append((start, end, wav))
            if len(buffer) >= limit:
                classified += self._classify_segments(buffer)
                buffer = []
        classified += self._classify_segments(buffer)
        return classified

    def _classify_segments(self, buffer: list) -> list[Segment]:
        """Classify segments; one the model fails on fails the recording (:class:`_ModelProblem`)."""
        out = []
        rate = self.recognizer.sample_rate
        for batch in self.batches(buffer, seconds=lambda seg: len(seg[2]) / rate):
            for (start, end, _), probs in zip(
                batch, self._classify_each([wav for *_, wav in batch]), strict=True
            ):
                if isinstance(probs, str):
                    raise _ModelProblem(f"{probs} (segment {start:.1f}-{end:.1f} s)")
                out.append((start, end, probs))
        return out

    def _segmented_result(
        self, path: str, duration: float, classified: list[Segment]
    ) -> FileResult:
        """The result of a recording from its classified segments, in time order."""
        classified.sort(key=lambda seg: seg[0])
        labels = self.recognizer.labels
        segments = [
            {
                "start_s": round(start, 3),
                "end_s": round(end, 3),
                **label_fields(probs, labels),
            }
            for start, end, probs in classified
        ]
        return FileResult(path, duration, aggregate(classified), segments)


def plan_inputs(paths: list[str]) -> list[FileResult | tuple[str, float]]:
    """One entry per input: a ``FileResult`` with an error, or ``(path, duration_s)``.

    First the arguments that matched nothing, then the files in the order given (folders and
    globs expanded in sorted order; :func:`qieemo_lobes.audio.find_audio`).
    """
    from qieemo_lobes.audio import AudioError, find_audio
    from qieemo_lobes.audio_decode import open_info

    files, errors = find_audio(paths)
    plan: list[FileResult | tuple[str, float]] = [
        FileResult(path, error=problem) for path, problem in errors
    ]
    for path in files:
        try:
            info = open_info(path)  # the header only, as audio_info (which imports torch)
            plan.append((path, float(info.frames) / float(info.samplerate)))
        except AudioError as err:
            plan.append(FileResult(path, error=err.problem))
        except Exception as err:  # an unforeseen failure reading the header: still one line
            plan.append(FileResult(path, error=_unexpected(err)))
    return plan


def classify_planned(
    plan: list[FileResult | tuple[str, float]],
    recognizer: EmotionRecognizer | OnnxRecognizer,
    batch_size: int,
) -> Iterator[tuple[int, FileResult]]:
    """Classify the ``(path, duration_s)`` entries of ``plan``: ``(index in plan, result)``.

    Results come as they are done (short files first, by length, then the long recordings), not
    in plan order.
    """
    from qieemo_lobes.segmentation import LONG_RECORDING_S

    engine = _Engine(recognizer, batch_size)
    short = [(i, p[0], p[1]) for i, p in enumerate(plan) if isinstance(p, tuple)]
    long = [item for item in short if item[2] > LONG_RECORDING_S]
    short = [item for item in short if item[2] <= LONG_RECORDING_S]
    yield from engine.short_files(short)
    for index, path, duration in long:
        yield index, engine.long_file(path, duration)
