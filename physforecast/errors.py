"""Errors a user can fix, one type per kind of mistake.

Every error here derives from :class:`PhysforecastError`; the ``physforecast`` command
prints such an error as one ``physforecast: error: ...`` line instead of a traceback.
They also derive from the built-in type a Python caller would expect (``ValueError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["PhysforecastError", "ConfigError", "DataFormatError"]


class PhysforecastError(Exception):
    """Base class of the errors that name a user's mistake and what to do about it."""


class ConfigError(PhysforecastError, ValueError):
    """A configuration key or value is not valid."""


class DataFormatError(PhysforecastError, ValueError):
    """A file or dataset lacks the variables, dims, layout or values that were expected."""
