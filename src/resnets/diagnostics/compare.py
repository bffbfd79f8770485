"""The plain-versus-residual experiment (He et al. 2015, Figs. 1 and 6, Table 6).

Every model trains with the same recipe, seed, data and data order; only the
architecture differs. Residual branches start non-zero (`zero_init_residual=False`),
as in the paper, which predates zero-initialising each branch's last norm (Goyal et
al. 2017): the plain networks have nothing to zero, so with it the residual networks
would differ from their plain twins by more than the shortcut.

Each model's run directory lives in the output folder under the model's name; a run
that finished is read back instead of trained again, so an interrupted comparison
continues where it stopped and another model can be added later.
"""

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..data.datasets import Dataset, load_dataset
from ..errors import UsageError
from ..models.registry import create_model, model_entry
from ..train.callbacks import read_metrics
from ..train.fit import CONFIG_FILE, TrainConfig, resolve_recipe
from ..weights import count_parameters
from . import plots
from .gradients import Spread, build_model, gradient_spread, gradients_at_init, training_batches
from .recorder import LAYER_COLUMNS
from .tables import write_csv

log = logging.getLogger(__name__)

SETTINGS_FILE = "compare.json"
TABLE_COLUMNS = ["model", "layers", "parameters", "train_error", "held_out_error", "seconds"]


@dataclass
class CompareConfig:
    """Settings shared by every model of a comparison. `None` takes the recipe's value."""

    models: list[str] = field(
        default_factory=lambda: ["plain20", "plain56", "resnet20", "resnet56"]
    )
    data: str = "digits"
    epochs: int | None = None
    train_size: int | None = None
    val_size: float = 0.1
    seed: int = 0
    batch_size: int | None = None
    lr: float | None = None
    precision: str = "auto"
    accelerator: str = "auto"
    out: str = "runs/compare"

    def train_config(self, model: str) -> TrainConfig:
        """The training settings of one model: identical for all but the model's name."""
        return TrainConfig(
            model=model,
            data=self.data,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            val_size=self.val_size,
            precision=self.precision,
            accelerator=self.accelerator,
            model_options={"zero_init_residual": False},
            out=self.out,
            name=model,
            progress_bar=False,  # `resnets compare` reports one line per model and epoch
        )

    def shared_settings(self) -> dict:
        """What must match for earlier runs in `out` to be comparable with new ones."""
        recipe = resolve_recipe(self.train_config(self.models[0]))
        shared = ("data", "train_size", "val_size", "seed", "precision", "accelerator")
        return {**{k: getattr(self, k) for k in shared}, **asdict(recipe)}


@dataclass
class ModelResult:
    model: str
    layers: int
    parameters: int
    train_error: float  # percent, the last epoch's, on augmented training batches
    held_out_error: float  # percent, the last epoch's
    seconds: float  # training and validation time summed over epochs
    run_dir: Path
    history: list[dict]
    trained_now: bool


@dataclass
class CompareResult:
    out: Path
    results: list[ModelResult]
    held_out_name: str
    init_spread: dict[str, Spread]  # of the gradient norms at initialisation, per model
    files: list[Path] = field(default_factory=list)


