"""Where and how ``python -m qieemo_lobes.classify`` writes its results and timeline plots.

- :func:`check_output` checks ``--out`` before anything is classified and says how to write it:
  a new path or a regular file (through a symlink: the link's target) atomically, with
  :func:`qieemo_lobes.files.atomic_open`; a pipe, FIFO or character device (``/dev/stdout``,
  ``/dev/null``, a terminal) directly, never replaced. A directory, a socket or block device and
  any input file are refused (:class:`OutputRefused`).
- :func:`open_output` opens it for the run: a ``--out`` file is renamed into place only when the
  run succeeds; a write that fails is one :class:`OutputError` naming the output.
- :class:`ResultWriter` writes one record per input in input order, each as soon as it and every
  input before it are done: ``json`` (JSON Lines), ``csv`` or ``table`` (aligned columns, written
  when the run ends); with ``top_k`` also the K most probable labels of each file and segment.
- :func:`plot_timeline` draws a segmented recording's emotion timeline;
  :class:`TimelinePlots` names the PNGs of a ``--plot`` folder (:func:`make_plot_dir`) and keeps
  a line for each plot that could not be written.

Example
-------
>>> import io
>>> from qieemo_lobes.classify_engine import FileResult
>>> out = io.StringIO()
>>> writer = ResultWriter(out, "csv", ["angry", "sad"])
>>> writer.add(1, FileResult("b.wav", error="empty file (0 bytes)"))  # waits for input 0
>>> writer.add(0, FileResult("a.wav", 2.0, [0.25, 0.75]))
>>> print(out.getvalue(), end="")
path,segment,start_s,end_s,duration_s,label,confidence,angry,sad,error
a.wav,,,,2.000,sad,0.7500,0.2500,0.7500,
b.wav,,,,,,,,,empty file (0 bytes)
>>> out = io.StringIO()
>>> writer = ResultWriter(out, "csv", ["angry", "sad"], top_k=2)
>>> writer.add(0, FileResult("a.wav", 2.0, [0.25, 0.75]))
>>> print(out.getvalue(), end="")
path,segment,start_s,end_s,duration_s,label,confidence,angry,sad,top1,top1_p,top2,top2_p,error
a.wav,,,,2.000,sad,0.7500,0.2500,0.7500,sad,0.7500,angry,0.2500,
>>> try:
...     check_output(".", inputs=[])
... except OutputRefused as err:
...     print(err)
.: is a directory
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from qieemo_lobes.classify_engine import FileResult, describe, label_fields, top_labels
from qieemo_lobes.files import atomic_open

__all__ = [
    "FORMATS",
    "Output",
    "OutputError",
    "OutputRefused",
    "OutputStream",
    "ResultWriter",
    "TimelinePlots",
    "check_output",
    "detach_stdout",
    "make_plot_dir",
    "open_output",
    "os_problem",
    "plot_timeline",
]

FORMATS = ("table", "json", "csv")


class OutputRefused(Exception):
    """``--out`` or ``--plot`` cannot be used: one line; nothing is classified (exit code 2)."""


class OutputError(Exception):
    """The results cannot be written; ``str()`` is one line naming the output."""

    def __init__(self, name: str, err: OSError):
        super().__init__(f"{name}: cannot write the results ({os_problem(err)})")


def os_problem(err: OSError) -> str:
    """``OSError(28, "No space left on device")`` -> ``"no space left on device"``."""
    text = err.strerror or " ".join(str(err).split()) or type(err).__name__
    return text[:1].lower() + text[1:]


# ------------------------------------------------------------------------------------------------
# --out: checked before the run, opened for it


@dataclass
class Output:
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


def check_output(out: str | None, inputs: list[str]) -> Output:
    """Check ``--out`` before anything runs (:class:`OutputRefused`) and say how to write it.

    A new path or a regular file is written atomically (a symlink's target is replaced, the link
    kept); a pipe, FIFO or character device directly; anything else, or one of ``inputs``, is
    refused.
    """
    if out is None:
        return Output("stdout")
    try:
        info = os.stat(out)
    except FileNotFoundError:
        return _new_file(out)
    except OSError as err:
        raise OutputRefused(f"{out}: cannot write ({os_problem(err)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise OutputRefused(f"{out}: is a directory")
    _refuse_input_file(out, info, inputs)
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode) or _is_descriptor_alias(out):
        return Output(out, out, direct=True)
    if stat.S_ISREG(info.st_mode):
        return Output(out, os.path.realpath(out))
    kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "a special file")
    raise OutputRefused(f"{out}: is {kind}, not a file, pipe or character device to write to")


def _new_file(out: str) -> Output:
    """A new file (or the missing target of a symlink: created there), if its folder exists."""
    target = os.path.realpath(out) if os.path.islink(out) else os.path.abspath(out)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        shown = folder if os.path.islink(out) else (os.path.dirname(out) or ".")
        raise OutputRefused(f"{out}: folder {shown} does not exist")
    return Output(out, target)


def _refuse_input_file(out: str, info: os.stat_result, inputs: list[str]) -> None:
    """Refuse ``out`` (``os.stat`` gave ``info``) if it is one of ``inputs``, however reached."""
    for path in inputs:
        try:
            same = os.path.samestat(info, os.stat(path))
        except OSError:
            continue
        if same:
            what = "" if path == out else f" ({path})"
            raise OutputRefused(
                f"{out}: is one of the input files{what}; the results would overwrite it "
                "(choose another --out)"
            )


class OutputStream:
    """A text stream whose write errors become one :class:`OutputError` naming the output."""

    def __init__(self, fh: IO[str], name: str):
        self.fh = fh
        self.name = name

    def write(self, text: str) -> int:
        try:
            return self.fh.write(text)
        except OSError as err:
            raise OutputError(self.name, err) from None

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as err:
            raise OutputError(self.name, err) from None


@contextlib.contextmanager
def open_output(output: Output) -> Iterator[OutputStream]:
    """Open the output for the run; it is complete (a file renamed into place) on a clean exit.

    Raises :class:`OutputRefused` if it cannot be opened, :class:`OutputError` if it cannot be
    written; when the run fails, a ``--out`` file is left as it was and no temporary file stays.
    """
    if output.path is None:
        stream = OutputStream(sys.stdout, output.name)
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
                yield OutputStream(fh, output.name)
            except BaseException as err:
                failure = err
                raise
    except OSError as err:  # opening, or the final flush, close or rename
        if not opened:
            raise OutputRefused(f"{output.name}: cannot write ({os_problem(err)})") from None
        if failure is not None:  # closing after a failure failed too: the first problem counts
            raise failure from None
        raise OutputError(output.name, err) from None


def detach_stdout() -> None:
    """After stdout failed, point it at /dev/null so that Python's exit flush stays silent."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# ------------------------------------------------------------------------------------------------
