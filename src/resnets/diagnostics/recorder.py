"""Per-layer gradient, weight and update statistics, and per-block branch activations.

The recorder reads `p.grad` after the backward pass instead of hooking activations, so
it is correct whatever the model does in place (ReLU(inplace=True), `x += shortcut`):
autograd has already produced each parameter's gradient, and nothing later rewrites it.
It also holds under mixed precision, where parameters and their gradients stay float32
under autocast, and under DistributedDataParallel, where `p.grad` is already the mean
over all processes once `backward()` returns, so every rank would record the same
numbers (record on rank zero only; the Lightning callback does).

Only sampled steps (`step % every == 0`) cost anything: a norm per parameter, one copy
of the weights to measure the optimiser's update, and a standard deviation per block.
"""

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.blocks import ResidualBlock

log = logging.getLogger(__name__)

LAYER_COLUMNS = ["step", "layer", "depth", "block", "grad_norm", "weight_norm", "update_ratio"]
BLOCK_COLUMNS = [
    "step",
    "block",
    "index",
    "grad_norm",
    "weight_norm",
    "update_ratio",
    "branch_std",
]


@dataclass(frozen=True)
class Layer:
    """One weighted layer (conv or linear) and where it sits in the network.

    `depth` counts weighted layers along the main path from the input, as the paper
    counts a ResNet's depth (the stem's conv is 1, the classifier is the last). A
    projection shortcut sits beside the path: it shares the depth of its block's last
    conv and has `main_path=False`.
    """

    name: str
    depth: int
    block: str
    main_path: bool
    module: nn.Module = field(repr=False, compare=False)

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters(recurse=False) if p.requires_grad]


def find_layers(model: nn.Module) -> list[Layer]:
    """Every conv and linear layer of `model`, in registration order.

    For a ResNet that order is the forward order: stem, each block's branch and then its
    shortcut, head. For other models, registration order is taken as depth order.
    """
    blocks = find_blocks(model)
    layers: list[Layer] = []
    depth = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        block = _enclosing_block(name, blocks)
        main_path = not name.startswith(f"{block}.shortcut.")
        if main_path:
            depth += 1
        layers.append(Layer(name, max(depth, 1), block, main_path, module))
    return layers


def find_blocks(model: nn.Module) -> dict[str, ResidualBlock]:
    """The model's residual (or plain) blocks by module name, input to output."""
    return {
        name: module for name, module in model.named_modules() if isinstance(module, ResidualBlock)
    }


def _enclosing_block(name: str, blocks: dict[str, nn.Module]) -> str:
    """The block a layer belongs to; outside blocks, its top-level part ("stem", "head")."""
    for block in blocks:
        if name.startswith(block + "."):
            return block
    return name.split(".")[0]


def layer_norms(layers: list[Layer]) -> tuple[list[float], list[float]]:
    """Gradient and weight L2 norms per layer, over all of a layer's own parameters.

    A parameter without a gradient (unused in the last forward) counts as zero. Both
    lists are read back from the device in one transfer.
    """
    grads, weights = [], []
    for layer in layers:
        params = layer.parameters
        grads.append(_norm([p.grad for p in params if p.grad is not None], params[0]))
        weights.append(_norm([p.detach() for p in params], params[0]))
    values = torch.stack(grads + weights).tolist()
    return values[: len(layers)], values[len(layers) :]


