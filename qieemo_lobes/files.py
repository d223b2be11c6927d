"""Writing files safely: whole or not at all, nothing left behind, one run per output folder.

- :func:`atomic_open` writes a file under a temporary name in its folder and renames it into
  place when the ``with`` block ends without error, so a reader never sees half a file. Where
  the file system offers ``O_TMPFILE`` (Linux: ext4, xfs, btrfs, tmpfs) the temporary file has
  no name until it is complete, so even ``SIGKILL`` or a full disk leaves nothing behind;
  elsewhere it is a short hidden name (``.tmp-XXXXXXXX``) removed on any error. The result gets
  the permissions of a new file (``0666 & ~umask``), not ``mkstemp``'s ``0600``.
- :func:`write_text_atomic`, :func:`write_json_atomic` and :func:`save_torch_atomic` use it.
- :class:`FolderLock` takes an exclusive lock on an output folder (``fcntl.flock``, released
  by the kernel when the process dies, however it dies), so two runs never write into one folder.
- :func:`terminate_as_interrupt` turns ``SIGTERM`` into ``KeyboardInterrupt``, so ``finally``
  blocks and context managers clean up on ``kill`` as they do on Ctrl-C.

Example
-------
>>> folder = getfixture("tmp_path")
>>> with atomic_open(folder / "out.txt") as fh:
...     _ = fh.write("done\\n")
>>> (folder / "out.txt").read_text(), sorted(p.name for p in folder.iterdir())
('done\\n', ['out.txt'])
>>> try:
...     with atomic_open(folder / "out.txt") as fh:
...         _ = fh.write("half")
...         raise RuntimeError("disk full")
... except RuntimeError:
...     pass
>>> (folder / "out.txt").read_text(), sorted(p.name for p in folder.iterdir())
('done\\n', ['out.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FolderLock",
    "FolderLockedError",
    "atomic_open",
    "save_torch_atomic",
    "terminate_as_interrupt",
    "write_json_atomic",
    "write_text_atomic",
]

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


def _temporary_name(folder: Path) -> Path:
    # Short and fixed-length, so that a legal 255-byte target name still has a temporary name.
    return folder / f".tmp-{secrets.token_hex(4)}"


def _link(fd: int, name: Path) -> None:
    """Give the unnamed file ``fd`` the name ``name``.

    ``linkat(fd, "", ..., AT_EMPTY_PATH)`` first (needs ``CAP_DAC_READ_SEARCH``, which root
    has), then the ``/proc/self/fd`` link (refused by some sandboxes with ``EXDEV``).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(name), _AT_EMPTY_PATH) == 0:
            return
        if ctypes.get_errno() == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "File exists", str(name))
    except (OSError, AttributeError):  # no libc here: try the other way
        pass
    os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)


@functools.lru_cache(maxsize=64)
def _unnamed_files_work(device: int, folder: str) -> bool:
    """Whether ``folder`` (on ``device``) takes unnamed files that can be linked afterwards."""
    del device  # the cache key: one probe per file system
    if not _O_TMPFILE:
        return False
    try:
        fd = os.open(folder, _O_TMPFILE | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return False
    probe = _temporary_name(Path(folder))
    try:
        _link(fd, probe)
    except OSError:
        return False
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return True


def _open_unnamed(folder: Path) -> int | None:
    """A file descriptor of an unnamed new file in ``folder``, or None where unsupported."""
    if not _unnamed_files_work(os.stat(folder).st_dev, str(folder)):
        return None
    return os.open(folder, _O_TMPFILE | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)


def _link_unnamed(fd: int, folder: Path) -> Path:
    """Give the unnamed file ``fd`` a temporary name in ``folder``; returns it."""
    while True:
        name = _temporary_name(folder)
        try:
            _link(fd, name)
            return name
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing; it appears, complete, only when the block succeeds.

    Arguments
    ---------
    path : str or os.PathLike
        The file to write; its folder must exist. An existing file is replaced (by rename, so
        a symlink at ``path`` is replaced, not followed).
    mode : str
        ``"w"`` (text) or ``"wb"`` (binary).
    encoding, newline : str, optional
        As for :func:`open`, text mode only.

    Yields
    ------
    file object
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    folder = path.parent
    binary = mode == "wb"
    text_args = {} if binary else {"encoding": encoding, "newline": newline}
    fd = _open_unnamed(folder)
    named: Path | None = None
    if fd is None:  # a named temporary file: removed on error, left only by SIGKILL
        while True:
            named = _temporary_name(folder)
            try:
                fd = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
    try:
        with os.fdopen(fd, mode, **text_args) as fh:
            yield fh
            fh.flush()  # a full disk shows here, before the rename
            if named is None:
                named = _link_unnamed(fh.fileno(), folder)
        os.replace(named, path)
        named = None
    finally:
        if named is not None:
            with contextlib.suppress(OSError):
                os.unlink(named)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_open`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        fh.write(text)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """JSON (indented, UTF-8, finite numbers only) through :func:`write_text_atomic`.

    Raises
    ------
    ValueError
        If ``obj`` holds NaN or an infinity (they are not JSON); the file is not written.
    """
    write_text_atomic(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n", path)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_open`: never a half-written file."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


class FolderLockedError(RuntimeError):
    """Another process holds the lock of an output folder; ``str()`` is one line."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder, held by this process until :meth:`release`.

    The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the process
    exits, so a crashed or killed run never leaves a stale lock. The file records the holder's
    pid for the message a second run prints.

    Arguments
    ---------
    folder : str or os.PathLike
        The folder to lock (created if missing).
    what : str
        What holds it, for messages (e.g. ``"a training run"``).

    Example
    -------
    >>> folder = getfixture("tmp_path") / "run"
    >>> first = FolderLock(folder).acquire()
    >>> try:
    ...     FolderLock(folder).acquire()
    ... except FolderLockedError as err:
    ...     print(str(err).split(":", 1)[1].split("(")[0].strip())
    in use by another run
    >>> first.release()
    >>> FolderLock(folder).acquire().release()
    """

    def __init__(self, folder: str | os.PathLike, what: str = "another run"):
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock or raise :class:`FolderLockedError` at once; returns self."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise FolderLockedError(
                f"{self.folder}: in use by {self.what}{pid}; wait for it to finish or choose "
                "another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def replace_folder(finished: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the ``finished`` folder (written beside ``out``, on the same file system) at ``out``,
    replacing an existing ``out`` as a whole: a reader sees the old folder or the new one, never
    a mix. The old one is moved aside first, then removed.

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, text in (("old", "1"), ("new", "2")):
    ...     (root / name).mkdir(); _ = (root / name / "f.txt").write_text(text)
    >>> replace_folder(root / "new", root / "old")
    >>> (root / "old" / "f.txt").read_text(), (root / "new").exists()
    ('2', False)
    """
    import shutil
    import tempfile

    finished, out = Path(finished), Path(out)
    if not out.exists():
        os.replace(finished, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    os.replace(out, aside / "model")
    os.replace(finished, out)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, ``SIGTERM`` raises ``KeyboardInterrupt`` (main thread only).

    A ``kill`` then unwinds like Ctrl-C: temporary files are removed, child processes are
    stopped, and the command can print one line instead of dying silently. Outside the main
    thread (where Python cannot set handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
