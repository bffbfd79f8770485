"""Export a trained model for deployment: ONNX, TorchScript, torch.export, torchvision weights.

No export is reported until it is checked: the written file is loaded back the way a user
would load it and run on batches of 1 and 5 random normalised images, and its logits must
match the PyTorch eval-mode model's within `TOLERANCE`, or `ExportError` is raised and
nothing is written.
"""

import copy
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from ..errors import DataError, ResnetsError, UsageError, closest
from ..models.resnet import ResNet, ResNetConfig
from ..weights import load_model_dir, read_model_config, to_torchvision
from .fold import fold_batch_norm

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript", "torch-export", "torchvision"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
FILE_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.pt",
    "torch-export": "model.pt2",
    "torchvision": "model.pth",
}
TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 5)
# The option-A shortcut subsamples with a strided slice, which ONNX has only from opset 10;
# 20 is the highest the TorchScript-based exporter writes (torch 2.9 to 2.14).
MIN_OPSET, MAX_OPSET = 10, 20
# torchvision's constructors share our registry's names; the first whose layers match names
# the model in the loading hint.
TORCHVISION_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)

Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportError(ResnetsError, RuntimeError):
    """An export that failed, or whose file does not reproduce the model (CLI exit 1)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    loaded_with: str  # how the check loaded the file back, as a user would
    max_difference: float  # largest |logit difference| to PyTorch over CHECK_BATCH_SIZES


def check_format(name: str) -> ExportFormat:
    """`name` if it is an export format, else a `UsageError` naming the closest ones."""
    if name not in FORMATS:
        raise UsageError(
            f"unknown export format {name!r}; expected one of {', '.join(FORMATS)}."
            f"{closest(name, FORMATS)}"
        )
    return name  # type: ignore[return-value]


def export_run(
    run_or_model_dir: str | Path,
    format: str,
    out: str | Path | None = None,
    *,
    opset: int | None = None,
    fold: bool = False,
) -> ExportResult:
    """Export the model of a run (or model) directory, with its preprocessing recorded.

    Args:
        format: one of `FORMATS`.
        out: the file to write; by default `RUN/export/model.onnx` (`.pt`, `.pt2`, `.pth`).
        opset: the ONNX opset (ONNX only); None lets torch choose.
        fold: fold batch norm into the convolutions first (not for `torchvision`).
    """
    from .predictor import model_dir_of

    format = check_format(format)
    directory = model_dir_of(run_or_model_dir)
    saved = read_model_config(directory)
    model = load_model_dir(directory)
    preprocessing = preprocessing_of(saved)
    path = Path(out) if out else directory.parent / "export" / FILE_NAMES[format]
    return export_model(
        model,
        path,
        format,
        image_size=tuple(preprocessing["image_size"]),
        opset=opset,
        fold=fold,
        metadata=onnx_metadata(saved, preprocessing),
    )


def preprocessing_of(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved preprocessing, with the defaults `Predictor` uses where a key is missing."""
    prep = dict(saved.get("preprocessing") or {})
    channels = int(prep.get("channels", saved["model"].get("in_channels", 3)))
    prep.setdefault("channels", channels)
    prep.setdefault("image_size", [32, 32])
    prep.setdefault("mean", [0.5] * channels)
    prep.setdefault("std", [0.5] * channels)
    return prep


def onnx_metadata(saved: dict[str, Any], preprocessing: dict[str, Any]) -> dict[str, str]:
    """What a deployment needs beside the graph, as ONNX `metadata_props` (strings only)."""
    num_classes = saved["model"]["num_classes"]
    return {
        "architecture": str(saved.get("architecture", "resnet")),
        "class_names": json.dumps(saved.get("class_names") or [str(i) for i in range(num_classes)]),
        "image_size": json.dumps(list(preprocessing["image_size"])),
        "channels": str(preprocessing["channels"]),
        "mean": json.dumps(list(preprocessing["mean"])),
        "std": json.dumps(list(preprocessing["std"])),
        "resize": str(preprocessing.get("resize", "not recorded")),
        "test_flip": (
            "validated on each image and its mirror image (flipped left-right), logits averaged"
            if preprocessing.get("test_flip")
            else "no"
        ),
        "input": "images: float32 (N, C, H, W), pixels / 255, then (x - mean) / std",
        "output": "logits: float32 (N, num_classes); softmax gives class probabilities",
        "model_config": json.dumps(saved["model"]),
    }


