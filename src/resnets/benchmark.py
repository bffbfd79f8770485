"""Images per second of a model, side by side with what most users run: torchvision in float32.

Every variant runs in one process, round-robin: each round times every variant once, and a
variant's speed is the median over rounds. Timing variants one after another would let a
neighbour's job, or the CPU's clock, favour whichever ran in the quiet minute; interleaving
spreads that noise over all of them, so the ratios hold even on a shared machine.

The variants, for inference (`mode="infer"`) and for training (`mode="train"`: forward,
cross-entropy, backward and an SGD step), all on the CPU:

- torchvision fp32 NCHW: `torchvision.models.<name>()` as its documentation shows it. Models
  torchvision does not have (the CIFAR ResNets, pre-activation, plain, -D) are stood in for by
  our own model, unchanged, in the same float32 NCHW layout.
- torchvision channels-last + bf16: the same model with the two switches PyTorch's tuning
  guide recommends, run eagerly.
- resnets: what resnets does. For inference: batch norm folded into the convs, channels-last,
  bf16 autocast where the CPU runs it natively; eagerly, and compiled with `torch.compile`
  (weights frozen) so the table shows whether compiling pays. For training: channels-last,
  bf16 autocast, exactly as `resnets train` runs; compiled only when asked (it compiles
  for minutes on a small CPU, and did not pay for ResNet-50 on a 2-core AVX-512 machine).

Speed is also given as achieved GFLOP/s: 2 x multiply-adds per image x images/s (3 x that
for training: the backward pass costs about twice the forward), and as a fraction of a bf16
2048x2048 matrix product timed in the same rounds, the fastest thing this CPU does.
"""

import importlib.util
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import hardware
from .errors import UsageError
from .inference.export import onnx_bytes, onnx_runner
from .inference.fold import fold_batch_norm
from .models.registry import create_model, model_config
from .models.resnet import ResNet
from .summary import summarize

log = logging.getLogger(__name__)

Mode = Literal["infer", "train"]
Compile = Literal["auto", "yes", "no"]

PEAK_SIZE = 2048
MIN_ROUND_SECONDS = 0.2  # shorter timings drown in the clock's and the scheduler's noise
BASELINE = "torchvision fp32 NCHW"


@dataclass(frozen=True)
class Variant:
    """One way of running the model; `step` processes one batch."""

    name: str
    step: Callable[[], Any]
    resnets: bool  # one of resnets' own ways, as opposed to a baseline
    compiled: bool = False


@dataclass(frozen=True)
class VariantResult:
    """The speed of one variant; `ratio` is to the first variant, torchvision fp32 NCHW."""

    name: str
    resnets: bool
    images_per_second: float  # median over rounds
    best_images_per_second: float  # the quietest round
    step_seconds: list[float]  # one batch, each round
    ratio: float
    gflops: float
    fraction_of_peak: float


@dataclass
class BenchmarkResult:
    """Everything one benchmark measured, and the setting it was measured in."""

    model: str
    mode: Mode
    batch_size: int
    image_size: int
    repeats: int
    threads: int
    cpu_capability: str
    cpu_bf16: bool
    torch_version: str
    baseline: str  # what the first row is
    macs_per_image: int
    flops_per_image: int  # 2 x MACs for inference, 6 x MACs for a training step
    peak_gflops: float  # median over rounds
    compile_seconds: float | None  # the first call of the compiled variant
    variants: list[VariantResult] = field(default_factory=list)

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def fastest_resnets(self) -> VariantResult:
        return max((v for v in self.variants if v.resnets), key=lambda v: v.images_per_second)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["fastest_resnets"] = self.fastest_resnets().name
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def torchvision_has(name: str) -> bool:
    """Whether torchvision.models has a model of this name (it has no CIFAR ResNets)."""
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def compiled(model: nn.Module, *, freeze: bool) -> nn.Module:
    """`torch.compile` with inductor. `freeze` (inference only) makes the weights constants,
    so inductor packs them for oneDNN once instead of converting them on every call."""
    return torch.compile(model, options={"freezing": True} if freeze else None)


