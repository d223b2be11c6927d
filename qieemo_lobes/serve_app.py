"""The HTTP API and web page of ``python -m qieemo_lobes.serve`` (FastAPI).

==========================  =================================================================
route                       answer
==========================  =================================================================
``GET /``                   the web page (:file:`serve_page.html`: upload or record, see the
                            label, the probabilities and a long recording's timeline)
``GET /healthz``            ``{"status": "ok", "admitted", "running", "waiting", "capacity",
                            "served"}``
``GET /v1/model``           the labels, backend, model folder name, temperature, sample rate,
                            the model card's title and summary, the limits, the audio types
``POST /v1/classify``       multipart upload, field ``file`` (``?top_k=K`` optional): the
                            record of ``classify --format json`` (``path``: the client's file
                            name; ``segments`` over 30 s)
==========================  =================================================================

Every error is JSON, ``{"error": "<one line>", "file": "<the client's file name or null>"}``:

======  ===========================================================================
status  when
======  ===========================================================================
400     a malformed multipart body (:mod:`qieemo_lobes.serve_upload`)
404     no such route
408     the upload did not finish within ``--timeout``
413     the file is over ``--max-upload-mb``
415     not multipart; not an audio type this server decodes; a file that is not
        audio or cannot be decoded (corrupt, truncated, unknown format)
422     no ``file`` field; audio that decodes but cannot be classified: too short,
        silence only, NaN/inf samples, zero length, an empty file, over
        ``--max-duration``; a bad ``top_k``
500     the model failed on the file (``cannot classify (...)``, non-finite output),
        or the service did (``internal error (...)``)
503     every slot taken (``--workers`` running, ``--max-queue`` waiting), with a
        ``Retry-After`` header; nothing of the request is read
504     not classified within ``--timeout`` (waiting and classifying); the job stops
        at its next model call
507     the upload cannot be stored (disk full)
======  ===========================================================================
"""

import asyncio
import base64
import hashlib
import re
import time
from dataclasses import replace
from importlib import resources
from io import StringIO
from pathlib import Path
from typing import Any

from qieemo_lobes.classify_engine import NON_FINITE_PROBLEM, FileResult
from qieemo_lobes.classify_output import ResultWriter
from qieemo_lobes.serve_upload import UploadError, receive_upload
from qieemo_lobes.serve_worker import Busy, ClassifyService

__all__ = ["PAGE_FILE", "create_app", "model_card_summary", "problem_status"]

PAGE_FILE = "serve_page.html"
# Problems of audio that decodes but cannot be classified: 422. Other audio problems: 415.
UNUSABLE_PREFIXES = (
    "too short",
    "too long",
    "silence only",
    "contains NaN or infinite samples",
    "no audio samples",
    "empty file",
)
# Problems of the model, not of the file: 500.
MODEL_PREFIXES = ("cannot classify", NON_FINITE_PROBLEM)


def problem_status(problem: str) -> int:
    """The HTTP status of a file's problem (an :class:`~qieemo_lobes.audio.AudioError` line or
    the engine's): 422 unusable audio, 500 the model failed, 415 anything else (not audio,
    corrupt, unknown format).

    Example
    -------
    >>> problem_status("silence only (no speech to classify)")
    422
    >>> problem_status("not a readable audio file (corrupt or unknown format)")
    415
    >>> problem_status("cannot classify (RuntimeError: out of memory)")
    500
    """
    if problem.startswith(MODEL_PREFIXES):
        return 500
    if problem.startswith(UNUSABLE_PREFIXES):
        return 422
    return 415


def model_card_summary(folder: Path) -> tuple[str | None, str | None]:
    """The title (first ``#`` heading) and first paragraph of ``folder/MODEL_CARD.md``.

    Markdown emphasis and code marks are dropped from the paragraph; ``(None, None)`` without
    a model card.
    """
    try:
        text = (folder / "MODEL_CARD.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    title, paragraph = None, []
    for line in text.splitlines():
        stripped = line.strip()
        if title is None:
            if stripped.startswith("# "):
                title = stripped[2:].strip()
            continue
        if not stripped:
            if paragraph:
                break
            continue
        if stripped.startswith("#"):
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    summary = re.sub(r"\*\*|`", "", " ".join(paragraph)) or None
    return title, summary


def _page() -> tuple[str, str]:
    """The web page and its Content-Security-Policy (inline script and style by hash)."""
    html = resources.files("qieemo_lobes").joinpath(PAGE_FILE).read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
            for b in blocks
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return html, policy


def _error(status: int, message: str, name: str | None = None, headers=None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "file": name}, status_code=status, headers=headers)


