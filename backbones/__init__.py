"""Backbones: one file per model, each registering itself on import.

Every public module in this package (a name not starting with ``_`` and other than
``base``) is imported here, so a new model file is available as soon as it exists.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Backbone, Latent, register_backbone

__all__ = ["Backbone", "Latent", "register_backbone"]

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")
