"""The one image decoder shared by training, evaluation and prediction.

It shows an image the way an image viewer would: EXIF orientation applied, transparency
composited on white, palette, CMYK and 16-bit images converted, then the shorter side
resized to the model's size and the centre cropped square.
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DataError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey pixels
Image.MAX_IMAGE_PIXELS = 200_000_000  # Pillow's decompression-bomb guard, raised for scans


def to_viewable(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to "RGB" (channels=3) or "L" (channels=1) as a viewer shows it."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" or image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    target = "RGB" if channels == 3 else "L"
    return image.convert(target)


def resize_and_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize the shorter side to fit `size` (H, W) and crop the centre: no distortion."""
    height, width = size
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)


def decode_image(
    source: str | Path | bytes,
    channels: int = 3,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decode one image file (or its bytes) to a uint8 tensor (channels, H, W).

    Raises:
        DataError: the file is empty, truncated or not an image Pillow can read.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with stream, Image.open(stream) as image:
            image.load()
            image = to_viewable(image, channels)
            if size is not None:
                image = resize_and_crop(image, size)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as error:  # its message names the stream, not the file
        raise DataError(
            f"cannot read image {name}: not in an image format Pillow knows, or damaged"
        ) from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {name}: {error}") from error
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