def _norm(tensors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The L2 norm of several tensors taken together.

    Computed in float64: the vanishing gradients this measures reach 1e-23 and below,
    whose squares a float32 sum would flush to zero.
    """
    dtype = torch.float32 if like.device.type == "mps" else torch.float64  # MPS has no float64
    if not tensors:
        return torch.zeros((), dtype=dtype, device=like.device)
    norms = [torch.linalg.vector_norm(t, dtype=dtype) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


class GradientRecorder:
    """Records layer and block statistics of `model` at every `every`-th step.

    Call the methods around a training step, in this order::

        recorder.start_step(step)           # before the forward pass
        loss.backward()
        recorder.record_gradients()         # after backward; after unscaling under AMP
        optimizer.step()
        recorder.record_update()            # optional: fills in update_ratio

    `layer_rows` then holds one dict per sampled step and layer (`LAYER_COLUMNS`), and
    `block_rows` one per sampled step and block (`BLOCK_COLUMNS`): the block view
    combines its layers' norms (square root of the summed squares) and adds the
    standard deviation of the residual branch's output (He et al. 2015, Fig. 7).
    Without `record_update`, `update_ratio` stays NaN.
    """

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 step, got {every}")
        self.every = every
        self.layers = find_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no conv or linear layer to record")
        self.blocks = find_blocks(model)
        self.layer_rows: list[dict] = []
        self.block_rows: list[dict] = []
        self._step = 0
        self._armed = False
        self._branch_std: dict[str, torch.Tensor] = {}
        self._before: list[list[torch.Tensor]] | None = None
        self._pending: tuple[list[dict], list[dict]] | None = None
        self._handles = [
            block.branch.register_forward_hook(self._branch_hook(name))
            for name, block in self.blocks.items()
        ]

    def close(self) -> None:
        """Remove the forward hooks; the rows stay."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def is_sampled(self, step: int) -> bool:
        return step % self.every == 0

    def start_step(self, step: int, sample: bool | None = None) -> None:
        """Begin step `step`; it is recorded if sampled (or if `sample` says so)."""
        self._step = step
        self._armed = self.is_sampled(step) if sample is None else sample
        self._branch_std = {}
        self._before = None
        self._pending = None

    def _branch_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            # Taken now: a plain block's in-place ReLU overwrites `output` right after.
            if self._armed and torch.is_grad_enabled():
                self._branch_std[name] = output.detach().float().std()

        return hook

    def record_gradients(self) -> None:
        """Read every layer's gradient and weight norm, and keep the weights for the update."""
        if not self._armed:
            return
        grad_norms, weight_norms = layer_norms(self.layers)
        layer_rows = [
            {
                "step": self._step,
                "layer": layer.name,
                "depth": layer.depth,
                "block": layer.block,
                "grad_norm": grad,
                "weight_norm": weight,
                "update_ratio": math.nan,
            }
            for layer, grad, weight in zip(self.layers, grad_norms, weight_norms, strict=True)
        ]
        block_rows = self._block_view(layer_rows)
        self.layer_rows += layer_rows
        self.block_rows += block_rows
        self._pending = (layer_rows, block_rows)
        self._before = [[p.detach().clone() for p in layer.parameters] for layer in self.layers]

    def record_update(self) -> None:
        """After `optimizer.step()`: each layer's update size relative to its weight size.

        Measured as ||w_after - w_before|| / ||w_before||, so momentum, weight decay and
        the learning-rate schedule are all included. A step the gradient scaler skipped
        (non-finite gradients under float16) shows as a ratio of 0.
        """
        if not self._armed or self._before is None or self._pending is None:
            return
        updates = []
        for layer, before in zip(self.layers, self._before, strict=True):
            params = layer.parameters
            diffs = [p.detach() - b for p, b in zip(params, before, strict=True)]
            updates.append(_norm(diffs, params[0]))
        update_norms = torch.stack(updates).tolist()
        layer_rows, block_rows = self._pending
        for row, update in zip(layer_rows, update_norms, strict=True):
            row["update_ratio"] = update / row["weight_norm"] if row["weight_norm"] else math.nan
        for row, fresh in zip(block_rows, self._block_view(layer_rows), strict=True):
            row["update_ratio"] = fresh["update_ratio"]
        self._before = None
        self._pending = None

    def _block_view(self, layer_rows: list[dict]) -> list[dict]:
        """Combine one step's layer rows per block (stem, each block, head), in order."""
        stds = {}
        if self._branch_std:
            values = torch.stack(list(self._branch_std.values())).tolist()
            stds = dict(zip(self._branch_std, values, strict=True))
        groups: dict[str, list[dict]] = {}
        for row in layer_rows:
            groups.setdefault(row["block"], []).append(row)
        rows = []
        for index, (block, members) in enumerate(groups.items()):
            weight = math.sqrt(sum(r["weight_norm"] ** 2 for r in members))
            update = math.sqrt(sum((r["update_ratio"] * r["weight_norm"]) ** 2 for r in members))
            rows.append(
                {
                    "step": layer_rows[0]["step"],
                    "block": block,
                    "index": index,
                    "grad_norm": math.sqrt(sum(r["grad_norm"] ** 2 for r in members)),
                    "weight_norm": weight,
                    "update_ratio": update / weight if weight else math.nan,
                    "branch_std": stds.get(block, math.nan),
                }
            )
        return rows
