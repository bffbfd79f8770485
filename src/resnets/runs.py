"""What training and inference both need to know about runs, without loading Lightning:
the run directory's layout, and which process of a data-parallel run this is."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
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


def unfinished_run(path: str | Path) -> str | None:
    """What to tell someone who names a run that has not written its model yet, and how to
    finish it; None if `path` is not such a run."""
    path = Path(path)
    is_run = (path / RUN_CONFIG).is_file() or (path / "checkpoints").is_dir()
    if not is_run or (path / "model" / "config.json").is_file():
        return None
    newest = newest_checkpoint(path)
    if newest is None:
        return (
            f"{path} has no model: training stopped before its first checkpoint; train it "
            f"again (resnets train --config {path / RUN_CONFIG} repeats its settings)"
        )
    return (
        f"{path} has no finished model: training stopped before it wrote {path / 'model'}, "
        f"and its newest checkpoint is {newest.name}; finish the run with: resnets train "
        f"--resume {path}, or start a new run from those weights with --weights {newest}"
    )


def launched_rank_zero() -> bool:
    """Whether this process is rank zero, from what launchers (Lightning's, torchrun, SLURM)
    set in the environment of the processes they start."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in names)


@contextmanager
def training_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `RUN/.lock` while this process trains the run, so that a second `resnets train
    --resume RUN` started meanwhile is refused instead of writing into the same files.
    Rank zero holds it for a data-parallel run; where `fcntl` is missing it does nothing."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None or not launched_rank_zero():
        yield
        return
    from .errors import TrainingError

    with open(Path(run_dir) / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"{run_dir} is being trained by another process right now; wait for it to "
                "finish, or stop it (Ctrl-C saves a checkpoint) and resume once"
            ) from None
        yield
