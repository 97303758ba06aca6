"""The project's own error types: a user-supplied file or value that cannot be used."""

from __future__ import annotations

from os import PathLike


class InputFileError(ValueError):
    """A file given by the user cannot be used. The message is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointMismatchError(InputFileError):
    """A checkpoint was made for another backbone or another SegMoTE configuration."""


def one_line_errors() -> None:
    """Makes an uncaught :class:`InputFileError` end the process with ``error: <path>: <problem>`` on stderr
    and exit status 1, without a traceback (set ``SEGMOTE_TRACEBACK=1`` to see it), also when MONAI's config
    parser re-raised it as the cause of its own error. Other errors keep Python's report. The bundle configs
    call this in ``initialize``."""
    import os
    import sys

    previous = sys.excepthook

    def hook(kind, value, traceback):
        cause, seen = value, set()
        while cause is not None and id(cause) not in seen and not isinstance(cause, InputFileError):
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, InputFileError) and not os.environ.get("SEGMOTE_TRACEBACK"):
            print(f"error: {cause}", file=sys.stderr)
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
