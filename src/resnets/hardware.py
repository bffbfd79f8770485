"""What the hardware can do fast: precision and memory layout chosen per device."""

import torch


def accelerator_name(accelerator: str = "auto") -> str:
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 BF16 or AMX), several-fold faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_precision(accelerator: str = "auto") -> str:
    """Lightning precision: bf16 autocast where the hardware has it, float16 with a gradient
    scaler on GPUs without bf16, float32 elsewhere."""
    if accelerator_name(accelerator) == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def describe() -> dict[str, str]:
    """The hardware facts recorded in a run's config."""
    info = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": cpu_has_bf16()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["threads"] = torch.get_num_threads()
    return info
