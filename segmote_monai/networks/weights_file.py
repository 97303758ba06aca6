"""Reading weight files safely: ``torch.load(weights_only=True)`` and one-line errors naming the file."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from segmote_monai.errors import InputFileError

__all__ = ["load_weights_file"]

# What torch.load raises on a file that is truncated, not a checkpoint, or holds pickled code.
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
               pickle.UnpicklingError, zipfile.BadZipFile)


def load_weights_file(path: str | os.PathLike, *, what: str, missing_hint: str = "") -> Any:
    """Loads ``path`` with ``weights_only=True`` on the CPU; nothing in the file is executed.

    Raises FileNotFoundError or :class:`InputFileError`, each one line naming the file and ``what`` it was
    meant to be.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found{missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        raise InputFileError(path, f"not a readable {what} ({type(exc).__name__})") from exc