def export_model(
    model: ResNet,
    path: str | Path,
    format: str,
    *,
    image_size: tuple[int, int] = (32, 32),
    opset: int | None = None,
    fold: bool = False,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export `model` in eval mode to `path` and check the file against it.

    The exported model takes float32 normalised images (N, in_channels, *image_size), N any
    batch size, and returns logits (N, num_classes).

    Args:
        metadata: strings to store in the ONNX file's `metadata_props` (ONNX only).

    Raises:
        UsageError: an unknown format, or an option the format does not take.
        ExportError: the exporter failed, or the file's logits differ by over `TOLERANCE`.
    """
    format = check_format(format)
    _check_options(format, opset, fold)
    reference = copy.deepcopy(model).eval()
    exported = fold_batch_norm(reference) if fold else reference
    example = _check_images(2, (model.config.in_channels, *image_size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed once checked, so that a failed export never
    # replaces a good one. The suffix stays: torch.export.save warns on any but `.pt2`.
    unchecked = path.with_name(f".{path.stem}.unchecked{path.suffix}")
    try:
        loaded_with, difference = _write_and_check(
            exported, reference, unchecked, format, example, opset, metadata
        )
        if difference > TOLERANCE:
            raise ExportError(
                f"the {format} export's logits differ from PyTorch's by {difference:.3g}, over "
                f"the tolerance {TOLERANCE:g}; nothing was written. Try without --fold, or "
                "another --opset."
            )
        unchecked.replace(path)
    finally:
        unchecked.unlink(missing_ok=True)
    log.debug("exported %s to %s; logits within %.2e of PyTorch", format, path, difference)
    return ExportResult(path, format, loaded_with, difference)


def _write_and_check(
    exported: nn.Module,
    reference: nn.Module,
    path: Path,
    format: str,
    example: torch.Tensor,
    opset: int | None,
    metadata: dict[str, str] | None,
) -> tuple[str, float]:
    """Write `exported` to `path`, load it back, and return how, and its largest difference."""
    with _quiet_exporters():
        try:
            if format == "onnx":
                loaded_with, run = _write_onnx(exported, path, example, opset, metadata)
            else:
                loaded_with, run = WRITERS[format](exported, path, example)
        except (UsageError, DataError):
            raise
        except Exception as error:  # exporters raise many types; the first line says why
            lines = str(error).strip().splitlines() or [""]
            raise ExportError(
                f"{format} export failed ({type(error).__name__}: {lines[0][:300]}); "
                "rerun with --debug for the full trace"
            ) from error
        image_shape = tuple(example.shape[1:])
        return loaded_with, _max_difference(run, reference, image_shape)


def _check_options(format: str, opset: int | None, fold: bool) -> None:
    if opset is not None and format != "onnx":
        raise UsageError(f"--opset applies to the onnx format only, got --format {format}")
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset must be from {MIN_OPSET} (strided slices in the shortcuts need it) to "
            f"{MAX_OPSET} (the newest torch's exporter writes), got {opset}"
        )
    if fold and format == "torchvision":
        raise UsageError(
            "--fold cannot be used with --format torchvision: torchvision's ResNet keeps its "
            "batch norms, so their weights must stay separate. Drop --fold."
        )


def _check_images(n: int, image_shape: tuple[int, ...]) -> torch.Tensor:
    """Fixed random normalised images (n, *image_shape): values as the model sees them."""
    return torch.randn(n, *image_shape, generator=torch.Generator().manual_seed(n))


@torch.no_grad()
def _max_difference(run: Runner, reference: nn.Module, image_shape: tuple[int, ...]) -> float:
    difference = 0.0
    for n in CHECK_BATCH_SIZES:
        images = _check_images(n, image_shape)
        expected = reference(images)
        got = run(images)
        if got.shape != expected.shape:
            raise ExportError(
                f"the export returned logits of shape {tuple(got.shape)} for a batch of {n}; "
                f"PyTorch returns {tuple(expected.shape)}"
            )
        difference = max(difference, (got.float() - expected).abs().max().item())
    return difference


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Hide exporter warnings a user cannot act on; each format's choice is noted below."""
    with warnings.catch_warnings():
        for message in (
            r".*legacy TorchScript-based ONNX export",
            r"The feature will be removed",
            r"Constant folding - Only steps=1",  # option A's strided slice: left unfolded
            r"`torch\.jit\.\w+` is deprecated",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield


def _write_onnx(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    opset: int | None,
    metadata: dict[str, str] | None,
) -> tuple[str, Runner]:
    onnx = _import_onnx()
    proto = onnx.load_from_string(onnx_bytes(model, example, opset))
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return "onnxruntime.InferenceSession", onnx_runner(str(path))


def _import_onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here so the message names both)
    except ImportError as error:
        raise UsageError(
            "ONNX needs onnx and onnxruntime, which are not installed: pip install 'resnets[onnx]'"
        ) from error
    return onnx


def onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int | None = None) -> bytes:
    """`model` as an ONNX graph taking `images` (N, C, H, W), N any, returning `logits`."""
    _import_onnx()
    # TODO: the TorchScript-based exporter (dynamo=False) is deprecated in torch 2.9+. It is
    # used because it needs no extra package, is 4x faster here and writes one file; switch
    # to the torch.export-based exporter (it needs onnxscript) once this one is removed.
    buffer = io.BytesIO()
    with _quiet_exporters():
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    return buffer.getvalue()


