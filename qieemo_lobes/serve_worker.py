"""The inference side of ``python -m qieemo_lobes.serve``: one model, a bounded queue, workers.

:class:`ClassifyService` holds the recognizer (loaded once), a private temporary folder and a
fixed number of worker threads. A request is *admitted* (:meth:`ClassifyService.admit`) before
its upload is read: at most ``workers + max_queue`` requests are admitted at a time, the others
are refused at once (:class:`Busy`, HTTP 503), so memory and disk stay bounded whatever the
load. An admitted request owns a :class:`Job`: a folder of its own inside the service's folder
(``mkdtemp``, mode 0700) where the upload is written under a name the server chooses, removed
with everything in it when the job ends, and the slot released only then (a request that
timed out keeps its slot until its worker has really stopped).

Each job is classified exactly as ``python -m qieemo_lobes.classify`` classifies a file:
:func:`~qieemo_lobes.classify_engine.plan_inputs` reads its header and duration,
:func:`~qieemo_lobes.classify_engine.classify_planned` classifies it whole or, over 30 s, by
speech segments; the result is a :class:`~qieemo_lobes.classify_engine.FileResult`. Recordings
longer than ``max_duration_s`` (from the header, before decoding) are refused with
:data:`TOO_LONG_PROBLEM`.

A job whose deadline passes is cancelled (:meth:`Job.cancel`): still queued, it is skipped;
running, it stops at its next model call (the recognizer is wrapped so that every batch first
checks the job's flag), so a timed-out request frees its worker within one batch.

Example
-------
>>> from qieemo_lobes.serve_worker import ServeLimits
>>> limits = ServeLimits(workers=1, max_queue=2)
>>> limits.capacity
3
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qieemo_lobes.classify_engine import FileResult, classify_planned, plan_inputs

__all__ = [
    "TOO_LONG_PROBLEM",
    "Busy",
    "Cancelled",
    "ClassifyService",
    "Job",
    "ServeLimits",
    "running_service",
]

# The problem of a recording over the service's --max-duration (an HTTP 422).
TOO_LONG_PROBLEM = "too long ({duration:.1f} s; this service classifies at most {limit:g} s)"


@dataclass(frozen=True)
class ServeLimits:
    """What the service promises to bound (the options of ``python -m qieemo_lobes.serve``).

    Arguments
    ---------
    max_upload_bytes : int
        Largest audio file accepted (HTTP 413 beyond).
    max_duration_s : float
        Longest recording classified, read from its header (HTTP 422 beyond); 0: no limit.
    timeout_s : float
        Longest time a request may take from admission (upload, queue and classification
        together; HTTP 408 during the upload, 504 after).
    workers : int
        Worker threads classifying at the same time.
    max_queue : int
        Requests that may wait for a worker; more are refused (HTTP 503).
    batch_size : int
        Segments of a long recording classified per batch (as ``classify --batch-size``).
    """

    max_upload_bytes: int = 25 * 1024 * 1024
    max_duration_s: float = 600.0
    timeout_s: float = 120.0
    workers: int = 1
    max_queue: int = 32
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError("the upload limit must be positive")
        if self.max_duration_s < 0:
            raise ValueError("the duration limit must not be negative")
        if not self.timeout_s > 0:
            raise ValueError("the timeout must be positive")
        if self.workers < 1 or self.max_queue < 0 or self.batch_size < 1:
            raise ValueError("workers and batch size must be at least 1, the queue at least 0")

    @property
    def capacity(self) -> int:
        """Requests admitted at once: the running ones and the waiting ones."""
        return self.workers + self.max_queue


class Busy(Exception):
    """Every slot is taken (``workers`` running, ``max_queue`` waiting): try again later."""


class Cancelled(Exception):
    """The job's request gave up (its deadline passed): stop at the next model call."""


