"""Option values as they arrive from a bundle command line.

``python -m monai.bundle run ... --resume false`` passes the string ``'false'`` (python-fire parses only
Python literals such as ``False``), and ``bool('false')`` is True: a boolean option read naively would do the
opposite of what was typed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", "null", ""}


def as_bool(value: Any, name: str) -> bool:
    """``value`` as a bool: bools and 0/1 as they are, the strings true/false, yes/no, on/off, 1/0 (any case).

    Raises ValueError naming the option for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")
