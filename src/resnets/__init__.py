"""resnets: build, train, understand and serve Residual Networks."""

from .hub import from_pretrained
from .models import ResNet, ResNetConfig, create_model, list_models
from .weights import load_weights, save_model_dir, to_torchvision

__version__ = "0.1.0"

__all__ = [
    "ResNet",
    "ResNetConfig",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_weights",
    "save_model_dir",
    "to_torchvision",
]