class Job:
    """One admitted request: its private folder, its result, its cancellation flag.

    The folder is removed, and the slot released, by :meth:`ClassifyService.finish`: by the
    request itself when the job never reaches the queue, otherwise by the worker when the job
    ends or is skipped.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path: Path | None = None
        self.future: concurrent.futures.Future[FileResult] = concurrent.futures.Future()
        self.cancelled = threading.Event()
        self.submitted = False
        self.finished = False

    def cancel(self) -> None:
        """Give up: a queued job is skipped, a running one stops at its next model call."""
        self.cancelled.set()
        self.future.cancel()


class _Cancellable:
    """A recognizer whose every batch first checks a job's cancellation flag.

    Everything else is the wrapped recognizer's: ``classify_batch`` is what the engine's torch
    backend calls, ``probabilities`` what it calls on an ONNX recognizer.
    """

    def __init__(self, recognizer: Any, cancelled: threading.Event):
        self._recognizer = recognizer
        self._cancelled = cancelled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recognizer, name)

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled("the request timed out")

    def classify_batch(self, *args, **kwargs):
        self._check()
        return self._recognizer.classify_batch(*args, **kwargs)

    def probabilities(self, wavs: list) -> list[list[float]]:
        self._check()
        return self._recognizer.probabilities(wavs)


class ClassifyService:
    """The model, the bounded queue and the worker threads of the HTTP service.

    Arguments
    ---------
    recognizer : EmotionRecognizer or OnnxRecognizer
        The loaded model (its ``labels`` and ``sample_rate`` are used).
    limits : ServeLimits
        The bounds to keep.
    tmp_dir : str or Path, optional
        Where the service's private folder is made (default: the system's temporary folder).
    """

    def __init__(self, recognizer: Any, limits: ServeLimits, tmp_dir: str | Path | None = None):
        self.recognizer = recognizer
        self.labels: list[str] = list(recognizer.labels)
        self.limits = limits
        self.root = Path(tempfile.mkdtemp(prefix="qieemo-serve-", dir=tmp_dir))
        self._slots = threading.BoundedSemaphore(limits.capacity)
        self._lock = threading.Lock()
        self._jobs: list[Job | None] = []
        self._ready = threading.Condition(self._lock)
        self._admitted = 0
        self._running = 0
        self._served = 0
        self._mean_job_s = 1.0
        # The Silero VAD keeps state between frames and is shared: one long recording at a time.
        self._long_lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"qieemo-serve-{k}", daemon=True)
            for k in range(limits.workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- requests ----------------------------------------------------------------------------

    def admit(self) -> Job:
        """A job with a folder of its own, or :class:`Busy` when every slot is taken."""
        if self._closed or not self._slots.acquire(blocking=False):
            raise Busy
        try:
            job = Job(Path(tempfile.mkdtemp(dir=self.root)))
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._admitted += 1
        return job

    def submit(self, job: Job, path: Path) -> concurrent.futures.Future[FileResult]:
        """Queue ``job`` to classify ``path`` (a file in its folder); its future is the result.

        From now on the worker owns the job and finishes it.
        """
        job.path = path
        job.submitted = True
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()
        return job.future

    def finish(self, job: Job) -> None:
        """Remove the job's folder and everything in it, then release its slot (once)."""
        with self._lock:
            if job.finished:
                return
            job.finished = True
        shutil.rmtree(job.folder, ignore_errors=True)
        with self._lock:
            self._admitted -= 1
        self._slots.release()

    def stats(self) -> dict[str, int]:
        """Requests admitted (running + waiting, uploads included), running, served so far."""
        with self._lock:
            return {
                "admitted": self._admitted,
                "running": self._running,
                "waiting": len(self._jobs),
                "capacity": self.limits.capacity,
                "served": self._served,
            }

    def retry_after_s(self) -> int:
        """A guess at when a slot frees up: the queue's length times the mean job time."""
        with self._lock:
            wait = self._mean_job_s * self.limits.capacity / self.limits.workers
        return max(1, min(60, round(wait)))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (after their current job) and remove the service's folder."""
        self._closed = True
        with self._ready:
            pending = [job for job in self._jobs if job is not None]
            self._jobs = [None] * len(self._threads)  # one stop mark per worker
            self._ready.notify_all()
        for job in pending:
            job.cancel()
            self.finish(job)
        for thread in self._threads:
            thread.join(timeout)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- workers ------------------------------------------------------------------------------

    def _next_job(self) -> Job | None:
        with self._ready:
            while not self._jobs:
                self._ready.wait()
            return self._jobs.pop(0)

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                if not job.future.set_running_or_notify_cancel():  # gave up while queued
                    continue
                with self._lock:
                    self._running += 1
                start = time.monotonic()
                try:
                    job.future.set_result(self.classify(job.path, job.cancelled))
                except BaseException as err:  # the request reports it
                    job.future.set_exception(err)
                finally:
                    with self._lock:
                        self._running -= 1
                        self._served += 1
                        self._mean_job_s += 0.2 * (time.monotonic() - start - self._mean_job_s)
            finally:
                self.finish(job)

    def classify(self, path: Path, cancelled: threading.Event | None = None) -> FileResult:
        """Classify one file as ``classify`` does (header, duration limit, engine)."""
        from qieemo_lobes.segmentation import LONG_RECORDING_S

        cancelled = cancelled or threading.Event()
        plan = plan_inputs([str(path)])
        item = plan[0]
        if isinstance(item, FileResult):
            return item
        duration = item[1]
        limit = self.limits.max_duration_s
        if limit and duration > limit:
            problem = TOO_LONG_PROBLEM.format(duration=duration, limit=limit)
            return FileResult(item[0], duration, error=problem)
        recognizer = _Cancellable(self.recognizer, cancelled)
        serial = self._long_lock if duration > LONG_RECORDING_S else contextlib.nullcontext()
        with serial:
            if cancelled.is_set():
                raise Cancelled("the request timed out")
            for _, result in classify_planned(plan, recognizer, self.limits.batch_size):
                return result
        raise RuntimeError("the engine returned no result")  # pragma: no cover


@contextlib.contextmanager
def running_service(
    recognizer: Any, limits: ServeLimits, tmp_dir: str | Path | None = None
) -> Iterator[ClassifyService]:
    """A :class:`ClassifyService`, closed (workers stopped, folder removed) on exit."""
    service = ClassifyService(recognizer, limits, tmp_dir)
    try:
        yield service
    finally:
        service.close()