def inference_step(
    model: nn.Module, images: torch.Tensor, *, channels_last: bool, bf16: bool
) -> Callable[[], torch.Tensor]:
    model.eval()

    def step() -> torch.Tensor:
        # The layout change is timed: a caller holding NCHW images pays for it too.
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(x)

    return step


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool,
    bf16: bool,
    compile_model: bool = False,
) -> Callable[[], torch.Tensor]:
    """One SGD step (forward, cross-entropy, backward, update) on one batch."""
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = compiled(model, freeze=False) if compile_model else model
    # A small rate keeps the weights ordinary numbers over many steps on random labels.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step() -> torch.Tensor:
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def reference_builder(name: str) -> tuple[Callable[[], nn.Module], str]:
    """A builder of the baseline model, and a sentence saying what it is."""
    import torchvision

    if not torchvision_has(name):
        note = f"torchvision has no {name}; our {name}, unfolded, float32 NCHW stands in"
        return lambda: create_model(name), note
    note = f"torchvision.models.{name}(), float32 NCHW"
    num_classes = model_config(name).num_classes
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=num_classes), note


def inference_variants(
    name: str, images: torch.Tensor, *, bf16: bool, compiling: bool
) -> tuple[list[Variant], str]:
    """Baseline first; the resnets rows use the folded model."""
    reference, note = reference_builder(name)
    precision = "bf16" if bf16 else "fp32"
    tuned = reference().to(memory_format=torch.channels_last)
    ours = fold_batch_norm(create_model(name)).to(memory_format=torch.channels_last)
    ours_name = f"resnets folded channels-last {precision}"
    variants = [
        Variant(
            BASELINE, inference_step(reference(), images, channels_last=False, bf16=False), False
        ),
        Variant(
            f"torchvision channels-last {precision}",
            inference_step(tuned, images, channels_last=True, bf16=bf16),
            resnets=False,
        ),
        Variant(ours_name, inference_step(ours, images, channels_last=True, bf16=bf16), True),
    ]
    if compiling:
        step = inference_step(compiled(ours, freeze=True), images, channels_last=True, bf16=bf16)
        variants.append(Variant(ours_name + " compiled", step, resnets=True, compiled=True))
    if all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime")):
        folded = fold_batch_norm(create_model(name)).eval()
        run = onnx_runner(onnx_bytes(folded, images[:1]))
        variants.append(Variant("resnets folded onnxruntime fp32", lambda: run(images), True))
    return variants, note


def training_variants(
    name: str, images: torch.Tensor, *, bf16: bool, compiling: bool
) -> tuple[list[Variant], str]:
    """Baseline first, then torchvision tuned, then resnets as `resnets train` runs it."""
    reference, note = reference_builder(name)
    precision = "bf16" if bf16 else "fp32"
    labels = torch.randint(0, model_config(name).num_classes, (len(images),))

    def step(model: nn.Module, tuned: bool, compile_model: bool = False):
        return training_step(
            model,
            images,
            labels,
            channels_last=tuned,
            bf16=bf16 and tuned,
            compile_model=compile_model,
        )

    def ours() -> nn.Module:
        return create_model(name)

    ours_name = f"resnets channels-last {precision}"
    variants = [
        Variant(BASELINE, step(reference(), tuned=False), resnets=False),
        Variant(f"torchvision channels-last {precision}", step(reference(), True), False),
        Variant(ours_name, step(ours(), tuned=True), resnets=True),
    ]
    if compiling:
        compiled_step = step(ours(), tuned=True, compile_model=True)
        variants.append(Variant(ours_name + " compiled", compiled_step, True, compiled=True))
    return variants, note


