"""``classify --shard I/N``: one list of files classified by N processes or nodes, one output.

::

    python -m qieemo_lobes.classify calls/ --format csv --out calls.csv --shard 1/2 &
    python -m qieemo_lobes.classify calls/ --format csv --out calls.csv --shard 2/2
    torchrun --nproc_per_node=4 -m qieemo_lobes.classify calls/ --format csv --out calls.csv

- Shards count from 1: ``--shard I/N`` is shard I of N (``1 <= I <= N``; ``1/1``: not sharded).
  ``--shard auto``, or no ``--shard`` when ``WORLD_SIZE`` is above 1 (``torchrun``), takes
  ``RANK + 1`` of ``WORLD_SIZE`` from the environment. Anything else is refused in one line
  (exit 2), as is a sharded run without ``--out FILE`` (a new or regular file).
- Every shard expands the same inputs in the same order (folders and globs sorted) and takes
  its share of them (:func:`qieemo_lobes.sharding.shard`, balanced by duration), so each input
  is classified by exactly one shard. Its results go to ``FILE.part-I-of-N`` (written whole, by
  an atomic rename), with what the merge needs: each input's position, every number as
  computed, the model's classes, a digest of the inputs (their paths, sizes and modification
  times), the model folder, the backend and the ``torchrun`` launch (``TORCHELASTIC_RUN_ID``).
- **The last shard to finish merges.** Under a lock (``flock`` on ``FILE.part-lock``) a shard
  puts its part in place, then looks for all N parts of its run (the same digest); when they are
  all there it writes ``FILE`` from them, in input order and in the run's ``--format``, exactly
  as one process would have, and removes the parts and the lock file. A part of another run
  (other inputs, model or launch) is never merged: it waits to be replaced by its shard.
- Failures are reported once: by the merge, which lists every failed input (one line each, in
  input order) and every timeline plot not written, then the counts, and exits 1 if any. A shard
  that does not merge prints one line (its part, its counts, the shards still missing) and exits
  0 once its part is written, so that ``torchrun`` never stops the other shards because one of
  them met a bad file. A shard that cannot run at all exits 2 as usual.

Example
-------
>>> parse_shard("2/4", out="results.jsonl", environ={})
Shard(index=2, count=4)
>>> parse_shard(None, out=None, environ={"RANK": "0", "WORLD_SIZE": "2"})
Traceback (most recent call last):
...
ValueError: --shard 1/2 needs --out FILE: each shard writes FILE.part-I-of-N, the last to finish merges them into FILE
>>> print(parse_shard("1/1", out=None, environ={}), parse_shard(None, out=None, environ={}))
None None
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qieemo_lobes.classify_engine import FileResult
from qieemo_lobes.classify_output import Output, OutputStream, ResultWriter, open_output
from qieemo_lobes.sharding import environment_shard, shard

__all__ = ["PART_FORMAT", "PartWriter", "Shard", "ShardRun", "parse_shard", "run_shard"]

PART_FORMAT = "qieemo-classify-part-1"  # the first line of a part names its format


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (from 1) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(
    value: str | None, out: str | None, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """The shard of ``--shard VALUE`` (``I/N`` or ``auto``; None: ``auto`` when ``WORLD_SIZE``
    is above 1); None when the run is not sharded.

    Raises
    ------
    ValueError
        One line: a malformed value, I outside 1..N, ``auto`` without ``RANK`` and
        ``WORLD_SIZE``, or a sharded run without ``out``.
    """
    environ = os.environ if environ is None else environ
    if value is None:
        with contextlib.suppress(ValueError):  # not launched by torchrun: no sharding
            launched = environment_shard(environ)
            if launched is not None and launched[1] > 1:
                value = "auto"
        if value is None:
            return None
    if value.strip() == "auto":
        try:
            launched = environment_shard(environ)
        except ValueError as err:
            raise ValueError(f"--shard auto: {err}") from None
        if launched is None:
            raise ValueError(
                "--shard auto: RANK and WORLD_SIZE are not set (start the command with torchrun, "
                "or give --shard I/N)"
            )
        found = Shard(launched[0] + 1, launched[1])
    else:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if match is None or not 1 <= int(match[1]) <= int(match[2]):
            raise ValueError(
                f"--shard must be I/N, shard I of N counted from 1 (1 <= I <= N, e.g. 2/4), or "
                f"auto; got {value!r}"
            )
        found = Shard(int(match[1]), int(match[2]))
    if found.count == 1:
        return None
    if out is None:
        raise ValueError(
            f"--shard {found} needs --out FILE: each shard writes FILE.part-I-of-N, the last "
            "to finish merges them into FILE"
        )
    return found


def _input_path(item: FileResult | tuple[str, float]) -> str:
    return item.path if isinstance(item, FileResult) else item[0]


def _run_digest(plan: list, model: str, backend: str, environ: Mapping[str, str]) -> str:
    """What makes parts belong to one run: the inputs (path, size, mtime), the model folder, the
    backend and the torchrun launch."""
    digest = hashlib.sha1()
    for item in plan:
        path = _input_path(item)
        try:
            info = os.stat(path)
            stamp = f"{info.st_size}:{info.st_mtime_ns}"
        except OSError:
            stamp = "-"
        digest.update(f"{path}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    launch = environ.get("TORCHELASTIC_RUN_ID", "")
    digest.update(f"{model}\0{backend}\0{launch}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class PartWriter:
    """Writes a shard's results to its part, in input order: a header line, one JSON line per
    input (``index``: its position among all inputs, then the :class:`FileResult` fields), and
    an end line (the count, the plots not written). Same interface as :class:`ResultWriter`."""

    def __init__(self, stream: Any, indices: list[int], header: dict):
        self.stream = stream
        self.indices = indices
        self.pending: dict[int, FileResult] = {}
        self.next = 0
        stream.write(json.dumps({"format": PART_FORMAT, **header}, ensure_ascii=False) + "\n")

    def add(self, index: int, result: FileResult) -> None:
        """The result of the shard's input ``index``: written once every earlier one is."""
        self.pending[index] = result
        while self.next in self.pending:
            record = {
                "index": self.indices[self.next],
                **dataclasses.asdict(self.pending.pop(self.next)),
            }
            self.stream.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            self.next += 1

    def close(self) -> None:
        """Nothing to do: :meth:`end` ends the part."""

    def end(self, plot_failures: list[str]) -> None:
        self.stream.write(json.dumps({"end": self.next, "plot_failures": plot_failures}) + "\n")


