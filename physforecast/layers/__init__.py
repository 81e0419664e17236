"""Public building blocks shared by backbones and methods.

Model files and methods import blocks from here, never from each other:

- :mod:`.conditioning`: :class:`FiLM` modulation by physical parameters (maps and tokens);
- :mod:`.conv`: padded convolutions, group norm, the pre-activation residual block;
- :mod:`.grids`: time <-> channel stacking, grid <-> token reshapes, grid coordinates.
"""

from .conditioning import FiLM, film_tokens
from .conv import PADDING_MODES, ResBlock, check_padding_mode, conv3x3, group_norm
from .grids import (
    append_coordinates,
    grid_coordinates,
    grid_to_tokens,
    stack_time,
    tokens_to_grid,
    unstack_time,
)

__all__ = [
    "FiLM",
    "film_tokens",
    "PADDING_MODES",
    "ResBlock",
    "check_padding_mode",
    "conv3x3",
    "group_norm",
    "append_coordinates",
    "grid_coordinates",
    "grid_to_tokens",
    "stack_time",
    "tokens_to_grid",
    "unstack_time",
]