def onnx_runner(model: str | bytes, threads: int | None = None) -> Runner:
    """An ONNX Runtime session on the CPU for a file or serialised graph, as a function of a
    float32 image tensor returning logits."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )
    return lambda x: torch.from_numpy(session.run(None, {"images": x.contiguous().numpy()})[0])


def _write_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> tuple[str, Runner]:
    log.warning("TorchScript is deprecated since torch 2.9; --format torch-export replaces it")
    # check_trace reruns and compares the trace (9 s on ResNet-20); the check below does
    # the same on the saved file.
    traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    return "torch.jit.load", loaded


def _write_program(model: nn.Module, path: Path, example: torch.Tensor) -> tuple[str, Runner]:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return "torch.export.load(...).module()", torch.export.load(path).module()


def _write_torchvision(model: nn.Module, path: Path, example: torch.Tensor) -> tuple[str, Runner]:
    config = model.config
    reference = torchvision_resnet(config)
    torch.save(to_torchvision(model), path)
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    name = torchvision_name(config)
    loader = f"torchvision.models.{name}" if name else "torchvision.models.resnet.ResNet"
    return f"{loader}(num_classes={config.num_classes}).load_state_dict", reference.eval()


# ONNX takes an opset and metadata as well, so export_model calls it by name.
WRITERS: dict[str, Callable[[nn.Module, Path, torch.Tensor], tuple[str, Runner]]] = {
    "torchscript": _write_torchscript,
    "torch-export": _write_program,
    "torchvision": _write_torchvision,
}


def torchvision_resnet(config: ResNetConfig) -> nn.Module:
    """torchvision's ResNet with the layers `config` describes, or a `UsageError` if none has.

    torchvision builds one family: the ImageNet stem, stage widths 64 to 512, projection
    shortcuts where the shape changes (option B), post-activation, stride in the 3x3 conv
    of a bottleneck (its "V1.5"), basic blocks without groups or widening, RGB input.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.resnet import ResNet as TorchvisionResNet

    expected: dict[str, Any] = {
        "stem": "imagenet",
        "deep_stem": False,
        "stem_channels": 64,
        "stage_channels": (64, 128, 256, 512),
        "shortcut": "B",
        "residual": True,
        "preactivation": False,
        "norm": "batch",
        "convs_per_block": 2,
        "in_channels": 3,
    }
    if config.block == "basic":
        expected.update(groups=1, width_multiplier=1.0)
    else:
        expected.update(expansion=4, bottleneck_stride="3x3")
    different = [
        f"{key}={getattr(config, key)!r} (torchvision: {value!r})"
        for key, value in expected.items()
        if getattr(config, key) != value
    ]
    base_width = config.width_per_group * config.width_multiplier
    if config.block == "bottleneck" and base_width != int(base_width):
        different.append(f"width_per_group * width_multiplier = {base_width} (an integer)")
    if different:
        raise UsageError(
            "torchvision has no ResNet with this model's layers: "
            + ", ".join(different)
            + ". Use --format onnx, torch-export or torchscript instead."
        )
    block = BasicBlock if config.block == "basic" else Bottleneck
    return TorchvisionResNet(
        block,
        list(config.blocks_per_stage),
        num_classes=config.num_classes,
        groups=config.groups,
        width_per_group=int(base_width) if config.block == "bottleneck" else 64,
    )


def torchvision_name(config: ResNetConfig) -> str | None:
    """The torchvision constructor with the same layers (`"resnet18"`), or None."""
    from ..models.registry import model_config

    def layers(c: ResNetConfig) -> tuple:
        return (c.block, c.blocks_per_stage, c.groups, c.width_per_group * c.width_multiplier)

    for name in TORCHVISION_NAMES:
        if layers(model_config(name)) == layers(config):
            return name
    return None
