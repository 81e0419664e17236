"""BeamVQ: a VQ code bank on any backbone, beam search over candidate futures, and
self-training on the candidates that physics-aware scores rank best.

Parts: :mod:`.codebank` (state and quantizer), :mod:`.head` (top-K VQ head, output and
latent modes), :mod:`.candidates`, :mod:`.beam` (pure beam search), :mod:`.scores`
(registry and weighted combination), :mod:`.critic` (SAMIA-style filter),
:mod:`.selftrain` (the self-training loop), :mod:`.forecaster` (beam-searched,
self-ensembled forecasts) and :mod:`.pipeline` (``physforecast train --method beamvq``).
"""

from .beam import BeamResult, beam_search, self_ensemble
from .candidates import candidate_indices, nearest_candidates, sampled_candidates
from .codebank import CodeBank, CodeBankConfig, Quantizer, QuantizerOutput
from .critic import ContextCritic, CriticFilter, fit_critic
from .forecaster import BeamVQForecaster
from .head import HeadOutput, TopKVQHead, head_loss
from .scores import SCORES, PhysicsSpec, ScoreCombination, ScoreContext, register_score
from .selftrain import MixedDataset, PseudoLabelDataset, self_train

__all__ = [
    "BeamResult",
    "beam_search",
    "self_ensemble",
    "candidate_indices",
    "nearest_candidates",
    "sampled_candidates",
    "CodeBank",
    "CodeBankConfig",
    "Quantizer",
    "QuantizerOutput",
    "ContextCritic",
    "CriticFilter",
    "fit_critic",
    "BeamVQForecaster",
    "HeadOutput",
    "TopKVQHead",
    "head_loss",
    "SCORES",
    "PhysicsSpec",
    "ScoreCombination",
    "ScoreContext",
    "register_score",
    "MixedDataset",
    "PseudoLabelDataset",
    "self_train",
]
