"""``python -m qieemo_lobes.serve`` (issue 16): the API, its limits, the web page, the load test.

- The API through FastAPI's test client, on the built-in default model: the records of
  ``classify --format json`` for the same files (examples, an EmoDB clip, a 46 s conversation
  with its segments), and every error: 413, 415, 422, 503, 504, with no file left behind and
  no client file name reaching the file system. The queue and timeout tests use a fake model
  that blocks or is slow, so that they wait for nothing real.
- The ONNX backend gives the torch records (the default model exported once, when onnxruntime
  and the exporter are installed).
- The command itself, started as a subprocess (``--port 0``): its refusals, a clean SIGTERM,
  the benchmark's load function, and the web page in a real headless Chromium (Debian's
  ``chromium`` and ``chromium-driver``, driven by selenium): upload a clip and see its label
  and bars, a long recording and its timeline, a corrupt file and its error, and a recording
  from Chromium's fake microphone. Skipped, with the reason, where Chromium is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the service needs the serve extra (fastapi)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx (dev extra)")

from fastapi.testclient import TestClient  # noqa: E402

from qieemo_lobes import classify  # noqa: E402
from qieemo_lobes.serve import build_service  # noqa: E402
from qieemo_lobes.serve_app import create_app, problem_status  # noqa: E402
from qieemo_lobes.serve_worker import ClassifyService, ServeLimits  # noqa: E402
from tests.conftest import REPO_ROOT, SHARED_DATA  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import serve_load  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"
CONVERSATION = EXAMPLES / "conversation.flac"  # 46 s: classified by speech segments
EMODB_CLIP = SHARED_DATA / "emodb" / "03a01Fa.wav"
LABELS = ["angry", "happy", "neutral", "sad"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def torch_served(tmp_path_factory):
    """The default model behind the API (torch), with its own private folder."""
    service, info = build_service(
        None, tmp_dir=str(tmp_path_factory.mktemp("serve_tmp")), configure_process=False
    )
    with TestClient(create_app(service, info)) as client:
        yield service, client
    service.close()


@pytest.fixture(scope="module")
def client(torch_served):
    return torch_served[1]


def post(client, name: str, data: bytes, content_type: str = "application/octet-stream", **kw):
    return client.post("/v1/classify", files={"file": (name, data, content_type)}, **kw)


def classify_records(paths: list[Path], capsys, *extra: str) -> dict[str, dict]:
    """``classify --format json`` on ``paths``, in this process: records by file name."""
    capsys.readouterr()
    code = classify.main(["--format", "json", *extra, *map(str, paths)], configure_process=False)
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    return {Path(r["path"]).name: r for r in map(json.loads, lines)}


def assert_same_record(served: dict, reference: dict, tol: float = 1e-3) -> None:
    assert served["path"] == Path(reference["path"]).name
    assert served["label"] == reference["label"]
    assert served["duration_s"] == pytest.approx(reference["duration_s"], abs=1e-3)
    for label in LABELS:
        assert served["probabilities"][label] == pytest.approx(
            reference["probabilities"][label], abs=tol
        )
    assert len(served["segments"]) == len(reference["segments"])
    for got, want in zip(served["segments"], reference["segments"], strict=True):
        assert (got["start_s"], got["end_s"], got["label"]) == (
            want["start_s"],
            want["end_s"],
            want["label"],
        )
        for label in LABELS:
            assert got["probabilities"][label] == pytest.approx(
                want["probabilities"][label], abs=tol
            )


class FakeRecognizer:
    """A model with the ONNX recognizer's interface that waits for ``gate`` or sleeps."""

    backend = "onnx"
    labels = LABELS
    sample_rate = 16000

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0):
        self.gate = gate
        self.delay = delay
        self.calls = 0
        self.entered = threading.Event()

    def segmenter(self):
        from qieemo_lobes.onnx_audio import sinc_resampler
        from qieemo_lobes.segmentation import SpeechSegmenter

        return SpeechSegmenter(method="energy", resampler=sinc_resampler)

    def load(self, path):
        from qieemo_lobes.onnx_audio import load_audio

        return load_audio(path, target_sr=self.sample_rate)

    def segment_waveforms(self, path, spans):
        from qieemo_lobes.onnx_audio import sinc_resampler
        from qieemo_lobes.segmentation import iter_segment_waveforms

        return iter_segment_waveforms(
            path, spans, self.sample_rate, resampler=sinc_resampler, tensors=False
        )

    def probabilities(self, wavs):
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)
        return [[0.1, 0.2, 0.3, 0.4] for _ in wavs]


