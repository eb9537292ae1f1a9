"""Boxes from a source's native pixel convention to the library's normalised xyxy, checked once.

Every source converts its boxes (xywh or xyxy, original pixels, 1024-space, ...) to pixel xyxy
and hands them here with the place each came from (``file.csv:LINE``, a scene-graph object).
``check_boxes`` divides by the image size and clips to [0, 1]; a box that does not describe a
region of the image is dropped, never silently:

* dropped: a blank coordinate, an inverted box (x1 < x0 or y1 < y0), an empty one (zero width
  or height) or one entirely outside the image;
* clipped: a box partly outside the image keeps its part inside.

``warn_boxes`` turns the places into one counted warning per kind, e.g. "MS-CXR: dropped 2
box(es): a.csv:4 (inverted: [300, 300, 200, 400]), a.csv:9 (outside the 1000x500 image: ...)".

The rest are the region helpers the box sources share: the side and zone a box lies in, and the
caption that names them.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from rmc_jax.data.sources.base import warn_places


class Checked(NamedTuple):
    """``check_boxes``' result: the kept boxes (normalised float32 [M, 4]), which of the input
    boxes were kept (bool [N]), and the places of the clipped and of the dropped ones, each
    with the reason."""

    boxes: np.ndarray
    keep: np.ndarray
    clipped: list
    dropped: list


def _pixels(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def check_boxes(boxes, size, places: Sequence[str]) -> Checked:
    """Pixel xyxy [N, 4] of an image of ``size`` = (width, height), or of one size per box
    ([N, 2]) -> ``Checked``.

    ``places[i]`` names where box i came from. With ``size`` None (the image's size is not
    known) the boxes stay in pixels and only what is wrong at any size is dropped.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.ones((len(boxes), 2)) if size is None else np.broadcast_to(
        np.asarray(size, np.float64).reshape(-1, 2), (len(boxes), 2))
    norm = boxes / np.concatenate([sizes, sizes], axis=1)
    inside = norm if size is None else np.clip(norm, 0.0, 1.0)
    keep = np.zeros(len(boxes), bool)
    clipped, dropped = [], []
    for i, (box, part) in enumerate(zip(norm, inside)):
        image = f"the {sizes[i][0]:g}x{sizes[i][1]:g} image"
        reason = None
        if not np.all(np.isfinite(box)):
            reason = "blank or not finite coordinate"
        elif box[2] < box[0] or box[3] < box[1]:
            reason = "inverted"
        elif box[2] == box[0] or box[3] == box[1]:
            reason = "empty"
        elif not (part[2] > part[0] and part[3] > part[1]):
            reason = f"outside {image}"
        if reason:
            dropped.append(f"{places[i]} ({reason}: {_pixels(boxes[i])})")
            continue
        keep[i] = True
        if np.any(part != box):
            clipped.append(f"{places[i]} (partly outside {image}: {_pixels(boxes[i])})")
    return Checked(inside[keep].astype(np.float32).reshape(-1, 4), keep, clipped, dropped)


def warn_boxes(dataset: str, checked: Checked) -> None:
    """The counted warnings for ``checked``'s clipped and dropped boxes."""
    warn_places(f"{dataset}: clipped {{count}} box(es) partly outside their image to it",
                checked.clipped)
    warn_places(f"{dataset}: dropped {{count}} box(es) that are not a region of their image",
                checked.dropped)


class CheckedAsRead:
    """For sources that check an image's boxes when the image is first read (VinDr-CXR, Chest
    ImaGenome): ``warn_and_count`` warns about one image's clipped and dropped boxes once, and
    ``clipped_boxes`` / ``dropped_boxes`` total them over the images read so far."""

    def _checked_images(self) -> dict[str, tuple[int, int]]:
        return self.__dict__.setdefault("_box_counts", {})

    def box_counted(self, image: str) -> bool:
        return image in self._checked_images()

    def warn_and_count(self, dataset: str, image: str, checked: Checked) -> None:
        if not self.box_counted(image):
            warn_boxes(f"{dataset} {image}", checked)
            self._checked_images()[image] = (len(checked.clipped), len(checked.dropped))

    @property
    def clipped_boxes(self) -> int:
        return sum(c for c, _ in self._checked_images().values())

    @property
    def dropped_boxes(self) -> int:
        return sum(d for _, d in self._checked_images().values())


def box_position(box) -> tuple[str, str]:
    """(side, zone) of a normalised xyxy box on a frontal radiograph; '' when not meaningful.

    Side is the patient's: the patient's right is on the image's LEFT, so a box centred left of
    x = 0.5 is 'right'. A box straddling the midline with at least a third of its width on each
    side has no side. Zone is the vertical third of the box centre ('upper', 'middle', 'lower');
    a box taller than two thirds of the image has none.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width = x1 - x0
    side = ""
    straddles = x0 < 0.5 < x1 and min(0.5 - x0, x1 - 0.5) >= width / 3.0
    if not straddles:
        side = "right" if (x0 + x1) / 2.0 < 0.5 else "left"
    zone = ""
    if y1 - y0 <= 2.0 / 3.0:
        centre = (y0 + y1) / 2.0
        zone = "upper" if centre < 1.0 / 3.0 else "middle" if centre < 2.0 / 3.0 else "lower"
    return side, zone


def describe_region(name: str, side: str, zone: str) -> str:
    """'nodule/mass', 'right', 'upper' -> 'nodule/mass in the right upper zone'."""
    if side and zone:
        return f"{name} in the {side} {zone} zone"
    if side:
        return f"{name} on the {side}"
    if zone:
        return f"{name} in the {zone} zone"
    return name
