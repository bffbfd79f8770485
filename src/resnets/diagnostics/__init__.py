"""Why ResNets work: gradient and activation statistics, the plain-versus-residual
experiment, identity blocks that deepen a trained model, and their figures."""

from .callback import GradientMonitor
from .recorder import GradientRecorder, Layer, find_blocks, find_layers

__all__ = ["GradientMonitor", "GradientRecorder", "Layer", "find_blocks", "find_layers"]
