"""The gradient recorder as a Lightning callback, so any training run can be watched."""

import logging
from pathlib import Path

import lightning as L
from torch import nn

from .recorder import BLOCK_COLUMNS, LAYER_COLUMNS, GradientRecorder
from .tables import write_csv

log = logging.getLogger(__name__)


class GradientMonitor(L.Callback):
    """Records layer gradients, weight updates and branch outputs every `every` steps.

    Gradients are read in `on_before_optimizer_step` rather than `on_after_backward`:
    Lightning calls it once the gradients of all accumulated batches are summed and,
    under `16-mixed`, after the gradient scaler has unscaled them, so the norms are the
    ones the optimiser uses. Under DDP they are already all-reduced there, so only rank
    zero records. `on_train_batch_end` then measures the step the optimiser took.

    Args:
        every: record optimiser steps 0, every, 2 * every, ...
        out: a folder to write `gradients.csv` and `blocks.csv` to when training ends.
        attribute: the LightningModule attribute holding the network ("model" for
            resnets' ClassifierModule); the whole LightningModule when it has none.
    """

    def __init__(self, every: int = 50, out: str | Path | None = None, attribute: str = "model"):
        self.every = every
        self.out = Path(out) if out is not None else None
        self.attribute = attribute
        self.recorder: GradientRecorder | None = None

    def _network(self, pl_module: L.LightningModule) -> nn.Module:
        network = getattr(pl_module, self.attribute, pl_module)
        # torch.compile wraps the model; its hooks must go on the original modules.
        return getattr(network, "_orig_mod", network)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Other ranks hold the same all-reduced gradients: one record is enough.
        if trainer.is_global_zero:
            self.recorder = GradientRecorder(self._network(pl_module), self.every)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.recorder is not None:
            self.recorder.start_step(trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.recorder is not None:
            self.recorder.record_gradients()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.recorder is not None:
            self.recorder.record_update()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.recorder is None:
            return
        self.recorder.close()
        if self.out is not None:
            write_csv(self.recorder.layer_rows, LAYER_COLUMNS, self.out / "gradients.csv")
            write_csv(self.recorder.block_rows, BLOCK_COLUMNS, self.out / "blocks.csv")
            log.info("gradient statistics written to %s", self.out)
