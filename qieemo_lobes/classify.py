"""Classify the emotion of audio files: ``python -m qieemo_lobes.classify PATH...``.

::

    python -m qieemo_lobes.classify PATH... [--model DIR] [--trust-model] [--out FILE]
                                    [--format table|json|csv] [--plot DIR] [--batch-size N]
                                    [--device cpu|cuda]

``PATH``: files, directories (searched recursively, audio files only) and glob patterns
(``"calls/**/*.flac"``). ``--model`` is a model folder written by ``python -m qieemo_lobes.export``
(default: :data:`DEFAULT_MODEL_DIR`, the model shipped with the package).

**A model folder's hyperparams.yaml is code**: HyperPyYAML constructs and calls whatever it names
(``!apply:os.system``...). By default only model folders written by
``python -m qieemo_lobes.export`` load: the folder is checked before anything in it is built
(:mod:`qieemo_lobes.model_folder`) and any other structure or tag is refused in one line.
``--trust-model`` loads any SpeechBrain-style folder as written: pass it only for folders you
trust.

Per file: the label, its confidence (probability) and every class's probability.

- Recordings up to :data:`~qieemo_lobes.segmentation.LONG_RECORDING_S` (30 s) are classified
  whole, in batches of files of similar length (at most ``--batch-size`` files and
  :data:`BATCH_SECONDS` of padded audio per batch). A batch the model fails on (out of memory,
  a file it cannot handle) is retried file by file, so one file never takes others down.
- Longer recordings (a conversation, a call) are streamed, split into speech segments
  (:class:`~qieemo_lobes.segmentation.SpeechSegmenter`: Silero VAD, energy detector as fallback)
  and each segment is classified (segments under :data:`~qieemo_lobes.audio.MIN_SECONDS` are
  skipped); the recording's overall probabilities are the mean of the segments' probabilities
  weighted by segment duration, its label their argmax. Memory stays bounded by a block of audio
  and a batch of segments, whatever the length of the file.
  ``--plot DIR`` draws each long recording's emotion timeline as ``DIR/<name>.png``.
- The model sees each clip or segment with its mean (DC offset) removed; see
  :func:`qieemo_lobes.interfaces.remove_dc`.

Output, one record per input: first the arguments that matched nothing (a missing path, an
empty folder, a folder that cannot be searched), then the files in the order given (folders and
globs expanded in sorted order), each written as soon as it and every input before it are done:

- ``json``: JSON Lines, ``{"path", "label", "confidence", "probabilities": {label: p},
  "duration_s", "segments": [{"start_s", "end_s", "label", "confidence", "probabilities"}]}``
  (``segments`` is empty for a recording classified whole) or ``{"path", "error"}``. Numbers are
  always finite (no ``NaN`` in the JSON).
- ``csv``: ``path, segment, start_s, end_s, duration_s, label, confidence, <one column per
  class>, error``: one row per file (``segment`` empty), then one per segment (1, 2, ...).
- ``table`` (default): aligned columns for people.

Where the output goes (default: stdout):

- ``--out FILE``, a new path or a regular file (through a symlink: the link's target is replaced
  and the link kept): written as an unnamed or hidden temporary file in its folder and renamed
  into place only when the run succeeds (:func:`qieemo_lobes.files.atomic_open`). A failed or
  interrupted run leaves the old file, or none, and no temporary file.
- ``--out`` a pipe, FIFO or character device (``/dev/stdout``, ``/dev/null``, a terminal):
  written directly, record by record, never replaced.
- Refused before anything is classified (exit 2): a directory, a socket or block device, and any
  input file (also one found in a folder or by a glob, or reached through a link).

Problems are one line each on stderr, never a traceback:

===================================  ======================================================  ====
situation                            on stderr                                               exit
===================================  ======================================================  ====
every input classified               nothing                                                 0
bad input file                       ``<path>: <problem>`` after the results (the table of   1
                                     :mod:`qieemo_lobes.audio`: missing, empty, corrupt,
                                     truncated, not audio, NaN/inf samples, too short,
                                     silence or a DC offset only, a FIFO or ``/dev/zero``);
                                     the other files are still classified
a folder that cannot be searched     ``<folder>: cannot search this folder (...)``           1
the model fails on a file            ``<path>: cannot classify (...)``                       1
non-finite model output              ``<path>: the model returned non-finite probabilities   1
                                     (damaged model?)``; never a NaN result
a timeline plot cannot be written    ``<png>: cannot write the timeline plot (...)``; every  1
                                     result is still written
the output cannot be written         ``classify: <out>: cannot write the results (...)``     1
                                     (disk full, ``/dev/full``, a closed pipe); the run
                                     stops, a ``--out`` file is left as it was
Ctrl-C (SIGINT) or SIGTERM           ``classify: interrupted``; as above for ``--out``       130
nothing can run                      ``classify: <problem>`` (no model, model refused, bad   2
                                     option, ``--out`` refused), before classifying
===================================  ======================================================  ====

Silence is reported as silence, never given an emotion.

On CPU the command uses one torch thread per core that is idle when it starts (set
``OMP_NUM_THREADS`` to choose), and idle OpenMP threads sleep rather than spin: on a shared
2-core machine a spinning second thread made classification 3 times slower.

Example
-------
>>> aggregate([(0.0, 1.0, [0.25, 0.75]), (1.0, 3.0, [0.625, 0.375])])
[0.5, 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qieemo_lobes.files import atomic_open, terminate_as_interrupt

__all__ = [
    "DEFAULT_MODEL_DIR",
    "NON_FINITE_PROBLEM",
    "FileResult",
    "aggregate",
    "main",
    "plot_timeline",
]

# The default model folder, shipped in the package (written by ``python -m qieemo_lobes.export``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
FORMATS = ("table", "json", "csv")
# Segments of a long recording are gathered this many batches at a time, then sorted by length.
SEGMENT_BUFFER_BATCHES = 4
# At most this much padded audio per batch: the encoder's attention grows with the square of the
# length: 2 segments of 26 s take 250 MB more than one (whisper-base), 8 well over 1 GB.
BATCH_SECONDS = 30.0
NON_FINITE_PROBLEM = "the model returned non-finite probabilities (damaged model?)"
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
TRUST_HELP = (
    "load a model folder that python -m qieemo_lobes.export did not write: its hyperparams.yaml "
    "is code (HyperPyYAML builds and calls what it names) and then runs as written; by default "
    "only model folders written by python -m qieemo_lobes.export load. Pass --trust-model only "
    "for folders you trust"
)


@dataclass
class FileResult:
    """The result for one input: probabilities (and segments) or an error."""

    path: str
    duration_s: float | None = None
    probabilities: list[float] | None = None
    segments: list[dict] = field(default_factory=list)
    error: str | None = None


def aggregate(segments: list[tuple[float, float, list[float]]]) -> list[float]:
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


class _ModelProblem(Exception):
    """The model could not classify something; ``str()`` is the problem for the file's line."""


