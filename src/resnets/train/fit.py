"""`train`: from a `TrainConfig` to a finished run directory."""

import logging
import os
import platform
import shutil
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import TQDMProgressBar

from .. import hardware
from ..data.datasets import Dataset, check_val_size, load_dataset, parse_spec
from ..errors import Stopped, TrainingError, UsageError, closest
from ..models.registry import (
    architecture_of,
    create_model,
    list_models,
    model_config,
    saved_model_dir,
)
from ..runs import RUN_CONFIG, launched_rank_zero, newest_checkpoint, training_lock
from ..weights import save_model_dir
from .callbacks import (
    EpochMetrics,
    GracefulStop,
    ReplicaCheck,
    WeightAverage,
    plot_curves,
    read_metrics,
)
from .datamodule import ImageDataModule
from .module import ClassifierModule, NonFiniteLoss
from .recipes import Recipe, default_recipe

log = logging.getLogger(__name__)

# Augmentation lives in the module on purpose: it must know whether the trainer is training.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")
warnings.filterwarnings("ignore", message=".*nn.functional.all_gather is deprecated.*")
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")

CONFIG_FILE = RUN_CONFIG
# Lightning's names, with its short aliases ("bf16" for "bf16-mixed", "32" for "32-true").
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
PRECISIONS += ("32", "bf16", "16", "64")
PRECISION_ALIASES = {"fp32": "32-true", "fp16": "16-mixed"}  # as `predict` also spells them
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass
class TrainConfig:
    """Every setting of a run. `None` means the dataset's default (see `recipes.py`)."""

    model: str = "resnet20"  # a registered name, or a model directory to train further
    weights: str | None = None  # starting weights for `model`: a file or model directory
    data: str = "digits"
    recipe: str = "default"  # a name in recipes.RECIPES; the settings below override it
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    ema_decay: float | None = None
    test_flip: bool | None = None
    seed: int = 0
    val_size: float = 0.1
    image_size: int | None = None
    channels: int | None = None
    strict: bool = False
    in_memory: bool | None = None  # folders: decode once into memory; None: if they fit
    download: bool = False
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    sync_batchnorm: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    out: str = "runs"
    name: str | None = None
    progress_bar: bool = True
    checkpoint_every: int = 500  # optimiser steps between mid-epoch checkpoints; 0 for none

    def __post_init__(self) -> None:
        check_val_size(self.val_size)
        self.precision = PRECISION_ALIASES.get(self.precision, self.precision)
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}."
                f"{closest(str(self.precision), PRECISIONS)}"
            )
        if self.accelerator not in ACCELERATORS:
            raise UsageError(
                f"--accelerator must be one of {', '.join(ACCELERATORS)}; got "
                f"{self.accelerator!r}.{closest(str(self.accelerator), ACCELERATORS)}"
            )
        devices_ok = self.devices == "auto" or (
            isinstance(self.devices, int)
            and not isinstance(self.devices, bool)
            and self.devices > 0
        )
        if not devices_ok:
            raise UsageError(f"--devices must be a positive count or 'auto'; got {self.devices!r}")
        for name in ("num_nodes", "image_size", "channels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1; got {value!r}")
        if self.checkpoint_every < 0:
            raise UsageError(
                f"--checkpoint-every must be 0 (epoch ends only) or more; got "
                f"{self.checkpoint_every}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown training settings {unknown}; expected {sorted(known)}")
        for name, kinds in _SETTING_KINDS.items():
            value = values.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                expected = " or ".join(kind.__name__ for kind in kinds)
                raise UsageError(f"setting {name} must be a {expected}; got {value!r}")
        return cls(**values)


# The numeric settings, checked when they come from a YAML file rather than typed flags.
_SETTING_KINDS: dict[str, tuple[type, ...]] = {
    "epochs": (int,),
    "batch_size": (int,),
    "seed": (int,),
    "num_nodes": (int,),
    "checkpoint_every": (int,),
    "lr": (int, float),
    "weight_decay": (int, float),
    "warmup_epochs": (int, float),
    "label_smoothing": (int, float),
    "ema_decay": (int, float),
    "val_size": (int, float),
    "model_options": (dict,),
}


