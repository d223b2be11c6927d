"""How ``python -m qieemo_lobes.classify`` sets up its process: quiet libraries, memory that
goes back to the system, OpenMP threads that sleep when idle, and as many threads as idle cores.

Each function changes process-wide state (environment variables read when a library is first
imported, glibc's allocator, torch's thread count), so the command calls them before it loads a
model, and library users who import :mod:`qieemo_lobes.interfaces` never get them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import ModuleType

__all__ = [
    "idle_cores",
    "onnx_threads",
    "passive_openmp",
    "quiet_libraries",
    "return_freed_memory",
    "running_elsewhere",
    "set_threads",
]


def quiet_libraries() -> None:
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


def return_freed_memory() -> None:
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


def passive_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin (read when torch is first imported).

    With spinning threads, any other busy process on a 2-core machine stalls every parallel
    operation: a batch of 8 clips took 1.8-2.7 s with 2 spinning threads, 0.85-0.9 s with 2
    passive ones and 0.6-0.7 s with 1 thread (whisper-base, load average about 3).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def idle_cores() -> int:
    """The cores that are idle now (at least one).

    Busy cores are the other processes running now (:func:`running_elsewhere`), or where that
    cannot be read the 1-minute load average. The load average lags both ways: right after
    another process ends (the previous ``classify``, say) it still counts it for a minute, and a
    run that followed another one took 1 ONNX thread on 2 idle cores (real-time factor 0.026 in a
    scratch run, instead of 0.015 in ``benchmarks/results/classify_speed.md``); a job started
    seconds ago is not counted yet.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = running_elsewhere()
    if busy is None:
        busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores or 1, (cores or 1) - busy))


def running_elsewhere(samples: int = 3, interval_s: float = 0.002) -> int | None:
    """Processes running or runnable now besides this one (the most seen in ``samples`` reads
    of Linux's ``/proc/stat``, ``interval_s`` apart, so that a busy process caught between two
    time slices still counts); None where ``/proc/stat`` cannot be read.

    Example
    -------
    >>> count = running_elsewhere()
    >>> count is None or count >= 0
    True
    """
    seen = []
    for i in range(samples):
        if i:
            time.sleep(interval_s)
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                line = next((x for x in stat if x.startswith("procs_running ")), None)
        except OSError:
            return None
        if line is None:
            return None
        seen.append(int(line.split()[1]) - 1)  # this process is running: it is reading
    return max(0, max(seen))


def set_threads(torch: ModuleType) -> int:
    """Use the cores that are idle now (at least one), unless ``OMP_NUM_THREADS`` says otherwise.

    See :func:`passive_openmp` for why a busy core should not get a thread.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(idle_cores())
    return torch.get_num_threads()


def onnx_threads() -> int:
    """onnxruntime's threads: ``OMP_NUM_THREADS`` when set, else the idle cores."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else idle_cores()