class _Engine:
    """Runs a recognizer over files: short ones batched by length, long ones segmented."""

    def __init__(self, recognizer, batch_size: int):
        from qieemo_lobes.segmentation import SpeechSegmenter

        self.recognizer = recognizer
        self.batch_size = batch_size
        self.segmenter = SpeechSegmenter()

    def _classify(self, wavs: list) -> list[list[float]]:
        import torch
        from speechbrain.utils.data_utils import batch_pad_right

        padded, lens = batch_pad_right(wavs)
        out_prob, _, _, _ = self.recognizer.classify_batch(padded, torch.as_tensor(lens))
        return out_prob.exp().cpu().tolist()

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

    def batches(self, items: list, seconds) -> Iterator[list]:
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
        from qieemo_lobes.audio import AudioError, load_audio

        for batch in self.batches(items, seconds=lambda item: item[2]):
            loaded = []
            for index, path, duration in batch:
                try:
                    wav = load_audio(path, target_sr=self.recognizer.sample_rate)
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
        from qieemo_lobes.audio import MIN_SECONDS, SILENCE_PROBLEM, AudioError
        from qieemo_lobes.segmentation import iter_segment_waveforms

        rate = self.recognizer.sample_rate
        try:
            spans = self.segmenter(path)
            if not spans:
                return FileResult(path, duration, error=SILENCE_PROBLEM)
            classified: list[tuple[float, float, list[float]]] = []
            buffer: list[tuple[float, float, object]] = []
            limit = self.batch_size * SEGMENT_BUFFER_BATCHES
            for start, end, wav in iter_segment_waveforms(path, spans, rate):
                if len(wav) >= MIN_SECONDS * rate:  # as load_audio: too short to classify
                    buffer.append((start, end, wav))
                if len(buffer) >= limit:
                    classified += self._classify_segments(buffer)
                    buffer = []
            classified += self._classify_segments(buffer)
        except AudioError as err:
            return FileResult(path, duration, error=err.problem)
        except _ModelProblem as err:
            return FileResult(path, duration, error=str(err))
        except Exception as err:  # anything else: one line for this file, the run goes on
            return FileResult(path, duration, error=_unexpected(err))
        if not classified:
            return FileResult(path, duration, error=SILENCE_PROBLEM)
        classified.sort(key=lambda seg: seg[0])
        labels = self.recognizer.labels
        segments = [
            {
                "start_s": round(start, 3),
                "end_s": round(end, 3),
                **_label_fields(probs, labels),
            }
            for start, end, probs in classified
        ]
        return FileResult(path, duration, aggregate(classified), segments)

    def _classify_segments(self, buffer: list) -> list[tuple[float, float, list[float]]]:
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


