"""The light runtime: read whole photos with exported ONNX files; numpy, onnxruntime and PIL only.

`transcribe export RUN` writes model.onnx (the reader), detector.onnx (the text detector, copied
from the rapidocr wheel) and model.json (what this module needs: crop sizes, normalization,
head, alphabet, refusal threshold). `transcribe predict --model model.onnx photo.jpg` runs this
module: no torch is imported (`pip install 'transcribe[runtime]'` is enough; tests/test_runtime.py
checks it in a fresh interpreter). Localization is localize.py, shared with the torch path; only
the reader differs, so both paths choose among the same candidate boxes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from transcribe import localize

FORMAT = "transcribe-onnx-1"   # model.json's "format": bump when the files' contract changes
SPEC_NAME = "model.json"
READ_BATCH = 64                # crops per ONNX call (memory only; results do not depend on it)


class Reader:
    """An exported reader: (N, S, S, 3) uint8 crops -> N dicts (pred, confidence, adhoc_confidence,
    length_probs, digit_probs), the same keys evaluation.predict_images gives."""

    def __init__(self, model: str | Path, threads: int = 0):
        model = Path(model)
        if model.is_dir():
            model = model / "model.onnx"
        spec_path = model.with_suffix(".json")
        if not model.is_file():
            raise localize.PhotoError(f"{model}: no such model file (write one with `transcribe export RUN`)")
        if not spec_path.is_file():
            raise localize.PhotoError(f"{spec_path}: missing; the runtime needs the JSON that "
                                      f"`transcribe export` writes beside {model.name}")
        try:
            spec = json.loads(spec_path.read_text())
        except json.JSONDecodeError as err:
            raise localize.PhotoError(f"{spec_path}: not JSON ({err.msg})") from None
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise localize.PhotoError(f"{spec_path}: not a {FORMAT} description; export the run again")
        self.spec, self.path = spec, model
        self.session = localize.onnx_session(model, threads)
        self.input = self.session.get_inputs()[0].name
        det = spec.get("detector")
        self.detector_path = (model.parent / det) if det else None

    def __call__(self, images: np.ndarray) -> list[dict]:
        inp = self.spec["input"]
        out = []
        for start in range(0, len(images), READ_BATCH):
            x = prepare(images[start:start + READ_BATCH], inp["crop"], inp["pixel_scale"])
            lp_len, lp_dig = self.session.run(None, {self.input: x})    # (B, N + 2), (B, N, C)
            out += decode(lp_len, lp_dig, self.spec["head"])
        return out


def prepare(images: np.ndarray, crop: int, pixel_scale: float) -> np.ndarray:
    """uint8 (B, S, S, 3) -> float32 (B, 3, crop, crop): dataset.prepare_batch(train=False) in numpy:
    the centre crop, minus each image's mean over pixels and channels, divided by pixel_scale."""
    s = images.shape[1]
    o = (s - crop) // 2
    x = images[:, o:o + crop, o:o + crop].astype(np.float32).transpose(0, 3, 1, 2)
    x = x - x.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(x / np.float32(pixel_scale))


def decode(lp_len: np.ndarray, lp_dig: np.ndarray, head: str = "sequence", decimals: int = 5) -> list[dict]:
    """sequence.decode in numpy, from log-probabilities: the most probable transcription and its
    log P(S|X) (Goodfellow et al. 2014, sec. 3: log P(L = n) + sum_{i <= n} log P(S_i = s_i))."""
    lp_len, lp_dig = lp_len.astype(np.float64), lp_dig.astype(np.float64)
    b, n, _ = lp_dig.shape
    best_lp, best_d = lp_dig.max(-1), lp_dig.argmax(-1)                 # (B, N)
    if head == "sequence":
        cum = np.concatenate([np.zeros((b, 1)), best_lp.cumsum(1)], 1)   # (B, N + 1): n = 0..N
        scores = np.concatenate([lp_len[:, :n + 1] + cum, lp_len[:, n + 1:]], 1)
        lengths, logp = scores.argmax(1), scores.max(1)
        refused = lengths == n + 1
        adhoc = lp_len.max(1) + best_lp.sum(1)
    else:  # 'blank': the digits before the first blank (class 10)
        blank = lp_dig.shape[2] - 1
        lengths = np.cumprod(best_d != blank, axis=1).sum(1)
        pos = np.arange(n)[None, :]
        logp = np.where(pos < lengths[:, None], best_lp, 0).sum(1) + \
            np.where(pos == lengths[:, None], lp_dig[..., blank], 0).sum(1)
        refused = np.zeros(b, dtype=bool)
        adhoc = best_lp.sum(1)
    out = []
    for j in range(b):
        text = ">5" if refused[j] else "".join(str(int(d)) for d in best_d[j, :lengths[j]])
        out.append({"pred": text, "confidence": float(logp[j]), "adhoc_confidence": float(adhoc[j]),
                    "length_probs": np.round(np.exp(lp_len[j]), decimals).tolist(),
                    "digit_probs": np.round(np.exp(lp_dig[j]), decimals).tolist()})
    return out


def decide(pred: str, confidence: float, threshold: float | None) -> str:
    """accept or refer, as evaluation.predict decides: log P(S|X) >= the validation threshold, and
    never a refused ('>5') photo; no threshold (none reached the target on validation) refers all."""
    return "accept" if threshold is not None and confidence >= threshold and pred != ">5" else "refer"


def read_photos(paths: Sequence[str | Path], read, detector, threshold: float | None, widen: float,
                size: int, box=None, read_boxes=None) -> tuple[list[dict], list[str]]:
    """Rows (file, pred, confidence, probability, decision, box, source) for whole photos, and one
    line per unreadable photo. With `box` the number's box is given and only widened (no search).
    `read` reads crops; a reader that cuts the photo itself is `read_boxes` (localize.locate)."""
    from transcribe import crops
    read_boxes = read_boxes or localize.crop_reader(read, widen, size)
    rows, problems = [], []
    for path in paths:
        try:
            image = localize.load_photo(path)
        except localize.PhotoError as err:
            problems.append(str(err))
            rows.append({"file": str(path), "pred": "", "confidence": None, "probability": None,
                         "decision": "unreadable", "box": None})
            continue
        if box is not None:
            crop_box, source = crops.widen(box, widen), "given"
            r = read_boxes(image, [box])[0]
        else:
            loc = localize.locate(image, detector, widen=widen, read_boxes=read_boxes)
            crop_box, source, r = loc.crop_box, loc.source, loc.read
        rows.append({"file": str(path), "pred": r["pred"], "confidence": r["confidence"],
                     "probability": math.exp(r["confidence"]), "decision": decide(r["pred"], r["confidence"], threshold),
                     "box": [round(float(v), 2) for v in crop_box], "source": source})
    return rows, problems


def predict(paths: Sequence[str | Path], model: str | Path, box=None) -> tuple[list[dict], list[str]]:
    """evaluation.predict's answer from exported files: (rows, problems)."""
    reader = Reader(model)
    spec = reader.spec
    detector = None
    if box is None:
        if reader.detector_path is None or not reader.detector_path.is_file():
            raise localize.PhotoError(f"{reader.detector_path or reader.path.parent / 'detector.onnx'}: the detector "
                                      f"is missing; export the run again, or give --box")
        detector = localize.Detector(reader.detector_path, min_side=spec["localize"]["det_min_side"])
    return read_photos(paths, reader, detector, spec["threshold"], spec["input"]["widen"],
                       spec["input"]["cache_size"], box)