@dataclass
class TrainResult:
    run_dir: Path
    rows: list[dict]
    accuracy: float
    held_out_name: str
    seconds: float
    is_global_zero: bool = True  # False in the other processes of a data-parallel run


def resolve_recipe(config: TrainConfig) -> Recipe:
    kind, _ = parse_spec(config.data)
    names = (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "schedule",
        "label_smoothing",
        "ema_decay",
        "test_flip",
    )
    return default_recipe(kind, config.recipe, **{n: getattr(config, n) for n in names})


RUN_DIR_VARIABLE = "RESNETS_RUN_DIR"  # hands rank zero's run directory to the other ranks


def make_run_dir(config: TrainConfig) -> tuple[Path, bool]:
    """Create the run directory on rank zero; the other ranks of a data-parallel run get
    the same path, from rank zero (Lightning's launcher) or from `--name` (torchrun, SLURM).
    Returns the path and whether this call created the folder."""
    if not launched_rank_zero():
        if RUN_DIR_VARIABLE in os.environ:
            return Path(os.environ[RUN_DIR_VARIABLE]), False
        if config.name is None:
            raise UsageError(
                "a run started by torchrun or SLURM needs --name, so that every process "
                "writes to the same run directory"
            )
        return Path(config.out) / config.name, False
    kind, _ = parse_spec(config.data)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.out) / (config.name or f"{Path(config.model).name}-{kind}-{stamp}")
    _refuse_a_saved_run(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        log.warning(
            "%s holds a run that stopped before its first checkpoint; starting it again", run_dir
        )
    existed = run_dir.exists()
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_VARIABLE] = str(run_dir.resolve())
    return run_dir, not existed


def write_run_config(run_dir: Path, config: TrainConfig, recipe: Recipe, extra: dict) -> None:
    import lightning

    record = {
        "train": asdict(config),
        "recipe": asdict(recipe),
        **extra,
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "lightning": lightning.__version__,
            "resnets": _version(),
        },
        "hardware": hardware.describe(),
    }
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(record, sort_keys=False))


def _version() -> str:
    from .. import __version__

    return __version__


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no run at {run_dir}: expected {CONFIG_FILE} there")
    return yaml.safe_load(path.read_text())


def build_module(config: TrainConfig, dataset: Dataset, recipe: Recipe, world_size: int):
    options = {"num_classes": dataset.num_classes, "in_channels": dataset.channels}
    model = create_model(config.model, weights=config.weights, **options, **config.model_options)
    side = min(dataset.image_size)
    if side < model.min_input_size:
        raise UsageError(
            f"{config.model} shrinks its input {model.min_input_size} times, so it needs images "
            f"of at least {model.min_input_size}x{model.min_input_size}; the data is "
            f"{side}x{side}. Pass --image-size {model.min_input_size} to upscale, or use a "
            "CIFAR model such as resnet20"
        )
    if recipe.batch_size % world_size:
        raise UsageError(
            f"--batch-size {recipe.batch_size} is the global batch and must divide evenly "
            f"across {world_size} processes"
        )
    if config.recipe == "fast" and tuple(dataset.image_size) != (32, 32):
        log.warning(
            "the fast recipe was tuned on 32x32 CIFAR-10 images; these are %dx%d, so its "
            "epochs and learning rate may not suit them",
            *dataset.image_size,
        )
    if recipe.test_flip and not dataset.flip:
        raise UsageError(
            f"{config.data} is never mirrored in training (a mirrored image of it means "
            "something else), so averaging in mirror images would hurt; drop --test-flip"
        )
    if recipe.batch_size > len(dataset.train):
        log.warning(
            "--batch-size %d is more than the %d training images: every step takes all of "
            "them, with the learning rate scaled for a batch of %d (%.3g). Lower --batch-size "
            "or --lr if training is unstable.",
            recipe.batch_size,
            len(dataset.train),
            recipe.batch_size,
            recipe.peak_lr(recipe.batch_size),
        )
    return ClassifierModule(
        model,
        recipe,
        mean=dataset.mean,
        std=dataset.std,
        flip=dataset.flip,
        crop_padding=dataset.crop_padding,
        global_batch_size=recipe.batch_size,
        channels_last=config.channels_last,
        seed=config.seed,
    )