def warm_up(
    variants: list[Variant], warmup: int, min_round_seconds: float = MIN_ROUND_SECONDS
) -> tuple[dict[str, int], float | None]:
    """Run each variant `warmup` times (the first call compiles, or picks oneDNN kernels).

    A compiled variant that fails to compile (no C++ compiler, an unsupported platform) is
    left out with a warning, so that the eager rows are still measured.

    Returns:
        The steps that make one timed round of each variant kept, so that a fast variant is
        not timed below the clock's noise; and the seconds the compiled variant's first call
        took.
    """
    steps, compile_seconds = {}, None
    for variant in variants:
        start = time.perf_counter()
        try:
            variant.step()
        except Exception as error:  # torch.compile fails in many ways, each its own class
            if not variant.compiled:
                raise
            log.warning("%s: left out, torch.compile failed: %s", variant.name, error)
            continue
        first = time.perf_counter() - start
        if variant.compiled:
            compile_seconds = first
            log.info("%s: compiled in %.1f s", variant.name, first)
        start = time.perf_counter()
        for _ in range(max(1, warmup - 1)):
            variant.step()
        seconds = (time.perf_counter() - start) / max(1, warmup - 1)
        steps[variant.name] = max(1, min(100, math.ceil(min_round_seconds / max(seconds, 1e-6))))
        log.info("%s: warmed up, %.3f s a batch", variant.name, seconds)
    return steps, compile_seconds


