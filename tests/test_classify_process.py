"""How ``classify`` picks its thread count: the cores idle now, not a minute ago."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qieemo_lobes import classify_process

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")


def test_a_spinning_process_counts_as_running_elsewhere():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started and on a core
        assert classify_process.running_elsewhere() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_idle_cores_follow_what_runs_now_not_the_load_average(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    # A minute of earlier work still in the load average, nothing running now: every core.
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 1.0, 1.0))
    monkeypatch.setattr(classify_process, "running_elsewhere", lambda: 0)
    assert classify_process.idle_cores() == cores
    # Every core busy now: still one thread.
    monkeypatch.setattr(classify_process, "running_elsewhere", lambda: cores)
    assert classify_process.idle_cores() == 1


def test_idle_cores_fall_back_to_the_load_average(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(classify_process, "running_elsewhere", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 0.0, 0.0))
    assert classify_process.idle_cores() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert classify_process.idle_cores() == cores


def test_onnx_threads_obey_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert classify_process.onnx_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    monkeypatch.setattr(classify_process, "running_elsewhere", lambda: 0)
    assert classify_process.onnx_threads() == len(os.sched_getaffinity(0))
