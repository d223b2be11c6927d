#!/usr/bin/env python3
"""Load test of ``python -m qieemo_lobes.serve`` on 127.0.0.1: latency, throughput, memory.

::

    python benchmarks/serve_load.py [--requests 200] [--clients 16] [--backends torch,onnx]
                                    [--data DIR] [--model DIR] [--onnx-model DIR]
                                    [--server-args "--workers 1"] [--url URL]
                                    [--out FILE.md] [--json FILE]

For each backend the service is started as a user starts it (a child process,
``python -m qieemo_lobes.serve --port 0``, its default limits unless ``--server-args`` says
otherwise), warmed up with 2 requests, then ``--requests`` uploads are sent by ``--clients``
concurrent clients (threads, one keep-alive connection each, the stdlib's ``http.client``), each
taking the next clip in turn: ``examples/*.wav`` (5 espeak-ng clips, 3-5 s) or the first 50
``*.wav`` of ``--data``. Reported: failed requests (any answer but 200, or a broken
connection), latency p50/p95/max (upload to full answer, as the client sees it), throughput,
the server's resident memory after the warm-up, its peak during the load (``VmRSS`` sampled
every 20 ms) and over its whole life (``VmHWM``: model loading included), and whether it shut
down cleanly on SIGTERM (exit 0).

``--url`` measures a service that is already running instead (no memory numbers).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnx")
WARM_UP = 2
START_TIMEOUT_S = 600.0  # the ONNX default model is built on first use


def multipart(path: Path) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``path`` as the field ``file``; its content type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_load(url: str, clips: list[Path], requests: int, clients: int) -> dict:
    """Send ``requests`` uploads from ``clients`` threads; latencies and failures.

    Returns
    -------
    dict
        ``latencies_s`` (one per successful request), ``failures`` (``[(status or error,
        clip)]``), ``wall_s``, ``labels`` (label counts).
    """
    parts = urllib.parse.urlsplit(url)
    bodies = [multipart(clip) for clip in clips]
    lock = threading.Lock()
    counter = iter(range(requests))
    latencies: list[float] = []
    failures: list[tuple[str, str]] = []
    labels: dict[str, int] = {}

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        try:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                body, content_type = bodies[index % len(bodies)]
                clip = clips[index % len(clips)].name
                start = time.perf_counter()
                try:
                    conn.request(
                        "POST", "/v1/classify", body=body, headers={"Content-Type": content_type}
                    )
                    response = conn.getresponse()
                    answer = response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as err:
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
                    with lock:
                        failures.append((type(err).__name__, clip))
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                        label = json.loads(answer)["label"]
                        labels[label] = labels.get(label, 0) + 1
                    else:
                        failures.append((f"HTTP {status}", clip))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "latencies_s": latencies,
        "failures": failures,
        "wall_s": time.perf_counter() - start,
        "labels": labels,
    }


def summarize(load: dict, requests: int) -> dict:
    """p50/p95/max latency, throughput and failures of :func:`run_load`'s result."""
    lat = sorted(load["latencies_s"])

    def quantile(q: float) -> float | None:
        if not lat:
            return None
        return lat[min(len(lat) - 1, max(0, round(q * len(lat)) - 1))]

    return {
        "requests": requests,
        "ok": len(lat),
        "failed": len(load["failures"]),
        "failures": load["failures"][:10],
        "p50_s": quantile(0.50),
        "p95_s": quantile(0.95),
        "max_s": lat[-1] if lat else None,
        "mean_s": statistics.fmean(lat) if lat else None,
        "wall_s": load["wall_s"],
        "throughput_rps": len(lat) / load["wall_s"] if load["wall_s"] else 0.0,
        "labels": load["labels"],
    }