def matmul_gflops(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    """GFLOP/s of the fastest of `repeats` square products a @ b."""
    fastest = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / fastest / 1e9


def time_rounds(
    variants: list[Variant], steps: dict[str, int], repeats: int
) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per batch of every variant in each round, and the matmul peak of each round."""
    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    a = torch.randn(PEAK_SIZE, PEAK_SIZE).bfloat16()
    b = torch.randn(PEAK_SIZE, PEAK_SIZE).bfloat16()
    matmul_gflops(a, b, repeats=1)  # oneDNN picks its kernel on the first call
    peaks = []
    for round_index in range(repeats):
        for variant in variants:
            count = steps[variant.name]
            start = time.perf_counter()
            for _ in range(count):
                variant.step()
            seconds[variant.name].append((time.perf_counter() - start) / count)
        peaks.append(matmul_gflops(a, b))
        log.info("round %d of %d done", round_index + 1, repeats)
    return seconds, peaks


def check_options(name: str, mode: str, batch_size: int, image_size: int, repeats: int) -> None:
    model_config(name)  # unknown names raise here, with suggestions
    if mode not in ("infer", "train"):
        raise UsageError(f"mode must be 'infer' or 'train', got {mode!r}")
    for option, value, least in (
        ("batch size", batch_size, 2 if mode == "train" else 1),  # batch norm needs 2 to train
        ("image size", image_size, 8),
        ("repeats", repeats, 1),
    ):
        if value < least:
            raise UsageError(f"{option} must be at least {least}, got {value}")


def default_batch_size(mode: Mode, image_size: int) -> int:
    """32 images for inference; for training 16 ImageNet-sized or 128 CIFAR-sized ones."""
    if mode == "infer":
        return 32
    return 128 if image_size <= 64 else 16


def benchmark(
    name: str,
    *,
    mode: Mode = "infer",
    batch_size: int | None = None,
    image_size: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
    min_round_seconds: float = MIN_ROUND_SECONDS,
    compile_model: Compile = "auto",
    seed: int = 0,
) -> BenchmarkResult:
    """Time `name` against torchvision, interleaved, and return images/s of every variant.

    Args:
        name: a registered model (`resnets.list_models()`).
        batch_size: by default 32 for inference; 16 (ImageNet-sized) or 128 (CIFAR-sized)
            images for training.
        image_size: the side of the square images; by default the one the stem was made
            for: 224 for ImageNet models, 32 for CIFAR ones.
        repeats: rounds of timing; each variant's speed is its median over them.
        warmup: untimed calls of each variant before the rounds.
        min_round_seconds: a variant faster than this runs several batches in each round.
        compile_model: also time resnets compiled with `torch.compile`. "auto": for inference
            only, where it compiles in about a minute; training compiles for several.
    """
    config = model_config(name)
    if image_size is None:
        image_size = 224 if config.stem == "imagenet" else 32
    if batch_size is None:
        batch_size = default_batch_size(mode, image_size)
    check_options(name, mode, batch_size, image_size, repeats)
    if compile_model not in ("auto", "yes", "no"):
        raise UsageError(f"compile_model must be 'auto', 'yes' or 'no', got {compile_model!r}")
    compiling = compile_model == "yes" or (compile_model == "auto" and mode == "infer")
    bf16 = hardware.cpu_has_bf16()
    if not bf16:
        log.info("this CPU has no native bf16: resnets' rows run in float32")

    torch.manual_seed(seed)
    images = torch.randn(batch_size, config.in_channels, image_size, image_size)
    build = inference_variants if mode == "infer" else training_variants
    variants, note = build(name, images, bf16=bf16, compiling=compiling)
    steps, compile_seconds = warm_up(variants, warmup, min_round_seconds)
    variants = [v for v in variants if v.name in steps]
    seconds, peaks = time_rounds(variants, steps, repeats)

    with torch.device("meta"):  # only shapes are needed to count multiply-adds
        macs = summarize(ResNet(config), (config.in_channels, image_size, image_size)).total_macs
    flops = 2 * macs * (3 if mode == "train" else 1)
    peak = statistics.median(peaks)
    baseline_speed = batch_size / statistics.median(seconds[BASELINE])
    results = []
    for variant in variants:
        speed = batch_size / statistics.median(seconds[variant.name])
        results.append(
            VariantResult(
                name=variant.name,
                resnets=variant.resnets,
                images_per_second=speed,
                best_images_per_second=batch_size / min(seconds[variant.name]),
                step_seconds=seconds[variant.name],
                ratio=speed / baseline_speed,
                gflops=flops * speed / 1e9,
                fraction_of_peak=flops * speed / 1e9 / peak,
            )
        )
    return BenchmarkResult(
        model=name,
        mode=mode,
        batch_size=batch_size,
        image_size=image_size,
        repeats=repeats,
        threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_bf16=bf16,
        torch_version=torch.__version__,
        baseline=note,
        macs_per_image=macs,
        flops_per_image=flops,
        peak_gflops=peak,
        compile_seconds=compile_seconds,
        variants=results,
    )


def render_table(result: BenchmarkResult) -> str:
    """A fixed-width table of the variants, a line on the setting and one with the verdict."""
    what = "inference" if result.mode == "infer" else "training (SGD step)"
    lines = [
        f"{result.model} {what}, batch {result.batch_size}, {result.image_size}x"
        f"{result.image_size} images, {result.threads} threads, {result.cpu_capability}, "
        f"native bf16: {'yes' if result.cpu_bf16 else 'no'}, median of {result.repeats} rounds",
        f"baseline: {result.baseline}",
        "",
    ]
    header = ("variant", "images/s", "best", "vs baseline", "GFLOP/s", "of peak")
    rows = [
        (
            v.name,
            f"{v.images_per_second:.1f}",
            f"{v.best_images_per_second:.1f}",
            f"{v.ratio:.2f}x",
            f"{v.gflops:.1f}",
            f"{100 * v.fraction_of_peak:.0f}%",
        )
        for v in result.variants
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.append("")
    lines.append(
        f"peak: bf16 {PEAK_SIZE}x{PEAK_SIZE} matmul {result.peak_gflops:.0f} GFLOP/s; "
        f"{2 * result.macs_per_image / 1e9:.3g} GFLOP per image forward"
        + (", x3 for a training step" if result.mode == "train" else "")
    )
    if result.compile_seconds is not None:
        lines.append(f"compiling took {result.compile_seconds:.0f} s (once per process)")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: BenchmarkResult) -> str:
    """One line: resnets' fastest variant against each baseline."""
    fastest = result.fastest_resnets()
    against = [
        f"{fastest.images_per_second / v.images_per_second:.2f}x {v.name}"
        for v in result.variants
        if not v.resnets
    ]
    return f"resnets ({fastest.name}): " + ", ".join(against)
