"""The ResNet assembly: stem, stages of blocks, and the head (He et al. 2015, Table 1)."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, PreActBlock, ResidualBlock
from .layers import ConvNormAct, Norm, Shortcut, he_init_, make_norm


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that decides a ResNet's layers; saved with every trained model.

    `stage_channels` are the paper's per-stage widths (64, 128, 256, 512 for ImageNet;
    16, 32, 64 for CIFAR). A bottleneck stage outputs `expansion` times that.
    """

    block: Literal["basic", "bottleneck"] = "basic"
    blocks_per_stage: tuple[int, ...] = (3, 3, 3)
    stage_channels: tuple[int, ...] = (16, 32, 64)
    stem: Literal["imagenet", "cifar"] = "cifar"
    stem_channels: int = 16
    deep_stem: bool = False
    shortcut: Shortcut = "A"
    residual: bool = True
    preactivation: bool = False
    convs_per_block: int = 2
    bottleneck_stride: Literal["1x1", "3x3"] = "3x3"
    expansion: int = 4
    groups: int = 1
    width_per_group: int = 64
    width_multiplier: float = 1.0
    norm: Norm = "batch"
    init: Literal["he", "pytorch"] = "he"
    zero_init_residual: bool = True
    num_classes: int = 1000
    in_channels: int = 3

    def __post_init__(self) -> None:
        for name, annotation in get_type_hints(type(self)).items():
            _check_field(name, getattr(self, name), annotation)
        object.__setattr__(self, "blocks_per_stage", tuple(self.blocks_per_stage))
        object.__setattr__(self, "stage_channels", tuple(self.stage_channels))
        if len(self.blocks_per_stage) != len(self.stage_channels):
            raise ValueError(
                f"blocks_per_stage {self.blocks_per_stage} and stage_channels "
                f"{self.stage_channels} must have one entry per stage"
            )
        for name in ("num_classes", "in_channels", "convs_per_block", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.convs_per_block < 2:
            raise ValueError(f"convs_per_block must be at least 2, got {self.convs_per_block}")
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be positive, got {self.width_multiplier}")
        if min(self.blocks_per_stage + self.stage_channels, default=0) < 1:
            raise ValueError(
                f"blocks_per_stage {self.blocks_per_stage} and stage_channels "
                f"{self.stage_channels} need at least one stage, each entry at least 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ResNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)

    @property
    def depth(self) -> int:
        """Weighted layers counted as the paper counts them: convs on the main path plus fc."""
        convs = 3 if self.block == "bottleneck" else self.convs_per_block
        stem_convs = 3 if self.deep_stem else 1
        return stem_convs + convs * sum(self.blocks_per_stage) + 1

    @property
    def out_channels(self) -> int:
        expansion = self.expansion if self.block == "bottleneck" else 1
        return self._block_out(self.stage_channels[-1], expansion)

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return (1,) + (2,) * (len(self.stage_channels) - 1)

    @property
    def downsampling(self) -> int:
        """How many times the stem and stages shrink each side of the input."""
        stem = 4 if self.stem == "imagenet" else 1
        return stem * 2 ** (len(self.stage_channels) - 1)

    def _block_out(self, channels: int, expansion: int) -> int:
        if self.block == "basic":
            return round(channels * self.width_multiplier)
        return channels * expansion


def _stem(config: ResNetConfig) -> nn.Sequential:
    """ImageNet: 7x7/2 conv and 3x3/2 max pool. CIFAR: one 3x3 conv (section 4.2).

    The deep stem replaces the 7x7 by three 3x3 convs (He et al. 2019, ResNet-C).
    A pre-activation CIFAR stem is a bare conv: the first block normalises it.
    """
    c_in, c_out, norm = config.in_channels, config.stem_channels, config.norm
    stride = 2 if config.stem == "imagenet" else 1
    if config.deep_stem:
        layers = [
            ConvNormAct(c_in, c_out // 2, 3, stride, norm=norm),
            ConvNormAct(c_out // 2, c_out // 2, 3, norm=norm),
            ConvNormAct(c_out // 2, c_out, 3, norm=norm),
        ]
    elif config.preactivation and config.stem == "cifar":
        layers = [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=norm == "none")]
    else:
        kernel = 7 if config.stem == "imagenet" else 3
        layers = [ConvNormAct(c_in, c_out, kernel, stride, norm=norm)]
    if config.stem == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


def _block_plan(config: ResNetConfig) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (stage, in_channels, out_channels, stride, width) for every block in order."""
    in_channels = config.stem_channels
    expansion = config.expansion if config.block == "bottleneck" else 1
    for stage, (count, channels) in enumerate(
        zip(config.blocks_per_stage, config.stage_channels, strict=True)
    ):
        out_channels = config._block_out(channels, expansion)
        if config.block == "bottleneck":
            scale = config.width_multiplier * config.width_per_group / 64
            width = int(channels * scale) * config.groups
        else:
            width = out_channels
        for index in range(count):
            stride = config.stage_strides[stage] if index == 0 else 1
            yield stage, in_channels, out_channels, stride, width
            in_channels = out_channels


def _make_block(config: ResNetConfig, c_in: int, c_out: int, stride: int, width: int) -> nn.Module:
    common = dict(shortcut=config.shortcut, residual=config.residual, norm=config.norm)
    if config.preactivation:
        return PreActBlock(
            c_in,
            c_out,
            stride,
            bottleneck=config.block == "bottleneck",
            width=width,
            groups=config.groups,
            num_convs=config.convs_per_block,
            stride_at=config.bottleneck_stride,
            **common,
        )
    if config.block == "bottleneck":
        return Bottleneck(
            c_in,
            c_out,
            stride,
            width=width,
            groups=config.groups,
            stride_at=config.bottleneck_stride,
            **common,
        )
    return BasicBlock(
        c_in, c_out, stride, num_convs=config.convs_per_block, groups=config.groups, **common
    )


def _check_field(name: str, value: Any, annotation: Any) -> None:
    """Refuse a value of the wrong kind, such as shortcut="Z" or zero_init_residual="maybe",
    before it builds a model that silently differs from the one asked for."""
    if get_origin(annotation) is Literal:
        if value not in get_args(annotation):
            choices = ", ".join(repr(c) for c in get_args(annotation))
            raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    elif annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false; got {value!r}")
    elif annotation in (int, float):
        kinds = (int,) if annotation is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{name} must be a number ({annotation.__name__}); got {value!r}")
    elif get_origin(annotation) is tuple:
        if not isinstance(value, tuple | list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{name} must be a list of whole numbers, such as [3, 3, 3]")


class ResNet(nn.Module):
    """A residual (or, with `residual=False`, plain) convolutional network.

    The head is global average pooling and one linear layer (section 3.4): no hidden fully
    connected layers and no dropout, and any input the stages do not shrink below 1x1 works.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = _stem(config)
        stages: list[list[nn.Module]] = [[] for _ in config.stage_channels]
        for stage, c_in, c_out, stride, width in _block_plan(config):
            stages[stage].append(_make_block(config, c_in, c_out, stride, width))
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        # Pre-activation blocks end on a conv, so the output needs one last norm and ReLU.
        self.final_act = (
            nn.Sequential(make_norm(config.norm, config.out_channels), nn.ReLU(inplace=True))
            if config.preactivation
            else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(config.out_channels, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (He et al. 2015b) for convs, unless `init="pytorch"`."""
        if self.config.init == "he":
            he_init_(self)
        if self.config.zero_init_residual and self.config.residual:
            for block in self.blocks():
                block.zero_init_last_norm()

    def blocks(self) -> list[ResidualBlock]:
        """Every block, in order from input to output."""
        return [block for stage in self.stages for block in stage]

    @property
    def min_input_size(self) -> int:
        """The smallest side for which every stage still has whole pixels to work on."""
        return self.config.downsampling

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H / downsampling, W / downsampling)."""
        x = self.stem(x)
        x = self.stages(x)
        return self.final_act(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, num_classes) logits."""
        return self.head(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
