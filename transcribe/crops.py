"""From a photo and its digit boxes to the fixed-size crop the network sees.

Goodfellow et al. 2014, sec. 5.1: "we find the small rectangular bounding box that will
contain individual character bounding boxes. We then expand this bounding box by 30% in
both the x and the y direction, crop the image to that bounding box and resize the crop
to 64 x 64 pixels." The aspect ratio is not kept (the paper does not keep it either).

Boxes are (left, top, width, height) in photo pixels, as in digitStruct.mat. Only numpy
and PIL are imported: this runs once per photo when a cache is built.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from transcribe.config import CACHE_SIZE, WIDEN

Box = tuple[float, float, float, float]  # (left, top, width, height), photo pixels
# How far a crop box may reach past its photo, on every side: BOX_REACH times the photo's
# longer side, and at least BOX_REACH_PX pixels (tiny photos). A widened SVHN box reaches a few
# pixels out; a box of 1e7 px (or 1e300) in a damaged label or `--box` would make `crop`
# allocate its whole area before resizing. Within the bound a crop costs at most about
# (1 + 2 * 2)^2 = 25 times a square photo's pixels.
BOX_REACH = 2
BOX_REACH_PX = 100


def unusable_box(box: Sequence[float], width: int, height: int) -> str | None:
    """Why `box` (left, top, width, height) cannot be cropped from a width x height photo
    (not four finite numbers, no area, or reaching too far past it: BOX_REACH); None if it can."""
    try:
        left, top, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return f"box {box!r} is not four numbers (left, top, width, height)"
    if not all(math.isfinite(v) for v in (left, top, w, h)) or w <= 0 or h <= 0:
        return f"box {box!r} needs finite numbers and a positive width and height"
    reach = max(BOX_REACH * max(width, height), BOX_REACH_PX)
    if left < -reach or top < -reach or left + w > width + reach or top + h > height + reach:
        return (f"box ({left:g}, {top:g}, {w:g}, {h:g}) reaches more than {reach:g} px beyond the "
                f"{width}x{height} photo")
    return None


def number_box(boxes: Sequence[Sequence[float]]) -> Box:
    """The smallest box containing every digit box: (left, top, width, height)."""
    if len(boxes) == 0:
        raise ValueError("number_box: no digit boxes")
    left = min(b[0] for b in boxes)
    top = min(b[1] for b in boxes)
    right = max(b[0] + b[2] for b in boxes)
    bottom = max(b[1] + b[3] for b in boxes)
    return (float(left), float(top), float(right - left), float(bottom - top))


def widen(box: Sequence[float], factor: float = WIDEN) -> Box:
    """Scale width and height by `factor` about the box's centre (1.3 = 30% wider and taller)."""
    left, top, w, h = (float(v) for v in box)
    cx, cy = left + w / 2, top + h / 2
    w2, h2 = w * factor, h * factor
    return (cx - w2 / 2, cy - h2 / 2, w2, h2)


def _pixel_range(start: float, length: float) -> tuple[int, int]:
    """Integer pixel bounds [a, b) of the interval [start, start+length): round half up, >= 1 pixel."""
    a = math.floor(start + 0.5)
    b = math.floor(start + length + 0.5)
    return a, max(b, a + 1)


def crop(image: np.ndarray, box: Sequence[float], size: int = CACHE_SIZE) -> np.ndarray:
    """Cut `box` out of `image` (H, W, 3) uint8 and resize it to (size, size, 3) uint8.

    ValueError for a box `unusable_box` refuses. Where the box leaves the photo (official SVHN boxes sometimes reach a few pixels
    outside, and widening by 30% often does) the photo's border pixels are replicated.
    Why edge-replicate and not a constant (e.g. mean-colour) fill: a constant fill puts a
    hard straight edge into the crop, a stroke-like feature the network could latch onto
    and that never occurs where the photo continues; replicating the border continues the
    local background colour and texture, and the network sees no artificial edge. The
    price is streaks when a digit touches the photo border, which is rare.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"crop: expected (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    why = unusable_box(box, width, height)
    if why:
        raise ValueError(f"crop: {why}")
    x0, x1 = _pixel_range(box[0], box[2])
    y0, y1 = _pixel_range(box[1], box[3])
    if 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height:
        region = image[y0:y1, x0:x1]  # inside the photo: a view, no copy
    else:
        # Clipping the pixel indices to the photo replicates its edge rows/columns (the same
        # result as np.pad(mode="edge")), and also works when the box lies wholly outside.
        rows = np.clip(np.arange(y0, y1), 0, height - 1)
        cols = np.clip(np.arange(x0, x1), 0, width - 1)
        region = image[rows[:, None], cols[None, :]]  # (y1-y0, x1-x0, 3)
    if region.shape[:2] == (size, size):
        return np.ascontiguousarray(region)
    # One resize. PIL's bilinear filter widens its support when shrinking, so it antialiases.
    resized = Image.fromarray(np.ascontiguousarray(region)).resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def crop_number(image: np.ndarray, boxes: Sequence[Sequence[float]], factor: float = WIDEN,
                size: int = CACHE_SIZE) -> tuple[np.ndarray, Box]:
    """The whole sec. 5.1 recipe: union of digit boxes, widened, cropped. Returns (crop, crop box)."""
    box = widen(number_box(boxes), factor)
    return crop(image, box, size), box


def strip(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The box's pixels, clamped to the photo, aspect ratio kept: (h, w, 3) uint8.

    For line recognizers (studies/baseline.py, transfer.py): unlike crop() it neither pads nor
    resizes, since a recognizer reads a strip of any width, and padding a photo's edge with black
    would add a dark bar the engine may read as '1'."""
    l, t, w, h = box
    H, W = image.shape[:2]
    x0, y0 = max(0, int(math.floor(l))), max(0, int(math.floor(t)))
    x1, y1 = min(W, int(math.ceil(l + w))), min(H, int(math.ceil(t + h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"box {tuple(box)} lies outside the {W}x{H} photo")
    return image[y0:y1, x0:x1]
