"""Data: one image decoder, in-memory datasets, batch augmentation."""

from .datasets import Dataset, ImageSet, load_dataset
from .decode import decode_image

__all__ = ["Dataset", "ImageSet", "decode_image", "load_dataset"]