# The records: table, JSON Lines, CSV


class ResultWriter:
    """Writes records in input order as soon as all earlier inputs are done.

    Arguments
    ---------
    stream : text stream
        Where to write (``write`` and ``flush``).
    fmt : str
        One of :data:`FORMATS`.
    labels : list of str
        The classes, in model order.
    top_k : int, optional
        Also write the ``top_k`` most probable labels of each file and segment (1 to the number
        of classes; ties in model order): JSON ``"top": [{"label", "probability"}, ...]``; CSV
        columns ``top1, top1_p, ..., topK, topK_p`` (label, probability) before ``error``; a
        table column ``top`` (``sad (0.75), happy (0.20)``) after ``conf``. None (default):
        the records are written without them.
    """

    def __init__(self, stream: Any, fmt: str, labels: list[str], top_k: int | None = None):
        if top_k is not None and not 1 <= top_k <= len(labels):
            raise ValueError(f"top_k must be between 1 and {len(labels)}, got {top_k}")
        self.stream = stream
        self.fmt = fmt
        self.labels = labels
        self.top_k = top_k
        self.pending: dict[int, FileResult] = {}
        self.next = 0
        self.table_rows: list[list[str]] = []
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            top = [f"top{k}{suffix}" for k in range(1, (top_k or 0) + 1) for suffix in ("", "_p")]
            self.csv.writerow(
                ["path", "segment", "start_s", "end_s", "duration_s", "label", "confidence"]
                + labels
                + top
                + ["error"]
            )

    def _top(self, fields: dict) -> list[dict[str, Any]]:
        """The top-k entries of a record's (or segment's) fields, its label first."""
        probs = [fields["probabilities"][lab] for lab in self.labels]
        return top_labels(probs, self.labels, self.top_k or 0, first=fields["label"])

    def add(self, index: int, result: FileResult) -> None:
        """The result of input ``index`` (0, 1, ...): written once every earlier one is."""
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
            fields = label_fields(result.probabilities, self.labels)
            segments = result.segments
            if self.top_k:
                fields["top"] = top_labels(
                    result.probabilities, self.labels, self.top_k, first=fields["label"]
                )
                segments = [{**seg, "top": self._top(seg)} for seg in segments]
            record = {
                "path": result.path,
                **fields,
                "duration_s": round(result.duration_s, 3),
                "segments": segments,
            }
        self.stream.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")

    def _write_csv(self, result: FileResult) -> None:
        duration = "" if result.duration_s is None else f"{result.duration_s:.3f}"
        if result.error is not None:
            self.csv.writerow(
                [result.path, "", "", "", duration, "", ""]
                + [""] * (len(self.labels) + 2 * (self.top_k or 0))
                + [result.error]
            )
            return
        fields = label_fields(result.probabilities, self.labels)
        self.csv.writerow(self._csv_row(result.path, "", "", "", duration, fields))
        for k, seg in enumerate(result.segments, start=1):
            row = self._csv_row(
                result.path, k, f"{seg['start_s']:.3f}", f"{seg['end_s']:.3f}", "", seg
            )
            self.csv.writerow(row)

    def _csv_row(
        self, path: str, segment: int | str, start: str, end: str, duration: str, fields: dict
    ) -> list:
        probs = [f"{fields['probabilities'][lab]:.4f}" for lab in self.labels]
        confidence = f"{fields['confidence']:.4f}"
        top = [
            cell
            for entry in (self._top(fields) if self.top_k else [])
            for cell in (entry["label"], f"{entry['probability']:.4f}")
        ]
        return [path, segment, start, end, duration, fields["label"], confidence, *probs, *top, ""]

    def _top_cell(self, fields: dict) -> list[str]:
        """The table's ``top`` cell (none without ``top_k``): ``sad (0.75), happy (0.20)``."""
        if not self.top_k:
            return []
        return [", ".join(f"{e['label']} ({e['probability']:.2f})" for e in self._top(fields))]

    def _write_table(self, result: FileResult) -> None:
        duration = "" if result.duration_s is None else f"{result.duration_s:.2f}"
        if result.error is not None:
            self.table_rows.append([result.path, duration, "ERROR", result.error])
            return
        fields = label_fields(result.probabilities, self.labels)
        probs = [f"{fields['probabilities'][lab]:.2f}" for lab in self.labels]
        note = f"{len(result.segments)} segments" if result.segments else ""
        conf, top = f"{fields['confidence']:.2f}", self._top_cell(fields)
        self.table_rows.append([result.path, duration, fields["label"], conf, *top, *probs, note])
        for seg in result.segments:
            probs = [f"{seg['probabilities'][lab]:.2f}" for lab in self.labels]
            span = f"  {seg['start_s']:.1f}-{seg['end_s']:.1f} s"
            conf, top = f"{seg['confidence']:.2f}", self._top_cell(seg)
            self.table_rows.append([span, "", seg["label"], conf, *top, *probs, ""])

    def close(self) -> None:
        """End the output: the table (aligned on every row) is written now."""
        if self.fmt != "table":
            return
        top = ["top"] if self.top_k else []
        header = ["path", "seconds", "label", "conf", *top, *self.labels, ""]
        left = {0, 2, 4} if self.top_k else {0, 2}  # text columns; numbers are right-aligned
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
                cells = [
                    f"{cell:{'<' if c in left else '>'}{widths[c]}}"
                    for c, cell in enumerate(row[:-1])
                ]
                line = "  ".join(cells) + (f"  {row[-1]}" if row[-1] else "")
            self.stream.write(line.rstrip() + "\n")


