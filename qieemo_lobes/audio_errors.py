"""The errors of :mod:`qieemo_lobes.audio`: one problem with one input file, as one line.

:class:`AudioError` and :class:`AudioTooLongError` are re-exported by :mod:`qieemo_lobes.audio`,
the import path the rest of the package uses.

Authors
-------
 * qieemo project
"""

from __future__ import annotations

import os

__all__ = ["AudioError", "AudioTooLongError", "os_problem"]


class AudioError(Exception):
    """A problem with one input file; ``str()`` is the single line ``<path>: <problem>``.

    Arguments
    ---------
    path : str or os.PathLike
        The file concerned.
    problem : str
        What is wrong with it, in a few words (line breaks are folded into spaces).

    Example
    -------
    >>> str(AudioError("a.wav", "empty file (0 bytes)"))
    'a.wav: empty file (0 bytes)'
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(self.path, self.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class AudioTooLongError(AudioError):
    """The file is longer than the whole-file limit; read it with ``stream_audio`` instead.

    Arguments
    ---------
    path : str or os.PathLike
        The file concerned.
    duration_s : float
        Its duration in seconds.
    max_seconds : float
        The limit it exceeds.

    Example
    -------
    >>> err = AudioTooLongError("call.wav", 3600.0, 600.0)
    >>> print(err)
    call.wav: too long for whole-file loading (3600.0 s > 600.0 s); stream or segment it instead
    """

    def __init__(self, path: str | os.PathLike, duration_s: float, max_seconds: float):
        self.duration_s = float(duration_s)
        self.max_seconds = float(max_seconds)
        super().__init__(
            path,
            f"too long for whole-file loading ({self.duration_s:.1f} s > {self.max_seconds:.1f} s);"
            " stream or segment it instead",
        )
        self.args = (self.path, self.duration_s, self.max_seconds)


def os_problem(err: OSError) -> str:
    """An ``OSError`` as a few lower-case words.

    Example
    -------
    >>> os_problem(PermissionError(13, "Permission denied"))
    'permission denied'
    """
    text = err.strerror or type(err).__name__
    return text[:1].lower() + text[1:]
