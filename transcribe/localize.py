"""Find the house number in a whole photo, then let the reader choose among candidate boxes.

The Street View system of Goodfellow et al. 2014 read numbers that a separate detector had
located (sec. 5.1: "we assume the digits have been localized"). Here the detector is the text
detector that ships inside the `rapidocr` 3.x wheel (PP-OCRv6 det small, a DBNet; Apache-2.0),
run by our own onnxruntime session from the file in the installed package: nothing is
downloaded. Its boxes are only *candidates*: each detection, unions of neighbouring detections
(a detector often splits "1 9" in two), the whole photo (it may already be a tight crop), and a
few rescalings of each, are cropped exactly as the cache builder crops a known box (crops.py)
and read; the reader's probabilities (sec. 3: P(S|X), the confidence that decides accept /
refer), summed over the candidates, choose the transcription and its box (`locate`). A detector
score never chooses.

Only numpy, PIL and onnxruntime are imported: the torch-free runtime (runtime.py) uses this
module as it is, with an ONNX reader in place of the torch one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from transcribe import crops
from transcribe.config import CACHE_SIZE, WIDEN

Box = tuple[float, float, float, float]  # (left, top, width, height), photo pixels

# ---------------------------------------------------------------- photos

MIN_SIDE = 8            # pixels: below this no digit can be told apart (SVHN's smallest photos are ~12 px high)
MAX_PIXELS = 40_000_000  # a 40 MP photo is 120 MB as RGB; larger is refused before decoding (PIL's own
                         # decompression-bomb limit, 179 MP, would otherwise be the only guard)


class PhotoError(ValueError):
    """A photo that cannot be read; the message is one line naming the file and the reason."""


def load_photo(path: str | Path) -> np.ndarray:
    """A photo as (H, W, 3) uint8 RGB, the way a person sees it; PhotoError naming the file if not.

    EXIF orientation is applied (phones store portrait photos sideways plus a rotation tag);
    transparent pixels are shown over white, as a viewer shows them; 16-bit and float images are
    scaled to 8 bits (PIL's convert("RGB") would clip a 16-bit grey PNG to white).
    """
    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise PhotoError(f"{path}: photo too large ({w}x{h} pixels, over {MAX_PIXELS // 1_000_000} MP); "
                                 f"scale it down first")
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except PhotoError:
        raise
    except Image.DecompressionBombError:
        raise PhotoError(f"{path}: photo too large (over PIL's decompression-bomb limit); scale it down first") from None
    except (OSError, ValueError, SyntaxError) as err:  # not an image, truncated, unknown format
        raise PhotoError(f"{path}: not a readable image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                         ) from None
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise PhotoError(f"{path}: photo too small to read ({w}x{h} pixels; at least {MIN_SIDE} on each side)")
    return rgb


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        # 16-bit data (PNG 'I;16', or 'I' holding 0..65535) -> 0..255; 8-bit data kept as is
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------- the detector (DBNet, ONNX)

DET_MODEL = "PP-OCRv6_det_small.onnx"   # inside the rapidocr 3.x wheel: rapidocr/models/
# Pre- and post-processing follow rapidocr 3.x's config.yaml (Det) and ch_ppocr_det/utils.py:
DET_MEAN = DET_STD = 0.5   # x = (pixel / 255 - 0.5) / 0.5, BGR channel order (PaddleOCR reads with cv2)
DET_MIN_SIDE = 96          # the shorter side is brought to 96 px (rapidocr: 736). SVHN photos are cut around
                           # their number, so at 736 the digits are ~500 px high, far above the text sizes
                           # the detector learned, and it marks most of the photo as text. Sample training
                           # photos 1-100 where a detection, a union of neighbours or the whole photo has
                           # IoU >= 0.5 with the number: 74% at 96 and at 128 px, 65% at 64 px; at 736 px
                           # (and rapidocr's unclip) 10 of the first 60
DET_SECOND_SIDE = 160      # a second pass with the shorter side at 160 px, its boxes joined to the first's:
                           # tighter boxes round small numbers. On 100 of the sample's training photos, read
                           # by runs/sample-transfer (scripts/whole_rules.py), IoU >= 0.5 for 95% instead of
                           # 91%, sequence accuracy 88% instead of 87%, for 11.8 crops read a photo, not 8.8
DET_MAX_SIDE = 2048        # ours: caps the other side, so a 20:1 panorama cannot ask for a 15,000 px map
DET_STRIDE = 32            # the network's input sides must be multiples of 32
DET_THRESH = 0.3           # pixel probability that counts as text
DET_BOX_THRESH = 0.3       # rapidocr keeps boxes whose mean probability is >= 0.5; lower here, since the
                           # reader, not this score, decides (a faint number is still a candidate)
DET_UNCLIP = 1.0           # DBNet shrinks text regions when training; each box grows back by area*r/perimeter.
                           # rapidocr: 1.6, which gives a margin round the text; SVHN's union box is tight
                           # (top detection IoU >= 0.5: 70% at 1.0, 44% at 1.6; same 100 photos)
DET_MIN_BOX = 3            # map pixels: smaller components are noise


def detector_path() -> Path:
    """The detector ONNX file inside the installed rapidocr wheel (the package is not imported:
    importing rapidocr pulls OpenCV; find_spec only locates it)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise PhotoError(f"the text detector {DET_MODEL} comes with the rapidocr package: "
                         f"pip install 'transcribe-svhn[whole]' (or give --box)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / DET_MODEL
    if not path.is_file():
        raise PhotoError(f"{path}: not in the installed rapidocr package; install rapidocr 3.x "
                         f"(pip install 'rapidocr>=3,<4'), whose wheel ships it")
    return path


def onnx_session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session; one clear line if onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PhotoError("onnxruntime is not installed: pip install 'transcribe-svhn[runtime]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types (InvalidProtobuf, Fail, NoSuchFile)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PhotoError(f"{path}: not a readable ONNX model ({first[:200]})") from None


class Detector:
    """Text boxes in a photo: (N, 4) boxes (left, top, width, height) in photo pixels, and scores."""

    def __init__(self, path: str | Path | None = None, min_side: int = DET_MIN_SIDE, threads: int = 0,
                 second_side: int | None = DET_SECOND_SIDE):
        self.path = Path(path) if path is not None else detector_path()
        self.session = onnx_session(self.path, threads)
        self.input = self.session.get_inputs()[0].name
        self.min_side, self.second_side = min_side, second_side

    def passes(self, image: np.ndarray) -> list[np.ndarray]:
        """The boxes of each pass: at min_side, then at second_side where that is another input size."""
        out = [self(image)[0]]
        if self.second_side:
            h, w = image.shape[:2]
            if self.input_size(h, w, self.second_side) != self.input_size(h, w):
                out.append(self(image, self.second_side)[0])
        return out

    def input_size(self, h: int, w: int, min_side: int | None = None) -> tuple[int, int]:
        min_side = min_side or self.min_side
        scale = max(1.0, min_side / min(h, w)) if min(h, w) < min_side else 1.0
        scale = min(scale, DET_MAX_SIDE / max(h, w)) if max(h, w) * scale > DET_MAX_SIDE else scale
        return (max(DET_STRIDE, int(round(h * scale / DET_STRIDE)) * DET_STRIDE),
                max(DET_STRIDE, int(round(w * scale / DET_STRIDE)) * DET_STRIDE))

    def __call__(self, image: np.ndarray, min_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        mh, mw = self.input_size(h, w, min_side)
        x = np.asarray(Image.fromarray(image).resize((mw, mh), Image.BILINEAR), dtype=np.float32)
        x = (x[:, :, ::-1] / 255.0 - DET_MEAN) / DET_STD               # (mh, mw, 3) BGR
        prob = self.session.run(None, {self.input: x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0, 0]
        boxes, scores = boxes_from_map(prob)                              # map pixels
        boxes = boxes * np.array([w / mw, h / mh, w / mw, h / mh], dtype=np.float64)
        return boxes, scores


def boxes_from_map(prob: np.ndarray, thresh: float = DET_THRESH, box_thresh: float = DET_BOX_THRESH,
                   unclip: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DBNet post-processing with axis-aligned boxes: threshold, 2x2 dilation, connected
    components, mean probability inside each component's box, unclip. -> (N, 4), (N,) by score."""
    unclip = DET_UNCLIP if unclip is None else unclip
    mask = prob > thresh
    mask[1:] |= mask[:-1].copy()      # 2x2 dilation (rapidocr: use_dilation)
    mask[:, 1:] |= mask[:, :-1].copy()
    out, scores = [], []
    for y0, x0, y1, x1 in components(mask):
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < DET_MIN_BOX:
            continue
        score = float(prob[y0:y1, x0:x1].mean())
        if score < box_thresh:
            continue
        d = bw * bh * unclip / (2 * (bw + bh))  # pyclipper offset distance of rapidocr's unclip
        out.append((x0 - d, y0 - d, bw + 2 * d, bh + 2 * d))
        scores.append(score)
    order = np.argsort(scores)[::-1]
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)[order], np.asarray(scores)[order]


def components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, x0, y1, x1), ends exclusive, of the 8-connected components of a bool mask.

    Runs of True along each row are joined with the overlapping runs of the row above (union-find
    over runs): Python loops over runs, not pixels, so a 736 x 1472 map takes milliseconds.
    """
    d = np.diff(mask.astype(np.int8), axis=1, prepend=0, append=0)   # (H, W + 1): +1 run start, -1 end
    sy, sx = np.nonzero(d == 1)
    _, ex = np.nonzero(d == -1)                                       # same row order as the starts
    n = len(sy)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(sy, np.arange(mask.shape[0] + 1))     # runs of row y: row_start[y]:row_start[y+1]
    for y in range(1, mask.shape[0]):
        a0, a1 = row_start[y - 1], row_start[y]
        if a0 == a1:
            continue
        for j in range(row_start[y], row_start[y + 1]):
            for i in range(a0, a1):  # 8-connected: runs [s, e) touch when s_i <= e_j and s_j <= e_i
                if sx[i] <= ex[j] and sx[j] <= ex[i]:
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[rj] = ri
    boxes: dict[int, list[int]] = {}
    for k in range(n):
        r = find(k)
        b = boxes.setdefault(r, [int(sy[k]), int(sx[k]), int(sy[k]) + 1, int(ex[k])])
        b[0], b[1] = min(b[0], int(sy[k])), min(b[1], int(sx[k]))
        b[2], b[3] = max(b[2], int(sy[k]) + 1), max(b[3], int(ex[k]))
    return [tuple(b) for b in boxes.values()]  # type: ignore[misc]


# ---------------------------------------------------------------- candidates and the choice

MAX_DETECTIONS = 6           # the best-scoring detections kept as candidates (SVHN photos hold 1-3 texts)
SCALES = (0.8, 1.0, 1.25)    # each candidate box also rescaled about its centre: a DBNet box is the text
                             # region grown back by DET_UNCLIP, not SVHN's tight union of digit boxes
# SVHN's format-1 photos are cut around their number: the median union box of the sample's training
# photos (1,800, validation excluded) is centred at (0.50, 0.49) of the photo, 29% of its width and
# 71% of its height (spread: 0.10 and 0.15). That prior, at a few sizes, is also a candidate: it
# covers the photos where the detector sees the digits as one blob with their surroundings.
PRIOR = (0.50, 0.49, 0.29, 0.71)                   # centre x, centre y, width, height; photo fractions
PRIOR_SCALES = ((0.7, 1.0), (1.0, 1.0), (1.4, 1.0), (1.0, 0.8), (1.0, 1.2))  # (width, height) factors
MERGE_GAP = 1.0              # join two detections whose horizontal gap is under 1.0 x their height ...
MERGE_OVERLAP = 0.5          # ... and whose vertical extents overlap by half the smaller height


@dataclass
class Located:
    box: Box               # the number's box (before the reader's widening), photo pixels
    crop_box: Box          # that box widened as the reader widens a number box
    read: dict             # the reader's output for that crop: pred, confidence, ...
    source: str            # which candidate: "detection", "merge", "photo", "prior"
    candidates: int        # how many crops were read
    detections: int        # how many text boxes the detector returned
    boxes: list            # every candidate box, to tell a missing candidate from a wrong choice
    readings: list = dataclasses.field(default_factory=list)  # the reader's output for every candidate
    sources: list = dataclasses.field(default_factory=list)   # where every candidate came from
    found_box: Box | None = None  # the candidate read; `box` is it moved by a box fitter where one is given


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (left, top, width, height) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _union(a: Sequence[float], b: Sequence[float]) -> Box:
    left, top = min(a[0], b[0]), min(a[1], b[1])
    return (left, top, max(a[0] + a[2], b[0] + b[2]) - left, max(a[1] + a[3], b[1] + b[3]) - top)


def _neighbours(a: Sequence[float], b: Sequence[float]) -> bool:
    h = min(a[3], b[3])
    v_overlap = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    gap = max(a[0], b[0]) - min(a[0] + a[2], b[0] + b[2])   # < 0 when they overlap horizontally
    return v_overlap >= MERGE_OVERLAP * h and gap <= MERGE_GAP * h


def candidates(detections: np.ndarray | list[np.ndarray], shape: tuple[int, int], widen: float) -> list[tuple[Box, str]]:
    """Candidate number boxes: detections and unions of neighbouring ones, each at SCALES; the whole
    photo; the SVHN prior at PRIOR_SCALES; then the detections and unions of each further detector
    pass (Detector.passes), those not already there.

    The whole photo enters as the box whose widening is the photo itself, so an already cropped
    number is read the way `transcribe predict` always read it.
    """
    if isinstance(detections, list):
        first = _candidates(detections[0] if detections else np.zeros((0, 4)), shape, widen)
        seen = {tuple(round(v, 1) for v in b) for b, _ in first}
        for more in detections[1:]:
            for box, src in _candidates(more, shape, widen):
                key = tuple(round(v, 1) for v in box)
                if src in ("detection", "merge") and key not in seen:
                    seen.add(key)
                    first.append((box, src))
        return first
    return _candidates(detections, shape, widen)


def _candidates(detections: np.ndarray, shape: tuple[int, int], widen: float) -> list[tuple[Box, str]]:
    h, w = shape
    dets = [tuple(float(v) for v in b) for b in detections[:MAX_DETECTIONS]]
    base: list[tuple[Box, str]] = [(b, "detection") for b in dets]  # type: ignore[misc]
    merged: list[Box] = []
    for i in range(len(dets)):
        for j in range(i + 1, len(dets)):
            if _neighbours(dets[i], dets[j]):
                merged.append(_union(dets[i], dets[j]))
    if len(dets) > 2:
        row = dets[0]
        for b in dets[1:]:  # the chain of neighbours of the strongest detection
            if _neighbours(row, b):
                row = _union(row, b)
        merged.append(row)
    base += [(b, "merge") for b in merged]
    out = [(crops.widen(b, s), src) for b, src in base for s in SCALES]
    out.append(((w * (1 - 1 / widen) / 2, h * (1 - 1 / widen) / 2, w / widen, h / widen), "photo"))
    cx, cy, pw, ph = PRIOR
    out += [(((cx - pw * fw / 2) * w, (cy - ph * fh / 2) * h, pw * fw * w, ph * fh * h), "prior")
            for fw, fh in PRIOR_SCALES]
    seen, unique = set(), []
    for box, src in out:
        key = tuple(round(v, 1) for v in box)
        if key not in seen and box[2] >= 1 and box[3] >= 1:
            seen.add(key)
            unique.append((box, src))
    return unique


Reader = Callable[[np.ndarray], list]  # (N, S, S, 3) uint8 crops -> N dicts with "pred" and "confidence"
BoxReader = Callable[[np.ndarray, list], list]  # photo (H, W, 3) uint8, N number boxes -> N such dicts


def crop_reader(read: Reader, widen: float = WIDEN, size: int = CACHE_SIZE) -> BoxReader:
    """A crop reader (the ConvNet, exported or not) as a BoxReader: each number box widened by
    `widen` and cropped to size x size exactly as the cache builder crops a known box."""
    return lambda image, boxes: read(np.stack([crops.crop(image, crops.widen(b, widen), size) for b in boxes]))


def locate(image: np.ndarray, detector: Detector, read: Reader | None = None, widen: float = WIDEN,
           size: int = CACHE_SIZE, read_boxes: BoxReader | None = None, chooser=None, fitter=None) -> Located:
    """Detect, read every candidate box as the reader reads a known box, let the reader choose.

    `read` gets crops as the cache builder makes them (crop_reader); a reader that cuts the photo
    itself (a line recognizer reads a strip of any width: transfer.py, whole.py) is given as
    `read_boxes` instead, and `widen` is then its own widening of a number box.

    The box is unknown, so the reader's transcription is marginalized over it, with the same prior
    weight for every candidate: P(S | photo) ~ sum_c P(S | X_c), where each crop X_c contributes its
    most probable S (sequence.decode; its other transcriptions are left out). The S with the most
    probability wins, and its box is the candidate that reads S with the highest log P(S|X_c), which
    is the confidence reported (the threshold chosen on given boxes keeps its meaning). Crops read
    as nothing (length 0) or '>5' count only when no crop reads a number.

    Chosen by measurement on 200 of the sample's *training* photos (not the validation photos the
    README reports), reader `runs/sample`: the box with the single highest log P(S|X_c) overlapped
    the true box (IoU >= 0.5) for 74.0% and read 45.5% right; this sum, 81.5% and 46.5%. With the
    transfer reader (runs/sample-transfer, 100 training photos, scripts/whole_rules.py) the sum
    still wins: 88% read right against 83% for the single most probable crop.

    A fitted `chooser` (chooser.Chooser: a choice learned from out-of-fold readings) replaces that
    rule where a run has one; a `fitter` (boxfit.BoxFitter) then moves the chosen box onto the number.
    The reading stays the chosen candidate's. Reading the fitted box again was measured and not taken
    (600 training-side photos, each read by a fold model and fitted by a fitter that never saw it,
    scripts/boxfit_probe.py): keeping the more probable of the two readings read 82.3% right against
    80.3%, but coverage at 98% accuracy fell from 20.5% to 2.2% (the larger of two log P(S|X) is
    overconfident: a few sure wrong readings move to the top).
    """
    passes = detector.passes(image) if hasattr(detector, "passes") else [detector(image)[0]]
    cands = candidates(passes, image.shape[:2], widen)
    results = (read_boxes or crop_reader(read, widen, size))(image, [b for b, _ in cands])
    boxes, sources = [b for b, _ in cands], [s for _, s in cands]
    best = chooser.choose(results, boxes, sources, image.shape[:2]) if chooser is not None else choose(results)
    found, source = cands[best]
    box = fitter.fit(image, [found])[0] if fitter is not None else found
    return Located(box=box, crop_box=crops.widen(box, widen), read=results[best], source=source,
                   candidates=len(cands), detections=sum(len(b) for b in passes), boxes=boxes,
                   readings=results, sources=sources, found_box=found)


def choose(results: list[dict]) -> int:
    """The candidate whose reading locate keeps: the transcription with the most probability summed
    over the candidates, read where it is read most surely (see locate)."""
    says = [k for k, r in enumerate(results) if r["pred"] not in ("", ">5")] or list(range(len(results)))
    mass: dict[str, float] = {}
    for k in says:
        mass[results[k]["pred"]] = mass.get(results[k]["pred"], 0.0) + math.exp(results[k]["confidence"])
    text = max(mass, key=mass.__getitem__)
    return max((k for k in says if results[k]["pred"] == text), key=lambda k: results[k]["confidence"])