@contextlib.contextmanager
def fake_served(tmp_path: Path, recognizer: FakeRecognizer, **limits):
    service = ClassifyService(recognizer, ServeLimits(**limits), tmp_path)
    info = {"backend": "fake", "model": "fake", "temperature": 1.0, "sample_rate": 16000}
    try:
        with TestClient(create_app(service, info)) as client:
            yield service, client
    finally:
        service.close()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def leftovers(service: ClassifyService) -> list[str]:
    """What is left in the service's folder once no request is admitted (a job's folder goes
    just after its answer is ready)."""
    wait_for(lambda: service.stats()["admitted"] == 0)
    return [str(p.relative_to(service.root)) for p in service.root.rglob("*")]


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    import io

    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype=subtype)
    return out.getvalue()


@pytest.fixture(scope="module")
def clip_bytes() -> bytes:
    return (EXAMPLES / "sad_en_us_m.wav").read_bytes()


# ------------------------------------------------------------------------------------------------
# The API on the default model


def test_healthz_and_model(client):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["capacity"] == 1 + 32
    model = client.get("/v1/model").json()
    assert model["labels"] == LABELS
    assert model["backend"] == "torch"
    assert model["model"] == "default_model"  # the folder's name, never its path
    assert model["temperature"] == 1.0 and model["sample_rate"] == 16000
    assert model["title"].startswith("Model card: qieemo")
    assert model["summary"].startswith("Four emotions from speech alone")
    assert model["limits"] == {
        "max_upload_mb": 25.0,
        "max_duration_s": 600.0,
        "timeout_s": 120.0,
        "workers": 1,
        "max_queue": 32,
    }
    assert ".wav" in model["audio_types"] and ".exe" not in model["audio_types"]


def test_the_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)  # no CDN
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


def test_records_are_those_of_classify_json(client, capsys):
    paths = sorted(EXAMPLES.glob("*.wav")) + [CONVERSATION]
    if EMODB_CLIP.is_file():
        paths.append(EMODB_CLIP)
    reference = classify_records(paths, capsys)
    for path in paths:
        answer = post(client, path.name, path.read_bytes())
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert_same_record(answer.json(), reference[path.name])
    long = reference[CONVERSATION.name]
    assert long["duration_s"] > 30 and len(long["segments"]) >= 3


def test_top_k(client, clip_bytes):
    record = client.post(
        "/v1/classify?top_k=2", files={"file": ("a.wav", clip_bytes, "audio/wav")}
    ).json()
    assert [t["label"] for t in record["top"]][0] == record["label"] and len(record["top"]) == 2
    bad = client.post("/v1/classify?top_k=9", files={"file": ("a.wav", clip_bytes)})
    assert bad.status_code == 422 and "top_k" in bad.json()["error"]


def test_a_recording_without_a_name_is_typed_by_its_content_type(client, tmp_path):
    """What MediaRecorder uploads: WebM/Opus without a duration in its header ("blob")."""
    webm = tmp_path / "rec.webm"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(EXAMPLES / "sad_en_us_m.wav"), "-c:a", "libopus"]
        + ["-f", "webm", "pipe:1"],
        stdout=webm.open("wb"),
        check=True,
    )
    answer = post(client, "blob", webm.read_bytes(), "audio/webm;codecs=opus")
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "blob" and answer.json()["label"] in LABELS


