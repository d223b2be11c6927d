"""Classify emotion over HTTP: ``python -m qieemo_lobes.serve``, an API and a web page.

::

    python -m qieemo_lobes.serve [--model DIR] [--backend torch|onnx] [--trust-model]
                                 [--device cpu|cuda] [--host 127.0.0.1] [--port 8000]
                                 [--workers 1] [--max-queue 32] [--timeout 120]
                                 [--max-upload-mb 25] [--max-duration 600] [--batch-size 8]
                                 [--tmp-dir DIR] [--log-level info] [--no-access-log]

The model is loaded once, as ``python -m qieemo_lobes.classify`` loads it (same ``--model``
default, ``--backend``, ``--trust-model``, ``--device``; the same process settings), before the
port is opened. Then (FastAPI + uvicorn, :mod:`qieemo_lobes.serve_app`):

- ``POST /v1/classify``: a multipart upload (field ``file``) gives the record of
  ``classify --format json`` for that file (``path``: the client's file name; ``segments`` for
  recordings over 30 s; ``?top_k=K`` adds the K most probable labels);
- ``GET /healthz``, ``GET /v1/model`` (labels, backend, model folder name, temperature, the
  model card's title and summary, the limits);
- ``GET /``: a web page (plain HTML and JavaScript, no network): upload a file or record from
  the microphone, see the label, every probability and a long recording's timeline.

Limits (every error is JSON ``{"error", "file"}``; statuses in :mod:`qieemo_lobes.serve_app`):

- ``--max-upload-mb`` (413): checked from ``Content-Length`` before the body is read, and while
  it streams in; nothing larger is ever stored.
- Unsupported or undecodable audio: 415; audio that decodes but cannot be classified (too
  short, silence only, NaN/inf samples, longer than ``--max-duration`` seconds): 422.
- ``--workers`` threads classify; ``--max-queue`` more requests may wait (uploads included).
  Beyond that a request is answered 503 with ``Retry-After`` at once, before its body is read,
  so memory and disk stay bounded.
- ``--timeout`` seconds per request, from its arrival: 408 if the upload is not done by then,
  504 if the classification is not; a job that timed out stops at its next model call.
- Files: each upload is written to a folder of its own inside a private temporary folder
  (``--tmp-dir``, default the system's; mode 0700) under a name the server chooses
  (``audio.<ext>``, the extension from an allow-list of the audio types this machine decodes),
  and removed with that folder when its request ends. The client's file name is only shown,
  never used as a path. Nothing else is written.

``--host`` defaults to 127.0.0.1 (this machine only); ``--port 0`` picks a free port. The
first line on stdout says where it listens: ``serve: listening on http://HOST:PORT/ ...``.

Exit status: 0 after a clean shutdown (Ctrl-C or SIGTERM: requests in progress are given
``--timeout`` seconds to finish, then the private folder is removed); 2 nothing could run (a
bad option, no model, a model refused, the port taken, fastapi/uvicorn missing), with one line
``serve: <problem>`` on stderr; 130 interrupted while loading the model.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from pathlib import Path
from typing import Any

from qieemo_lobes import classify, classify_process
from qieemo_lobes.classify import DEFAULT_MODEL_DIR
from qieemo_lobes.files import terminate_as_interrupt
from qieemo_lobes.serve_worker import ClassifyService, ServeLimits

__all__ = ["build_service", "main"]


class _Refused(Exception):
    """Nothing can run: one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    """Run the service until Ctrl-C or SIGTERM; the exit code (0, or 2: refused)."""
    args = _parser().parse_args(argv)
    with terminate_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the folder is removed
        try:
            limits = _limits(args)
            _check_installed()
            sock = _listen(args.host, args.port)
            service, info = build_service(
                args.model, args.backend, args.device, args.trust_model, limits, args.tmp_dir
            )
        except (_Refused, classify._Refused) as err:
            print(f"serve: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("serve: interrupted", file=sys.stderr)
            return 130
        try:
            _run(service, info, sock, args)
        finally:
            service.close(timeout=limits.timeout_s)
            sock.close()
    return 0


def _check_installed() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise _Refused(
            f"the service needs fastapi, uvicorn and python-multipart ({err}); "
            'pip install -e ".[serve]"'
        ) from None


def build_service(
    model: str | None,
    backend: str = "torch",
    device: str | None = None,
    trust_model: bool = False,
    limits: ServeLimits | None = None,
    tmp_dir: str | None = None,
    configure_process: bool = True,
) -> tuple[ClassifyService, dict[str, Any]]:
    """Load the model as ``classify`` does and start the workers; also what ``/v1/model`` says.

    Raises ``qieemo_lobes.classify._Refused`` (one line) when the model cannot be loaded.
    """
    from qieemo_lobes.serve_app import model_card_summary

    if backend == "onnx":
        from qieemo_lobes.onnx_models import load_onnx_model, resolve_onnx_model

        device = classify._onnx_device(device, configure_process)
        model_dir = classify._onnx_step(resolve_onnx_model, model, DEFAULT_MODEL_DIR)
        build_from = DEFAULT_MODEL_DIR if model is None else None
        recognizer = classify._onnx_step(
            load_onnx_model, model_dir, device, classify_process.onnx_threads(), build_from, _say
        )
    else:
        device = classify._torch_device(device, configure_process)
        model_dir = classify._model_dir(model)
        recognizer = classify._load_model(model_dir, device, trust_code=trust_model)
    title, summary = model_card_summary(model_dir)
    info = {
        "backend": backend,
        "model": model_dir.name,
        "temperature": float(getattr(recognizer, "temperature", 1.0)),
        "sample_rate": int(recognizer.sample_rate),
        "title": title,
        "summary": summary,
    }
    return ClassifyService(recognizer, limits or ServeLimits(), tmp_dir), info


def _say(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


def _limits(args: argparse.Namespace) -> ServeLimits:
    checks = (
        (args.workers >= 1, f"--workers must be at least 1, got {args.workers}"),
        (args.max_queue >= 0, f"--max-queue must be at least 0, got {args.max_queue}"),
        (args.timeout > 0, f"--timeout must be positive, got {args.timeout:g}"),
        (args.max_upload_mb > 0, f"--max-upload-mb must be positive, got {args.max_upload_mb:g}"),
        (args.max_duration >= 0, f"--max-duration must be 0 or more, got {args.max_duration:g}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (0 <= args.port <= 65535, f"--port must be from 0 to 65535, got {args.port}"),
    )
    for ok, problem in checks:
        if not ok:
            raise _Refused(problem)
    if args.tmp_dir is not None and not Path(args.tmp_dir).is_dir():
        raise _Refused(f"--tmp-dir {args.tmp_dir}: no such folder")
    return ServeLimits(
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        max_duration_s=args.max_duration,
        timeout_s=args.timeout,
        workers=args.workers,
        max_queue=args.max_queue,
        batch_size=args.batch_size,
    )


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket (bound before the model loads: a taken port fails fast)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise _Refused(f"cannot listen on {host}:{port} ({_os_problem(err)})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise _Refused(f"cannot listen on {host}:{port} ({_os_problem(err)})") from None
    return sock


def _os_problem(err: OSError) -> str:
    text = err.strerror or str(err) or type(err).__name__
    return text[:1].lower() + text[1:]


def _run(service: ClassifyService, info: dict, sock: socket.socket, args) -> None:
    import uvicorn

    from qieemo_lobes.serve_app import create_app

    app = create_app(service, info)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serve: listening on http://{shown}:{port}/ (model {info['model']}, backend "
        f"{info['backend']}, {service.limits.workers} workers, queue {service.limits.max_queue})",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        limit_concurrency=service.limits.capacity + 64,
        timeout_graceful_shutdown=max(1, int(service.limits.timeout_s)),
        server_header=False,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again with the
    # handler it found (main's: KeyboardInterrupt), so that the service's folder is removed.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qieemo_lobes.serve",
        description="Serve emotion recognition over HTTP: POST /v1/classify, GET /healthz, "
        "GET /v1/model, and a web page at /.",
        epilog="Exit status: 0 after a clean shutdown (Ctrl-C, SIGTERM), 2 nothing could run.",
    )
    parser.add_argument(
        "--model",
        metavar="DIR",
        help=f"model folder (python -m qieemo_lobes.export); default {DEFAULT_MODEL_DIR}",
    )
    parser.add_argument("--trust-model", action="store_true", help=classify.TRUST_HELP)
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default) or onnx (an ONNX model folder; default: the default model's "
        "ONNX copy, built once on first use)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000; 0: a free port")
    parser.add_argument("--workers", type=int, default=1, help="classifying threads (1)")
    parser.add_argument(
        "--max-queue", type=int, default=32, help="requests that may wait; more get 503 (32)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request: 408/504 (120)"
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=25.0, help="largest upload in MiB: 413 (25)"
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=600.0,
        help="longest recording in seconds, from its header: 422 (600; 0: no limit)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="segments per batch (8)")
    parser.add_argument("--tmp-dir", help="where the private upload folder goes (system temp)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (info)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    return parser


if __name__ == "__main__":
    sys.exit(main())
