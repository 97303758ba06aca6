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
