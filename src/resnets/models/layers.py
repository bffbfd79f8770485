"""The small pieces every ResNet is built from: conv-norm-activation groups and shortcuts."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "none"]
Shortcut = Literal["A", "B", "C", "D"]


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """Batch norm, or nothing for the un-normalised plain networks of the diagnostics."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """Conv, then batch norm, then ReLU (the order of He et al. 2015, section 3.4).

    With `act=False` the group ends at the norm, as the last group of a residual branch
    does: the ReLU there comes after the shortcut is added.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm: Norm = "batch",
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=norm == "none",  # batch norm's shift makes a conv bias redundant
        )
        self.norm = make_norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()


class NormActConv(nn.Sequential):
    """Batch norm, then ReLU, then conv: the pre-activation order of He et al. 2016."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.act = nn.ReLU()  # not in-place: a projection shortcut may still read the input
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=norm == "none",
        )


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. 2015 (section 4.2): subsample, then pad extra channels with zeros.

    It adds no parameters, which is why the paper uses it for the CIFAR networks.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"a zero-padding shortcut cannot reduce channels ({in_channels} -> "
                f"{out_channels}); use shortcut 'B'"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class ProjectionShortcut(nn.Sequential):
    """A strided 1x1 conv and batch norm (options B and C of He et al. 2015, eq. 2).

    With `avg_pool=True` it is option D of He et al. 2019 ("Bag of Tricks", section 4.1):
    a 2x2 average pool does the subsampling so that the 1x1 conv sees every position,
    instead of dropping three quarters of them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: Norm = "batch",
        avg_pool: bool = False,
    ) -> None:
        super().__init__()
        if avg_pool and stride > 1:
            self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            stride = 1
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=norm == "none")
        self.norm = make_norm(norm, out_channels)


def make_shortcut(
    option: Shortcut,
    in_channels: int,
    out_channels: int,
    stride: int,
    norm: Norm = "batch",
) -> nn.Module:
    """The shortcut of one block: identity where shapes match, else what `option` says."""
    shape_changes = stride != 1 or in_channels != out_channels
    if option == "C":
        return ProjectionShortcut(in_channels, out_channels, stride, norm)
    if not shape_changes:
        return nn.Identity()
    if option == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return ProjectionShortcut(in_channels, out_channels, stride, norm, avg_pool=option == "D")


def he_init_(root: nn.Module) -> None:
    """He initialisation (He et al. 2015b, fan-out) of every conv below `root`; batch norms
    back to scale 1, shift 0 and fresh running statistics."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