def _describe(err: BaseException) -> str:
    """``RuntimeError("x\ny")`` -> ``"RuntimeError: x y"`` (one line)."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}{': ' + message if message else ''}"


def _unexpected(err: Exception) -> str:
    return f"cannot classify ({_describe(err)})"


def _label_fields(probs: list[float], labels: list[str]) -> dict:
    best = max(range(len(probs)), key=probs.__getitem__)
    return {
        "label": labels[best],
        "confidence": round(probs[best], 4),
        "probabilities": {lab: round(p, 4) for lab, p in zip(labels, probs, strict=True)},
    }


def _plan(paths: list[str]) -> list:
    """One entry per input: a ``FileResult`` with an error, or ``(path, duration_s)``."""
    from qieemo_lobes.audio import AudioError, audio_info, find_audio

    files, errors = find_audio(paths)
    plan: list = [FileResult(path, error=problem) for path, problem in errors]
    for path in files:
        try:
            plan.append((path, float(audio_info(path).duration)))
        except AudioError as err:
            plan.append(FileResult(path, error=err.problem))
        except Exception as err:  # an unforeseen failure reading the header: still one line
            plan.append(FileResult(path, error=_unexpected(err)))
    return plan


def _run(plan: list, recognizer, batch_size: int) -> Iterator[tuple[int, FileResult]]:
    from qieemo_lobes.segmentation import LONG_RECORDING_S

    engine = _Engine(recognizer, batch_size)
    short = [(i, p[0], p[1]) for i, p in enumerate(plan) if isinstance(p, tuple)]
    long = [item for item in short if item[2] > LONG_RECORDING_S]
    short = [item for item in short if item[2] <= LONG_RECORDING_S]
    yield from engine.short_files(short)
    for index, path, duration in long:
        yield index, engine.long_file(path, duration)


# ------------------------------------------------------------------------------------------------
# Output


class _Writer:
    """Writes records in input order as soon as all earlier inputs are done."""

    def __init__(self, stream, fmt: str, labels: list[str]):
        self.stream = stream
        self.fmt = fmt
        self.labels = labels
        self.pending: dict[int, FileResult] = {}
        self.next = 0
        self.table_rows: list[list[str]] = []
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(
                ["path", "segment", "start_s", "end_s", "duration_s", "label", "confidence"]
                + labels
                + ["error"]
            )

    def add(self, index: int, result: FileResult) -> None:
        self.pending[index] = result
        while self.next in self.pending:
            self._write(self.pending.pop(self.next))
            self.next += 1
        if self.fmt != "table":
            self.stream.flush()

    def _write(self, result: FileResult) -> None:
        getattr(self, f"_write_{self.fmt}")(result)

    def _write_json(self, result: FileResult) -> None:
        if result.error is not None:
            record = {"path": result.path, "error": result.error}
        else:
            record = {
                "path": result.path,
                **_label_fields(result.probabilities, self.labels),
                "duration_s": round(result.duration_s, 3),
                "segments": result.segments,
            }
        self.stream.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")

    def _write_csv(self, result: FileResult) -> None:
        duration = "" if result.duration_s is None else f"{result.duration_s:.3f}"
        if result.error is not None:
            self.csv.writerow(
                [result.path, "", "", "", duration, "", ""]
                + [""] * len(self.labels)
                + [result.error]
            )
            return
        fields = _label_fields(result.probabilities, self.labels)
        self.csv.writerow(self._csv_row(result.path, "", "", "", duration, fields))
        for k, seg in enumerate(result.segments, start=1):
            row = self._csv_row(
                result.path, k, f"{seg['start_s']:.3f}", f"{seg['end_s']:.3f}", "", seg
            )
            self.csv.writerow(row)

    def _csv_row(self, path, segment, start, end, duration, fields) -> list:
        probs = [f"{fields['probabilities'][lab]:.4f}" for lab in self.labels]
        confidence = f"{fields['confidence']:.4f}"
        return [path, segment, start, end, duration, fields["label"], confidence, *probs, ""]

    def _write_table(self, result: FileResult) -> None:
        duration = "" if result.duration_s is None else f"{result.duration_s:.2f}"
        if result.error is not None:
            self.table_rows.append([result.path, duration, "ERROR", result.error])
            return
        fields = _label_fields(result.probabilities, self.labels)
        probs = [f"{fields['probabilities'][lab]:.2f}" for lab in self.labels]
        note = f"{len(result.segments)} segments" if result.segments else ""
        self.table_rows.append(
            [result.path, duration, fields["label"], f"{fields['confidence']:.2f}", *probs, note]
        )
        for seg in result.segments:
            probs = [f"{seg['probabilities'][lab]:.2f}" for lab in self.labels]
            span = f"  {seg['start_s']:.1f}-{seg['end_s']:.1f} s"
            self.table_rows.append([span, "", seg["label"], f"{seg['confidence']:.2f}", *probs, ""])

    def close(self) -> None:
        if self.fmt != "table":
            return
        header = ["path", "seconds", "label", "conf", *self.labels, ""]
        rows = [header] + self.table_rows
        n_cols = len(header)
        widths = [
            max(len(row[c]) for row in rows if c < len(row) and not _is_error(row))
            for c in range(n_cols)
        ]
        for row in rows:
            if _is_error(row):  # path, duration, then the problem in one cell
                line = f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  error: {row[3]}"
            else:
                cells = [f"{row[0]:<{widths[0]}}", f"{row[1]:>{widths[1]}}"]
                cells += [f"{row[2]:<{widths[2]}}"]
                cells += [f"{cell:>{widths[c]}}" for c, cell in enumerate(row[3:-1], start=3)]
                line = "  ".join(cells) + (f"  {row[-1]}" if row[-1] else "")
            self.stream.write(line.rstrip() + "\n")


def _is_error(row: list[str]) -> bool:
    return len(row) == 4 and row[2] == "ERROR"


def plot_timeline(result: FileResult, labels: list[str], path: Path) -> None:
    """Draw a long recording's emotion timeline (stacked probabilities per segment) as a PNG.

    Arguments
    ---------
    result : FileResult
        A segmented recording.
    labels : list of str
        The classes, in model order.
    path : pathlib.Path
        The PNG to write (:func:`qieemo_lobes.files.atomic_open`: whole or not at all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(12, 3.6), sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    for seg in result.segments:
        start, width = seg["start_s"], seg["end_s"] - seg["start_s"]
        bottom = 0.0
        for k, lab in enumerate(labels):
            p = seg["probabilities"][lab]
            ax.bar(start, p, width, bottom=bottom, align="edge", color=colors(k % 10), lw=0)
            bottom += p
        k = labels.index(seg["label"])
        strip.bar(start, 1.0, width, align="edge", color=colors(k % 10), lw=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors(k % 10)) for k in range(len(labels))]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    overall = _label_fields(result.probabilities, labels)
    ax.set_title(
        f"{Path(result.path).name}: {overall['label']} overall "
        f"({overall['confidence']:.2f}, {len(result.segments)} speech segments)",
        fontsize=10,
    )
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    strip.set_yticks([])
    strip.set_ylabel("label", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    strip.set_xlim(0, max(result.duration_s or 0.0, result.segments[-1]["end_s"]))
    try:
        fig.tight_layout()
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)


