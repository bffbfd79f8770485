"""Datasets as uint8 tensors in memory: bundled digits, image folders, CIFAR-10, SIGNS.

Every loader returns a `Dataset` of decoded images (N, C, H, W) uint8 and int64 labels,
split into train and a held-out split. Decoding happens once; augmentation and
normalisation happen a batch at a time on the training device (see `augment.py`).
"""

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, UsageError, closest
from .folders import FileImages, FolderScan, load_images, scan_folder

log = logging.getLogger(__name__)

DATASET_KINDS = ("digits", "folder", "cifar10", "signs")
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@dataclass
class ImageSet:
    """Images (N, C, H, W) uint8 with their int64 labels (N,): decoded in memory, or
    `FileImages` decoded when indexed (folders larger than the memory budget)."""

    images: torch.Tensor | FileImages
    labels: torch.Tensor
    files: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)

    def subset(self, indices: np.ndarray | torch.Tensor) -> "ImageSet":
        indices = torch.as_tensor(indices, dtype=torch.long)
        files = [self.files[i] for i in indices.tolist()] if self.files else None
        images = self.images[indices] if self.in_memory else self.images.take(indices)
        return ImageSet(images, self.labels[indices], files)


@dataclass
class Dataset:
    """A training split and a held-out split, with what is needed to read them again."""

    spec: str
    class_names: list[str]
    train: ImageSet
    held_out: ImageSet
    held_out_name: Literal["val", "test"]
    flip: bool  # horizontal flips preserve the label (not for digits)
    crop_padding: int
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    split_from_train: bool = False  # the held-out images were drawn by --val-size

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean, self.std = channel_stats(self.train.images)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def channel_stats(
    images: torch.Tensor | FileImages, sample: int = 2048
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0-1 scale; of a seeded sample of
    `sample` images when they are files not yet decoded."""
    if isinstance(images, FileImages):
        if len(images) > sample:
            generator = torch.Generator().manual_seed(0)
            images = images.take(torch.randperm(len(images), generator=generator)[:sample])
        images, _ = images.load(slice(None))
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    return tuple(flat.mean(1).tolist()), tuple(flat.std(1).clamp_min(1e-3).tolist())


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split `kind:PATH` into the kind and the path; `digits` needs no path."""
    kind, _, path = spec.partition(":")
    if kind not in DATASET_KINDS:
        hint = closest(kind, DATASET_KINDS)
        if Path(spec).expanduser().is_dir():
            hint = f" For a folder of images with one sub-folder per class, write 'folder:{spec}'."
        raise UsageError(
            f"unknown dataset {spec!r}; expected 'digits', 'folder:PATH', 'cifar10:PATH' or "
            f"'signs:PATH'.{hint}"
        )
    if kind == "digits":
        return kind, None
    if not path:
        raise UsageError(f"dataset {kind!r} needs a path: write it as '{kind}:PATH'")
    return kind, Path(path).expanduser()


DEFAULT_VAL_SIZE = 0.1  # of a folder's images, when it has no val/ or test/ folder


def load_dataset(
    spec: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    val_size: float = DEFAULT_VAL_SIZE,
    seed: int = 0,
    download: bool = False,
    strict: bool = False,
    in_memory: bool | None = None,
) -> Dataset:
    """Load a dataset named on the command line (see DESIGN.md, "Datasets names").

    Args:
        val_size: for folders without a val/ or test/ split, the held-out part of the
            training images: a fraction below 1, or a number of images.
        seed: seeds the train/val split of folders (the other datasets' splits are fixed).
        in_memory: for folders: decode the images into memory once (True), or decode
            them batch by batch as they are used (False); None chooses by their size
            against `memory_budget()`. The other datasets are always in memory.
    """
    kind, path = parse_spec(spec)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist; check the path in {spec!r}")
    if kind == "digits":
        dataset = load_digits()
    elif kind == "cifar10":
        dataset = load_cifar10(path, download=download)
    elif kind == "signs":
        dataset = load_signs(path)
    else:
        dataset = load_folder(
            path,
            image_size=image_size,
            channels=channels,
            val_size=val_size,
            seed=seed,
            strict=strict,
            in_memory=in_memory,
        )
    dataset.spec = spec
    if val_size != DEFAULT_VAL_SIZE and not dataset.split_from_train:
        log.warning(
            "--val-size %g is ignored: %s comes with its own %s split (%d images)",
            val_size,
            spec,
            dataset.held_out_name,
            len(dataset.held_out),
        )
    return _resize_if_asked(dataset, image_size, channels, kind)


def _resize_if_asked(dataset: Dataset, image_size: int | None, channels: int | None, kind: str):
    if channels is not None and channels != dataset.channels and kind != "folder":
        raise UsageError(
            f"dataset {kind!r} has {dataset.channels} channel(s); --channels {channels} "
            "is only for image folders"
        )
    if image_size is None or tuple(dataset.image_size) == (image_size, image_size):
        return dataset
    for split in (dataset.train, dataset.held_out):
        split.images = resized(split.images, (image_size, image_size))
    return dataset


def resized(images: torch.Tensor | FileImages, size: tuple[int, int]):
    """`images` at `size`: resized now, or to be decoded at that size."""
    if isinstance(images, FileImages):
        return images.at_size(size)
    return resize_uint8(images, size)


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of uint8 images (N, C, H, W), rounding back to uint8."""
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def stratified_split(
    labels: np.ndarray, held_out: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into (train indices, held-out indices)."""
    from sklearn.model_selection import train_test_split

    check_val_size(held_out)
    size = int(held_out) if held_out >= 1 else held_out
    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    held_count = size if isinstance(size, int) else int(np.ceil(size * len(labels)))
    if held_count >= len(labels):
        raise DataError(
            f"--val-size {held_out:g} would hold out {held_count} of the {len(labels)} images "
            "and leave none to train on; use a fraction such as 0.1 or fewer images"
        )
    classes = int((counts > 0).sum())
    # Stratify where every class can give at least one image to each side.
    can_stratify = counts[counts > 0].min() >= 2 and classes <= held_count <= len(labels) - classes
    stratify = labels if can_stratify else None
    if stratify is None:
        log.warning("too few images per class for a stratified split; splitting at random")
    try:
        train, rest = train_test_split(
            indices, test_size=size, random_state=seed, stratify=stratify
        )
    except ValueError as error:
        raise DataError(
            f"cannot hold out {held_out} of {len(labels)} images: {error}. "
            "Set --val-size to a fraction such as 0.1 or a smaller number of images"
        ) from error
    return np.sort(train), np.sort(rest)


def check_val_size(val_size: float) -> None:
    """A held-out fraction in (0, 1), or a whole number of images (1 or more)."""
    if not (0 < val_size < 1 or (val_size >= 1 and float(val_size).is_integer())):
        raise UsageError(
            f"--val-size must be a fraction between 0 and 1 (such as 0.1) or a whole number "
            f"of images (such as 5000); got {val_size}"
        )


def load_digits() -> Dataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, scaled to 32x32, fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
    images = resize_uint8(images[:, None], (32, 32))
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, 0.2, seed=0)
    all_images = ImageSet(images, torch.from_numpy(labels))
    return Dataset(
        spec="digits",
        class_names=[str(d) for d in range(10)],
        train=all_images.subset(train),
        held_out=all_images.subset(test),
        held_out_name="test",
        flip=False,  # a mirrored digit is a different symbol
        crop_padding=2,
    )


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays, and refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only arrays are allowed")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as stream:
            batch = _ArraysOnly(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {error}") from error
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} has no 'data' and 'labels' entries: not a CIFAR-10 batch")
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, np.int64)


