"""The one error every data loader raises for bad input: it names the file and what is wrong with it."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Unreadable, corrupt, empty, badly shaped or out-of-range data; the message names the file."""
