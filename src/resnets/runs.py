"""What training and inference both need to know about runs, without loading Lightning:
the run directory's layout, and which process of a data-parallel run this is."""

import os
from pathlib import Path

RUN_CONFIG = "config.yaml"  # a run's settings, written when it starts
RESUMABLE_CHECKPOINTS = ("last", "step", "interrupted")  # in RUN/checkpoints/, as NAME.ckpt


def checkpoint_step(path: str | Path) -> int:
    """How many optimiser steps the checkpoint at `path` had trained."""
    import torch

    from .errors import DataError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated or damaged: torch names neither the file nor why
        raise DataError(
            f"checkpoint {path} cannot be read ({error}); it may be truncated. Move it aside "
            "to resume from the run's other checkpoints"
        ) from error
    return int(saved.get("global_step", 0))


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint that `resnets train --resume` continues from: the one that trained
    the most steps (the latest written among equals), or None if the run has none.

    Not the latest written alone: copying a run does not keep its files' order."""
    found = [Path(run_dir) / "checkpoints" / f"{name}.ckpt" for name in RESUMABLE_CHECKPOINTS]
    found = [path for path in found if path.is_file()]
    if not found:
        return None
    return max(found, key=lambda path: (checkpoint_step(path), path.stat().st_mtime_ns))


def launched_rank_zero() -> bool:
    """Whether this process is rank zero, from what launchers (Lightning's, torchrun, SLURM)
    set in the environment of the processes they start."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in names)