def _plot_name(result_path: str, plot_dir: Path, used: set[str]) -> Path:
    stem = Path(result_path).stem or "recording"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.png"
    used.add(name)
    return plot_dir / name


# ------------------------------------------------------------------------------------------------
# Command line


class _Refused(Exception):
    """Nothing can run (no model, bad option): one line, exit code 2."""


class _OutputError(Exception):
    """The results cannot be written; ``str()`` is one line naming the output."""

    def __init__(self, name: str, err: OSError):
        super().__init__(f"{name}: cannot write the results ({_os_problem(err)})")


def _os_problem(err: OSError) -> str:
    """``OSError(28, "No space left on device")`` -> ``"no space left on device"``."""
    text = err.strerror or " ".join(str(err).split()) or type(err).__name__
    return text[:1].lower() + text[1:]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qieemo_lobes.classify",
        description="Recognise the emotion in speech recordings (files, directories, globs). "
        "Recordings over 30 s are split into speech segments, each classified.",
        epilog="A model folder's hyperparams.yaml is code: by default only model folders "
        "written by python -m qieemo_lobes.export load; pass --trust-model only for folders "
        "you trust. Exit status: 0 all classified, 1 some input (or the output) failed, "
        "2 nothing could run, 130 interrupted.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files, directories, globs")
    parser.add_argument(
        "--model",
        metavar="DIR",
        help=f"model folder (python -m qieemo_lobes.export); default {DEFAULT_MODEL_DIR}",
    )
    parser.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write the results to this file (default: stdout); a regular file is replaced "
        "only when the run succeeds, a pipe or device (/dev/stdout) is written directly; "
        "never one of the input files",
    )
    parser.add_argument("--plot", metavar="DIR", help="emotion timeline PNG per long recording")
    parser.add_argument("--batch-size", type=int, default=8, help="files per batch (default 8)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu"
    )
    return parser


