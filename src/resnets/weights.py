"""Weights on disk: safetensors, model directories, and the torchvision / timm key layout.

Every loader reads data, never code: safetensors files, JSON configs, and `.pt`/`.pth`
files only through `torch.load(weights_only=True)`.
"""

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import DataError, UsageError
from .models.resnet import ResNet, ResNetConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# torchvision (and timm) names on the left, resnets names on the right.
_TORCHVISION_TO_RESNETS = [
    (r"^conv1\.weight$", "stem.0.conv.weight"),
    (r"^bn1\.", "stem.0.norm."),
    (r"^layer(\d+)\.(\d+)\.conv(\d)\.", "stages.{S}.{1}.branch.{K}.conv."),
    (r"^layer(\d+)\.(\d+)\.bn(\d)\.", "stages.{S}.{1}.branch.{K}.norm."),
    (r"^layer(\d+)\.(\d+)\.downsample\.0\.", "stages.{S}.{1}.shortcut.conv."),
    (r"^layer(\d+)\.(\d+)\.downsample\.1\.", "stages.{S}.{1}.shortcut.norm."),
    (r"^fc\.", "head."),
]
_RESNETS_TO_TORCHVISION = [
    (r"^stem\.0\.conv\.weight$", "conv1.weight"),
    (r"^stem\.0\.norm\.", "bn1."),
    (r"^stages\.(\d+)\.(\d+)\.branch\.(\d+)\.conv\.", "layer{S}.{2}.conv{K}."),
    (r"^stages\.(\d+)\.(\d+)\.branch\.(\d+)\.norm\.", "layer{S}.{2}.bn{K}."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.conv\.", "layer{S}.{2}.downsample.0."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.norm\.", "layer{S}.{2}.downsample.1."),
    (r"^head\.", "fc."),
]


def _rename(key: str, rules: list[tuple[str, str]], stage_offset: int) -> str | None:
    for pattern, template in rules:
        match = re.match(pattern, key)
        if match:
            groups = match.groups()
            values = {"S": "", "K": ""}
            if groups:
                values["S"] = str(int(groups[0]) + stage_offset)
            if len(groups) >= 3:
                values["K"] = str(int(groups[2]) + stage_offset)
            name = template.format(None, *groups, **values)
            return name + key[match.end() :]
    return None


def from_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision- or timm-layout ResNet state dict to resnets' names."""
    renamed = {}
    for key, value in state.items():
        new = _rename(key, _TORCHVISION_TO_RESNETS, -1)
        renamed[new if new is not None else key] = value
    return renamed


def to_torchvision(model: ResNet) -> dict[str, torch.Tensor]:
    """The model's weights under torchvision's names, for `torchvision.models.resnetXX()`."""
    config = model.config
    if config.preactivation or config.deep_stem or not config.residual:
        raise UsageError(
            "only post-activation residual networks with the standard stem have a "
            f"torchvision layout; this model has preactivation={config.preactivation}, "
            f"deep_stem={config.deep_stem}, residual={config.residual}"
        )
    if config.shortcut in ("A", "D"):
        raise UsageError(
            f"torchvision has no shortcut option {config.shortcut!r}; use a model with "
            "shortcut 'B' or 'C'"
        )
    state = {}
    for key, value in model.state_dict().items():
        new = _rename(key, _RESNETS_TO_TORCHVISION, 1)
        if new is None:
            raise UsageError(f"no torchvision name for parameter {key!r}")
        state[new] = value.detach().clone()
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors, .pt/.pth or model directory without running code."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}: expected a .safetensors, .pt or .pth file")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler refuses anything beyond plain tensors
        raise DataError(
            f"refused to load {path}: it needs more than tensors to unpickle, and loading it "
            f"could run code ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            "Save weights with safetensors or torch.save(model.state_dict())."
        ) from error
    return _unwrap(loaded, path)


def _unwrap(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside checkpoints that nest it, and strip wrapper prefixes."""
    while isinstance(loaded, Mapping):
        nested = next((loaded[k] for k in ("state_dict", "model") if k in loaded), None)
        if not isinstance(nested, Mapping):
            break
        loaded = nested
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise DataError(f"{path} does not hold a state dict of tensors")
    state = dict(loaded)
    for prefix in WRAPPER_PREFIXES:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights(model: ResNet, path: str | Path) -> ResNet:
    """Load weights from a file or model directory into `model`, converting layouts.

    torchvision and timm layouts are renamed; a classifier of another size is left as the
    model has it (and logged); a 1-channel model takes RGB weights summed over channels.
    Anything else that does not fit raises a `DataError` listing every difference.
    """
    state = read_state_dict(path)
    if any(k.startswith("layer1.") for k in state):
        state = from_torchvision(state)
    own = model.state_dict()
    if "head.weight" in state and state["head.weight"].shape != own["head.weight"].shape:
        log.info(
            "classifier of %s has %d classes, the model %d: keeping the model's new head",
            path,
            state["head.weight"].shape[0],
            own["head.weight"].shape[0],
        )
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in own.items() if k.startswith("head.")})
    first = "stem.0.conv.weight"
    if first in state and state[first].shape[1] != own[first].shape[1] == 1:
        log.info("summing the first convolution of %s over its input channels", path)
        state[first] = state[first].sum(dim=1, keepdim=True)
    _check_fits(own, state, path)
    model.load_state_dict(state)
    return model


def _check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}" if missing else "",
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            if unexpected
            else "",
            f"mismatched shapes {mismatched[:10]}" if mismatched else "",
        ]
        raise DataError(
            f"weights in {path} do not fit this model: "
            + "; ".join(p for p in parts if p)
            + ". Check that the model name and options match the ones the weights came from."
        )


def save_model_dir(
    model: ResNet,
    directory: str | Path,
    *,
    architecture: str,
    class_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors`: the layout of a Hugging Face model repo."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": architecture,
        "model": model.config.to_dict(),
        "class_names": list(class_names) if class_names else None,
        "preprocessing": preprocessing or {},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, tmp)
    tmp.replace(directory / WEIGHTS_FILE)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(directory / CONFIG_FILE)
    return directory


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no model at {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE} there "
            "(a run directory's model/ folder, or a folder written by save_model_dir)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from error


def load_model_dir(directory: str | Path, **options: Any) -> ResNet:
    """Build the model described by a model directory and load its weights."""
    config = read_model_config(directory)
    values = dict(config["model"], **options)
    model = ResNet(ResNetConfig.from_dict(values))
    load_weights(model, Path(directory) / WEIGHTS_FILE)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