def load_cifar10(path: Path, download: bool = False) -> Dataset:
    """CIFAR-10 python batches (`data_batch_1`..`5`, `test_batch`), as torchvision reads them."""
    folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    if download and not (folder / "test_batch").exists():
        from torchvision.datasets import CIFAR10

        CIFAR10(str(path), train=True, download=True)
        folder = path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {missing} not found in {folder}; expected the python-batch "
            "layout (cifar-10-batches-py/data_batch_1 ... test_batch), or add --download"
        )
    parts = [_read_cifar_batch(folder / n) for n in names]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    train = ImageSet(
        torch.from_numpy(np.concatenate([p[0] for p in parts])),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
    )
    return Dataset(
        spec=f"cifar10:{path}",
        class_names=list(CIFAR10_CLASSES),
        train=train,
        held_out=ImageSet(torch.from_numpy(test_x), torch.from_numpy(test_y)),
        held_out_name="test",
        flip=True,
        crop_padding=4,
    )


def load_signs(path: Path) -> Dataset:
    """The course's SIGNS set: `train_signs.h5` and `test_signs.h5`, 64x64 RGB, 6 classes."""
    import h5py

    splits = {}
    for split in ("train", "test"):
        file = path / f"{split}_signs.h5"
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} not found; expected train_signs.h5 and test_signs.h5 in {path}"
            )
        with h5py.File(file, "r") as h5:
            missing = {f"{split}_set_x", f"{split}_set_y"} - set(h5.keys())
            if missing:
                raise DataError(f"{file} lacks datasets {sorted(missing)}; found {sorted(h5)}")
            x = np.asarray(h5[f"{split}_set_x"], dtype=np.uint8)
            y = np.asarray(h5[f"{split}_set_y"], dtype=np.int64).reshape(-1)
            classes = np.asarray(h5["list_classes"]) if "list_classes" in h5 else None
        if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
            raise DataError(f"{file}: expected images (N, H, W, 3) and N labels, got {x.shape}")
        splits[split] = ImageSet(
            torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
        )
    if classes is None:
        classes = np.unique(splits["train"].labels.numpy())
    return Dataset(
        spec=f"signs:{path}",
        class_names=[str(c.decode() if isinstance(c, bytes) else c) for c in classes],
        train=splits["train"],
        held_out=splits["test"],
        held_out_name="test",
        flip=True,  # a mirrored hand shows the same count of fingers
        crop_padding=8,
    )


