"""Exceptions raised by the data layer."""

from __future__ import annotations

__all__ = ["DataError", "DataNotFoundError"]


class DataError(ValueError):
    """A data source, cache or evaluation file is missing, corrupt or malformed.

    The message always names the offending path (or array) and what was expected.
    """


class DataNotFoundError(DataError, FileNotFoundError):
    """A required file, directory or package is absent (also a ``FileNotFoundError``)."""
