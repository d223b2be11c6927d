"""Errors a command reports in one line, and exceptions turned into one line.

Every qieemo command reports a problem as one line naming the file (or option) and the
problem, never a traceback. Library exceptions (torch's, libsndfile's, YAML parsers') often
span several lines or run long: :func:`one_line` folds and shortens them, :func:`os_error_line`
gives ``<file>: <problem>`` for an ``OSError``.

Example
-------
>>> one_line(ValueError("first line\\n   second line"))
'first line second line'
>>> os_error_line(FileNotFoundError(2, "No such file or directory", "/data/a.wav"))
'/data/a.wav: No such file or directory'
>>> str(RecipeError("--lr=abc: expected a number")), RecipeError("x").code
('--lr=abc: expected a number', 2)
"""

from __future__ import annotations

__all__ = ["NonFiniteError", "RecipeError", "one_line", "os_error_line"]


def one_line(err: BaseException, limit: int = 200) -> str:
    """``err``'s message on one line, at most about ``limit`` characters.

    Whitespace (line breaks included) is squashed; a longer message is cut at the last sentence
    end before ``limit``, else at ``limit`` with ``...``. An empty message gives the
    exception's class name.

    Arguments
    ---------
    err : BaseException
        The exception.
    limit : int
        Length beyond which the message is shortened.

    Returns
    -------
    str

    Example
    -------
    >>> one_line(RuntimeError("Bad thing. " + "detail " * 60), limit=40)
    'Bad thing'
    >>> one_line(KeyError())
    'KeyError'
    """
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    if len(text) > limit:
        cut = text.rfind(". ", 0, limit)
        text = text[:cut] if cut > 5 else text[:limit] + "..."
    return text


def os_error_line(err: OSError) -> str:
    """``<file>: <problem>`` for an ``OSError`` that names its file, else :func:`one_line`."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return one_line(err)


class RecipeError(Exception):
    """A refusal or failure a recipe command reports in one line; ``code`` is its exit status.

    Arguments
    ---------
    message : str
        What is wrong (line breaks are folded into spaces).
    code : int
        The command's exit status (2: bad input or a file that cannot be read or written).
    """

    def __init__(self, message: str, code: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.code = code


class NonFiniteError(RecipeError):
    """A loss or prediction that is NaN or infinite: the model would be NaN from there on.

    Arguments
    ---------
    message : str
        Where it happened (epoch, batch, utterances).
    """

    def __init__(self, message: str):
        super().__init__(message, code=1)