def load_folder(
    path: Path,
    *,
    image_size: int | None,
    channels: int | None,
    val_size: float,
    seed: int,
    strict: bool,
    in_memory: bool | None = None,
) -> Dataset:
    """One sub-folder per class; `train/` and `val/` (or `test/`) are used when present.

    `in_memory`: decode every image once into memory (True), read files batch by batch
    (False), or decide by `memory_budget()` (None)."""
    train_root, held_root = _folder_roots(path)
    train_scan = scan_folder(train_root, strict=strict)
    class_names = train_scan.class_names
    if len(class_names) < 2:
        raise DataError(
            f"found {len(class_names)} class folder(s) {class_names} in {train_root}: a "
            "classifier needs at least 2, one sub-folder of images per class"
        )
    channels = channels or train_scan.guess_channels()
    size = (image_size, image_size) if image_size else train_scan.guess_size()
    train = load_images(train_scan, channels, size, strict=strict, in_memory=in_memory)
    if held_root is not None:
        held_scan = scan_folder(held_root, strict=strict, class_names=class_names)
        held = load_images(held_scan, channels, size, strict=strict, in_memory=in_memory)
        name = "val"
    else:
        train_idx, held_idx = stratified_split(train.labels.numpy(), val_size, seed)
        train, held = train.subset(train_idx), train.subset(held_idx)
        name = "val"
    crop_padding = max(1, size[0] // 8)
    return Dataset(
        spec=f"folder:{path}",
        class_names=class_names,
        train=train,
        held_out=held,
        held_out_name=name,
        flip=True,
        crop_padding=crop_padding,
        split_from_train=held_root is None,
    )


def _folder_roots(path: Path) -> tuple[Path, Path | None]:
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder; expected one sub-folder per class")
    if (path / "train").is_dir():
        for name in ("val", "validation", "test"):
            if (path / name).is_dir():
                return path / "train", path / name
        return path / "train", None
    return path, None


__all__ = [
    "Dataset",
    "FolderScan",
    "ImageSet",
    "load_dataset",
]