def _record(result: FileResult, labels: list[str], name: str, top_k: int | None) -> str:
    """The JSON record of ``classify --format json`` for ``result``, named ``name``."""
    out = StringIO()
    writer = ResultWriter(out, "json", labels, top_k=top_k)
    writer.add(0, replace(result, path=name))
    writer.close()
    return out.getvalue().strip()


def _top_k(raw: str | None, n_labels: int) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= n_labels:
        raise UploadError(422, f"top_k must be an integer from 1 to {n_labels}, got {raw!r}")
    return int(raw)


def create_app(service: ClassifyService, model_info: dict[str, Any]) -> Any:
    """The FastAPI application serving ``service``.

    Arguments
    ---------
    service : ClassifyService
        The model, queue and workers (loaded and started already).
    model_info : dict
        What ``GET /v1/model`` says besides the labels and limits: ``backend``, ``model`` (the
        folder's name), ``temperature``, ``sample_rate``, ``title``, ``summary``.

    Returns
    -------
    fastapi.FastAPI
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from qieemo_lobes.audio import audio_extensions

    limits = service.limits
    allowed = tuple(sorted(set(audio_extensions())))
    page, policy = _page()
    app = FastAPI(title="qieemo", docs_url=None, redoc_url=None, openapi_url=None)
    model = {
        **model_info,
        "labels": service.labels,
        "limits": {
            "max_upload_mb": limits.max_upload_bytes / 2**20,
            "max_duration_s": limits.max_duration_s,
            "timeout_s": limits.timeout_s,
            "workers": limits.workers,
            "max_queue": limits.max_queue,
        },
        "audio_types": list(allowed),
    }

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(422, "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # logged by uvicorn too
        return _error(500, f"internal error ({type(exc).__name__})")

    @app.middleware("http")
    async def no_sniffing(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": policy})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", **service.stats()}

    @app.get("/v1/model")
    async def model_route() -> dict:
        return model

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        deadline = time.monotonic() + limits.timeout_s
        try:
            job = service.admit()
        except OSError as err:  # no private folder for it (disk full...)
            return _error(507, f"cannot store the upload ({err.strerror or type(err).__name__})")
        except Busy:
            stats = service.stats()
            return _error(
                503,
                f"busy: {stats['running']} requests classifying and {stats['waiting']} "
                "waiting (the limit); try again later",
                headers={"Retry-After": str(service.retry_after_s())},
            )
        name = None
        try:
            top_k = _top_k(request.query_params.get("top_k"), len(service.labels))
            upload = await receive_upload(
                {k.lower(): v for k, v in request.headers.items()},
                request.stream(),
                job.folder,
                limits.max_upload_bytes,
                allowed,
                deadline,
                limits.timeout_s,
            )
            name = upload.name
            future = service.submit(job, upload.path)
            try:
                result = await asyncio.wait_for(
                    asyncio.wrap_future(future), max(0.0, deadline - time.monotonic())
                )
            except (TimeoutError, asyncio.TimeoutError):
                job.cancel()
                return _error(
                    504, f"not classified within the {limits.timeout_s:g} s timeout", name
                )
        except UploadError as err:
            return _error(err.status, err.message, err.name)
        except ClientDisconnect:
            return _error(400, "the client closed the connection during the upload", name)
        finally:
            if not job.submitted:
                service.finish(job)
            elif not job.future.done():  # the request was cancelled (client gone, shutdown)
                job.cancel()
        if result.error is not None:
            problem = result.error.replace(str(upload.path), name)
            return _error(problem_status(problem), problem, name)
        record = _record(result, service.labels, name, top_k)
        return Response(record, media_type="application/json")

    return app