def make_trainer(config: TrainConfig, recipe: Recipe, run_dir: Path, callbacks: list) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    precision = (
        hardware.fast_precision(config.accelerator)
        if config.precision == "auto"
        else config.precision
    )
    checkpoints = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor="val_acc",
            mode="max",
            enable_version_counter=False,
        ),
        # Its own callback: `save_last` on the one above is written only when val_acc improves.
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False
        ),
    ]
    if config.checkpoint_every:
        callbacks = [
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="step",
                every_n_train_steps=config.checkpoint_every,
                enable_version_counter=False,
            ),
            *callbacks,
        ]
    if config.progress_bar:
        callbacks = [_EpochBar(), *callbacks]
    multi = config.num_nodes > 1 or (isinstance(config.devices, int) and config.devices > 1)
    try:
        return L.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy="ddp" if multi else "auto",
            sync_batchnorm=config.sync_batchnorm,
            precision=precision,
            max_epochs=recipe.epochs,
            callbacks=[*checkpoints, *callbacks],
            logger=_loggers(run_dir),
            default_root_dir=run_dir,
            enable_progress_bar=config.progress_bar,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            use_distributed_sampler=False,  # ImageDataModule shards by rank itself
            log_every_n_steps=10,
        )
    except MisconfigurationException as error:  # such as --accelerator gpu on a CPU machine
        raise UsageError(
            f"{error} Check --accelerator, --devices, --num-nodes and --precision"
        ) from error


class _EpochBar(TQDMProgressBar):
    """A bar for the training batches only: validation is quick and reported per epoch."""

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar


def _loggers(run_dir: Path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(run_dir, name="tensorboard", version="")


def train(
    config: TrainConfig,
    report: Callable[[dict], None] | None = None,
    dataset: Dataset | None = None,
    callbacks: list[L.Callback] | None = None,
) -> TrainResult:
    """Train `config.model` on `config.data` and write a run directory (see DESIGN.md)."""
    check_config(config)
    config = _with_absolute_paths(config)
    dataset = dataset or load_training_data(config)
    run_dir, created = make_run_dir(config)
    try:
        with training_lock(run_dir):
            return _fit(config, dataset, run_dir, None, report, callbacks)
    except BaseException:
        if created:  # never a folder that was there before
            _remove_if_nothing_saved(run_dir)
        raise


def _with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """The settings with the data, weights and model paths made absolute, so that the run
    config.yaml records can be resumed and evaluated from any directory."""
    kind, path = parse_spec(config.data)
    changes = {"data": f"{kind}:{path.resolve()}"} if path is not None else {}
    if config.weights is not None:
        changes["weights"] = str(Path(config.weights).expanduser().resolve())
    if config.model not in list_models() and saved_model_dir(config.model) is not None:
        changes["model"] = str(Path(config.model).expanduser().resolve())
    return replace(config, **changes)


def _remove_if_nothing_saved(run_dir: Path) -> None:
    """Remove a run directory this process created, when the run failed before saving a
    checkpoint, a model or a log: its name is then free for the corrected command."""
    if any(run_dir.rglob("*.ckpt")) or any(run_dir.rglob("events.out.tfevents*")):
        return
    if (run_dir / "model").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)


def check_config(config: TrainConfig) -> None:
    """Fail on bad settings, names and paths before any data is read or folder written."""
    resolve_recipe(config)
    parse_spec(config.data)
    architecture_of(config.model)
    if saved_model_dir(config.model) is None:
        model_config(config.model, **config.model_options)  # such as --set shortcut=Z
    if config.weights is not None and not Path(config.weights).exists():
        raise UsageError(
            f"--weights {config.weights} does not exist; expected a .pth, .pt or .safetensors "
            "file or a model directory"
        )
    if config.name and launched_rank_zero():
        _refuse_a_saved_run(Path(config.out) / config.name)


def _refuse_a_saved_run(run_dir: Path) -> None:
    """A run that saved a checkpoint or a model is continued with --resume, never
    overwritten; one stopped before its first checkpoint may be started again in place."""
    saved = (run_dir / "model").is_dir() or any((run_dir / "checkpoints").glob("*.ckpt"))
    if (run_dir / CONFIG_FILE).exists() and saved:
        raise UsageError(
            f"run directory {run_dir} already holds a run; choose another --name, or "
            f"continue it with --resume {run_dir}"
        )


