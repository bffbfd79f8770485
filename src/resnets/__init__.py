"""resnets: build, train, understand and serve Residual Networks."""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Where each public name lives. They are imported on first use, so that `import resnets`
# (and with it the `resnets` command) starts without loading torch, and a Ctrl-C while
# the command starts up is answered by the command, not by a traceback.
_PUBLIC = {
    "ResNet": ".models",
    "ResNetConfig": ".models",
    "create_model": ".models",
    "list_models": ".models",
    "from_pretrained": ".hub",
    "load_weights": ".weights",
    "save_model_dir": ".weights",
    "to_torchvision": ".weights",
}

__all__ = [
    "ResNet",
    "ResNetConfig",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_weights",
    "save_model_dir",
    "to_torchvision",
]

if TYPE_CHECKING:
    from .hub import from_pretrained
    from .models import ResNet, ResNetConfig, create_model, list_models
    from .weights import load_weights, save_model_dir, to_torchvision


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'resnets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
