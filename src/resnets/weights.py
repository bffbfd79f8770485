"""Weights on disk: safetensors, model directories, and the torchvision / timm key layout.

Every loader reads data, never code: safetensors files, JSON configs, and `.pt`/`.pth`
files only through `torch.load(weights_only=True)`.
"""

import functools
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
from .runs import unfinished_run

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _layout(deep_stem: bool, avg_down: bool) -> list[tuple[str, str]]:
    """Pairs of (resnets prefix, torchvision/timm prefix) for one layout.

    In the templates `s`, `b`, `k` count stages, blocks and convs from 0 as resnets does;
    the reference layout counts stages and convs from 1 (`S`, `K`). timm's deep stem
    (`resnet50d`) is a Sequential of conv, norm, ReLU, ...; its average-pool shortcut puts
    the pool at `downsample.0`, so the conv and norm move up by one.
    """
    if deep_stem:
        stem = [
            ("stem.0.conv.", "conv1.0."),
            ("stem.0.norm.", "conv1.1."),
            ("stem.1.conv.", "conv1.3."),
            ("stem.1.norm.", "conv1.4."),
            ("stem.2.conv.", "conv1.6."),
            ("stem.2.norm.", "bn1."),
        ]
    else:
        stem = [("stem.0.conv.", "conv1."), ("stem.0.norm.", "bn1.")]
    first = 1 if avg_down else 0
    return stem + [
        ("stages.{s}.{b}.branch.{k}.conv.", "layer{S}.{b}.conv{K}."),
        ("stages.{s}.{b}.branch.{k}.norm.", "layer{S}.{b}.bn{K}."),
        ("stages.{s}.{b}.shortcut.conv.", f"layer{{S}}.{{b}}.downsample.{first}."),
        ("stages.{s}.{b}.shortcut.norm.", f"layer{{S}}.{{b}}.downsample.{first + 1}."),
        ("head.", "fc."),
    ]


@functools.cache
def _template_regex(template: str) -> re.Pattern[str]:
    """`"layer{S}.{b}."` -> a regex matching `layer3.0.` with groups S=3, b=0."""
    parts = re.split(r"\{(\w)\}", template)  # literal, name, literal, name, ...
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts))
    )


def _translate(key: str, pairs: list[tuple[str, str]], to_reference: bool) -> str | None:
    """Rename `key` by the first pair whose source prefix matches, or None if none does."""
    for resnets_name, reference_name in pairs:
        source, target = (
            (resnets_name, reference_name) if to_reference else (reference_name, resnets_name)
        )
        match = _template_regex(source).match(key)
        if match is None:
            continue
        values = {name: int(value) for name, value in match.groupdict().items()}
        if to_reference:
            values.update(S=values.get("s", 0) + 1, K=values.get("k", 0) + 1)
        else:
            values.update(s=values.get("S", 1) - 1, k=values.get("K", 1) - 1)
        return target.format(**values) + key[match.end() :]
    return None


def is_reference_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict uses torchvision's (or timm's) ResNet names."""
    return any(key.startswith("layer1.") for key in state)


def from_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision- or timm-layout ResNet state dict to resnets' names.

    timm's `resnetXXd` layout (deep stem, average-pool shortcuts) is recognised by its keys.
    Keys with no resnets counterpart (timm's squeeze-excitation, say) keep their names, so
    that loading reports them as unexpected.
    """
    deep_stem = "conv1.0.weight" in state
    avg_down = any(".downsample.2." in key for key in state)
    pairs = _layout(deep_stem, avg_down)
    renamed = {}
    for key, value in state.items():
        new = _translate(key, pairs, to_reference=False)
        renamed[new if new is not None else key] = value
    return renamed


def to_torchvision(model: ResNet) -> dict[str, torch.Tensor]:
    """The model's weights under torchvision's names, for `torchvision.models.resnetXX()`."""
    config = model.config
    if config.deep_stem or config.shortcut == "D":
        raise UsageError(
            "torchvision has no deep stem or average-pool shortcut (option D); this model "
            f"has deep_stem={config.deep_stem}, shortcut={config.shortcut!r}. Use "
            "resnets.weights.to_timm for timm's resnetXXd layout."
        )
    return _to_reference(model, "torchvision")