def resume(
    run_dir: str | Path,
    report: Callable[[dict], None] | None = None,
    epochs: int | None = None,
    callbacks: list[L.Callback] | None = None,
) -> TrainResult:
    """Continue an interrupted run from its newest checkpoint, with every state restored:
    model, optimiser, schedule, step, epoch, precision scaler, data order and RNG."""
    run_dir = Path(run_dir)
    record = read_run_config(run_dir)
    config = TrainConfig.from_dict(record["train"])
    config.progress_bar = report is not None and config.progress_bar
    for name, value in (record.get("recipe") or {}).items():
        # The recipe the run started with, even if this version's defaults differ.
        if getattr(config, name, False) is None:
            setattr(config, name, value)
    with training_lock(run_dir):  # before anything is read or rewritten
        checkpoint = latest_checkpoint(run_dir)
        done = (
            len(read_metrics(run_dir / "metrics.csv")) if (run_dir / "metrics.csv").exists() else 0
        )
        finished = (run_dir / "model" / "config.json").is_file()
        if finished and done >= (epochs or config.epochs or 0):
            raise UsageError(
                f"{run_dir} has finished its {done} epoch{'s' if done != 1 else ''}, so there "
                f"is nothing to resume; to train it further, give a new total: resnets train "
                f"--resume {run_dir} --epochs {done + max(1, done // 2)}"
            )
        if epochs is not None:
            least = max(done, _epochs_begun(checkpoint))
            if epochs < least:
                raise UsageError(
                    f"{run_dir} has already trained {done} epoch{'s' if done != 1 else ''}"
                    + (f" and part of epoch {least}" if least > done else "")
                    + f"; --epochs with --resume is the new total and must be at least {least}, "
                    f"got {epochs}"
                )
            config.epochs = epochs
            if launched_rank_zero() and record["train"].get("epochs") != epochs:
                # The new total, so that resuming again after another interruption keeps it.
                record["train"]["epochs"] = epochs
                if record.get("recipe"):
                    record["recipe"]["epochs"] = epochs
                partial = run_dir / (CONFIG_FILE + ".partial")
                partial.write_text(yaml.safe_dump(record, sort_keys=False))
                partial.replace(run_dir / CONFIG_FILE)
        log.info("resuming %s from %s", run_dir, checkpoint)
        return _fit(config, load_training_data(config), run_dir, checkpoint, report, callbacks)


def _epochs_begun(checkpoint: Path) -> int:
    """The epochs of which the checkpoint had trained at least one batch: an epoch stopped
    part-way is one that a new --epochs total must include."""
    saved = torch.load(checkpoint, weights_only=True, mmap=True)
    progress = saved.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    in_epoch = progress.get("current", {}).get("processed", 0)
    return int(saved.get("epoch", 0)) + (1 if in_epoch > 0 else 0)


def latest_checkpoint(run_dir: Path) -> Path:
    """The most recently written of the run's epoch, step and interrupt checkpoints."""
    newest = newest_checkpoint(run_dir)
    if newest is None:
        raise TrainingError(
            f"{run_dir} stopped before its first checkpoint, so there is nothing to resume; "
            f"start it again with the same command (resnets train ... --out "
            f"{run_dir.parent} --name {run_dir.name})"
        )
    return newest


def load_training_data(config: TrainConfig) -> Dataset:
    """The dataset of a run, split as its settings say (data, held-out size, seed)."""
    return load_dataset(
        config.data,
        image_size=config.image_size,
        channels=config.channels,
        val_size=config.val_size,
        seed=config.seed,
        download=config.download,
        strict=config.strict,
        in_memory=config.in_memory,
    )