def _is_error(row: list[str]) -> bool:
    return len(row) == 4 and row[2] == "ERROR"


# ------------------------------------------------------------------------------------------------
# Timeline plots (--plot DIR)


def make_plot_dir(plot: str | None) -> Path | None:
    """The ``--plot`` folder, created if needed (:class:`OutputRefused` if it cannot be)."""
    if not plot:
        return None
    plot_dir = Path(plot)
    try:
        plot_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputRefused(f"{plot_dir}: cannot create plot folder ({os_problem(err)})") from None
    return plot_dir


class TimelinePlots:
    """The timeline PNGs of segmented recordings in ``folder``: ``<name>.png``, ``<name>-2.png``...

    A plot that cannot be written costs only the plot: its line is kept in :attr:`failures`.
    """

    def __init__(self, folder: Path, labels: list[str]):
        self.folder = folder
        self.labels = labels
        self.used_names: set[str] = set()
        self.failures: list[str] = []

    def add(self, result: FileResult) -> None:
        """Plot ``result`` if it is a segmented recording (one classified whole has no timeline)."""
        if result.error is not None or not result.segments:
            return
        png = self._name(result.path)
        try:
            plot_timeline(result, self.labels, png)
        except Exception as err:  # the results matter more than a picture: go on
            problem = os_problem(err) if isinstance(err, OSError) else describe(err)
            self.failures.append(f"{png}: cannot write the timeline plot ({problem})")

    def _name(self, result_path: str) -> Path:
        stem = Path(result_path).stem or "recording"
        name, k = f"{stem}.png", 1
        while name in self.used_names:
            k += 1
            name = f"{stem}-{k}.png"
        self.used_names.add(name)
        return self.folder / name


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
    _draw_segments(ax, strip, result, labels, colors)
    _annotate(ax, strip, result, labels, colors)
    try:
        fig.tight_layout()
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)


def _draw_segments(ax: Any, strip: Any, result: FileResult, labels: list[str], colors: Any) -> None:
    """Each segment's probabilities stacked on ``ax``, its label's colour on ``strip``."""
    for seg in result.segments:
        start, width = seg["start_s"], seg["end_s"] - seg["start_s"]
        bottom = 0.0
        for k, lab in enumerate(labels):
            p = seg["probabilities"][lab]
            ax.bar(start, p, width, bottom=bottom, align="edge", color=colors(k % 10), lw=0)
            bottom += p
        k = labels.index(seg["label"])
        strip.bar(start, 1.0, width, align="edge", color=colors(k % 10), lw=0)


def _annotate(ax: Any, strip: Any, result: FileResult, labels: list[str], colors: Any) -> None:
    """The legend, the title (the overall label), axis labels and limits."""
    from matplotlib.patches import Rectangle

    handles = [Rectangle((0, 0), 1, 1, color=colors(k % 10)) for k in range(len(labels))]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    overall = label_fields(result.probabilities, labels)
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