def check_models(models: list[str]) -> None:
    if not models:
        raise UsageError("--models needs at least one model, such as plain20,resnet20")
    duplicates = sorted({m for m in models if models.count(m) > 1})
    if duplicates:
        raise UsageError(f"--models names {duplicates} more than once; list each model once")
    for name in models:
        model_entry(name)  # raises, with suggestions, for unknown names


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix runs trained with other settings into this comparison."""
    path = out / SETTINGS_FILE
    if path.is_file():
        earlier = json.loads(path.read_text())
        changed = sorted(
            k for k in settings.keys() | earlier.keys() if settings.get(k) != earlier.get(k)
        )
        if changed:
            details = "; ".join(
                f"{k}: {earlier.get(k)!r} then, {settings.get(k)!r} now" for k in changed
            )
            raise UsageError(
                f"{out} holds a comparison with other settings ({details}). Rerun with the "
                "same settings to continue it, or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def training_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """The dataset with a seeded random `size` of its training images (all when None)."""
    if size is None:
        return dataset
    available = len(dataset.train)
    if not 2 <= size <= available:
        raise UsageError(
            f"--train-size must be between 2 and the {available} training images of "
            f"{dataset.spec}; got {size}"
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    # Normalisation statistics stay those of the whole split, the same for every size.
    return replace(dataset, train=dataset.train.subset(order[:size].sort().values))


def finished_history(run_dir: Path, epochs: int) -> list[dict] | None:
    """The metrics of a finished run in `run_dir`, or None if it did not finish."""
    metrics = run_dir / "metrics.csv"
    if not (run_dir / "model" / "config.json").is_file() or not metrics.is_file():
        return None
    rows = read_metrics(metrics)
    return rows if len(rows) == epochs else None


def train_or_resume(
    config: CompareConfig,
    model: str,
    dataset: Dataset,
    epochs: int,
    report: Callable[[str, dict], None] | None,
) -> tuple[list[dict], bool]:
    """Train `model` unless its finished run is already in the output folder.

    Returns:
        (its metrics rows, whether it was trained now).
    """
    from ..train import fit  # looked up at call time, so tests can watch it

    run_dir = Path(config.out) / model
    history = finished_history(run_dir, epochs)
    if history is not None:
        log.info("%s already trained in %s: reading its results", model, run_dir)
        return history, False
    if (run_dir / CONFIG_FILE).is_file():
        # An interrupted run of this comparison: start it again from the beginning.
        log.warning("%s did not finish in %s; training it again", model, run_dir)
        shutil.rmtree(run_dir)
    on_epoch = (lambda row: report(model, row)) if report else None
    result = fit.train(config.train_config(model), report=on_epoch, dataset=dataset)
    return result.rows, True


def model_result(name: str, dataset: Dataset, run_dir: Path, history: list[dict], trained: bool):
    with torch.device("meta"):  # only the parameter count is needed, not the weights
        model = create_model(name, num_classes=dataset.num_classes, in_channels=dataset.channels)
    last = history[-1]
    return ModelResult(
        model=name,
        layers=model.config.depth,
        parameters=count_parameters(model),
        train_error=100 * (1 - last["train_acc"]),
        held_out_error=100 * (1 - last["val_acc"]),
        seconds=sum(row["epoch_time_s"] for row in history),
        run_dir=run_dir,
        history=history,
        trained_now=trained,
    )


def init_gradients(config: CompareConfig, dataset: Dataset, batch_size: int) -> dict[str, list]:
    """Per-layer gradient rows at initialisation for every model, on one shared batch."""
    images, labels = next(training_batches(dataset, batch_size, 1, config.seed))
    per_model = {}
    for name in config.models:
        torch.manual_seed(config.seed)
        model = build_model(name, dataset).to(memory_format=torch.channels_last)
        per_model[name] = [
            {"model": name, **row} for row in gradients_at_init(model, images, labels)
        ]
    return per_model


def compare(
    config: CompareConfig,
    report: Callable[[str, dict], None] | None = None,
    dataset: Dataset | None = None,
) -> CompareResult:
    """Train every model of `config` (or read its finished run) and write the figures and
    tables: `error_curves.png`, `init_gradients.png`, `init_gradients.csv`, `results.csv`
    and `results.md` in `config.out`.

    Args:
        report: called as report(model, metrics row) after every epoch trained now.
    """
    check_models(config.models)
    out = Path(config.out)
    settings = config.shared_settings()
    check_settings(out, settings)
    if dataset is None:
        dataset = load_dataset(config.data, val_size=config.val_size, seed=config.seed)
    dataset = training_subset(dataset, config.train_size, config.seed)
    epochs = settings["epochs"]
    results = []
    for name in config.models:
        history, trained = train_or_resume(config, name, dataset, epochs, report)
        results.append(model_result(name, dataset, out / name, history, trained))
    per_model = init_gradients(config, dataset, settings["batch_size"])
    result = CompareResult(
        out=out,
        results=results,
        held_out_name=dataset.held_out_name,
        init_spread={m: gradient_spread(rows) for m, rows in per_model.items()},
    )
    result.files = write_outputs(result, per_model, config, dataset)
    return result


def write_outputs(result: CompareResult, per_model: dict, config: CompareConfig, dataset: Dataset):
    out = result.out
    rows = [row for rows in per_model.values() for row in rows]
    residual = {r.model: model_entry(r.model).config.residual for r in result.results}
    described = f"{config.data}, {len(dataset.train):,} training images"
    return [
        plots.plot_error_curves(
            {r.model: r.history for r in result.results},
            residual,
            out / "error_curves.png",
            f"Plain versus residual networks on {described}",
            result.held_out_name,
        ),
        plots.plot_init_gradients(per_model, out / "init_gradients.png", described),
        write_csv(rows, ["model", *LAYER_COLUMNS], out / "init_gradients.csv"),
        write_csv([asdict_row(r) for r in result.results], TABLE_COLUMNS, out / "results.csv"),
        write_markdown(result, out / "results.md"),
    ]


def asdict_row(result: ModelResult) -> dict:
    return {column: getattr(result, column) for column in TABLE_COLUMNS}


def render_table(result: CompareResult) -> str:
    """The results as a markdown table, one row per model."""
    held = "test" if result.held_out_name == "test" else "validation"
    lines = [
        f"| model | layers | parameters | training error (%) | {held} error (%) | time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result.results:
        lines.append(
            f"| {r.model} | {r.layers} | {r.parameters:,} | {r.train_error:.2f} | "
            f"{r.held_out_error:.2f} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def write_markdown(result: CompareResult, path: Path) -> Path:
    epochs = len(result.results[0].history)
    note = (
        f"\nAfter {epochs} epoch(s). Training error is measured on the augmented training "
        "batches during the last epoch, as in He et al. 2015, Fig. 6; residual branches "
        "started non-zero (zero_init_residual=False) for a fair comparison with plain nets.\n"
    )
    path.write_text(render_table(result) + "\n" + note)
    return path
