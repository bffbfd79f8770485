"""Residual blocks: y = g(F(x) + shortcut(x)), and their plain twins without the shortcut.

Each block holds its residual function F as `branch` and the skip as `shortcut`, so the
paper's equation reads directly off `forward`. A block whose shape changes (stride or
channels) is the "convolutional block"; one whose shape stays is the "identity block".
"""

from typing import Literal

import torch
from torch import nn

from .layers import (
    ConvNormAct,
    Norm,
    NormActConv,
    ProjectionShortcut,
    Shortcut,
    make_norm,
    make_shortcut,
)


class ResidualBlock(nn.Module):
    """What every block shares: the shortcut, the add, and zero-initialising the branch."""

    branch: nn.Sequential
    shortcut: nn.Module | None

    def last_norm(self) -> nn.Module:
        """The norm whose scale, set to zero, makes the branch output zero."""
        return self.branch[-1].norm

    def zero_init_last_norm(self) -> bool:
        """Set the last norm's scale to zero so the block starts as an identity.

        Goyal et al. 2017, section 5.1: each residual block then starts as the identity,
        which eases early training. Returns False (and changes nothing) when that norm
        has no scale, as with `norm="none"`.
        """
        weight = getattr(self.last_norm(), "weight", None)
        if weight is None:
            return False
        nn.init.zeros_(weight)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = relu(F(x) + shortcut(x)); pre-activation blocks override this."""
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)  # not in-place: autograd keeps `out` for the norm
        return self.act(out)

    @property
    def is_identity_block(self) -> bool:
        return isinstance(self.shortcut, nn.Identity)


class BasicBlock(ResidualBlock):
    """Two (or more) 3x3 conv-norm groups; the ReLU after the add (He et al. 2015, Fig. 2).

    `num_convs` > 2 makes the skip span more layers, the generalisation in section 3.2.
    `residual=False` removes the shortcut, giving the paper's plain network (Fig. 3, middle).
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        num_convs: int = 2,
        shortcut: Shortcut = "B",
        residual: bool = True,
        norm: Norm = "batch",
        width: int | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if num_convs < 2:
            raise ValueError(f"a residual branch needs at least 2 convs, got num_convs={num_convs}")
        width = width or out_channels
        groups_of = [ConvNormAct(in_channels, width, 3, stride, groups, norm)]
        groups_of += [ConvNormAct(width, width, 3, 1, groups, norm) for _ in range(num_convs - 2)]
        groups_of.append(ConvNormAct(width, out_channels, 3, 1, groups, norm, act=False))
        self.branch = nn.Sequential(*groups_of)
        self.shortcut = (
            make_shortcut(shortcut, in_channels, out_channels, stride, norm) if residual else None
        )
        self.act = nn.ReLU(inplace=True)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (He et al. 2015, Fig. 5 right), then add and ReLU.

    `stride_at="3x3"` is torchvision's "v1.5", which strides in the 3x3 conv and is about
    half a point more accurate on ImageNet; `"1x1"` strides in the first 1x1 as the paper
    did ("v1"). `groups` > 1 gives the ResNeXt block (Xie et al. 2017, Fig. 3c).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        width: int,
        groups: int = 1,
        stride_at: Literal["1x1", "3x3"] = "3x3",
        shortcut: Shortcut = "B",
        residual: bool = True,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.branch = nn.Sequential(
            ConvNormAct(in_channels, width, 1, stride_1x1, norm=norm),
            ConvNormAct(width, width, 3, stride_3x3, groups, norm),
            ConvNormAct(width, out_channels, 1, norm=norm, act=False),
        )
        self.shortcut = (
            make_shortcut(shortcut, in_channels, out_channels, stride, norm) if residual else None
        )
        self.act = nn.ReLU(inplace=True)


class PreActBlock(ResidualBlock):
    """Pre-activation block (He et al. 2016, Fig. 4e): norm-ReLU-conv, nothing after the add.

    The shortcut stays a clean identity from input to output. Where it must project, it
    reads the pre-activated input, as the paper's code does, so the projection sees
    normalised values. `bottleneck=True` gives the 1x1-3x3-1x1 form used by ResNet-164.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        bottleneck: bool = False,
        width: int | None = None,
        groups: int = 1,
        num_convs: int = 2,
        stride_at: Literal["1x1", "3x3"] = "3x3",
        shortcut: Shortcut = "B",
        residual: bool = True,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        width = width or out_channels
        self.preact = nn.Sequential(make_norm(norm, in_channels), nn.ReLU())
        if bottleneck:
            stride_1x1, stride_3x3 = (stride, 1) if stride_at == "1x1" else (1, stride)
            first = nn.Conv2d(in_channels, width, 1, stride_1x1, bias=norm == "none")
            rest = [
                NormActConv(width, width, 3, stride_3x3, groups, norm),
                NormActConv(width, out_channels, 1, norm=norm),
            ]
        else:
            first = nn.Conv2d(in_channels, width, 3, stride, 1, groups=groups, bias=norm == "none")
            rest = [NormActConv(width, width, 3, 1, groups, norm) for _ in range(num_convs - 2)]
            rest.append(NormActConv(width, out_channels, 3, 1, groups, norm))
        self.branch = nn.Sequential(first, *rest)
        self.shortcut = (
            make_shortcut(shortcut, in_channels, out_channels, stride, norm) if residual else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preact(x)
        out = self.branch(activated)
        if self.shortcut is None:
            return out
        projects = isinstance(self.shortcut, ProjectionShortcut)
        return out + self.shortcut(activated if projects else x)
