"""Fit the found box to the number: a small regressor that moves a candidate box onto SVHN's union box.

localize.locate chooses a box among candidates (detections, their unions, rescalings, prior boxes),
and the reader reads a loose box as surely as a tight one: on the sample's validation photos half of
the found boxes that miss the true one (IoU < 0.5) carry the right transcription, but are too large or
too small. Candidates differ in both directions, so no fixed rescaling helps (every scale factor pair
from 0.8 to 1.3 tried on 600 training-side photos: 84.2% at 1 x 1, at most 85.3%).

The fitter sees the chosen box with its surroundings (a window CONTEXT times its size about its centre,
resized to SIZE x SIZE, each crop standardized) and predicts where the number's box lies in that window:
the classic bounding-box regression of R-CNN detectors, trained here on the union boxes of format-1
photos with the chosen box simulated by random shifts and rescalings of the true one
(train_boxfit.py, `transcribe fit-box`). It is stored as ONNX (BOXFIT_FILE) and run by onnxruntime, so
the torch path and the torch-free runtime move a box the same way. The transcription and its
confidence stay the reader's: only the reported box moves.

numpy, PIL and onnxruntime only (the runtime imports this module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from transcribe import localize

BOXFIT_FILE = "boxfit.onnx"
SPEC_FILE = "boxfit.json"
FORMAT = 1
CONTEXT = 2.0   # the window: the box scaled by this about its centre (a box half the number's size still sees it)
SIZE = 64       # pixels a side of the resized window
UNIT = 0.25     # the box's own sides sit at 0.25 and 0.75 of the window; outputs are offsets in units of this


def window(box: Sequence[float]) -> tuple[float, float, float, float]:
    """The window (left, top, width, height) the fitter sees for a box: CONTEXT times it, same centre."""
    left, top, w, h = (float(v) for v in box)
    w, h = max(w, 1.0), max(h, 1.0)
    cx, cy = left + w / 2, top + h / 2
    return cx - CONTEXT * w / 2, cy - CONTEXT * h / 2, CONTEXT * w, CONTEXT * h


def inputs(image: "np.ndarray | Image.Image", boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """(N, 3, SIZE, SIZE) float32: each box's window cut from the (H, W, 3) uint8 photo or a PIL image (bilinear;
    outside the photo is black) and standardized by its own mean and standard deviation."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = np.empty((len(boxes), 3, SIZE, SIZE), np.float32)
    for n, box in enumerate(boxes):
        left, top, w, h = window(box)
        crop = np.asarray(im.transform((SIZE, SIZE), Image.Transform.EXTENT, (left, top, left + w, top + h),
                                       resample=Image.BILINEAR), dtype=np.float32)
        out[n] = ((crop - crop.mean()) / (crop.std() + 1.0)).transpose(2, 0, 1)
    return out


def targets(boxes: Sequence[Sequence[float]], true_boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """(N, 4): where each true box lies in its box's window, as the fitter's outputs (decode's inverse)."""
    out = np.empty((len(boxes), 4), np.float32)
    for n, (box, truth) in enumerate(zip(boxes, true_boxes)):
        left, top, w, h = window(box)
        tl, tt, tw, th = (float(v) for v in truth)
        out[n] = [((tl - left) / w - UNIT) / UNIT, ((tt - top) / h - UNIT) / UNIT,
                  ((tl + tw - left) / w - 1 + UNIT) / UNIT, ((tt + th - top) / h - 1 + UNIT) / UNIT]
    return out


def decode(boxes: Sequence[Sequence[float]], outputs: np.ndarray) -> list[tuple[float, float, float, float]]:
    """The fitted boxes (left, top, width, height) from the fitter's (N, 4) outputs; zero outputs
    give the boxes back. Sides never cross: at least one pixel wide and high."""
    out = []
    for box, o in zip(boxes, np.asarray(outputs, np.float64)):
        left, top, w, h = window(box)
        x0, y0 = left + (UNIT + UNIT * o[0]) * w, top + (UNIT + UNIT * o[1]) * h
        x1, y1 = left + (1 - UNIT + UNIT * o[2]) * w, top + (1 - UNIT + UNIT * o[3]) * h
        out.append((x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0)))
    return out


class BoxFitter:
    """The exported fitter (BOXFIT_FILE beside its SPEC_FILE): fit(image, boxes) -> fitted boxes."""

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = Path(path)
        spec_path = self.path.with_name(SPEC_FILE)
        try:
            self.spec = json.loads(spec_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{spec_path}: not a box fitter's description ({err})") from None
        if self.spec.get("format") != FORMAT or self.spec.get("context") != CONTEXT or self.spec.get("size") != SIZE:
            raise ValueError(f"{spec_path}: a box fitter of another format; fit it again (transcribe fit-box)")
        self.session = localize.onnx_session(self.path, threads)
        self.passes = int(self.spec.get("passes", 1))

    def fit(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[tuple[float, float, float, float]]:
        boxes = [tuple(float(v) for v in b) for b in boxes]
        for _ in range(self.passes):
            boxes = decode(boxes, self.session.run(None, {"windows": inputs(image, boxes)})[0])
        return boxes

    @classmethod
    def beside(cls, folder: str | Path, threads: int = 0) -> "BoxFitter | None":
        """The fitter stored in a run or export folder, if it has one."""
        path = Path(folder) / BOXFIT_FILE
        return cls(path, threads) if path.is_file() else None
