"""The vanishing-gradient experiment: train briefly and record every layer's gradient.

A short plain training loop (no Lightning, no run directory) keeps the measurement
easy to read: seeded data order, the dataset's augmentation, SGD with the dataset
recipe's momentum, weight decay and learning rate, held constant. Step 0 is measured
on the first batch before any update, with the paper's He initialisation and
`zero_init_residual=False`: zero-initialised branches would have exactly zero gradient
in all but their last norm at step 0 and hide what the shortcut does.
"""

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..data.augment import normalize, random_crop_flip
from ..data.datasets import Dataset, load_dataset, parse_spec
from ..errors import DataError, UsageError
from ..models.registry import create_model, model_entry
from ..models.resnet import ResNet
from ..train.module import parameter_groups
from ..train.recipes import default_recipe
from . import plots
from .recorder import BLOCK_COLUMNS, LAYER_COLUMNS, GradientRecorder
from .tables import write_csv

log = logging.getLogger(__name__)


@dataclass
class GradientsConfig:
    """Settings of `resnets gradients`. `None` takes the dataset recipe's value."""

    model: str = "plain56"
    data: str = "digits"
    steps: int = 100
    every: int = 5
    batch_norm: bool = True
    init: Literal["he", "pytorch"] = "he"
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    val_size: float = 0.1
    image_size: int | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}")
        if self.every < 1:
            raise UsageError(f"--every must be at least 1 step, got {self.every}")
        if self.init not in ("he", "pytorch"):
            raise UsageError(f"--init must be 'he' or 'pytorch', got {self.init!r}")

    @property
    def label(self) -> str:
        """The model as the figures name it, e.g. "plain56 (no batch norm, PyTorch init)"."""
        notes = [] if self.batch_norm else ["no batch norm"]
        if self.init == "pytorch":
            notes.append("PyTorch default init")
        return self.model + (f" ({', '.join(notes)})" if notes else "")

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        suffix = ("" if self.batch_norm else "-nobn") + (
            "-pytorchinit" if self.init != "he" else ""
        )
        return Path("runs") / f"gradients-{self.model}{suffix}"


@dataclass
class Spread:
    """How unevenly the gradient is spread over depth at one step (main-path layers).

    `ratio` is the largest per-layer gradient norm over the smallest, over every layer
    from the stem to the classifier; `hidden_ratio` leaves out the classifier, whose
    gradient scales with the size of the features rather than with what backpropagation
    through depth did to it; `blocks_ratio` takes only the convolutions inside the
    blocks (the stages), leaving out the stem too, whose input is the image. Layers whose
    gradient is exactly zero (underflowed float32) make the ratios infinite; `vanished`
    counts them.
    """

    step: int
    layers: int
    ratio: float
    hidden_ratio: float
    larger_end: Literal["early", "late"]
    largest: dict
    smallest: dict
    vanished: int = 0
    nonzero_ratio: float = math.nan  # over the layers whose gradient is not exactly zero
    blocks_ratio: float = math.nan
    block_layers: int = 0

    def describe(self) -> str:
        if self.vanished:
            spread = (
                f"infinite: {self.vanished} layers' gradients are exactly 0 (below float32's "
                f"range), the other {self.layers - self.vanished} span {self.nonzero_ratio:.4g}x"
            )
        else:
            spread = (
                f"{self.ratio:.4g}x over all {self.layers} layers "
                f"({self.hidden_ratio:.4g}x without the classifier"
                + (
                    f", {self.blocks_ratio:.4g}x over the {self.block_layers} convolutions "
                    "inside the blocks)"
                    if self.block_layers
                    else ")"
                )
            )
        return (
            f"gradient norm spread at step {self.step}: {spread}; largest "
            f"{self.largest['grad_norm']:.3g} at depth {self.largest['depth']}, smallest "
            f"{self.smallest['grad_norm']:.3g} at depth {self.smallest['depth']}; "
            f"on average (geometric mean) the {'first' if self.larger_end == 'early' else 'last'}"
            " third of the layers has the larger gradients"
        )


@dataclass
class GradientsResult:
    out: Path
    layer_rows: list[dict]
    block_rows: list[dict]
    spread: Spread
    steps_run: int
    diverged_at: int | None = None
    figures: list[Path] = field(default_factory=list)


def build_model(
    name: str,
    dataset: Dataset,
    *,
    batch_norm: bool = True,
    init: Literal["he", "pytorch"] = "he",
) -> ResNet:
    """The model to measure: sized for `dataset`, with every branch initialised non-zero."""
    model = create_model(
        name,
        num_classes=dataset.num_classes,
        in_channels=dataset.channels,
        norm="batch" if batch_norm else "none",
        init=init,
        zero_init_residual=False,
    )
    side = min(dataset.image_size)
    if side < model.min_input_size:
        raise UsageError(
            f"{name} shrinks its input {model.min_input_size} times, so it needs images of at "
            f"least {model.min_input_size}x{model.min_input_size}; the data is {side}x{side}. "
            "Use a CIFAR model such as plain20, or --image-size"
        )
    return model


