"""Decoding DICOM radiographs into the Example's uint8 [H, W].

Stable API (other sources import it): ``read_dicom(path) -> np.ndarray`` uint8 [H, W];
``load_dicom(path) -> (image, pydicom.Dataset)`` when the tags (ViewPosition, ...) are needed.

Pipeline, following DICOM PS3.3 C.11: stored values -> modality LUT (RescaleSlope /
RescaleIntercept) -> VOI (WindowCenter / WindowWidth, linear, first window when several; else a
VOI LUT sequence when present; else the image's own min..max) -> 0..255, then MONOCHROME1 (where
the lowest value is white) is inverted so bright always means dense. Colour files
(SamplesPerPixel 3: RGB, YBR) are converted to luminance. Pixel data that is not one image
(a multi-frame file, or Rows/Columns tags too small for the data, which pydicom returns as
several frames) is an ImageDecodeError naming the file, never read as colour or cut to a frame.
"""

from __future__ import annotations

import os

import numpy as np

from rmc_jax.data.sources.images import ImageDecodeError, to_uint8


def _first(value):
    """A DICOM value that may be multi-valued (WindowCenter '40\\400') -> its first number."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(
                value, (str, bytes)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _window(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window (PS3.3 C.11.2.1.2.1) -> uint8."""
    width = max(width, 1.0)
    low = center - 0.5 - (width - 1.0) / 2.0
    high = center - 0.5 + (width - 1.0) / 2.0
    if width <= 1.0:
        scaled = (pixels > low).astype(np.float32)
    else:
        scaled = (pixels - (center - 0.5)) / (width - 1.0) + 0.5
        scaled = np.where(pixels <= low, 0.0, np.where(pixels > high, 1.0, scaled))
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """DICOM file -> uint8 [H, W], windowed and with MONOCHROME1 inverted.

    Raises FileNotFoundError for a missing file and ImageDecodeError (naming the file) for one
    that is not DICOM, has no pixel data, or uses a compression no installed handler decodes.
    """
    return load_dicom(path)[0]


def load_dicom(path: str | os.PathLike):
    """Like ``read_dicom`` but returns ``(image, dataset)``, the pydicom Dataset for its tags."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        import pydicom
    except ImportError as error:  # pragma: no cover - pydicom is a dependency
        raise ImageDecodeError(f"cannot decode DICOM {path}: pydicom is not installed") from error
    try:
        dataset = pydicom.dcmread(path)
        if "PixelData" not in dataset:
            raise ValueError("no PixelData element")
        pixels = np.asarray(dataset.pixel_array)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise ImageDecodeError(f"cannot decode DICOM {path}: {error}") from error

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1 or pixels.ndim != (2 if samples == 1 else 3):
        raise ImageDecodeError(
            f"cannot decode DICOM {path}: pixel data of shape {pixels.shape} with "
            f"NumberOfFrames {frames}, SamplesPerPixel {samples}, Rows x Columns "
            f"{dataset.get('Rows')} x {dataset.get('Columns')}: a multi-frame file or wrong "
            f"Rows/Columns tags; expected one radiograph")
    if samples > 1:
        if photometric.startswith("YBR"):
            try:
                from pydicom.pixels import convert_color_space
                pixels = convert_color_space(pixels, photometric, "RGB")
            except Exception:  # noqa: BLE001 - fall back to luma-as-is
                return to_uint8(pixels[..., 0]), dataset
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return to_uint8(pixels), dataset

    values = pixels.astype(np.float64)
    slope = _first(dataset.get("RescaleSlope", None))
    intercept = _first(dataset.get("RescaleIntercept", None))
    values = values * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)

    center = _first(dataset.get("WindowCenter", None))
    width = _first(dataset.get("WindowWidth", None))
    if center is not None and width is not None and width > 0:
        image = _window(values, center, width)
    elif "VOILUTSequence" in dataset:
        try:
            from pydicom.pixels import apply_voi_lut
            image = to_uint8(np.asarray(apply_voi_lut(pixels, dataset), np.float64))
        except Exception:  # noqa: BLE001 - a broken LUT falls back to min-max
            image = to_uint8(values)
    else:
        image = to_uint8(values)
    if photometric == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image, dtype=np.uint8), dataset
