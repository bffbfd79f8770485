"""Fast prediction from a saved model: folded batch norm, channels-last, reduced precision."""

import importlib.util
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .. import hardware
from ..data.augment import normalize
from ..data.decode import decode_image
from ..errors import DataError, UsageError, closest
from ..runs import RUN_CONFIG, checkpoint_step, newest_checkpoint, unfinished_run
from ..weights import load_model_dir, read_model_config
from .export import onnx_bytes, onnx_runner
from .fold import fold_batch_norm

log = logging.getLogger(__name__)


NEVER_MIRRORED = ("digits",)  # data.datasets.load_digits: a mirrored digit is another symbol


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def image_files_under(path: str | Path) -> list[str | Path]:
    """A folder's image files (by suffix, at any depth, hidden ones left out, sorted); any
    other path as it is. An empty folder stays itself, so that it is reported."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    found = sorted(
        str(file)
        for file in folder.rglob("*")
        if file.suffix.lower() in IMAGE_SUFFIXES
        and file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    )
    return found or [path]


@dataclass
class Prediction:
    file: str
    classes: list[str]  # top-k, most probable first; empty if the file could not be read
    probabilities: list[float]
    error: str | None = None  # why the file could not be read: which file, and what is wrong


def model_dir_of(path: str | Path) -> Path:
    """Accept a run directory (its `model/` folder) or a model directory itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; expected a run or model directory")
    if path.is_file():
        raise UsageError(_not_a_directory(path))
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    unfinished = unfinished_run(path)
    if unfinished is not None:
        raise FileNotFoundError(unfinished)
    raise FileNotFoundError(
        f"no trained model in {path}: expected {path}/model/config.json (a finished run) "
        "or config.json and model.safetensors"
    )


def _not_a_directory(path: Path) -> str:
    """What to say when a file is given where a run or model directory belongs."""
    what = "the training checkpoint" if path.suffix == ".ckpt" else "the file"
    received = f"expected a run or model directory, got {what} {path}"
    for folder in path.parents:
        if (folder / RUN_CONFIG).is_file() or (folder / "model" / "config.json").is_file():
            return f"{received}; pass the run directory instead: {folder}"
    for folder in path.parents:
        if (folder / "config.json").is_file():
            return f"{received}; pass the model directory instead: {folder}"
    return f"{received}; pass the folder of a run that resnets train wrote (runs/<run>)"


def warn_if_trained_past(model_dir: Path) -> None:
    """Warn when the run holding `model_dir` has a checkpoint that trained more steps than
    the model did.

    The model is written when a run finishes; a run continued with `--resume --epochs`
    and stopped again keeps the model of its earlier end until it finishes.
    """
    steps = (read_model_config(model_dir).get("training") or {}).get("steps")
    newest = newest_checkpoint(model_dir.parent)
    if steps is None or newest is None:
        return
    if checkpoint_step(newest) > steps:
        log.warning(
            "%s is older than the run's newest checkpoint %s: the run was continued and has "
            "not finished, so this is its earlier model; finish the run with: resnets train "
            "--resume %s",
            model_dir,
            newest,
            model_dir.parent,
        )


def training_data_of(model_dir: Path) -> str | None:
    """The dataset spec the model was trained on, from the run config beside it, if any."""
    path = model_dir.parent / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        record = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    train = record.get("train") if isinstance(record, dict) else None
    data = train.get("data") if isinstance(train, dict) else None
    return data if isinstance(data, str) else None


def trained_on_mirror_images(model_dir: Path, preprocessing: dict) -> bool | None:
    """Whether training flipped the model's images at random; None where nothing says.

    The model's preprocessing says so where it records `flip`; otherwise the run config
    beside it names the data, and the dataset kinds other than digits are all flipped.
    """
    if "flip" in preprocessing:
        return bool(preprocessing["flip"])
    data = training_data_of(model_dir)
    if data is None:
        return None
    return data.partition(":")[0] not in NEVER_MIRRORED


BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = {  # the spellings `resnets train` takes too (Lightning's), and fp32, fp16
    "32-true": torch.float32,
    "32": torch.float32,
    "fp32": torch.float32,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "bf16": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
    "16": torch.float16,
    "fp16": torch.float16,
}


