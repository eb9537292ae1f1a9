"""Decoding DICOM radiographs into the Example's uint8 [H, W].

Stable API (other sources import it): ``read_dicom(path) -> np.ndarray`` uint8 [H, W];
``load_dicom(path) -> (image, pydicom.Dataset)`` when the tags (ViewPosition, ...) are needed.

Pipeline, following DICOM PS3.3 C.11 with pydicom's own functions: stored values ->
``pydicom.pixels.apply_modality_lut`` (RescaleSlope / RescaleIntercept, or a Modality LUT
Sequence) -> ``pydicom.pixels.apply_voi_lut`` on that output (a VOI LUT Sequence when present,
else the first WindowCenter / WindowWidth with its VOILUTFunction: LINEAR, LINEAR_EXACT or
SIGMOID) -> 0..255 over the VOI's output range (a window's full range, a LUT's range of
values; without a VOI the image's own min..max), then MONOCHROME1 (where the lowest value is
white) is inverted so bright always means dense. A window or LUT pydicom rejects (a width below
1 for LINEAR, ...) is ignored with a SourceWarning naming the file, and the image's min..max
used. Colour files (SamplesPerPixel 3: RGB, YBR) are converted to luminance. Pixel data that is
not one image (a multi-frame file, or Rows/Columns tags too small for the data, which pydicom
returns as several frames) is an ImageDecodeError naming the file, never read as colour or cut
to a frame.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from rmc_jax.data.sources.base import SourceWarning
from rmc_jax.data.sources.images import ImageDecodeError, to_uint8


def _voi(values: np.ndarray, dataset, path: str) -> np.ndarray:
    """Modality-LUT output -> uint8 through the dataset's VOI LUT or window (module docstring)."""
    from pydicom.pixels import apply_voi_lut

    lut = dataset.get("VOILUTSequence")
    lut = lut[0] if lut and None not in (lut[0].get("LUTDescriptor"), lut[0].get("LUTData")) \
        else None
    window = None not in (dataset.get("WindowCenter"), dataset.get("WindowWidth"))
    if lut is None and not window:
        return to_uint8(values.astype(np.float64))  # min..max, 8-bit data too
    try:
        if lut is not None:  # (apply_voi_lut prefers it to a window, as here)
            if values.dtype.kind == "f":  # a LUT is indexed by integer input values
                values = np.rint(values).astype(np.int64)
            count, first = int(lut.LUTDescriptor[0]) or 2**16, int(lut.LUTDescriptor[1])
            held = apply_voi_lut(np.arange(first, first + count), dataset)
            low, high = float(held.min()), float(held.max())  # the values the LUT holds
        else:  # a window's output range: what it gives the lowest and the highest input
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), dataset).tolist()
        image = apply_voi_lut(values, dataset).astype(np.float64)
    except (ValueError, NotImplementedError) as error:  # a window width below 1 for LINEAR,
        # an unknown VOILUTFunction, an unsupported LUT depth, ...
        warnings.warn(f"ignored the VOI LUT / window of {path} ({error}); scaled its own "
                      "min..max", SourceWarning, stacklevel=3)
        return to_uint8(values.astype(np.float64))
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.round(np.clip((image - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


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

    from pydicom.pixels import apply_modality_lut

    image = _voi(apply_modality_lut(pixels, dataset), dataset, path)
    if photometric == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image, dtype=np.uint8), dataset
