"""Training with Lightning: module, data module, recipes, callbacks, run directories."""

from .fit import TrainConfig, TrainResult, resume, train
from .recipes import Recipe

__all__ = ["Recipe", "TrainConfig", "TrainResult", "resume", "train"]
