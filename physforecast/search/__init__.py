"""Search over candidate futures, shared by BeamVQ and ST-PAD's diffusion stage.

- :mod:`.beam`: :func:`beam_search`, a pure function over an expand and a score callable,
  and :func:`self_ensemble`;
- :mod:`.scores`: penalties that rank candidates (registered in
  :data:`physforecast.registry.SCORES`) and their weighted, calibrated combination;
- :mod:`.critic`: a learned critic (SAMIA's user model) used as a reference-free score.
"""

from .beam import BeamResult, beam_search, self_ensemble
from .critic import ContextCritic, CriticFilter, fit_critic
from .scores import PhysicsSpec, ScoreCombination, ScoreContext, register_score

__all__ = [
    "BeamResult",
    "beam_search",
    "self_ensemble",
    "ContextCritic",
    "CriticFilter",
    "fit_critic",
    "PhysicsSpec",
    "ScoreCombination",
    "ScoreContext",
    "register_score",
]
