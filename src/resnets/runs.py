"""What training and inference both need to know about runs, without loading Lightning:
the run directory's layout, and which process of a data-parallel run this is."""

import os
from pathlib import Path

RUN_CONFIG = "config.yaml"  # a run's settings, written when it starts
RESUMABLE_CHECKPOINTS = ("last", "step", "interrupted")  # in RUN/checkpoints/, as NAME.ckpt


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The most recently written checkpoint that `resnets train --resume` continues from,
    or None if the run has none."""
    found = [Path(run_dir) / "checkpoints" / f"{name}.ckpt" for name in RESUMABLE_CHECKPOINTS]
    found = [path for path in found if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime_ns) if found else None


def launched_rank_zero() -> bool:
    """Whether this process is rank zero, from what launchers (Lightning's, torchrun, SLURM)
    set in the environment of the processes they start."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in names)
