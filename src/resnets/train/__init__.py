"""Training with Lightning: module, data module, recipes, callbacks, run directories."""

from .fit import TrainConfig, TrainResult, train
from .recipes import Recipe

__all__ = ["Recipe", "TrainConfig", "TrainResult", "train"]
