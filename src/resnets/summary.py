"""What a model is made of: output shapes, parameters and multiply-adds per block or layer.

Multiply-adds (MACs) count what the paper's complexity figures count (He et al. 2015,
Table 1: "3.6 x 10^9 FLOPs" for ResNet-50, which are multiply-adds): for a convolution,
output elements times `in_channels / groups * kh * kw`; for a linear layer, outputs times
inputs. Norms, activations, pools and the shortcut's add are left out, as there.
"""

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from .errors import UsageError
from .models.blocks import ResidualBlock
from .models.layers import ZeroPadShortcut
from .models.resnet import ResNet, ResNetConfig

Depth = Literal["block", "layer"]


@dataclass(frozen=True)
class SummaryRow:
    """One stem, block or head part (or, at layer depth, one conv, norm, pool or linear)."""

    name: str  # the module's name in the state dict, such as "stages.1.0"
    kind: str
    output_shape: tuple[int, ...]  # one image's output: (C, H, W), or (num_classes,)
    parameters: int
    macs: int


@dataclass(frozen=True)
class ModelSummary:
    """Rows from input to output, and the totals over the whole model."""

    input_size: tuple[int, int, int]
    depth: Depth
    rows: list[SummaryRow]
    total_parameters: int
    trainable_parameters: int
    total_macs: int

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, ready for `json.dumps`."""
        values = asdict(self)
        values["input_size"] = list(self.input_size)
        for row in values["rows"]:
            row["output_shape"] = list(row["output_shape"])
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def count_parameters_of(config: ResNetConfig) -> int:
    """Parameters of the model `config` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = ResNet(config)
    return sum(p.numel() for p in model.parameters())


def default_input_size(config: ResNetConfig) -> tuple[int, int, int]:
    """The image size a model of this stem was designed for: 224x224 ImageNet, 32x32 CIFAR."""
    side = 224 if config.stem == "imagenet" else 32
    return (config.in_channels, side, side)


def block_kind(block: nn.Module) -> str:
    """'plain block' without a shortcut, 'identity block' where the shortcut is x itself,
    'convolutional block' where the shortcut has to change x (project, pad or pool) first.
    """
    if getattr(block, "shortcut", None) is None:
        return "plain block"
    if isinstance(block, ResidualBlock) and block.is_identity_block:
        return "identity block"
    return "convolutional block"


def layer_kind(name: str, module: nn.Module) -> str | None:
    """A short description of a leaf layer, such as 'conv 3x3/2'; None for ReLU or Identity."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        text = f"conv {kh}x{kw}" + (f"/{module.stride[0]}" if module.stride[0] > 1 else "")
        if module.groups > 1:
            text += f", {module.groups} groups"
        return ("shortcut " if ".shortcut." in f".{name}." else "") + text
    if isinstance(module, nn.BatchNorm2d):
        return "batch norm"
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        kind = "max pool" if isinstance(module, nn.MaxPool2d) else "avg pool"
        size, stride = _first(module.kernel_size), _first(module.stride)
        return f"{kind} {size}x{size}" + (f"/{stride}" if stride > 1 else "")
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "global average pool"
    if isinstance(module, nn.Linear):
        return "fully connected"
    if isinstance(module, ZeroPadShortcut):
        return "zero-pad shortcut"
    if any(True for _ in module.parameters(recurse=False)):
        return type(module).__name__.lower()
    return None


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def _row_modules(model: ResNet, depth: Depth) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) for every row, in the order the forward pass runs them."""
    if depth == "layer":
        rows = []
        for name, module in model.named_modules():
            kind = layer_kind(name, module) if not any(module.children()) else None
            if kind is not None:
                rows.append((name, module, kind))
        return rows
    stem_kind = "deep stem" if model.config.deep_stem else "stem"
    rows = [("stem", model.stem, stem_kind)]
    for stage_index, stage in enumerate(model.stages):
        for block_index, block in enumerate(stage):
            rows.append((f"stages.{stage_index}.{block_index}", block, block_kind(block)))
    if not isinstance(model.final_act, nn.Identity):
        rows.append(("final_act", model.final_act, "final norm and ReLU"))
    rows.append(("pool", model.pool, "global average pool"))
    rows.append(("head", model.head, "head"))
    return rows


