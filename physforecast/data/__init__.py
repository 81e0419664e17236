"""Data machinery: opening and caching datasets, normalization, forecast windows."""

from .io import open_dataset, write_dataset
from .normalization import Normalizer
from .windows import ForecastWindows, split_indices

__all__ = ["open_dataset", "write_dataset", "Normalizer", "ForecastWindows", "split_indices"]