def training_batches(
    dataset: Dataset, batch_size: int, steps: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` augmented, normalised batches in a seeded order, epoch after epoch."""
    split = dataset.train
    if len(split) < 2:
        raise DataError(
            f"training needs at least 2 images per batch; {dataset.spec} has {len(split)}"
        )
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(split))
    produced = 0
    while True:
        order = torch.randperm(len(split), generator=generator)
        for indices in order.split(batch_size):
            if produced == steps:
                return
            if len(indices) < 2:
                continue  # batch norm cannot normalise a batch of one
            images = random_crop_flip(
                split.images[indices], dataset.crop_padding, dataset.flip, generator
            )
            # channels-last runs convolutions several times faster on CPUs
            yield normalize(images, mean, std, channels_last=True), split.labels[indices]
            produced += 1


def record_training(
    model: torch.nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    recorder: GradientRecorder,
    optimizer: torch.optim.Optimizer,
    last_step: int | None = None,
) -> tuple[int, int | None]:
    """Train on `batches`, recording as `recorder` samples and at `last_step`.

    Stops at the first non-finite loss: the gradients after it say nothing.

    Returns:
        (steps run, the step whose loss was not finite or None).
    """
    model.train()
    steps = 0
    for step, (images, labels) in enumerate(batches):
        recorder.start_step(step, sample=recorder.is_sampled(step) or step == last_step)
        loss = F.cross_entropy(model(images), labels)
        if not torch.isfinite(loss):
            log.warning("loss became %s at step %d; stopping there", loss.item(), step)
            return steps, step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        recorder.record_gradients()
        optimizer.step()
        recorder.record_update()
        steps = step + 1
        if recorder.is_sampled(step):
            log.debug("step %d: loss %.4f", step, loss.item())
    return steps, None


def gradients_at_init(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list:
    """Per-layer rows (see `LAYER_COLUMNS`) of one backward pass, without any update."""
    recorder = GradientRecorder(model)
    model.train()  # batch statistics, as in the first training step
    model.zero_grad(set_to_none=True)
    try:
        recorder.start_step(0)
        F.cross_entropy(model(images), labels).backward()
        recorder.record_gradients()
    finally:
        recorder.close()
        model.zero_grad(set_to_none=True)
    return recorder.layer_rows


def gradient_spread(layer_rows: list[dict], step: int = 0) -> Spread:
    """Max/min of the per-layer gradient norms on the main path at `step`, and which end
    of the network (first or last third of its layers, by geometric mean) is larger."""
    rows = [r for r in layer_rows if r["step"] == step and ".shortcut." not in r["layer"]]
    rows = sorted((r for r in rows if math.isfinite(r["grad_norm"])), key=lambda r: r["depth"])
    if not rows:
        raise ValueError(f"no finite gradient norms recorded at step {step}")
    third = max(1, len(rows) // 3)
    early, late = _log_mean(rows[:third]), _log_mean(rows[-third:])
    in_blocks = [r for r in rows if str(r.get("block", "")).startswith("stages.")]
    return Spread(
        step=step,
        layers=len(rows),
        ratio=_ratio(rows),
        hidden_ratio=_ratio(rows[:-1] or rows),
        larger_end="early" if early > late else "late",
        largest=max(rows, key=lambda r: r["grad_norm"]),
        smallest=min(rows, key=lambda r: r["grad_norm"]),
        vanished=sum(r["grad_norm"] == 0 for r in rows),
        nonzero_ratio=_ratio([r for r in rows if r["grad_norm"] > 0] or rows),
        blocks_ratio=_ratio(in_blocks) if in_blocks else math.nan,
        block_layers=len(in_blocks),
    )


def _ratio(rows: list[dict]) -> float:
    norms = [r["grad_norm"] for r in rows]
    return max(norms) / min(norms) if min(norms) > 0 else math.inf


def _log_mean(rows: list[dict]) -> float:
    return sum(math.log(max(r["grad_norm"], 1e-45)) for r in rows) / len(rows)


def run_gradients(config: GradientsConfig, dataset: Dataset | None = None) -> GradientsResult:
    """Train `config.model` for `config.steps` steps while recording, then write the CSVs
    (`gradients.csv`, `blocks.csv`) and figures into `config.out_dir()`."""
    model_entry(config.model)  # fail on a bad name before reading any data
    kind, _ = parse_spec(config.data)
    recipe = default_recipe(kind, batch_size=config.batch_size, lr=config.lr)
    if dataset is None:
        dataset = load_dataset(
            config.data, image_size=config.image_size, val_size=config.val_size, seed=config.seed
        )
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset, batch_norm=config.batch_norm, init=config.init)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        parameter_groups(model, recipe.weight_decay),
        lr=recipe.peak_lr(recipe.batch_size),
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
    )
    recorder = GradientRecorder(model, config.every)
    batches = training_batches(dataset, recipe.batch_size, config.steps, config.seed)
    try:
        steps_run, diverged_at = record_training(
            model, batches, recorder, optimizer, last_step=config.steps - 1
        )
    finally:
        recorder.close()
    result = GradientsResult(
        out=config.out_dir(),
        layer_rows=recorder.layer_rows,
        block_rows=recorder.block_rows,
        spread=gradient_spread(recorder.layer_rows),
        steps_run=steps_run,
        diverged_at=diverged_at,
    )
    write_outputs(result, config, recipe_lr=recipe.peak_lr(recipe.batch_size))
    return result


def write_outputs(result: GradientsResult, config: GradientsConfig, recipe_lr: float) -> None:
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result.layer_rows, LAYER_COLUMNS, out / "gradients.csv")
    write_csv(result.block_rows, BLOCK_COLUMNS, out / "blocks.csv")
    settings = {**asdict(config), "lr_used": recipe_lr, "steps_run": result.steps_run}
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    label = f"{config.label} on {config.data}"
    result.figures = [
        plots.plot_gradients_vs_step(result.layer_rows, out / "gradient_norm_vs_step.png", label),
        plots.plot_gradients_by_depth(result.layer_rows, out / "gradient_norm_by_depth.png", label),
    ]
    if any(math.isfinite(r["branch_std"]) for r in result.block_rows):
        result.figures.append(
            plots.plot_branch_std(result.block_rows, out / "branch_std.png", label)
        )
