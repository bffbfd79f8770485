"""Evaluate a trained model on a labelled dataset: accuracy, per class, confusion matrix."""

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from ..data.datasets import Dataset, ImageSet, load_dataset, parse_spec, resized
from ..data.folders import load_images, scan_folder
from ..errors import DataError
from .predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    top1: float
    top5: float
    count: int
    per_class: dict[str, float | None]  # None: the class has no images in this data
    confusion: torch.Tensor  # (num_classes, num_classes), rows true, columns predicted
    files: list[str] | None
    labels: torch.Tensor
    predicted: torch.Tensor


def evaluation_split(spec: str, predictor: Predictor) -> ImageSet:
    """The labelled images to evaluate on, decoded as the model's training decoded them.

    A folder is evaluated whole, or on its val/ or test/ part when it has train/ beside.
    The other datasets are evaluated on their test split.
    """
    kind, path = parse_spec(spec)
    if kind == "folder":
        if not path.exists():
            raise FileNotFoundError(f"dataset path {path} does not exist")
        root = path
        if (path / "train").is_dir():
            held = [path / n for n in ("val", "validation", "test") if (path / n).is_dir()]
            root = held[0] if held else path / "train"
        scan = scan_folder(root, class_names=predictor.class_names)
        return load_images(scan, predictor.channels, predictor.image_size)
    return held_out_of(load_dataset(spec), spec, predictor)


def held_out_of(dataset: Dataset, spec: str, predictor: Predictor) -> ImageSet:
    """The dataset's held-out split, checked against the model and sized for it."""
    if dataset.class_names != predictor.class_names:
        raise DataError(
            f"{spec} has classes {dataset.class_names}, the model {predictor.class_names}; "
            "evaluate on data with the classes the model was trained on"
        )
    if dataset.channels != predictor.channels:
        raise DataError(
            f"{spec} has {dataset.channels}-channel images, the model expects {predictor.channels}"
        )
    split = dataset.held_out
    if tuple(split.images.shape[2:]) != predictor.image_size:
        split.images = resized(split.images, predictor.image_size)
    return split


def evaluate(predictor: Predictor, split: ImageSet) -> Evaluation:
    if split.in_memory:
        logits, labels, files = predictor.logits(split.images), split.labels, split.files
    else:
        logits, labels, files = _logits_from_files(predictor, split)
    num_classes = len(predictor.class_names)
    predicted = logits.argmax(dim=1)
    k = min(5, num_classes)
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()
    confusion = multiclass_confusion_matrix(predicted, labels, num_classes)
    totals = confusion.sum(dim=1)
    per_class = {
        name: (confusion[i, i] / totals[i]).item() if totals[i] else None
        for i, name in enumerate(predictor.class_names)
    }
    return Evaluation(
        top1=(predicted == labels).float().mean().item(),
        top5=top5,
        count=len(labels),
        per_class=per_class,
        confusion=confusion,
        files=files,
        labels=labels,
        predicted=predicted,
    )


def _logits_from_files(
    predictor: Predictor, split: ImageSet, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Logits, labels and files of a split read from its files `chunk` at a time, without
    the files found unreadable (each named in a warning)."""
    outputs, kept = [], []
    for start in range(0, len(split), chunk):
        images, readable = split.images.load(slice(start, start + chunk))
        outputs.append(predictor.logits(images))
        kept += [start + i for i in readable]
    if not kept:
        raise DataError(f"none of the {len(split)} files could be read")
    return torch.cat(outputs), split.labels[kept], [split.files[i] for i in kept]


def write_predictions(result: Evaluation, class_names: list[str], path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "true", "predicted"])
        files = result.files or [str(i) for i in range(result.count)]
        for file, true, guess in zip(files, result.labels, result.predicted, strict=True):
            writer.writerow([file, class_names[true], class_names[guess]])
    return path


def plot_confusion(result: Evaluation, class_names: list[str], path: Path, title: str) -> Path:
    """The confusion matrix as row-normalised percentages, with counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result.confusion.float()
    shares = 100 * counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(class_names)
    side = min(14, max(5, 0.55 * n + 2))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), constrained_layout=True)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="share of the true class (%)")
    ax.set_xticks(
        range(n), class_names, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center"
    )
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                color = "white" if shares[i, j] > 50 else "black"
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    color=color,
                    fontsize=8 if n > 10 else 10,
                )
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
