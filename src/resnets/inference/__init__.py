"""Inference: a fast predictor, batch-norm folding, evaluation and export."""

from .fold import fold_batch_norm
from .predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor", "fold_batch_norm"]
