"""Fold each batch norm into the convolution before it, for inference."""

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.layers import ConvNormAct, ProjectionShortcut


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` where every conv followed by batch norm is one conv.

    In eval mode BN is an affine map per channel, so w' = w * g / s and b' = (b - m) * g / s
    + beta give the same output with one op fewer per layer. Pre-activation layers
    (norm before conv, with a ReLU between) cannot be folded this way and are left as they are.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvNormAct | ProjectionShortcut) and isinstance(
            module.norm, nn.BatchNorm2d
        ):
            with torch.no_grad():
                module.conv = fuse_conv_bn_eval(module.conv, module.norm)
            module.norm = nn.Identity()
    return folded
