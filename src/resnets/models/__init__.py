"""ResNet models in plain PyTorch."""

from .blocks import BasicBlock, Bottleneck, PreActBlock, ResidualBlock
from .layers import ConvNormAct, NormActConv, ProjectionShortcut, ZeroPadShortcut
from .registry import create_model, list_models, model_config, model_entry
from .resnet import ResNet, ResNetConfig

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ConvNormAct",
    "NormActConv",
    "PreActBlock",
    "ProjectionShortcut",
    "ResNet",
    "ResNetConfig",
    "ResidualBlock",
    "ZeroPadShortcut",
    "create_model",
    "list_models",
    "model_config",
    "model_entry",
]
