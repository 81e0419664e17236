"""The optional dependencies of :mod:`physforecast.federated` (the ``federated`` extra)."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

EXTRA_HINT = "pip install 'physforecast[federated]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that names the ``federated`` extra.

    Parameters
    ----------
    module : str
        The module to import (``"tenseal"``, ``"phe"``).
    purpose : str
        What needs it, for the message ("CKKS secure aggregation").
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{purpose} needs the {module!r} package, which is not installed; "
            f"install the federated extra: {EXTRA_HINT}"
        ) from err