def proc_memory_mb(pid: int, field: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` (peak) of a process, in MB, from ``/proc`` (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemorySampler:
    """The highest ``VmRSS`` of a process, sampled every 20 ms while running."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, proc_memory_mb(self.pid, "VmRSS") or 0.0)
            self._stop.wait(0.02)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def start_server(command_args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``python -m qieemo_lobes.serve --port 0 ...``; the process and its URL."""
    command = [sys.executable, "-m", "qieemo_lobes.serve", "--port", "0", *command_args]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text()
        for line in text.splitlines():
            if line.startswith("serve: listening on "):
                url = line.split()[3]
                _wait_healthy(url, deadline)
                return proc, url
        if proc.poll() is not None:
            raise SystemExit(f"the service did not start (exit {proc.returncode}):\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the service did not start within {START_TIMEOUT_S:.0f} s")


def _wait_healthy(url: str, deadline: float) -> None:
    parts = urllib.parse.urlsplit(url)
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url}healthz did not answer")


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM, then the exit code (killed after 60 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def measure_backend(backend: str, clips: list[Path], args: argparse.Namespace) -> dict:
    """Start the service with ``backend``, warm it up, load it, stop it."""
    server_args = ["--backend", backend, "--log-level", "warning", "--no-access-log"]
    model = args.onnx_model if backend == "onnx" else args.model
    if model:
        server_args += ["--model", model]
    server_args += args.server_args.split()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(server_args, Path(tmp) / "serve.log")
        try:
            warm = run_load(url, clips, WARM_UP, 1)
            if warm["failures"]:
                raise SystemExit(f"warm-up failed: {warm['failures']}")
            rss_warm = proc_memory_mb(proc.pid, "VmRSS")
            with MemorySampler(proc.pid) as sampler:
                result = summarize(run_load(url, clips, args.requests, args.clients), args.requests)
            result["rss_after_warm_up_mb"] = rss_warm
            result["peak_rss_load_mb"] = sampler.peak_mb
            result["peak_rss_lifetime_mb"] = proc_memory_mb(proc.pid, "VmHWM")
        finally:
            exit_code = stop_server(proc)
    result["exit_code"] = exit_code
    result["server_args"] = " ".join(server_args)
    return result


def clips_of(data: str | None) -> list[Path]:
    if data:
        clips = sorted(Path(data).glob("*.wav"))[:50]
    else:
        clips = sorted((REPO / "examples").glob("*.wav"))
    if not clips:
        raise SystemExit(f"{data or 'examples'}: no .wav clips")
    return clips


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{1000 * value:.0f} ms"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def format_table(result: dict) -> str:
    """The Markdown table: one column per backend."""
    names = list(result["backends"])
    rows = [
        ("requests (clients)", lambda r: f"{r['requests']} ({result['clients']})"),
        ("failed requests", lambda r: str(r["failed"])),
        ("latency p50", lambda r: _ms(r["p50_s"])),
        ("latency p95", lambda r: _ms(r["p95_s"])),
        ("latency max", lambda r: _ms(r["max_s"])),
        ("throughput", lambda r: f"{r['throughput_rps']:.1f} requests/s"),
        ("server memory after warm-up", lambda r: _mb(r.get("rss_after_warm_up_mb"))),
        ("server peak memory during the load", lambda r: _mb(r.get("peak_rss_load_mb"))),
        ("server peak memory, lifetime", lambda r: _mb(r.get("peak_rss_lifetime_mb"))),
        ("clean shutdown (SIGTERM)", lambda r: _exit_text(r.get("exit_code"))),
    ]
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    after = ", ".join(f"{x:.1f}" for x in result["load_average_after"])
    out = [
        f"date: {result['date']}; machine: {result['machine']}; load average {load} "
        f"(after: {after})",
        f"clips: {result['clips']}; OMP_NUM_THREADS={result['threads']}",
    ]
    out += [
        f"{name}: `python -m qieemo_lobes.serve {result['backends'][name].get('server_args', '')}`"
        for name in names
    ]
    out.append("")
    out.append("| measure | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for label, cell in rows:
        out.append(f"| {label} | " + " | ".join(cell(result["backends"][n]) for n in names) + " |")
    for name in names:
        failures = result["backends"][name]["failures"]
        if failures:
            out.append(f"\n{name}: first failures: {failures}")
    return "\n".join(out)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "n/a"
    return "yes (exit 0)" if code == 0 else f"NO (exit {code})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--data", help="a folder of .wav clips (default examples/*.wav)")
    parser.add_argument("--model", help="model folder for torch (default: the default model)")
    parser.add_argument(
        "--onnx-model", help="ONNX folder for onnx (default: the default model's ONNX copy)"
    )
    parser.add_argument("--server-args", default="", help="more options for the service")
    parser.add_argument("--url", help="measure this running service instead (no memory numbers)")
    parser.add_argument("--out", help="write the table, with the command, to this Markdown file")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.requests < 1 or args.clients < 1:
        raise SystemExit("--requests and --clients must be at least 1")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - set(BACKENDS):
        raise SystemExit(f"--backends: choose among {', '.join(BACKENDS)}")
    clips = clips_of(args.data)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "load_average": os.getloadavg(),
        "clips": f"{len(clips)} from {args.data or 'examples/*.wav'}",
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "clients": args.clients,
        "backends": {},
    }
    if args.url:
        url = args.url.rstrip("/") + "/"
        run_load(url, clips, WARM_UP, 1)
        result["backends"]["url"] = summarize(
            run_load(url, clips, args.requests, args.clients), args.requests
        )
    else:
        for backend in backends:
            result["backends"][backend] = measure_backend(backend, clips, args)
    result["load_average_after"] = os.getloadavg()
    table = format_table(result)
    print(table)
    if args.out:
        from qieemo_lobes.files import write_text_atomic

        command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
        header = f"# Load test of the HTTP service\n\nCommand: `{command.strip()}`\n\n"
        write_text_atomic(header + table + "\n", args.out)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if any(r["failed"] for r in result["backends"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