def _quiet_libraries() -> None:
    """Silence library chatter (progress bars, 'model is frozen' notices) on stderr."""
    os.environ["SB_LOG_LEVEL"] = "ERROR"  # read by speechbrain.utils.logger.get_logger
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("speechbrain", "transformers", "huggingface_hub", "qieemo_lobes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" not in sys.modules:
        # Not imported (never, with TorchWhisperBlocks: importing it costs seconds); if a model
        # needs it later, its import reads the variables above.
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # transformers changed: chatter only
        pass


def _return_freed_memory() -> None:
    """Let glibc serve large blocks with mmap, so that freed ones go back to the system at once.

    The encoder's activations change size with every batch; from the default heap they fragment
    it, and on a 5-minute recording of continuous speech (segments up to 30 s, whisper-base) the
    peak resident memory measured 1.38 GB instead of 1.15 GB with this setting. No-op off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: blocks of 1 MiB and more
    except (OSError, AttributeError):
        pass


def _passive_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin (read when torch is first imported).

    With spinning threads, any other busy process on a 2-core machine stalls every parallel
    operation: a batch of 8 clips took 1.8-2.7 s with 2 spinning threads, 0.85-0.9 s with 2
    passive ones and 0.6-0.7 s with 1 thread (whisper-base, load average about 3).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _set_threads(torch) -> int:
    """Use the cores that are idle now (at least one), unless ``OMP_NUM_THREADS`` says otherwise.

    See :func:`_passive_openmp` for why a busy core should not get a thread.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
        torch.set_num_threads(max(1, min(cores or 1, (cores or 1) - busy)))
    return torch.get_num_threads()


def _load_model(model_dir: Path, device: str, trust_code: bool = False):
    from qieemo_lobes.interfaces import EmotionRecognizer

    try:
        return EmotionRecognizer.from_hparams(
            source=str(model_dir), run_opts={"device": device}, trust_code=trust_code
        )
    except Exception as err:  # any failure to build the model: one line, not a traceback
        message = " ".join(str(err).split()) or type(err).__name__
        raise _Refused(f"{model_dir}: cannot load the model ({message})") from None


@dataclass
class _Output:
    """Where the results go: ``path`` None is stdout; ``direct``: written in place, no rename."""

    name: str
    path: str | None = None
    direct: bool = False


# What a file that is neither a regular file nor a directory is, for messages.
_SPECIAL_FILES = (
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISBLK, "a block device"),
)


