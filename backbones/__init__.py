"""Backbones: one file per model, each registering itself when imported.

The models listed in :data:`MANIFEST` are *declared* to the registry with their module
and metadata (paper, source, parameters at the default options), and imported only when
one is built: training an FNO imports neither timm's ViT nor the other models. Every
other public module of this package (a name not starting with ``_`` and other than
``base``) is imported here, so a new model file is available as soon as it exists; add
it to the manifest to make it lazy (``tests/backbones`` checks the manifest against the
registrations).

``Backbone``, ``Latent`` and ``register_backbone`` are importable from here (they live in
:mod:`physforecast.backbones.base`, loaded on first access).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from physforecast.registry import BACKBONES

__all__ = ["Backbone", "Latent", "register_backbone", "MANIFEST"]

#: name -> (module in this package, metadata). ``params``: parameters with the default
#: options for 10 frames in and out of one variable (``physforecast list backbones``).
MANIFEST: dict[str, tuple[str, dict[str, Any]]] = {
    "cno": (
        "cno",
        {
            "paper": "Raonic et al. 2023, Convolutional Neural Operators (NeurIPS)",
            "source": "physforecast",
            "params": 158026,
        },
    ),
    "convlstm": (
        "convlstm",
        {
            "paper": "Shi et al. 2015, Convolutional LSTM Network (NeurIPS)",
            "source": "physforecast",
            "params": 64961,
        },
    ),
    "ffno": (
        "ffno",
        {
            "paper": "Tran et al. 2023, Factorized Fourier Neural Operators (ICLR)",
            "source": "physforecast",
            "params": 151018,
        },
    ),
    "fno": (
        "fno",
        {
            "paper": "Li et al. 2021, Fourier Neural Operator for Parametric PDEs (ICLR)",
            "source": "neuraloperator",
            "params": 358378,
        },
    ),
    "gnot": (
        "gnot",
        {
            "paper": "Hao et al. 2023, GNOT: A General Neural Operator Transformer for "
            "Operator Learning (ICML)",
            "source": "physforecast",
            "params": 39630,
        },
    ),
    "lsm": (
        "lsm",
        {
            "paper": "Wu et al. 2023, Solving High-Dimensional PDEs with Latent Spectral "
            "Models (ICML)",
            "source": "physforecast",
            "params": 141994,
        },
    ),
    "resnet": (
        "resnet",
        {
            "paper": "Gupta & Brandstetter 2022, Towards Multi-spatiotemporal-scale "
            "Generalized PDE Modeling (PDEArena ResNet)",
            "source": "physforecast",
            "params": 20682,
        },
    ),
    "simvp": (
        "simvp",
        {
            "paper": "Gao et al. 2022, SimVP (CVPR); Tan et al. 2022, SimVPv2 (gSTA); "
            "Tan et al. 2023, TAU",
            "source": "physforecast",
            "params": 420513,
        },
    ),
    "unet": (
        "unet",
        {
            "paper": "Ronneberger et al. 2015, U-Net (MICCAI); PDEArena variant, "
            "Gupta & Brandstetter 2022",
            "source": "physforecast; timm encoders",
            "params": 172522,
        },
    ),
    "uno": (
        "uno",
        {
            "paper": "Rahman, Ross & Azizzadenesheli 2023, U-NO: U-shaped Neural Operators (TMLR)",
            "source": "neuraloperator",
            "params": 99082,
        },
    ),
    "vit": (
        "vit",
        {
            "paper": "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (ICLR)",
            "source": "timm",
            "params": 154720,
        },
    ),
}

for _name, (_module, _meta) in MANIFEST.items():
    BACKBONES.declare(_name, f"{__name__}.{_module}", **_meta)

_declared_modules = {module for module, _ in MANIFEST.values()}
for _info in pkgutil.iter_modules(__path__):
    if _info.name.startswith("_") or _info.name == "base" or _info.name in _declared_modules:
        continue
    importlib.import_module(f"{__name__}.{_info.name}")  # not in the manifest: eager


def __getattr__(name: str) -> Any:
    if name in ("Backbone", "Latent", "register_backbone"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