class _DamagedPart(Exception):
    """A part that cannot be merged; ``str()`` names it."""


class ShardRun:
    """One shard of a classify run: its share of the inputs, its part, the merge.

    Arguments
    ---------
    shard : Shard
        Which shard this process is.
    plan : list
        Every input of the run (:func:`qieemo_lobes.classify_engine.plan_inputs`).
    output : Output
        Where the merged results go (``--out``, checked): a new or regular file.
    model : str
        The model folder (part of the run's digest).
    backend : str
        ``torch`` or ``onnx`` (part of the run's digest).
    """

    def __init__(
        self,
        shard_: Shard,
        plan: list,
        output: Output,
        model: str,
        backend: str,
        environ: Mapping[str, str] | None = None,
    ):
        if output.path is None or output.direct:
            raise ValueError(
                f"--shard {shard_}: --out {output.name} is not a file; the shards write "
                "FILE.part-I-of-N beside a new or regular FILE and merge them into it"
            )
        self.shard = shard_
        self.plan = plan
        self.output = output
        self.digest = _run_digest(plan, model, backend, os.environ if environ is None else environ)

        def seconds(i: int) -> float:
            return 0.0 if isinstance(plan[i], FileResult) else plan[i][1]

        self.indices = shard(list(range(len(plan))), shard_.index - 1, shard_.count, seconds)
        self.share = [plan[i] for i in self.indices]
        target = Path(output.path)
        self.lock_path = target.with_name(f"{target.name}.part-lock")
        self.part = self.part_output(shard_.index)
        self.writer: PartWriter | None = None

    def part_output(self, index: int) -> Output:
        """The part of shard ``index``: ``FILE.part-I-of-N``."""
        suffix = f".part-{index}-of-{self.shard.count}"
        return Output(self.output.name + suffix, self.output.path + suffix)

    def make_writer(
        self, stream: Any, fmt: str, labels: list[str], top_k: int | None = None
    ) -> PartWriter:
        """The writer of this shard's part (called as ``ResultWriter(stream, fmt, labels,
        top_k=...)``)."""
        del fmt, top_k  # the merge writes the format; a part keeps every number
        header = {
            "shard": self.shard.index,
            "of": self.shard.count,
            "inputs": len(self.plan),
            "run": self.digest,
            "labels": labels,
        }
        self.writer = PartWriter(stream, self.indices, header)
        return self.writer

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (``flock``); where the file system has no locks, go on without."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
        try:
            if fd is not None:
                import fcntl

                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def _header(self, index: int) -> dict | None:
        """The header of shard ``index``'s part if it is there and of this run, else None."""
        try:
            with open(self.part_output(index).path, encoding="utf-8") as fh:
                header = json.loads(fh.readline())
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict):
            return None
        expected = {"format": PART_FORMAT, "shard": index, "of": self.shard.count}
        if any(header.get(key) != value for key, value in expected.items()):
            return None
        return header if header.get("run") == self.digest else None

    def _records(self, index: int) -> Iterator[tuple[int, FileResult]]:
        """``(position among all inputs, result)`` of a part, in order; then its end line."""
        name = self.part_output(index).name
        try:
            with open(self.part_output(index).path, encoding="utf-8") as fh:
                fh.readline()
                count = 0
                for line in fh:
                    record = json.loads(line)
                    if "end" in record:
                        if record["end"] != count:
                            break
                        self.plot_failures += [str(x) for x in record.get("plot_failures", [])]
                        return
                    position = record.pop("index")
                    yield int(position), FileResult(**record)
                    count += 1
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise _DamagedPart(f"{name}: cannot merge this part ({err})") from None
        raise _DamagedPart(f"{name}: cannot merge this part (cut short)")

    def merge(self, fmt: str, labels: list[str], top_k: int | None) -> list[FileResult]:
        """Write the merged output from every part; the failed inputs, in input order."""
        self.plot_failures: list[str] = []
        failures = []
        parts = [self._records(k) for k in range(1, self.shard.count + 1)]
        with open_output(self.output) as stream:
            writer = ResultWriter(stream, fmt, labels, top_k=top_k)
            expected = 0
            for position, result in heapq.merge(*parts, key=lambda item: item[0]):
                if position != expected:
                    raise _DamagedPart(
                        f"{self.output.name}: cannot merge the parts (input {expected + 1} of "
                        f"{len(self.plan)} is {'repeated' if position < expected else 'missing'})"
                    )
                expected += 1
                writer.add(position, result)
                if result.error is not None:
                    failures.append(result)
            if expected != len(self.plan):
                raise _DamagedPart(
                    f"{self.output.name}: cannot merge the parts ({len(self.plan) - expected} "
                    "inputs missing)"
                )
            writer.close()
        return failures

    def finish(self, fmt: str, top_k: int | None, n_failed: int) -> int:
        """After this shard's part is in place (under the lock): merge when every part of the
        run is there; the exit code (see the module docstring)."""
        headers = [self._header(k) for k in range(1, self.shard.count + 1)]
        waiting = [k for k, header in enumerate(headers, start=1) if header is None]
        if waiting:
            print(
                f"classify: shard {self.shard}: {len(self.share)} of {len(self.plan)} inputs done "
                f"({n_failed} failed), in {self.part.name}; {self.output.name} is written by the "
                f"last shard to finish (waiting for shard {', '.join(map(str, waiting))})",
                file=sys.stderr,
            )
            return 0
        labels = next((list(h["labels"]) for h in headers if h.get("labels")), [])
        try:
            failures = self.merge(fmt, labels, top_k)
        except _DamagedPart as err:
            print(f"classify: {err}", file=sys.stderr)
            return 1
        for k in range(1, self.shard.count + 1):
            with contextlib.suppress(OSError):
                os.unlink(self.part_output(k).path)
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        for result in failures:
            print(f"{result.path}: {result.error}", file=sys.stderr)
        for line in self.plot_failures:
            print(line, file=sys.stderr)
        print(
            f"classify: shard {self.shard}: merged the {self.shard.count} parts into "
            f"{self.output.name}",
            file=sys.stderr,
        )
        if failures:
            print(f"classify: {len(failures)} of {len(self.plan)} inputs failed", file=sys.stderr)
        if self.plot_failures:
            print(
                f"classify: {len(self.plot_failures)} timeline plots not written", file=sys.stderr
            )
        return 1 if failures or self.plot_failures else 0


def run_shard(
    run: ShardRun,
    write_results: Callable[[OutputStream, list, Callable], tuple[list, list[str]]],
    fmt: str,
    top_k: int | None,
) -> int:
    """Classify this shard's share into its part, then merge if it is the last; the exit code.

    ``write_results(stream, share, make_writer)`` classifies ``share`` and writes each result
    with the writer ``make_writer`` returns; it returns the failed inputs and the plot failures.
    The lock is taken before the part is renamed into place, so that a merge never sees a part
    change under it.
    """
    with contextlib.ExitStack() as stack:
        with open_output(run.part) as stream:
            failures, plot_failures = write_results(stream, run.share, run.make_writer)
            run.writer.end(plot_failures)
            stack.enter_context(run.locked())
        return run.finish(fmt, top_k, len(failures))