def _is_descriptor_alias(path: str) -> bool:
    """``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``: an open descriptor."""
    absolute = os.path.abspath(path)
    if absolute in ("/dev/stdout", "/dev/stderr"):
        return True
    return os.path.realpath(os.path.dirname(absolute)) == f"/proc/{os.getpid()}/fd"


def _output(out: str | None, inputs: list[str]) -> _Output:
    """Check ``--out`` before anything runs (:class:`_Refused`) and say how to write it.

    A new path or a regular file is written atomically (a symlink's target is replaced, the link
    kept); a pipe, FIFO or character device directly; anything else, or an input file, is
    refused.
    """
    if out is None:
        return _Output("stdout")
    try:
        info = os.stat(out)
    except FileNotFoundError:
        info = None
    except OSError as err:
        raise _Refused(f"{out}: cannot write ({_os_problem(err)})") from None
    if info is None:  # a new file (or the missing target of a symlink: created there)
        target = os.path.realpath(out) if os.path.islink(out) else os.path.abspath(out)
        folder = os.path.dirname(target)
        if not os.path.isdir(folder):
            shown = folder if os.path.islink(out) else (os.path.dirname(out) or ".")
            raise _Refused(f"{out}: folder {shown} does not exist")
        return _Output(out, target)
    if stat.S_ISDIR(info.st_mode):
        raise _Refused(f"{out}: is a directory")
    for path in inputs:
        try:
            same = os.path.samestat(info, os.stat(path))
        except OSError:
            continue
        if same:
            what = "" if path == out else f" ({path})"
            raise _Refused(
                f"{out}: is one of the input files{what}; the results would overwrite it "
                "(choose another --out)"
            )
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode) or _is_descriptor_alias(out):
        return _Output(out, out, direct=True)
    if stat.S_ISREG(info.st_mode):
        return _Output(out, os.path.realpath(out))
    kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "a special file")
    raise _Refused(f"{out}: is {kind}, not a file, pipe or character device to write to")


class _Stream:
    """A text stream whose write errors become one :class:`_OutputError` naming the output."""

    def __init__(self, fh: IO[str], name: str):
        self.fh = fh
        self.name = name

    def write(self, text: str) -> int:
        try:
            return self.fh.write(text)
        except OSError as err:
            raise _OutputError(self.name, err) from None

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as err:
            raise _OutputError(self.name, err) from None


@contextlib.contextmanager
def _open_output(output: _Output) -> Iterator[_Stream]:
    """Open the output for the run; it is complete (a file renamed into place) on a clean exit.

    Raises :class:`_Refused` if it cannot be opened, :class:`_OutputError` if it cannot be
    written; when the run fails, a ``--out`` file is left as it was and no temporary file stays.
    """
    if output.path is None:
        stream = _Stream(sys.stdout, output.name)
        yield stream
        stream.flush()
        return
    opened = False
    failure: BaseException | None = None
    opener: Any
    if output.direct:  # appending: never truncates what a shell redirection opened
        opener = lambda: open(output.path, "a", encoding="utf-8", newline="")  # noqa: E731
    else:
        opener = lambda: atomic_open(output.path, "w", newline="")  # noqa: E731
    try:
        with opener() as fh:
            opened = True
            try:
                yield _Stream(fh, output.name)
            except BaseException as err:
                failure = err
                raise
    except OSError as err:  # opening, or the final flush, close or rename
        if not opened:
            raise _Refused(f"{output.name}: cannot write ({_os_problem(err)})") from None
        if failure is not None:  # closing after a failure failed too: the first problem counts
            raise failure from None
        raise _OutputError(output.name, err) from None