BAD_AUDIO = {
    # client name, bytes, status, the problem's start
    "random.mp3": (b"\x8f\x13\xfe" * 700, 415, "not a readable audio file"),
    "setup.exe": (b"MZ\x90\x00" * 10, 415, "unsupported file type (.exe)"),
    "notes.wav": (b"hello, this is text\n" * 20, 415, "not an audio file (text content)"),
    "empty.wav": (b"", 422, "empty file"),
    "silence.wav": (wav_bytes(np.zeros(16000, dtype=np.float32)), 422, "silence only"),
    "click.wav": (
        wav_bytes(0.3 * np.sin(np.arange(800, dtype=np.float32))),
        422,
        "too short (0.050 s",
    ),
    "nan.wav": (
        wav_bytes(np.full(16000, np.nan, dtype=np.float32), subtype="FLOAT"),
        422,
        "contains NaN or infinite samples",
    ),
}


@pytest.mark.parametrize("name", list(BAD_AUDIO))
def test_bad_audio_is_415_or_422_naming_the_file(client, name):
    data, status, problem = BAD_AUDIO[name]
    answer = post(client, name, data)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].startswith(problem)
    assert answer.json()["file"] == name


def test_problem_status():
    assert problem_status("truncated audio file (header declares 9 frames, only 3 decoded)") == 415
    assert problem_status("too long (700.0 s; this service classifies at most 600 s)") == 422
    assert problem_status("the model returned non-finite probabilities (damaged model?)") == 500


