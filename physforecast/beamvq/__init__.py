"""BeamVQ: a VQ code bank on any backbone, beam search over candidate futures, and
self-training on the candidates that physics-aware scores rank best.

Parts: :mod:`.codebank` (state and quantizer), :mod:`.head` (top-K VQ head, output and
latent modes), :mod:`.candidates`, :mod:`.selftrain` (the self-training loop),
:mod:`.forecaster` (beam-searched, self-ensembled forecasts), :mod:`.context` (the run's
physics in the model's buffers), :mod:`.evaluation` (backbone vs top-1 vs BeamVQ) and
:mod:`.method` (the registered method ``beamvq``: ``physforecast train --method beamvq``). Beam search, scores and the critic are shared
with other methods and live in :mod:`physforecast.search`.
"""

from .candidates import candidate_indices, nearest_candidates, sampled_candidates
from .codebank import CodeBank, CodeBankConfig, Quantizer, QuantizerOutput
from .forecaster import BeamVQForecaster
from .head import HeadOutput, TopKVQHead, head_loss
from .selftrain import MixedDataset, PseudoLabelDataset, self_train

__all__ = [
    "candidate_indices",
    "nearest_candidates",
    "sampled_candidates",
    "CodeBank",
    "CodeBankConfig",
    "Quantizer",
    "QuantizerOutput",
    "BeamVQForecaster",
    "HeadOutput",
    "TopKVQHead",
    "head_loss",
    "MixedDataset",
    "PseudoLabelDataset",
    "self_train",
]