def _macs_of(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one image through a conv or linear layer (batch of 1)."""
    outputs = output.shape[1:].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return outputs * (module.in_channels // module.groups) * kh * kw
    return outputs * module.in_features


def _check_input_size(model: ResNet, input_size: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_size) != 3 or any(int(n) < 1 for n in input_size):
        raise UsageError(
            f"input_size must be (channels, height, width) of positive sizes, such as "
            f"(3, 224, 224); got {tuple(input_size)}"
        )
    channels, height, width = (int(n) for n in input_size)
    if channels != model.config.in_channels:
        raise UsageError(
            f"the model takes {model.config.in_channels}-channel images but input_size has "
            f"{channels} channels; pass input_size=({model.config.in_channels}, {height}, "
            f"{width}) or build the model with in_channels={channels}"
        )
    return channels, height, width


def _trace(
    model: ResNet, watched: list[tuple[str, nn.Module]], input_size: tuple[int, int, int]
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Run one image through `model`, in eval mode, with forward hooks.

    Returns:
        The output shape of each watched module, and the MACs of every conv and linear
        layer, both by module name.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    macs: dict[str, int] = {}

    # A forward hook that returns a value replaces the module's output, so these return None.
    def record_shape(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(output.shape[1:]))

        return hook

    def record_macs(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            macs[name] = _macs_of(module, output)

        return hook

    hooks = [module.register_forward_hook(record_shape(name)) for name, module in watched]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            hooks.append(module.register_forward_hook(record_macs(name)))
    parameter = next(model.parameters())
    image = torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    try:
        model.eval()  # batch norm in training mode cannot normalise a batch of one 1x1 map
        with torch.no_grad():
            model(image)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes, macs


def summarize(
    model: ResNet,
    input_size: tuple[int, int, int] | None = None,
    depth: Depth = "block",
) -> ModelSummary:
    """Run one image through `model` and record each row's output shape, parameters and MACs.

    Works on any device, the meta device included: only shapes are needed, so a model
    built under `torch.device("meta")` is summarised without allocating its weights.

    Args:
        input_size: (C, H, W) of one image; by default the size the stem was designed for.
        depth: "block" for one row per stem, block and head part; "layer" for one row per
            conv, norm, pool and linear layer.
    """
    if depth not in ("block", "layer"):
        raise UsageError(f"depth must be 'block' or 'layer', got {depth!r}")
    input_size = _check_input_size(model, input_size or default_input_size(model.config))
    rows = _row_modules(model, depth)
    shapes, macs = _trace(model, [(name, module) for name, module, _ in rows], input_size)

    summary_rows = [
        SummaryRow(
            name=name,
            kind=kind,
            output_shape=shapes[name],
            parameters=sum(p.numel() for p in module.parameters()),
            macs=sum(
                n for layer, n in macs.items() if layer == name or layer.startswith(name + ".")
            ),
        )
        for name, module, kind in rows
    ]
    return ModelSummary(
        input_size=input_size,
        depth=depth,
        rows=summary_rows,
        total_parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(macs.values()),
    )


def human(number: float) -> str:
    """4_089_184_256 -> '4.09 G', 25_557_032 -> '25.6 M', 9_536 -> '9.5 K'."""
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= size:
            value = number / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{number:g}"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def render_table(summary: ModelSummary) -> str:
    """The summary as a fixed-width text table with a totals row and a one-line footer."""
    header = ("name", "kind", "output shape", "parameters", "multiply-adds")
    body = [
        (row.name, row.kind, _shape_text(row.output_shape), f"{row.parameters:,}", f"{row.macs:,}")
        for row in summary.rows
    ]
    total = ("total", "", "", f"{summary.total_parameters:,}", f"{summary.total_macs:,}")
    widths = [max(len(line[i]) for line in (header, *body, total)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        left = [cell.ljust(width) for cell, width in zip(cells[:3], widths[:3], strict=True)]
        right = [cell.rjust(width) for cell, width in zip(cells[3:], widths[3:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    lines = [line(header), rule, *(line(cells) for cells in body), rule, line(total)]
    lines.append(
        f"input {_shape_text(summary.input_size)}: {human(summary.total_parameters)} parameters "
        f"({human(summary.trainable_parameters)} trainable), "
        f"{human(summary.total_macs)} multiply-adds per image"
    )
    return "\n".join(lines)