def test_requests_that_are_not_one_audio_upload(client, clip_bytes):
    not_multipart = client.post("/v1/classify", content=clip_bytes)
    assert not_multipart.status_code == 415 and "multipart" in not_multipart.json()["error"]
    no_file = client.post("/v1/classify", files={"audio": ("a.wav", clip_bytes)})
    assert no_file.status_code == 422 and "field named 'file'" in no_file.json()["error"]
    boundary = "b0undary"
    truncated = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
    cut = client.post(
        "/v1/classify",
        content=(truncated + "\r\n\r\n").encode() + clip_bytes[:1000],
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert cut.status_code == 400 and cut.json() == {
        "error": "incomplete multipart body",
        "file": "a.wav",
    }
    assert client.get("/v1/classify").status_code == 405
    assert client.get("/nothing").json() == {"error": "Not Found", "file": None}


def test_over_the_upload_limit_is_413_and_nothing_is_kept(torch_served, tmp_path, clip_bytes):
    service, _ = torch_served
    small = ClassifyService(service.recognizer, ServeLimits(max_upload_bytes=50_000), tmp_path)
    try:
        with TestClient(create_app(small, {})) as client:
            declared = post(client, "big.wav", clip_bytes)  # Content-Length says too much
            assert declared.status_code == 413
            assert declared.json()["error"] == "file too large (the limit is 0.0476837 MB)"
            boundary = "xyz"
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            head += 'filename="big.wav"\r\n\r\n'

            def body():  # streamed without Content-Length: the file's bytes are counted
                yield head.encode()
                for k in range(0, 100_000, 8192):
                    yield clip_bytes[k : min(k + 8192, 100_000)]
                yield f"\r\n--{boundary}--\r\n".encode()

            streamed = client.post(
                "/v1/classify",
                content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
            assert streamed.status_code == 413
            assert streamed.json()["file"] == "big.wav"
            assert post(client, "small.wav", clip_bytes[:40_000]).status_code != 413
        assert leftovers(small) == []
    finally:
        small.close()
    assert not small.root.exists()


def test_a_full_disk_is_507_and_nothing_is_kept(torch_served, clip_bytes, monkeypatch):
    import qieemo_lobes.serve_upload as serve_upload

    class FullDisk:
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115

        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            self.fh.close()

    monkeypatch.setattr(serve_upload, "open", FullDisk, raising=False)
    service, client = torch_served
    answer = post(client, "a.wav", clip_bytes)
    assert answer.status_code == 507
    assert answer.json() == {
        "error": "cannot store the upload (no space left on device)",
        "file": "a.wav",
    }
    assert leftovers(service) == []


def test_over_the_duration_limit_is_422(torch_served, tmp_path):
    service, _ = torch_served
    short = ClassifyService(service.recognizer, ServeLimits(max_duration_s=30), tmp_path)
    try:
        with TestClient(create_app(short, {})) as client:
            answer = post(client, CONVERSATION.name, CONVERSATION.read_bytes())
        assert answer.status_code == 422
        assert answer.json() == {
            "error": "too long (46.0 s; this service classifies at most 30 s)",
            "file": "conversation.flac",
        }
    finally:
        short.close()


def test_no_file_is_left_and_client_names_never_reach_the_file_system(torch_served, clip_bytes):
    service, client = torch_served
    events: list[tuple[str, str]] = []
    active = threading.Event()

    def hook(event: str, args: tuple) -> None:
        if active.is_set() and event.startswith(("open", "os.", "shutil.", "subprocess.")):
            events.append((event, repr(args)))

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one idles once the test ends
    active.set()
    try:
        answers = [
            post(client, "../../etc/qieemo-evil.wav", clip_bytes),
            post(client, "..\\..\\qieemo-evil2.mp3", b"\x8f\x13\xfe" * 700),
            post(client, "/tmp/qieemo-evil3.exe", b"MZ"),
        ]
    finally:
        active.clear()
    assert answers[0].status_code == 200 and answers[0].json()["path"] == "qieemo-evil.wav"
    assert answers[1].json() == {
        "error": "not a readable audio file (corrupt or unknown format)",
        "file": "qieemo-evil2.mp3",
    }
    assert answers[2].status_code == 415 and answers[2].json()["file"] == "qieemo-evil3.exe"
    opened = [args for event, args in events if event == "open"]
    assert any("audio.wav" in args for args in opened)  # the hook saw the server's own name
    assert not [e for e in events if "qieemo-evil" in e[1]]
    assert leftovers(service) == []


def test_a_full_queue_answers_503_then_serves_the_others(tmp_path, clip_bytes):
    gate = threading.Event()
    model = FakeRecognizer(gate)
    with fake_served(tmp_path, model, workers=1, max_queue=1) as (service, client):
        answers: list = [None, None]

        def send(k: int) -> None:
            answers[k] = post(client, f"c{k}.wav", clip_bytes)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
        threads[0].start()
        assert model.entered.wait(30)  # the first is being classified (blocked)
        threads[1].start()
        wait_for(lambda: service.stats()["waiting"] == 1)
        folders = list(service.root.iterdir())  # each admitted request: a folder of its own
        assert sorted(p.name for f in folders for p in f.iterdir()) == ["audio.wav"] * 2
        busy = post(client, "c2.wav", clip_bytes)
        assert busy.status_code == 503
        assert busy.json()["error"].startswith("busy: 1 requests classifying and 1 waiting")
        assert int(busy.headers["retry-after"]) >= 1
        gate.set()
        for thread in threads:
            thread.join(30)
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[1].json()["label"] == "sad" and answers[1].json()["path"] == "c1.wav"
        wait_for(lambda: service.stats()["admitted"] == 0)
        assert leftovers(service) == []
        assert client.get("/healthz").json()["served"] == 2


def test_timeouts_answer_504_and_free_the_worker(tmp_path, clip_bytes):
    gate = threading.Event()
    model = FakeRecognizer(gate)
    with fake_served(tmp_path, model, workers=1, max_queue=2, timeout_s=1.0) as (service, client):
        answers: list = [None, None]

        def send(k: int) -> None:
            answers[k] = post(client, f"t{k}.wav", clip_bytes)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [a.status_code for a in answers] == [504, 504]
        assert answers[0].json()["error"] == "not classified within the 1 s timeout"
        gate.set()  # the running job ends; the queued one was skipped, never classified
        wait_for(lambda: service.stats()["admitted"] == 0)
        assert model.calls == 1
        assert leftovers(service) == []


def test_a_timed_out_long_recording_stops_at_its_next_batch(tmp_path):
    data = CONVERSATION.read_bytes()
    with fake_served(tmp_path, FakeRecognizer(), batch_size=1) as (_, client):
        segments = len(post(client, "c.flac", data).json()["segments"])
    assert segments >= 5
    slow = FakeRecognizer(delay=0.4)
    with fake_served(tmp_path, slow, batch_size=1, timeout_s=1.0) as (service, client):
        assert post(client, "c.flac", data).status_code == 504
        wait_for(lambda: service.stats()["admitted"] == 0)
    assert slow.calls <= 4 < segments


# ------------------------------------------------------------------------------------------------
# The ONNX backend


@pytest.fixture(scope="module")
def onnx_model_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
    pytest.importorskip("onnxscript", reason="exporting the default model needs onnxscript")
    from qieemo_lobes.export_onnx import export_onnx

    return export_onnx(classify.DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("onnx") / "model")


def test_the_onnx_backend_gives_the_torch_records(onnx_model_dir, client, tmp_path):
    service, info = build_service(
        str(onnx_model_dir), backend="onnx", tmp_dir=str(tmp_path), configure_process=False
    )
    try:
        with TestClient(create_app(service, info)) as onnx_client:
            model = onnx_client.get("/v1/model").json()
            assert (model["backend"], model["model"], model["labels"]) == ("onnx", "model", LABELS)
            assert model["title"].startswith("Model card: qieemo")
            for path in (EXAMPLES / "neutral_en_us_m.wav", CONVERSATION):
                data = path.read_bytes()
                onnx_record = post(onnx_client, path.name, data).json()
                torch_record = post(client, path.name, data).json()
                assert_same_record(onnx_record, torch_record)
            bad = post(onnx_client, "x.wav", wav_bytes(np.zeros(8000, dtype=np.float32)))
            assert bad.status_code == 422 and bad.json()["error"].startswith("silence only")
    finally:
        service.close()


# ------------------------------------------------------------------------------------------------
# The command, its web page in Chromium, the load test


def start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "qieemo_lobes.serve", "--port", "0", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = re.search(r"^serve: listening on (http://\S+)", log.read_text(), re.M)
        if match:
            return proc, match.group(1), log
        if proc.poll() is not None:
            pytest.fail(f"the service did not start:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the service did not start in 300 s")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """``python -m qieemo_lobes.serve --port 0`` on the default model, its URL and folder."""
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "uploads").mkdir()
    proc, url, log = start_server(
        tmp, "--log-level", "warning", "--tmp-dir", str(tmp / "uploads"), "--max-upload-mb", "1"
    )
    yield url, proc, tmp / "uploads", log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def live_leftovers(url: str, folder: Path) -> list[Path]:
    def idle() -> bool:
        with urllib.request.urlopen(url + "healthz", timeout=30) as answer:
            return json.load(answer)["admitted"] == 0

    wait_for(idle)
    return list(folder.rglob("*"))


def test_the_command_serves_the_api_and_the_load_test(live_server):
    url, proc, uploads, log = live_server
    assert url.startswith("http://127.0.0.1:")
    assert "(model default_model, backend torch, 1 workers, queue 32)" in log.read_text()
    with urllib.request.urlopen(url + "healthz", timeout=30) as answer:
        assert json.load(answer)["status"] == "ok"
    (folder,) = uploads.iterdir()  # the private folder, mode 0700
    assert folder.name.startswith("qieemo-serve-") and folder.stat().st_mode & 0o077 == 0

    load = serve_load.run_load(url, sorted(EXAMPLES.glob("*.wav")), requests=8, clients=4)
    summary = serve_load.summarize(load, 8)
    assert summary["failed"] == 0 and summary["ok"] == 8
    assert summary["p50_s"] <= summary["p95_s"] <= summary["max_s"]
    assert serve_load.proc_memory_mb(proc.pid, "VmHWM") > 100
    assert live_leftovers(url, folder) == []


def test_the_command_answers_413_to_uploads_over_the_limit(live_server):
    """Over a real socket: a declared size over the limit is answered before the body is sent;
    a chunked body (no size) is refused once its bytes pass the limit and read a clean 413."""
    url, _, uploads, _ = live_server
    host, port = url[len("http://") :].rstrip("/").split(":")
    headers = f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    headers += "Content-Type: multipart/form-data; boundary=B\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"{headers}Content-Length: 1000000000\r\n\r\n".encode())  # no body
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"{headers}Transfer-Encoding: chunked\r\n\r\n".encode())
        part = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for data in [part] + [b"\0" * 65536] * 24:  # 1.5 MB of "audio"
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'{"error":"file too large (the limit is 1 MB)","file":"big.wav"}' in answer
    assert live_leftovers(url, uploads) == [next(uploads.iterdir())]