class _NoCudaRuntimeFilter(logging.Filter):
    """Drops PyTorch's "No CUDA runtime is found, using CUDA_HOME=..." warning.

    torch.compile logs it on loading its C++ toolchain on a machine with CUDA tools
    installed but no GPU; it concerns building CUDA code, which compiling for the CPU
    does not do.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def _silence_cuda_runtime_warning() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeFilter) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeFilter())


class Predictor:
    """Loads a model directory once and classifies uint8 image batches or image files.

    Args:
        precision: "auto" uses bf16 where the hardware runs it natively, else float32
            (always float32 with backend "onnx"); or one of `PRECISIONS`.
        backend: "torch"; "onnx" for ONNX Runtime on the CPU, in float32 only; "auto" takes
            ONNX Runtime where it measured faster: float32 on a CPU (one without bf16, or
            `precision="32-true"`), when onnxruntime is installed and `compile` is off.
        test_flip: average the logits of each image and its mirror image; None does what
            the model's recipe did when it was validated (`--test-flip`, `--recipe fast`).
            Refused for a model trained on images that were never mirrored (digits).
        compile: `torch.compile` the PyTorch model with its weights frozen as constants. It
            takes seconds (20 s for ResNet-50 here) and pays on large evaluations: 1.27x
            faster than eager for ResNet-50 at batch 32 on a 2-core CPU.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str = "auto",
        device: str = "cpu",
        fold: bool = True,
        backend: str = "auto",
        test_flip: bool | None = None,
        compile: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        directory = model_dir_of(path)
        warn_if_trained_past(directory)
        config = read_model_config(directory)
        self.class_names = config.get("class_names") or [
            str(i) for i in range(config["model"]["num_classes"])
        ]
        prep = config.get("preprocessing") or {}
        self.image_size = tuple(prep.get("image_size", (32, 32)))
        self.channels = int(prep.get("channels", config["model"]["in_channels"]))
        self.device = torch.device(device)
        self.mean = torch.tensor(prep.get("mean", [0.5] * self.channels), device=self.device)
        self.std = torch.tensor(prep.get("std", [0.5] * self.channels), device=self.device)
        model = load_model_dir(directory).eval()
        self.model = (fold_batch_norm(model) if fold else model).to(self.device)
        self.model.to(memory_format=torch.channels_last)
        self.dtype = self._choose_dtype(precision, backend)
        self.test_flip = self._choose_test_flip(test_flip, directory, prep)
        self.backend = self._choose_backend(backend, precision, compile)
        self._onnx = None
        if self.backend == "onnx":
            example = torch.zeros(1, self.channels, *self.image_size)
            try:
                graph = onnx_bytes(self.model.to(memory_format=torch.contiguous_format), example)
                self._onnx = onnx_runner(graph)
            except Exception as error:
                if backend == "onnx":
                    raise
                log.warning("ONNX Runtime failed (%s); running in PyTorch instead", error)
                self.backend = "torch"
                self.model.to(memory_format=torch.channels_last)
        self._eager = self.model
        if compile and self.backend == "torch":
            if self.device.type == "cpu":
                _silence_cuda_runtime_warning()
            self.model = torch.compile(self.model, options={"freezing": True})

    def _choose_dtype(self, precision: str, backend: str) -> torch.dtype:
        if precision == "auto" and backend == "onnx":
            return torch.float32  # the one precision the ONNX backend runs
        if precision == "auto":
            precision = hardware.fast_precision("gpu" if self.device.type == "cuda" else "cpu")
        if precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision {precision!r}; expected auto or one of "
                f"{', '.join(PRECISIONS)}.{closest(precision, ['auto', *PRECISIONS])}"
            )
        return PRECISIONS[precision]

    def _choose_test_flip(self, test_flip: bool | None, directory: Path, prep: dict) -> bool:
        if test_flip is None:
            return bool(prep.get("test_flip", False))
        if test_flip and trained_on_mirror_images(directory, prep) is False:
            data = training_data_of(directory) or "images"
            raise UsageError(
                f"--test-flip averages each image with its mirror image, but this model was "
                f"trained on {data}, which training never mirrors (a mirrored image of it "
                "means something else), so the flip would lower accuracy; drop --test-flip"
            )
        return test_flip

    def _choose_backend(self, backend: str, precision: str, compile: bool) -> str:
        if backend == "onnx":
            if self.device.type != "cpu":
                raise UsageError("the onnx backend runs on the CPU; use --backend torch on a GPU")
            if compile:
                raise UsageError(
                    "--compile compiles the PyTorch model, and the onnx backend does not run "
                    "it (ONNX Runtime optimises its own graph); drop --compile, or pass "
                    "--backend torch to compile"
                )
            if self.dtype != torch.float32:
                raise UsageError(
                    f"the onnx backend runs in float32 only, so it cannot run --precision "
                    f"{precision}; drop --precision (or pass 32-true) to use ONNX Runtime, or "
                    f"pass --backend torch to run in {precision}"
                )
            return backend
        if (
            backend == "torch"
            or compile
            or self.device.type != "cpu"
            or self.dtype != torch.float32
        ):
            return "torch"
        if not all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime")):
            return "torch"
        return "onnx"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._onnx is not None:
            return self._onnx(x.contiguous())
        enabled = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled):
            try:
                return self.model(x).float()
            except Exception as error:
                if self.model is self._eager:
                    raise
                first = (str(error).strip().splitlines() or [""])[0][:200]
                log.warning("torch.compile failed (%s); running the model eagerly", first)
                self.model = self._eager
                return self.model(x).float()

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, H, W) at the model's size -> float32 logits (N, num_classes)."""
        expected = (self.channels, *self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise DataError(f"expected images of shape (N, {expected}), got {tuple(images.shape)}")
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            x = normalize(batch.to(self.device), self.mean, self.std, channels_last=True)
            logits = self._forward(x)
            if self.test_flip:
                logits = (logits + self._forward(x.flip(3))) / 2
            outputs.append(logits)
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.class_names))

    def decode(self, files: list[str | Path]) -> torch.Tensor:
        """Decode files in parallel exactly as training decoded its images."""
        with ThreadPoolExecutor() as pool:
            images = list(
                pool.map(lambda f: decode_image(f, self.channels, self.image_size), files)
            )
        return torch.stack(images)

    def predict_files(self, files: list[str | Path], top_k: int = 5) -> list[Prediction]:
        """The top-k classes of each file, in the order given; see `iter_predictions`."""
        return list(self.iter_predictions(files, top_k))

    def iter_predictions(
        self, files: list[str | Path], top_k: int = 5, chunk_size: int = 512
    ) -> Iterator[Prediction]:
        """The top-k classes of each file, in the order given, as they are computed.

        A folder stands for the image files under it (`image_files_under`). Files are
        decoded and classified `chunk_size` at a time, so memory stays bounded however
        many there are. A file that cannot be read (missing, damaged, not an image, a
        folder without images) does not stop the others: its `Prediction` has no classes
        and an `error` that says why.
        """
        files = [f for given in files for f in image_files_under(given)]
        with ThreadPoolExecutor() as pool:
            for start in range(0, len(files), chunk_size):
                chunk = files[start : start + chunk_size]
                decoded = list(pool.map(self._decode_or_explain, chunk))
                readable = [image for image in decoded if isinstance(image, torch.Tensor)]
                ranked = iter(self._top_k(torch.stack(readable), top_k) if readable else [])
                for file, image in zip(chunk, decoded, strict=True):
                    if isinstance(image, str):
                        yield Prediction(str(file), [], [], error=image)
                    else:
                        yield Prediction(str(file), *next(ranked))

    def _top_k(self, images: torch.Tensor, top_k: int) -> list[tuple[list[str], list[float]]]:
        """The k most probable class names of each image, with their probabilities."""
        probabilities = self.logits(images).softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, len(self.class_names)), dim=1)
        return [
            ([self.class_names[i] for i in classes], shares)
            for classes, shares in zip(indices.tolist(), values.tolist(), strict=True)
        ]

    def _decode_or_explain(self, file: str | Path) -> torch.Tensor | str:
        """The decoded image (C, H, W), or a one-line reason why the file cannot be read."""
        if Path(file).is_dir():
            return (
                f"{file} is a folder with no image files in it ({', '.join(IMAGE_SUFFIXES[:4])}"
                ", ...); give image files or a folder that holds some"
            )
        try:
            return decode_image(file, self.channels, self.image_size)
        except FileNotFoundError:
            return f"image file {file} not found"
        except DataError as error:
            return str(error)
