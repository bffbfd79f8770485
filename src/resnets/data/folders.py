"""Image folders: scanning for classes and unreadable files, parallel decoding, a disk cache."""

import functools
import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from ..errors import DataError
from .decode import decode_image

log = logging.getLogger(__name__)

GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def cache_dir() -> Path | None:
    """Where decoded folders are cached; RESNETS_CACHE_DIR="" turns the cache off."""
    value = os.environ.get("RESNETS_CACHE_DIR")
    if value == "":
        return None
    return Path(value) if value else Path.home() / ".cache" / "resnets"


@dataclass
class FolderScan:
    """The image files found under a folder of class sub-folders."""

    root: Path
    class_names: list[str]
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)

    def _sample_headers(self, count: int = 64) -> list[tuple[tuple[int, int], str]]:
        step = max(1, len(self.files) // count)
        headers = []
        for path in self.files[::step][:count]:
            try:
                with Image.open(path) as image:
                    headers.append((image.size, image.mode))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue  # decode_image reports it when the file is read
        return headers

    def guess_size(self) -> tuple[int, int]:
        """The images' own size when they share a square one, else their median shorter side."""
        sizes = [size for size, _ in self._sample_headers()]
        if not sizes:
            return (32, 32)
        (width, height), _ = Counter(sizes).most_common(1)[0]
        if width == height and all(s == (width, height) for s in sizes):
            return (height, width)
        sides = sorted(min(s) for s in sizes)
        side = min(256, max(16, round(sides[len(sides) // 2] / 8) * 8))
        log.info("images differ in size; using %dx%d (set --image-size to change)", side, side)
        return (side, side)

    def guess_channels(self) -> int:
        modes = [mode for _, mode in self._sample_headers()]
        return 1 if modes and all(m in GREY_MODES for m in modes) else 3


def scan_folder(
    root: Path, *, strict: bool = False, class_names: list[str] | None = None
) -> FolderScan:
    """List every file under `root/<class>/`; with `class_names`, map to that fixed order.

    Raises:
        DataError: no class folders, no files, or (with `class_names`) a folder whose
            class the model does not know.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; expected one sub-folder per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(
            f"no class folders in {root}: expected one sub-folder of images per class, "
            f"such as {root}/cat/001.jpg and {root}/dog/001.jpg"
        )
    if class_names is None:
        class_names = found
    else:
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise DataError(
                f"{root} has class folder(s) {unknown} that the model was not trained on; "
                f"its classes are {class_names}"
            )
        absent = [name for name in class_names if name not in found]
        if absent:
            log.warning("%s has no folder for class(es) %s", root, absent)
    scan = FolderScan(root, list(class_names))
    for name in found:
        for path in sorted((root / name).rglob("*")):
            if not path.is_file():
                continue
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                scan.hidden.append(path)
                continue
            scan.files.append(path)
            scan.labels.append(class_names.index(name))
    if not scan.files:
        raise DataError(f"no image files in the class folders of {root}")
    if scan.hidden:
        log.info("skipped %d hidden file(s) in %s", len(scan.hidden), root)
    labelled = set(scan.labels)
    empty = [name for name in found if class_names.index(name) not in labelled]
    if empty:
        log.warning(
            "class folder(s) %s in %s hold no image files; the model keeps the class but "
            "cannot learn it. Add images, or remove the folder",
            empty,
            root,
        )
    return scan


def _cache_key(scan: FolderScan, channels: int, size: tuple[int, int]) -> str:
    digest = hashlib.sha256(f"{scan.root.resolve()}|{channels}|{size}|v1".encode())
    for path, label in zip(scan.files, scan.labels, strict=True):
        stat = path.stat()
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _try_decode(path: Path, channels: int, size: tuple[int, int]) -> torch.Tensor | str:
    try:
        return decode_image(path, channels, size)
    except DataError as error:
        return str(error)
    except FileNotFoundError:
        return f"image file {path} not found: was it removed after the folder was scanned?"


def memory_budget() -> int:
    """Bytes of decoded images a folder may take in memory: a quarter of this machine's
    memory, or RESNETS_MEMORY_BUDGET_GB."""
    value = os.environ.get("RESNETS_MEMORY_BUDGET_GB")
    if value:
        try:
            budget = float(value)
        except ValueError:
            budget = -1.0
        if not budget >= 0:
            raise DataError(
                f"RESNETS_MEMORY_BUDGET_GB must be a number of GiB, 0 or more, such as 4 (0: "
                f"never hold a folder in memory); got {value!r}"
            )
        return int(budget * 2**30)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class FileImages:
    """Image files decoded when used: a folder too large to hold decoded in memory.

    `load(index)` decodes just the files at `index` (an int, a slice or a tensor of
    indices) with the same decoder as the in-memory sets, so both give the same pixels: in
    parallel threads, or one at a time inside a DataLoader worker (itself one of several
    processes). A file found unreadable only then (the headers were checked when the folder
    was scanned) is left out of what it returns with a warning naming it, or raises with
    `strict`. Indexing returns the decoded images and raises on an unreadable file.
    """

    def __init__(
        self, files: list[str], channels: int, size: tuple[int, int], strict: bool = False
    ) -> None:
        self.files, self.channels, self.size = list(files), channels, tuple(size)
        self.strict = strict
        self._warned: set[str] = set()

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), self.channels, *self.size)

    def __len__(self) -> int:
        return len(self.files)

    def take(self, indices) -> "FileImages":
        """The files at `indices`, still undecoded."""
        return FileImages(self._selected(indices), self.channels, self.size, self.strict)

    def at_size(self, size: tuple[int, int]) -> "FileImages":
        return FileImages(self.files, self.channels, size, self.strict)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return decode_image(self.files[index], self.channels, self.size)
        strict = FileImages(self._selected(index), self.channels, self.size, strict=True)
        return strict.load(slice(None))[0]

    def _selected(self, index) -> list[str]:
        if isinstance(index, slice):
            return self.files[index]
        return [self.files[i] for i in torch.as_tensor(index, dtype=torch.long).tolist()]

    def load(self, index) -> tuple[torch.Tensor, list[int]]:
        """(the readable images among the files at `index`, their positions in it)."""
        files = self._selected(index)
        attempt = functools.partial(_try_decode, channels=self.channels, size=self.size)
        if torch.utils.data.get_worker_info() is not None or len(files) < 2:
            results = [attempt(Path(f)) for f in files]
        else:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                results = list(pool.map(attempt, map(Path, files)))
        kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
        for file, reason in zip(files, results, strict=True):
            if isinstance(reason, str):
                if self.strict:
                    raise DataError(f"{reason} (--strict)")
                if file not in self._warned:
                    self._warned.add(file)
                    log.warning("skipping an unreadable file in this and later batches: %s", reason)
        if not kept:
            return torch.empty(0, *self.shape[1:], dtype=torch.uint8), []
        return torch.stack([results[i] for i in kept]), kept


def _check_header(path: Path) -> str | None:
    """Why Pillow cannot open `path` as an image, reading its header only; None if it can."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018
        return None
    except UnidentifiedImageError:  # the same words as decoding it would give
        return "not in an image format Pillow knows, or damaged"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return str(error)


def _size_in_words(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def load_images(
    scan: FolderScan,
    channels: int,
    size: tuple[int, int],
    *,
    strict: bool = False,
    in_memory: bool | None = None,
):
    """The scanned files as an `ImageSet`: decoded into memory (`decode_files`) when they fit
    in `memory_budget()` or `in_memory` is True, else `FileImages` decoded batch by batch.

    Files left undecoded are checked by their headers now; one that is damaged further in
    is found when its batch is read, and is left out with a warning, or stops the run with
    `strict`, naming the file.
    """
    from .datasets import ImageSet

    decoded_bytes = len(scan.files) * channels * size[0] * size[1]
    if in_memory is None:
        in_memory = decoded_bytes <= memory_budget()
        if not in_memory:
            log.info(
                "%d images of %dx%d take %s decoded, more than the memory budget "
                "(%s, RESNETS_MEMORY_BUDGET_GB); decoding them batch by batch instead",
                len(scan.files),
                *size,
                _size_in_words(decoded_bytes),
                _size_in_words(memory_budget()),
            )
    if in_memory:
        return decode_files(scan, channels, size, strict=strict)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        reasons = list(pool.map(_check_header, scan.files))
    bad = [(path, r) for path, r in zip(scan.files, reasons, strict=True) if r is not None]
    report_unreadable(bad, scan.root, strict)
    good = [i for i, r in enumerate(reasons) if r is None]
    if not good:
        raise DataError(f"none of the {len(scan.files)} files in {scan.root} is a readable image")
    files = [str(scan.files[i]) for i in good]
    labels = torch.tensor([scan.labels[i] for i in good], dtype=torch.int64)
    return ImageSet(FileImages(files, channels, size, strict), labels, files)


def decode_files(scan: FolderScan, channels: int, size: tuple[int, int], *, strict: bool = False):
    """Decode every scanned file once, in parallel, reusing the disk cache when unchanged.

    Unreadable files are listed in a warning and skipped, or raise with `strict=True`.
    """
    from .datasets import ImageSet

    folder = cache_dir()
    key = _cache_key(scan, channels, size)
    if folder is not None and (folder / f"{key}.safetensors").is_file():
        tensors = load_file(folder / f"{key}.safetensors")
        listing = json.loads((folder / f"{key}.json").read_text())
        if isinstance(listing, list):  # caches written before unreadable files were kept
            listing = {"files": listing, "unreadable": []}
        report_unreadable([(Path(p), r) for p, r in listing["unreadable"]], scan.root, strict)
        log.info("read %d decoded images from the cache %s", len(listing["files"]), folder)
        return ImageSet(tensors["images"], tensors["labels"], listing["files"])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda p: _try_decode(p, channels, size), scan.files))
    bad = [(path, r) for path, r in zip(scan.files, results, strict=True) if isinstance(r, str)]
    report_unreadable(bad, scan.root, strict)
    good = [(i, r) for i, r in enumerate(results) if not isinstance(r, str)]
    if not good:
        raise DataError(f"none of the {len(scan.files)} files in {scan.root} is a readable image")
    images = torch.stack([r for _, r in good])
    labels = torch.tensor([scan.labels[i] for i, _ in good], dtype=torch.int64)
    files = [str(scan.files[i]) for i, _ in good]
    if folder is not None:
        _write_cache(folder, key, images, labels, {"files": files, "unreadable": bad})
    return ImageSet(images, labels, files)


def report_unreadable(bad: list[tuple[Path, str]], root: Path, strict: bool) -> None:
    if not bad:
        return
    listing = "; ".join(
        f"{path}: {str(reason).removeprefix(f'cannot read image {path}: ')}"
        for path, reason in bad[:10]
    )
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    if strict:
        raise DataError(f"{len(bad)} unreadable file(s) in {root} (--strict): {listing}{more}")
    log.warning("skipping %d unreadable file(s) in %s: %s%s", len(bad), root, listing, more)


def _write_cache(folder: Path, key: str, images, labels, listing: dict) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.safetensors.tmp"
        save_file({"images": images.contiguous(), "labels": labels}, tmp)
        (folder / f"{key}.json").write_text(json.dumps(listing, default=str))
        tmp.replace(folder / f"{key}.safetensors")
    except OSError as error:  # a read-only home must not stop training
        log.warning("could not write the image cache in %s: %s", folder, error)