def _fit(
    config: TrainConfig,
    dataset: Dataset,
    run_dir: Path,
    checkpoint: Path | None,
    report: Callable[[dict], None] | None,
    callbacks: list[L.Callback] | None,
) -> TrainResult:
    started = time.perf_counter()
    recipe = resolve_recipe(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    metrics = EpochMetrics(run_dir, report)
    stop = GracefulStop(run_dir / "checkpoints" / "interrupted.ckpt")
    extra = [metrics, stop, ReplicaCheck(run_dir / "replicas.json"), *(callbacks or [])]
    if recipe.ema_decay:
        # Validation, checkpoints' state_dict and the saved model all take the average. First
        # in the list: it swaps the weights back before `stop` saves an interrupted run, and
        # puts the average in place before `ReplicaCheck` compares the ranks' models.
        extra.insert(0, WeightAverage(recipe.ema_decay))
    trainer = make_trainer(config, recipe, run_dir, extra)
    module = build_module(config, dataset, recipe, trainer.world_size)
    preprocessing = {**preprocessing_of(dataset), "test_flip": recipe.test_flip}
    if trainer.is_global_zero and checkpoint is None:
        write_run_config(run_dir, config, recipe, _run_facts(trainer, recipe, dataset))
    if config.compile:
        module.model = torch.compile(module.model)
    datamodule = ImageDataModule(dataset, recipe.batch_size // trainer.world_size, config.seed)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    except SystemExit as stopped:  # Ctrl-C or SIGTERM, after Lightning's own clean-up
        name = signal.Signals(stop.signum).name if stop.requested else "a signal"
        raise Stopped(
            f"training stopped by {name} at epoch {trainer.current_epoch + 1}, step "
            f"{trainer.global_step}; checkpoint saved. Continue with: resnets train --resume "
            f"{run_dir}",
            signum=stop.signum,
        ) from stopped
    except NonFiniteLoss as error:
        newest = newest_checkpoint(run_dir)
        kept = (
            f"{newest.name}, the last good checkpoint, is kept"
            if newest
            else ("no checkpoint had been written yet")
        )
        raise TrainingError(f"{error}; {kept}. {NonFiniteLoss.REMEDY}") from error
    except ValueError as error:
        if "more than 1 value per channel" not in str(error):
            raise
        raise TrainingError(
            "batch norm needs more than one value per channel, and a batch of one image "
            "shrinks to 1x1 in the last stage; use a larger --batch-size or --image-size"
        ) from error
    model = getattr(module.model, "_orig_mod", module.model)
    model = model.to(memory_format=torch.contiguous_format)
    if trainer.is_global_zero:
        architecture = architecture_of(config.model)
        save_model_dir(
            model,
            run_dir / "model",
            architecture=architecture,
            class_names=dataset.class_names,
            preprocessing=preprocessing,
            training={"steps": trainer.global_step},
        )
        for superseded in ("step", "interrupted"):  # last.ckpt holds the final state
            (run_dir / "checkpoints" / f"{superseded}.ckpt").unlink(missing_ok=True)
        plot_curves(
            run_dir / "metrics.csv", run_dir / "curves.png", f"{architecture} on {config.data}"
        )
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    accuracy = rows[-1]["val_acc"] if rows else float("nan")
    return TrainResult(
        run_dir,
        rows,
        accuracy,
        dataset.held_out_name,
        time.perf_counter() - started,
        trainer.is_global_zero,
    )


def _run_facts(trainer: L.Trainer, recipe: Recipe, dataset: Dataset) -> dict[str, Any]:
    return {
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "global_batch_size": recipe.batch_size,
        "per_device_batch_size": recipe.batch_size // trainer.world_size,
        "lr_scaling": "linear: peak_lr = lr * global_batch_size / 128",
        "peak_lr": recipe.peak_lr(recipe.batch_size),
        "dataset": {
            "train_size": len(dataset.train),
            "held_out_size": len(dataset.held_out),
            "held_out": dataset.held_out_name,
            "in_memory": dataset.train.in_memory,
            **preprocessing_of(dataset),
        },
        "class_names": dataset.class_names,
    }


def preprocessing_of(dataset: Dataset) -> dict[str, Any]:
    """What prediction must do to a file so the model sees what training saw."""
    return {
        "image_size": list(dataset.image_size),
        "channels": dataset.channels,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "resize": "shorter side, then centre crop",
        "flip": dataset.flip,  # whether training mirrored images: test-time flip needs it
    }
