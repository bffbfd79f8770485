"""Identity blocks: deepen a trained ResNet without changing what it computes.

A basic block computes relu(F(x) + x). With the scale of the branch's last batch norm at
zero, F(x) is exactly the norm's shift, zero, so the block passes on relu(x) = x: its
input is the previous block's ReLU output, already non-negative. That is the lecture's
argument for why extra residual blocks cannot hurt (and the zero-init of Goyal et al.
2017, section 5.1). The deepened model gives the same predictions, and training moves
the zero scale (its gradient is not zero), after which the new block's He-initialised
convolutions start to learn.
"""

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..models.blocks import ResidualBlock
from ..models.layers import he_init_
from ..models.resnet import ResNet
from ..weights import load_model_dir, read_model_config, save_model_dir

log = logging.getLogger(__name__)


def deepen(model: ResNet, num_blocks: int, stage: int = -1) -> ResNet:
    """A copy of `model` with `num_blocks` identity blocks appended to one stage.

    The new blocks keep the stage's width and stride 1, so their shortcut is the
    identity; the config's `blocks_per_stage` grows, so the result can be rebuilt from
    its config (and saved with `resnets.save_model_dir`).

    Args:
        stage: which stage to extend, counted from 0; by default the last.

    Returns:
        A new ResNet on `model`'s device, in `model`'s train or eval mode, whose logits
        equal `model`'s.
    """
    config = model.config
    _check_deepenable(config, num_blocks, stage)
    stage = stage % len(config.blocks_per_stage)
    counts = list(config.blocks_per_stage)
    old_count = counts[stage]
    counts[stage] += num_blocks
    deeper = ResNet(replace(config, blocks_per_stage=tuple(counts)))

    # Every existing tensor keeps its name (blocks are numbered within their stage).
    missing, unexpected = deeper.load_state_dict(model.state_dict(), strict=False)
    new_prefixes = tuple(f"stages.{stage}.{b}." for b in range(old_count, counts[stage]))
    if unexpected or not all(key.startswith(new_prefixes) for key in missing):
        raise RuntimeError(f"deepening left keys unmatched: {missing + unexpected}")
    for block in list(deeper.stages[stage])[old_count:]:
        make_identity(block)
    parameter = next(model.parameters())
    return deeper.to(device=parameter.device, dtype=parameter.dtype).train(model.training)


def _check_deepenable(config, num_blocks: int, stage: int) -> None:
    if num_blocks < 1:
        raise UsageError(f"--blocks must be at least 1, got {num_blocks}")
    if not config.residual:
        raise UsageError(
            "only a residual model can be deepened without changing its predictions: a plain "
            "block with a zero branch outputs zeros, not its input. The model has "
            "residual=False; deepen a resnet* model instead"
        )
    stages = len(config.blocks_per_stage)
    if not -stages <= stage < stages:
        raise UsageError(
            f"the model has {stages} stages: --stage 1 to {stages} (in Python, stage index "
            f"0 to {stages - 1}, or -1 for the last); got --stage {stage + 1} (index {stage})"
        )


def make_identity(block: ResidualBlock) -> None:
    """He-initialise a block, then zero its branch's last scale so it computes the identity.

    Without batch norm (`norm="none"`) there is no scale; the last conv is zeroed instead.
    """
    he_init_(block)
    if not block.zero_init_last_norm():
        last_conv = [m for m in block.branch.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last_conv.weight)
        if last_conv.bias is not None:
            nn.init.zeros_(last_conv.bias)


@torch.no_grad()
def logit_difference(a: nn.Module, b: nn.Module, images: torch.Tensor) -> float:
    """The largest absolute difference between two models' logits on `images`, in eval mode."""
    modes = a.training, b.training
    a.eval(), b.eval()
    try:
        return (a(images) - b(images)).abs().max().item()
    finally:
        a.train(modes[0]), b.train(modes[1])


@dataclass
class DeepenResult:
    model_dir: Path
    model: ResNet
    old_depth: int
    new_depth: int
    stage: int  # counted from 0
    max_logit_difference: float


def deepen_model_dir(
    source: str | Path, out: str | Path, num_blocks: int, stage: int = -1, seed: int = 0
) -> DeepenResult:
    """Deepen the model saved in `source` (a model directory) and save it to `out`.

    Checks on random images that the logits did not change, and raises if they moved
    by more than 1e-5.
    """
    source, out = Path(source), Path(out)
    if out.exists():
        raise UsageError(f"{out} already exists; pass --out with a new folder, or remove it")
    saved = read_model_config(source)
    model = load_model_dir(source)
    torch.manual_seed(seed)  # the new blocks' He initialisation
    deeper = deepen(model, num_blocks, stage)
    side = (saved.get("preprocessing") or {}).get("image_size") or [32, 32]
    images = torch.randn(8, model.config.in_channels, *side[-2:])
    difference = logit_difference(model, deeper, images)
    if difference > 1e-5:
        raise RuntimeError(f"deepening changed the logits by {difference:.3g}; expected none")
    architecture = f"{saved.get('architecture', 'resnet')}+{num_blocks}blocks"
    out = save_model_dir(
        deeper,
        out,
        architecture=architecture,
        class_names=saved.get("class_names"),
        preprocessing=saved.get("preprocessing"),
    )
    log.debug("deepened model written to %s: %s", out, json.dumps(deeper.config.to_dict()))
    return DeepenResult(
        out,
        deeper,
        model.config.depth,
        deeper.config.depth,
        stage % len(model.config.blocks_per_stage),
        difference,
    )
