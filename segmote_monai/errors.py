"""The project's own error types: a user-supplied file or value that cannot be used."""

from __future__ import annotations

from os import PathLike

from monai.utils import optional_import

# MONAI Label 0.8.5 has no exception handler of its own: any error inside a request becomes a bare "500 Internal
# Server Error". FastAPI answers Starlette's HTTPException with its status and detail, so where Starlette is
# installed (MONAI Label's server) a refused request names its reason in the response.
_HTTPException, _HAS_STARLETTE = optional_import("starlette.exceptions", name="HTTPException")
_BASES: tuple[type, ...] = (ValueError, _HTTPException) if _HAS_STARLETTE else (ValueError,)


class RequestError(*_BASES):
    """A value or file given by the user cannot be used; the message is one line. A ``ValueError``, and, where
    Starlette is installed, also its ``HTTPException`` with status 400 and the message as detail."""

    status_code = 400

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.message = message
        if _HAS_STARLETTE:
            _HTTPException.__init__(self, status_code=400, detail=message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self):
        return (RequestError, (self.message,))


class InputFileError(RequestError):
    """A file given by the user cannot be used. The message is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class CheckpointMismatchError(InputFileError):
    """A checkpoint was made for another backbone or another SegMoTE configuration."""


def one_line_errors() -> None:
    """Makes an uncaught :class:`RequestError` (an :class:`InputFileError` included) end the process with
    ``error: <message>`` (``<path>: <problem>`` for a file) on stderr and exit status 1, without a traceback (set
    ``SEGMOTE_TRACEBACK=1`` to see it), also when MONAI's config parser re-raised it as the cause of its own
    error. Other errors keep Python's report. The bundle configs call this in ``initialize``."""
    import os
    import sys

    previous = sys.excepthook

    def hook(kind, value, traceback):
        cause, seen = value, set()
        while cause is not None and id(cause) not in seen and not isinstance(cause, RequestError):
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, RequestError) and not os.environ.get("SEGMOTE_TRACEBACK"):
            print(f"error: {cause}", file=sys.stderr)
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