def test_the_command_refuses_in_one_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "qieemo_lobes.serve", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = run("--workers", "0")
    assert (bad.returncode, bad.stderr) == (2, "serve: --workers must be at least 1, got 0\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run("--port", str(port))
    assert busy.returncode == 2
    assert busy.stderr.startswith(f"serve: cannot listen on 127.0.0.1:{port} (")
    missing = run("--model", str(tmp_path / "nope"), "--port", "0")
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    assert "model folder not found" in missing.stderr


def _chromium(download_dir: Path, microphone: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",  # allow the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",  # the "microphone" says this clip
        f"--user-data-dir={download_dir}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser test needs Chromium and its driver: apt-get install chromium "
    "chromium-driver (./setup.sh installs them where apt can)",
)
def test_the_web_page_in_headless_chromium(live_server, tmp_path):
    pytest.importorskip("selenium", reason="the browser test needs selenium (dev extra)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, uploads, _ = live_server
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(2000))
    driver = _chromium(tmp_path / "profile", EXAMPLES / "sad_en_us_m.wav")
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(url)
        wait.until(lambda d: "default_model" in d.find_element(By.ID, "model-name").text)

        def classify_file(path: Path) -> None:
            driver.find_element(By.ID, "file").send_keys(str(path))
            driver.find_element(By.ID, "classify").click()
            wait.until(lambda d: path.name in d.find_element(By.ID, "result-file").text)

        classify_file(EXAMPLES / "sad_en_us_m.wav")
        assert driver.find_element(By.ID, "label").text.lower() in LABELS
        rows = driver.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
        assert [r.get_attribute("data-label") for r in rows] == LABELS
        widths = [
            float(r.find_element(By.CLASS_NAME, "bar").value_of_css_property("width")[:-2])
            for r in rows
        ]
        assert all(w > 0 for w in widths)
        assert not driver.find_element(By.ID, "timeline").is_displayed()

        classify_file(CONVERSATION)
        wait.until(lambda d: d.find_element(By.ID, "timeline").is_displayed())
        segments = driver.find_elements(By.CSS_SELECTOR, "#timeline-chart rect.segment")
        assert len(segments) >= 3
        assert {s.get_attribute("data-label") for s in segments} <= set(LABELS)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#segments tr")) == len(segments)

        driver.find_element(By.ID, "file").send_keys(str(corrupt))
        driver.find_element(By.ID, "classify").click()
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        error = driver.find_element(By.ID, "error").text
        assert error.startswith("corrupt.wav: ") and error.endswith("(HTTP 415)")

        driver.find_element(By.ID, "record").click()  # Chromium's fake microphone
        wait.until(lambda d: "recording" in d.find_element(By.ID, "recording").text)
        time.sleep(2.5)
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: "recording." in d.find_element(By.ID, "result-file").text)
        assert driver.find_element(By.ID, "label").text.lower() in LABELS
        assert not driver.find_element(By.ID, "error").is_displayed()
    finally:
        driver.quit()
    assert live_leftovers(url, uploads) == [next(uploads.iterdir())]  # the empty private folder


def test_sigterm_shuts_down_cleanly_and_removes_the_folder(live_server):
    url, proc, uploads, _ = live_server  # last: the other tests of the command are done
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert list(uploads.iterdir()) == []
