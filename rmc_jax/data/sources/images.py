"""Decoding image files (PNG/JPEG, 8 or 16 bit) into the Example's uint8 [H, W]."""

from __future__ import annotations

import contextlib
import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(OSError):
    """An image file that exists but cannot be decoded; names the file."""


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any integer/float grayscale array to uint8 over its own min..max range."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((pixels - low) * (255.0 / (high - low))).astype(np.uint8)


@contextlib.contextmanager
def _opened(path: str | os.PathLike, what: str):
    """The PIL image of ``path``; a missing file is a FileNotFoundError and any failure to read
    it (while open) an ImageDecodeError, both naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"cannot {what} {path}: {error}") from error


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG from its header, without decoding the pixels.

    Raises FileNotFoundError for a missing file and ImageDecodeError for an unreadable header.
    """
    with _opened(path, "read the header of image") as image:
        return image.size


def read_image(path: str | os.PathLike) -> np.ndarray:
    """PNG/JPEG file -> uint8 [H, W] (colour is converted to luminance, 16-bit is rescaled).

    Raises FileNotFoundError for a missing file and ImageDecodeError for a corrupt one.
    """
    with _opened(path, "decode image") as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_uint8(np.asarray(image))
        return np.asarray(image.convert("L"), np.uint8)
