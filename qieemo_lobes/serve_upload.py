"""Reading an audio upload for ``python -m qieemo_lobes.serve``: streamed, bounded, never trusted.

:func:`receive_upload` parses a ``multipart/form-data`` body as it arrives (python-multipart's
streaming parser, no spooling anywhere else) and writes the part named ``file`` into the
request's private folder under a name the server chooses: ``audio`` plus an extension from an
allow-list (:func:`choose_extension`). The client's file name is only ever *shown* (the
``file`` of an error, the ``path`` of a result), after :func:`client_name` has cut it down to a
bare, printable name: it never reaches the file system.

Every refusal is an :class:`UploadError` with its HTTP status:

======  ===========================================================================
status  when
======  ===========================================================================
400     a malformed or incomplete multipart body, or two files in one request
408     the upload did not finish within the request's timeout
413     the file is larger than the limit (from ``Content-Length`` before anything is
        read, otherwise as soon as the streamed bytes pass it: nothing more is stored).
        The rest of the body is then read and dropped, up to twice the limit, so that a
        client still sending reads the 413 instead of a reset connection; beyond that
        the answer comes at once
415     not a ``multipart/form-data`` request; a file whose extension (or, without one,
        whose content type) is not audio this server decodes
422     no part named ``file``
507     the upload cannot be stored (disk full)
======  ===========================================================================

Example
-------
>>> client_name("../../etc/passwd"), client_name("C:\\\\Users\\\\me\\\\voice.WAV")
('passwd', 'voice.WAV')
>>> client_name("..") , client_name("a\\x00b\\nc.wav")
('upload', 'abc.wav')
>>> choose_extension("voice.WAV", "application/octet-stream", (".wav", ".webm"))
'.wav'
>>> choose_extension("blob", "audio/webm;codecs=opus", (".wav", ".webm"))
'.webm'
>>> choose_extension("setup.exe", "audio/wav", (".wav",)) is None
True
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "CONTENT_TYPES",
    "FORM_OVERHEAD_BYTES",
    "Upload",
    "UploadError",
    "choose_extension",
    "client_name",
    "receive_upload",
]

# A multipart body holds more than the file: boundaries, part headers, small fields.
FORM_OVERHEAD_BYTES = 64 * 1024
# The field that carries the audio.
FILE_FIELD = "file"
# Longest client file name kept (for display only).
MAX_NAME_CHARS = 200
# Content types of a file without an extension (a recording from MediaRecorder, a "blob").
CONTENT_TYPES = {
    "audio/wav": ".wav",
    "audio/wave": ".wav",
    "audio/x-wav": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/webm": ".webm",
    "video/webm": ".webm",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/aiff": ".aiff",
    "audio/x-aiff": ".aiff",
    "audio/3gpp": ".3gp",
    "audio/amr": ".amr",
}


class UploadError(Exception):
    """An upload refused: ``status`` (HTTP), ``message`` (one line), ``name`` (the client's)."""

    def __init__(self, status: int, message: str, name: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.name = name


@dataclass
class Upload:
    """The uploaded file: where the server wrote it, and the client's (sanitised) name."""

    path: Path
    name: str
    size: int


def client_name(raw: str) -> str:
    """The client's file name for display: its last path component, printable, at most 200
    characters; ``upload`` when nothing is left. Never used to name a file."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", ".."):
        return "upload"
    return base[:MAX_NAME_CHARS]


def choose_extension(name: str, content_type: str, allowed: tuple[str, ...]) -> str | None:
    """The extension the server gives the stored file, from the allow-list ``allowed``.

    The client's name decides when it has an extension (``voice.mp3``: ``.mp3`` if allowed,
    otherwise nothing); a name without one (``blob``) is looked up by its content type in
    :data:`CONTENT_TYPES`. ``None``: not audio this server reads.
    """
    ext = os.path.splitext(name)[1].lower()
    if not ext:
        ext = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower(), "")
    return ext if ext in allowed else None


def _allowed_text(allowed: tuple[str, ...]) -> str:
    return ", ".join(sorted(allowed))


class _FormReader:
    """The callbacks of python-multipart's parser: one file part written, the rest skipped."""

    def __init__(self, folder: Path, max_bytes: int, allowed: tuple[str, ...]):
        self.folder = folder
        self.max_bytes = max_bytes
        self.allowed = allowed
        self.header_name = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.fh: IO[bytes] | None = None
        self.in_file = False
        self.upload: Upload | None = None
        self.ended = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if field != FILE_FIELD or b"filename" not in options:
            return  # another field: skipped, nothing kept
        name = client_name(options[b"filename"].decode("utf-8", "replace"))
        if self.upload is not None:
            raise UploadError(400, "send one file per request", name)
        content_type = self.headers.get(b"content-type", b"").decode("latin-1")
        ext = choose_extension(name, content_type, self.allowed)
        if ext is None:
            shown = os.path.splitext(name)[1].lower() or content_type or "no type"
            raise UploadError(
                415,
                f"unsupported file type ({shown}); send audio: {_allowed_text(self.allowed)}",
                name,
            )
        path = self.folder / f"audio{ext}"  # the server's name, in the request's own folder
        self.upload = Upload(path, name, 0)
        self.fh = open(path, "xb")  # noqa: SIM115 - closed by on_part_end or close()
        self.in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file or self.fh is None or self.upload is None:
            return
        self.upload.size += end - start
        if self.upload.size > self.max_bytes:
            raise UploadError(413, _too_large(self.max_bytes), self.upload.name)
        self.fh.write(data[start:end])

    def on_part_end(self) -> None:
        if self.in_file:
            self.close()
            self.in_file = False

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _os_problem(err: OSError) -> str:
    text = err.strerror or type(err).__name__
    return text[:1].lower() + text[1:]


def _too_large(max_bytes: int) -> str:
    return f"file too large (the limit is {max_bytes / 2**20:g} MB)"


async def _chunks(
    stream: AsyncIterator[bytes], deadline: float, timeout_s: float
) -> AsyncIterator[bytes]:
    """The body's chunks; :class:`UploadError` 408 once the monotonic ``deadline`` passes."""
    iterator = stream.__aiter__()
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(iterator.__anext__(), remaining)
        except StopAsyncIteration:
            return
        except (TimeoutError, asyncio.TimeoutError):
            raise UploadError(
                408, f"upload not finished within the {timeout_s:g} s timeout"
            ) from None
        yield chunk


async def _drain(chunks: AsyncIterator[bytes], received: int, limit: int) -> None:
    """Read and drop the rest of a refused body, up to ``limit`` bytes in all (and the
    deadline): a client still sending then reads its 413 instead of a reset connection."""
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                return
    except Exception:  # a timeout, the client gone: the answer is 413 all the same
        return


async def receive_upload(
    headers: dict[str, str],
    stream: AsyncIterator[bytes],
    folder: Path,
    max_bytes: int,
    allowed: tuple[str, ...],
    deadline: float,
    timeout_s: float,
) -> Upload:
    """Read a multipart body from ``stream`` and store its ``file`` part in ``folder``.

    Arguments
    ---------
    headers : dict
        The request's headers (lower-case names): ``content-type``, ``content-length``.
    stream : async iterator of bytes
        The body as it arrives.
    folder : Path
        The request's private folder (written: ``audio.<ext>`` only).
    max_bytes : int
        The largest file accepted (the whole body may hold :data:`FORM_OVERHEAD_BYTES` more).
    allowed : tuple of str
        The extensions the server decodes (``.wav``, ...).
    deadline : float
        ``time.monotonic()`` by which the body must have arrived.
    timeout_s : float
        The timeout, for the 408 message.

    Returns
    -------
    Upload

    Raises
    ------
    UploadError
        With the status of the table in the module docstring.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(
            415, f"send the audio as multipart/form-data, in a field named '{FILE_FIELD}'"
        )
    body_limit = max_bytes + FORM_OVERHEAD_BYTES
    drain_limit = 2 * body_limit
    chunks = _chunks(stream, deadline, timeout_s)
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        if int(declared) <= drain_limit:
            await _drain(chunks, 0, drain_limit)
        raise UploadError(413, _too_large(max_bytes))
    reader = _FormReader(folder, max_bytes, allowed)
    received = 0
    try:
        parser = MultipartParser(options[b"boundary"], reader.callbacks())
        async for chunk in chunks:
            received += len(chunk)
            if received > body_limit:
                name = reader.upload.name if reader.upload else None
                raise UploadError(413, _too_large(max_bytes), name)
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        name = reader.upload.name if reader.upload else None
        raise UploadError(400, "malformed multipart body", name) from None
    except OSError as err:  # the disk is full, the folder went away...
        name = reader.upload.name if reader.upload else None
        raise UploadError(507, f"cannot store the upload ({_os_problem(err)})", name) from None
    except UploadError as err:
        if err.status == 413:
            reader.close()
            await _drain(chunks, received, drain_limit)
        raise
    finally:
        reader.close()
    if reader.upload is None:
        raise UploadError(
            422, f"no file uploaded: send the audio in a multipart field named '{FILE_FIELD}'"
        )
    if not reader.ended:
        raise UploadError(400, "incomplete multipart body", reader.upload.name)
    return reader.upload
