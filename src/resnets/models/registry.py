"""Named architectures: one table of specs, and `create_model` / `list_models` over it."""

import fnmatch
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError, closest
from .resnet import ResNet, ResNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ResNetConfig
    description: str
    depth: int  # as the literature names it: WRN-28-10 counts its projection convs too


_REGISTRY: dict[str, ModelEntry] = {}

IMAGENET_STAGES = (64, 128, 256, 512)
CIFAR_STAGES = (16, 32, 64)

# He et al. 2015, Table 1.
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# He et al. 2015, section 4.2: depth 6n+2, n blocks of two 3x3 convs per stage.
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

IMAGENET = ResNetConfig(
    stem="imagenet",
    stem_channels=64,
    stage_channels=IMAGENET_STAGES,
    blocks_per_stage=(2, 2, 2, 2),
    shortcut="B",
    num_classes=1000,
)
# Zero-initialised branches (Goyal et al. 2017) pay off over ImageNet's thousands of steps
# per epoch; on these small networks and short CIFAR-sized schedules they stall the first
# epochs (README, "Models"), so the CIFAR family starts with its branches non-zero.
CIFAR = ResNetConfig(
    stem="cifar",
    stem_channels=16,
    stage_channels=CIFAR_STAGES,
    num_classes=10,
    zero_init_residual=False,
)


def register(name: str, config: ResNetConfig, description: str, depth: int | None = None) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, config, description, depth or config.depth)


def _register_family() -> None:
    for depth, (block, counts) in IMAGENET_DEPTHS.items():
        spec = replace(IMAGENET, block=block, blocks_per_stage=counts)
        register(f"resnet{depth}", spec, f"ResNet-{depth}, He et al. 2015 (Table 1)")
        register(
            f"plain{depth}",
            replace(spec, residual=False),
            f"ResNet-{depth}'s layers without shortcuts (the paper's plain baseline)",
        )
        register(
            f"preact_resnet{depth}",
            replace(spec, preactivation=True),
            f"pre-activation ResNet-{depth}, He et al. 2016",
        )
    for depth in CIFAR_DEPTHS:
        spec = replace(CIFAR, blocks_per_stage=((depth - 2) // 6,) * 3)
        register(f"resnet{depth}", spec, f"CIFAR ResNet-{depth}, option A shortcuts (sec. 4.2)")
        register(
            f"plain{depth}",
            replace(spec, residual=False),
            f"CIFAR ResNet-{depth}'s layers without shortcuts (Fig. 6, left)",
        )
    # He et al. 2016 (Identity Mappings), Table 3: projection where the shape changes.
    preact_cifar = replace(CIFAR, preactivation=True, shortcut="B")
    register(
        "preact_resnet110",
        replace(preact_cifar, blocks_per_stage=(18, 18, 18)),
        "pre-activation CIFAR ResNet-110, He et al. 2016",
    )
    for depth in (164, 1001):
        register(
            f"preact_resnet{depth}",
            replace(preact_cifar, block="bottleneck", blocks_per_stage=((depth - 2) // 9,) * 3),
            f"pre-activation bottleneck CIFAR ResNet-{depth}, He et al. 2016",
        )
    # Zagoruyko and Komodakis 2016: pre-activation basic blocks, depth 6n+4, widen k.
    for depth, k in ((16, 8), (28, 10), (40, 4)):
        register(
            f"wrn{depth}_{k}",
            replace(preact_cifar, blocks_per_stage=((depth - 4) // 6,) * 3, width_multiplier=k),
            f"Wide ResNet WRN-{depth}-{k}, Zagoruyko and Komodakis 2016",
            depth,
        )
    for depth in (50, 101):
        spec = replace(IMAGENET, block="bottleneck", blocks_per_stage=IMAGENET_DEPTHS[depth][1])
        register(
            f"wide_resnet{depth}_2",
            replace(spec, width_multiplier=2),
            f"ResNet-{depth} with bottlenecks twice as wide (torchvision's Wide ResNet)",
        )
        for groups, width in ((32, 4),) if depth == 50 else ((32, 4), (32, 8), (64, 4)):
            register(
                f"resnext{depth}_{groups}x{width}d",
                replace(spec, groups=groups, width_per_group=width),
                f"ResNeXt-{depth} {groups}x{width}d, Xie et al. 2017",
            )
        register(
            f"resnet{depth}d",
            replace(spec, deep_stem=True, shortcut="D"),
            f"ResNet-{depth}-D: deep stem and avg-pool shortcuts, He et al. 2019",
        )


_register_family()


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, such as `"resnet*"`."""
    return [name for name in _REGISTRY if fnmatch.fnmatch(name, pattern)]


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UsageError(
            f"unknown model {name!r}; expected one of `resnets models`.{closest(name, _REGISTRY)}"
        )
    return _REGISTRY[name]


def model_config(name: str, **options: Any) -> ResNetConfig:
    """The registered config of `name` with `options` (any ResNetConfig field) replaced."""
    config = model_entry(name).config
    known = {f.name for f in fields(ResNetConfig)}
    for key in options:
        if key not in known:
            raise UsageError(
                f"unknown model option {key!r} for {name!r}; expected one of "
                f"{', '.join(sorted(known))}.{closest(key, known)}"
            )
    try:
        return replace(config, **options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad options for model {name!r}: {error}") from error


def architecture_of(name: str | Path) -> str:
    """The registered architecture `name` stands for: itself if registered, or the one a
    model directory (`config.json` and `model.safetensors`) records. Raises a UsageError
    that suggests the nearest names otherwise."""
    from ..runs import unfinished_run
    from ..weights import read_model_config  # weights depends on models

    if str(name) in _REGISTRY:
        return str(name)
    folder = saved_model_dir(name)
    if folder is not None:
        return read_model_config(folder).get("architecture") or folder.name
    unfinished = unfinished_run(name)
    if unfinished is not None:
        raise UsageError(unfinished)
    raise UsageError(
        f"unknown model {str(name)!r}; expected a name from `resnets models`, a run "
        f"directory or a model directory holding config.json.{closest(str(name), _REGISTRY)}"
    )


def saved_model_dir(name: str | Path) -> Path | None:
    """The model directory `name` points to: itself, or a run directory's `model/`."""
    path = Path(name)
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file():
            return folder
    return None


def create_model(name: str | Path, *, weights: str | Path | None = None, **options: Any) -> ResNet:
    """Build a registered model, or load a saved model directory.

    Args:
        name: a registered name (`resnets.list_models()`), or the path of a model
            directory written by resnets (`config.json` and `model.safetensors`).
        weights: a weights file or model directory to load (`resnets.load_weights`).
        **options: any `ResNetConfig` field, such as `num_classes=6` or `in_channels=1`.
    """
    from ..weights import load_model_dir, load_weights  # weights depends on models

    folder = None if str(name) in _REGISTRY else saved_model_dir(name)
    if folder is not None:
        model = load_model_dir(folder, **options)
    else:
        model = ResNet(model_config(str(name), **options))
    if weights is not None:
        load_weights(model, weights)
    return model
