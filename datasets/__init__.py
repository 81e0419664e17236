"""Datasets: one file per physical system (simulator) or file format (loader).

Every public module here registers itself in :data:`physforecast.registry.DATASETS`
on import; this package imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