def to_timm(model: ResNet) -> dict[str, torch.Tensor]:
    """The model's weights under timm's names (`resnet50`, and `resnet50d` for deep stems)."""
    return _to_reference(model, "timm")


def _to_reference(model: ResNet, library: str) -> dict[str, torch.Tensor]:
    config = model.config
    if config.preactivation or not config.residual:
        raise UsageError(
            f"only post-activation residual networks have a {library} layout; this model has "
            f"preactivation={config.preactivation}, residual={config.residual}"
        )
    if config.shortcut not in ("B", "D") or config.convs_per_block != 2:
        raise UsageError(
            f"{library} builds projections only where the shape changes (option B or D) and "
            f"basic blocks of 2 convs; this model has shortcut={config.shortcut!r}, "
            f"convs_per_block={config.convs_per_block}"
        )
    pairs = _layout(config.deep_stem, config.shortcut == "D")
    state = {}
    for key, value in model.state_dict().items():
        new = _translate(key, pairs, to_reference=True)
        if new is None:
            raise UsageError(f"no {library} name for parameter {key!r}")
        state[new] = value.detach().clone()
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors, .pt/.pth or model directory without running code."""
    path = Path(path)
    if path.is_dir():
        unfinished = unfinished_run(path)
        if unfinished is not None:
            raise FileNotFoundError(unfinished)
        run_model = path / "model" / WEIGHTS_FILE  # a run directory stands for its model
        path = run_model if run_model.is_file() else path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}: expected a .safetensors, .pt or .pth file")
    if path.suffix == ".safetensors":
        try:
            return _unwrap(load_file(path), path)
        except Exception as error:  # safetensors raises its own error for a damaged header
            raise DataError(
                f"{path} is not a readable safetensors file ({error}); it may be truncated: "
                "copy it again or train the model again"
            ) from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler refuses anything beyond plain tensors
        if "GLOBAL" not in str(error):  # the pickle names no code: it is not weights at all
            raise DataError(
                f"{path} is not a weights file of plain tensors "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); expected a "
                ".safetensors, .pt or .pth file of tensors, or a model directory. A file "
                "pickled with more than tensors is refused too: loading it could run code. "
                "Save weights with safetensors or torch.save(model.state_dict())."
            ) from error
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
    # Wrappers nest in any order: a compiled DDP model saves `_orig_mod.module.`, a
    # Lightning module holding a compiled model `model._orig_mod.`.
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def load_weights(model: ResNet, path: str | Path) -> ResNet:
    """Load weights from a file or model directory into `model`, converting layouts.

    torchvision and timm layouts are renamed; a classifier of another size is left as the
    model has it (and logged); a 1-channel model takes RGB weights summed over channels.
    Anything else that does not fit raises a `DataError` listing every difference.
    """
    state = read_state_dict(path)
    if is_reference_layout(state):
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
            _listing("missing keys", missing),
            _listing("unexpected keys", unexpected),
            _listing("mismatched shapes", mismatched),
        ]
        raise DataError(
            f"weights in {path} do not fit this model: "
            + "; ".join(p for p in parts if p)
            + ". Check that the model name and options match the ones the weights came from."
        )


def _listing(what: str, items: list[str], limit: int = 10) -> str:
    if not items:
        return ""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {what} ({', '.join(items[:limit])}{more})"


def save_model_dir(
    model: ResNet,
    directory: str | Path,
    *,
    architecture: str,
    class_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors`: the layout of a Hugging Face model repo.

    `training` records how the weights were trained, such as {"steps": 5280}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": architecture,
        "model": model.config.to_dict(),
        "class_names": list(class_names) if class_names else None,
        "preprocessing": preprocessing or {},
    }
    if training:
        config["training"] = training
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, tmp)
    tmp.chmod(0o644)  # safetensors creates it private; a model is meant to be shared
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
