"""Callbacks: the per-epoch metrics row (CSV, curves, report) and throughput timing."""

import csv
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from ..errors import TrainingError

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",
    "lr",
    "images_per_s",
    "epoch_time_s",
]


class EpochMetrics(L.Callback):
    """Writes one `metrics.csv` row per epoch and hands it to `report` (rank zero only).

    Throughput counts training images only, from the first to the last training batch,
    so validation does not dilute it.
    """

    def __init__(self, run_dir: Path, report: Callable[[dict], None] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.report = report
        self.rows: list[dict] = []
        self.on_train_epoch_start(None, None)  # a run resumed mid-epoch starts here

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images, self.started, self.train_seconds = 0, time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])
        self.train_seconds = time.perf_counter() - self.started

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {
            "epoch": trainer.current_epoch + 1,
            **{k: metrics.get(k, float("nan")) for k in METRIC_COLUMNS[1:6]},
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "images_per_s": self.images * trainer.world_size / max(self.train_seconds, 1e-9),
            "epoch_time_s": time.perf_counter() - self.started,
        }
        self.rows.append(row)
        self._append(row)
        if self.report:
            self.report(row)

    def _append(self, row: dict) -> None:
        """Add the row, dropping rows of this epoch or later left by an interrupted run."""
        kept = []
        if self.path.exists():
            with open(self.path, newline="") as stream:
                kept = [r for r in csv.DictReader(stream) if int(r["epoch"]) < row["epoch"]]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        tmp.replace(self.path)


class GracefulStop(L.Callback):
    """On Ctrl-C or SIGTERM, finish the current step and save `interrupted.ckpt`.

    Both signals set a flag that every rank checks before each step; in a data-parallel run
    the ranks agree on it first, so all of them stop after the same step and save the
    checkpoint together (one rank stopping alone would leave the others waiting in a
    collective for ever). The checkpoint never holds a half-applied optimiser step.
    A second signal stops at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.requested = False
        self.signum = signal.SIGINT  # the signal that asked to stop
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # Replaces Lightning's SIGTERM handler (installed after `on_fit_start`), which
        # broadcasts from inside the handler and can deadlock when every rank receives the
        # signal, as a cluster sends it.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._request) for s in self.SIGNALS}

    def _request(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Before the next step rather than after the last: at a batch's end Lightning has not
        # yet counted it or stepped the schedule, so a checkpoint then would repeat it.
        requested = self.requested
        if trainer.world_size > 1:
            flag = torch.tensor(float(requested), device=pl_module.device)
            requested = bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)
        if requested:
            raise KeyboardInterrupt

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SystemExit):
            trainer.save_checkpoint(self.checkpoint)
        self._restore()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as stream:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(stream)]


def plot_curves(metrics_csv: Path, out: Path, title: str) -> Path:
    """Loss and accuracy per epoch, training dashed and held-out solid, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", label="training")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "-", label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="Loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], "--", label="training")
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in rows], "-", label="held-out")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


class ReplicaCheck(L.Callback):
    """At the end of data-parallel training, check that every rank holds the same weights
    and count the validation images each rank evaluated; rank zero writes both to JSON.

    Replicas that drifted apart (a desynchronised buffer, say) fail the run loudly instead
    of saving one rank's model as if it were everyone's.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.world_size == 1:
            return
        tensors = [t.detach().double() for t in pl_module.model.state_dict().values()]
        checksum = torch.stack([sum(t.sum() for t in tensors), sum((t * t).sum() for t in tensors)])
        seen = torch.tensor([pl_module.val_images_seen], dtype=torch.float64)
        gathered = pl_module.all_gather(torch.cat([checksum, seen]).to(pl_module.device))
        rows = gathered.cpu().tolist()
        identical = all(row[:2] == rows[0][:2] for row in rows)
        if trainer.is_global_zero:
            report = {
                "world_size": trainer.world_size,
                "checksums": [row[:2] for row in rows],
                "identical": identical,
                "val_images_per_rank": [int(row[2]) for row in rows],
            }
            self.path.write_text(json.dumps(report, indent=2) + "\n")
        if not identical:
            raise TrainingError(f"the ranks' weights differ at the end of training: {rows}")


class WeightAverage(WeightAveraging):
    """An exponential moving average of the weights and batch-norm statistics, validated,
    checkpointed and saved in place of the weights themselves (Lightning's callback).

    Three things on top of Lightning's `EMAWeightAveraging`:
    - The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so that the
      average of a short run, or of the first epochs, is not mostly the initial weights.
    - The average lives on the training device (Lightning would build it on the CPU, before
      the model is moved, and copy every weight across at every step).
    - A run stopped during validation, while the average is swapped in, is checkpointed
      with the weights swapped back: list this callback before the one that saves.
    """

    def __init__(self, decay: float) -> None:
        def average(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor):
            rate = ((1 + n) / (10 + n)).clamp(max=decay)  # a tensor: no device sync
            return averaged + (current - averaged) * (1 - rate)

        super().__init__(avg_fn=average)
        self.decay = decay
        self._swapped = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False