def _detach_stdout() -> None:
    """After stdout failed, point it at /dev/null so that Python's exit flush stays silent."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None, configure_process: bool = True) -> int:
    """Run the command; returns the exit code (see the table in the module docstring).

    0: all classified, 1: some input failed or the output could not be written, 2: refused
    (nothing could run), 130: interrupted (Ctrl-C; ``SIGTERM`` too with ``configure_process``).

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).
    configure_process : bool
        Apply the process-wide settings of the command (library logging, malloc, OpenMP
        waiting, torch threads, ``SIGTERM`` handled as Ctrl-C). Pass False when calling from a
        program of your own.

    Returns
    -------
    int
    """
    args = _parser().parse_args(argv)
    try:
        with terminate_as_interrupt() if configure_process else contextlib.nullcontext():
            return _main(args, configure_process)
    except _Refused as err:
        print(f"classify: {err}", file=sys.stderr)
        return 2
    except _OutputError as err:
        print(f"classify: {err}", file=sys.stderr)
        if args.out is None:
            _detach_stdout()
        return 1
    except KeyboardInterrupt:
        print("classify: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _main(args: argparse.Namespace, configure_process: bool) -> int:
    if args.batch_size < 1:
        raise _Refused(f"--batch-size must be at least 1, got {args.batch_size}")
    model_dir = Path(args.model).expanduser() if args.model else DEFAULT_MODEL_DIR
    if not (model_dir / "hyperparams.yaml").is_file():
        if args.model is None:
            raise _Refused(
                f"default model not found at {model_dir} (not shipped with this checkout); "
                "pass --model DIR"
            )
        if not model_dir.is_dir():
            raise _Refused(f"{model_dir}: model folder not found")
        raise _Refused(f"{model_dir}: not a model folder (no hyperparams.yaml)")
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _Refused(f"{plot_dir}: cannot create plot folder ({_os_problem(err)})") from None

    if configure_process:
        _quiet_libraries()
        _return_freed_memory()
        _passive_openmp()
    import torch

    if configure_process:
        _set_threads(torch)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise _Refused("--device cuda: no CUDA device available")

    plan = _plan(args.paths)
    output = _output(
        args.out, [item.path if isinstance(item, FileResult) else item[0] for item in plan]
    )
    failures: list[FileResult] = []
    plot_failures: list[str] = []
    with _open_output(output) as stream:
        n_runnable = sum(isinstance(item, tuple) for item in plan)
        recognizer = (
            _load_model(model_dir, device, trust_code=args.trust_model) if n_runnable else None
        )
        labels = recognizer.labels if recognizer is not None else _labels_of(model_dir)
        writer = _Writer(stream, args.format, labels)
        used_names: set[str] = set()
        results = ((i, item) for i, item in enumerate(plan) if isinstance(item, FileResult))
        if recognizer is not None:
            results = _chain(results, _run(plan, recognizer, args.batch_size))
        for index, result in results:
            if result.error is not None:
                failures.append(result)
            elif plot_dir is not None and result.segments:
                png = _plot_name(result.path, plot_dir, used_names)
                try:
                    plot_timeline(result, labels, png)
                except Exception as err:  # the results matter more than a picture: go on
                    problem = _os_problem(err) if isinstance(err, OSError) else _describe(err)
                    plot_failures.append(f"{png}: cannot write the timeline plot ({problem})")
            writer.add(index, result)
        writer.close()
    for result in failures:
        print(f"{result.path}: {result.error}", file=sys.stderr)
    for line in plot_failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"classify: {len(failures)} of {len(plan)} inputs failed", file=sys.stderr)
    if plot_failures:
        print(f"classify: {len(plot_failures)} timeline plots not written", file=sys.stderr)
    return 1 if failures or plot_failures else 0


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


def _labels_of(model_dir: Path) -> list[str]:
    """The classes named in a model's hyperparams.yaml (when no input needed the model)."""
    from ruamel.yaml import YAML

    try:
        with open(model_dir / "hyperparams.yaml") as fh:
            return [str(c) for c in YAML().load(fh).get("classes", [])]
    except Exception:
        return []


if __name__ == "__main__":
    sys.exit(main())
