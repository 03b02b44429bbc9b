"""The light runtime: read whole photos with exported ONNX files; numpy, onnxruntime and PIL only.

`transcribe export RUN` writes model.onnx (the reader), detector.onnx (the text detector, copied
from the rapidocr wheel) and model.json (what this module needs: crop sizes, normalization,
head, alphabet, refusal threshold). `transcribe predict --model model.onnx photo.jpg` runs this
module: no torch is imported (`pip install 'transcribe-svhn[runtime]'` is enough; tests/test_runtime.py
checks it in a fresh interpreter). Localization is localize.py, shared with the torch path; only
the reader differs, so both paths choose among the same candidate boxes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from transcribe import alternatives, boxfit, chooser, crops, ctcsearch, localize

FORMAT = "transcribe-onnx-1"   # model.json's "format": bump when the files' contract changes
SPEC_NAME = "model.json"
READ_BATCH = 64                # crops per ONNX call (memory only; results do not depend on it)


class Reader:
    """An exported reader: (N, S, S, 3) uint8 crops -> N dicts (pred, confidence, adhoc_confidence,
    length_probs, digit_probs, and with top_k alternatives), the keys evaluation.predict_images gives."""

    def __init__(self, model: str | Path, threads: int = 0, top_k: int = 0, batch_size: int = READ_BATCH):
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
        self.spec, self.path, self.top_k, self.batch_size = spec, model, top_k, max(1, batch_size)
        self.session = localize.onnx_session(model, threads)
        self.input = self.session.get_inputs()[0].name
        det = spec.get("detector")
        self.detector_path = (model.parent / det) if det else None
        self.line = LineReader(model.parent, spec, self.session, threads) if spec.get("kind") == "transfer" else None
        chosen = (spec.get("localize") or {}).get("chooser")   # the run's learned choice among candidate boxes
        fitted = (spec.get("localize") or {}).get("box_fitter")  # the run's box fitter (boxfit.py)
        try:
            self.chooser = chooser.Chooser.load(model.parent / chosen) if chosen else None
            self.fitter = boxfit.BoxFitter(model.parent / fitted, threads) if fitted else None
        except ValueError as err:
            raise localize.PhotoError(str(err)) from None

    def read_boxes(self, image: np.ndarray, boxes) -> list[dict]:
        """localize.BoxReader: the reader at number boxes of a photo, cut as the run cut them."""
        if self.line is not None:
            return self.line.read_boxes(image, boxes)
        return localize.crop_reader(self, self.spec["input"]["widen"], self.spec["input"]["cache_size"])(image, boxes)

    def __call__(self, images: np.ndarray) -> list[dict]:
        inp = self.spec["input"]
        out = []
        for start in range(0, len(images), self.batch_size):
            x = prepare(images[start:start + self.batch_size], inp["crop"], inp["pixel_scale"])
            lp_len, lp_dig = self.session.run(None, {self.input: x})    # (B, N + 2), (B, N, C)
            out += decode(lp_len, lp_dig, self.spec["head"], top_k=self.top_k)
        return out


class LineReader:
    """An exported transfer reader (transfer.py): stem.onnx, the frozen part of the recognizer's
    convolutional backbone as in the rapidocr wheel, and model.onnx, the fine-tuned stages, neck and
    digits-only CTC head, stem features (B, C, H, T) -> (B, T', 11) log-probabilities; decoded by prefix beam search and rescored
    exactly (ctcsearch.py), as ctc.decode does."""

    def __init__(self, folder: Path, spec: dict, reader, threads: int = 0):
        self.inp = spec["input"]
        self.beam, self.max_digits = spec["beam"], spec["max_digits"]
        stem = folder / spec["stem"]
        if not stem.is_file():
            raise localize.PhotoError(f"{stem}: missing; export the run again")
        self.stem = localize.onnx_session(stem, threads)
        self.reader = reader                                   # the session of model.onnx

    def view(self, image: np.ndarray, box) -> np.ndarray | None:
        """transfer.eval_view in numpy: the box widened, its pixels (no padding), resized to height
        48 and `stretch` times its aspect in width; BGR, pixel / 127.5 - 1. None outside the photo."""
        try:
            strip = crops.strip(image, crops.widen(box, self.inp["widen"]))
        except ValueError:
            return None
        h, w = strip.shape[:2]
        height = self.inp["height"]
        width = max(self.inp["frame"], int(math.ceil(height * self.inp["stretch"] * w / h)))
        from PIL import Image
        img = Image.fromarray(np.ascontiguousarray(strip)).resize((width, height), Image.BILINEAR)
        x = np.asarray(img)[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        return x / np.float32(127.5) - np.float32(1.0)

    def log_probs(self, image: np.ndarray, boxes) -> list[np.ndarray | None]:
        """(T, 11) log-probabilities per box (None where the box is outside the photo). Each view is
        right-padded with 0 to max(min_width, its width), rounded up to 8, as transfer.stem_features
        pads it alone; the stem's features are rounded to float16 as transfer.py stores them."""
        views = [self.view(image, b) for b in boxes]
        out: list[np.ndarray | None] = [None] * len(boxes)
        frame = self.inp["frame"]
        widths = {k: int(math.ceil(max(self.inp["min_width"], v.shape[-1]) / frame)) * frame
                  for k, v in enumerate(views) if v is not None}
        for width in sorted(set(widths.values())):
            idx = [k for k, w in widths.items() if w == width]
            for start in range(0, len(idx), READ_BATCH):
                part = idx[start:start + READ_BATCH]
                x = np.zeros((len(part), 3, self.inp["height"], width), np.float32)
                for j, k in enumerate(part):
                    x[j, :, :, :views[k].shape[-1]] = views[k]
                feats = self.stem.run(None, {self.stem.get_inputs()[0].name: x})[0]
                feats = feats.astype(np.float16).astype(np.float32)
                lp = self.reader.run(None, {self.reader.get_inputs()[0].name: feats})[0]   # (B, T, 11)
                for j, k in enumerate(part):
                    out[k] = lp[j]
        return out

    def read_boxes(self, image: np.ndarray, boxes) -> list[dict]:
        out = []
        for lp in self.log_probs(image, boxes):
            if lp is None:
                out.append({"pred": "", "confidence": NO_READING, "adhoc_confidence": NO_READING})
                continue
            text, logp = ctcsearch.decode(lp, self.beam, self.max_digits)
            path = lp.argmax(-1)
            probs = [float(np.exp(lp[t, c])) for t, c in enumerate(path) if c != ctcsearch.BLANK and (t == 0 or c != path[t - 1])]
            out.append({"pred": text, "confidence": logp,
                        "adhoc_confidence": math.log(max(sum(probs) / len(probs), 1e-30)) if probs else NO_READING})
        return out


NO_READING = -50.0   # log P given to a candidate box the reader cannot cut (outside the photo)


def prepare(images: np.ndarray, crop: int, pixel_scale: float) -> np.ndarray:
    """uint8 (B, S, S, 3) -> float32 (B, 3, crop, crop): dataset.prepare_batch(train=False) in numpy:
    the centre crop, minus each image's mean over pixels and channels, divided by pixel_scale."""
    s = images.shape[1]
    o = (s - crop) // 2
    x = images[:, o:o + crop, o:o + crop].astype(np.float32).transpose(0, 3, 1, 2)
    x = x - x.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(x / np.float32(pixel_scale))


def decode(lp_len: np.ndarray, lp_dig: np.ndarray, head: str = "sequence", decimals: int = 5,
           top_k: int = 0) -> list[dict]:
    """sequence.decode in numpy, from log-probabilities: the most probable transcription and its
    log P(S|X) (Goodfellow et al. 2014, sec. 3: log P(L = n) + sum_{i <= n} log P(S_i = s_i));
    with top_k, "alternatives": the top_k most probable [text, log P(S|X)] (alternatives.py)."""
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
        if top_k:
            out[-1]["alternatives"] = [[t, lp] for t, lp in alternatives.top_k(lp_len[j], lp_dig[j], top_k, head)]
    return out


def decide(pred: str, confidence: float, threshold: float | None) -> str:
    """accept or refer, as evaluation.predict decides: log P(S|X) >= the validation threshold, and
    never a refused ('>5') photo; no threshold (none reached the target on validation) refers all."""
    return "accept" if threshold is not None and confidence >= threshold and pred != ">5" else "refer"


def why_referred(pred: str, confidence: float, threshold: float | None) -> str | None:
    """The reason decide() refers a photo, in words; None when it accepts it."""
    if threshold is None:
        return "no threshold reached the target accuracy on validation: every photo is referred"
    if pred == ">5":
        return "more digits than the model can spell (>5)"
    if confidence < threshold:
        return f"confidence below threshold (log P {confidence:.3f} < {threshold:.3f})"
    return None


def unreadable(path, why: str, source: str | None = None) -> dict:
    """The row of a photo that was not read: decision "unreadable", the reason in one line."""
    return {"file": str(path), "pred": None, "confidence": None, "probability": None, "decision": "unreadable",
            "reason": why, "box": None, "source": source}


def read_photos(paths: Sequence[str | Path], read, detector, threshold: float | None, widen: float,
                size: int, box=None, boxes: Sequence | None = None, batch_size: int = READ_BATCH,
                read_boxes=None, chooser=None, fitter=None) -> tuple[list[dict], list[str]]:
    """Rows (file, pred, confidence, probability, decision, reason, box, source[, alternatives]) for
    whole photos, and one line per unreadable photo.

    Each photo's number box: `boxes[i]` (a (box, source) pair, e.g. from a --boxes file, or None),
    else `box` for every photo; a given box is only widened and read (no search), batch_size
    crops per call of `read`. Without one the number is found in the photo (localize.locate; its
    choice among the candidates is `chooser`'s, and `fitter` moves the box, where they are given).
    A reader that cuts the photo itself (a line recognizer) is `read_boxes`; a crop reader's
    read_boxes is made from `read`."""
    line = read_boxes is not None
    read_boxes = read_boxes or localize.crop_reader(read, widen, size)
    wanted = list(boxes) if boxes is not None else [None if box is None else (box, "given")] * len(paths)
    rows: list[dict | None] = [None] * len(paths)
    problems: list[str] = []
    pending: list[tuple[int, np.ndarray, tuple]] = []   # (row, crop, crop box) waiting to be read

    def flush():
        if pending:
            for (i, _, crop_box), r in zip(pending, read(np.stack([c for _, c, _ in pending]))):
                rows[i] = _row(paths[i], r, threshold, crop_box, wanted[i][1])
            pending.clear()

    for i, path in enumerate(paths):
        try:
            image = localize.load_photo(path)
        except localize.PhotoError as err:
            problems.append(str(err))
            rows[i] = unreadable(path, str(err))
            continue
        if wanted[i] is not None:
            crop_box = crops.widen(wanted[i][0], widen)
            why = crops.unusable_box(crop_box, image.shape[1], image.shape[0])
            if why:
                problems.append(f"{path}: box {tuple(round(float(v), 2) for v in wanted[i][0])} ({wanted[i][1]}) "
                                f"widened to a {why}")
                rows[i] = unreadable(path, problems[-1], wanted[i][1])
                continue
            if line:  # the line recognizer cuts its own strip around the box
                rows[i] = _row(path, read_boxes(image, [wanted[i][0]])[0], threshold, crop_box, wanted[i][1])
                continue
            pending.append((i, crops.crop(image, crop_box, size), crop_box))
            if len(pending) >= batch_size:
                flush()
        else:
            loc = localize.locate(image, detector, widen=widen, read_boxes=read_boxes, chooser=chooser, fitter=fitter)
            rows[i] = _row(path, loc.read, threshold, loc.crop_box, loc.source)
    flush()
    return rows, problems  # type: ignore[return-value]


def _row(path, r: dict, threshold: float | None, crop_box, source: str) -> dict:
    row = {"file": str(path), "pred": r["pred"], "confidence": r["confidence"],
           "probability": math.exp(r["confidence"]), "decision": decide(r["pred"], r["confidence"], threshold),
           "reason": why_referred(r["pred"], r["confidence"], threshold),
           "box": [round(float(v), 2) for v in crop_box], "source": source}
    if "alternatives" in r:
        row["alternatives"] = r["alternatives"]
    return row


def predict(paths: Sequence[str | Path], model: str | Path, box=None, boxes: Sequence | None = None,
            top_k: int = 0, batch_size: int = READ_BATCH) -> tuple[list[dict], list[str]]:
    """evaluation.predict's answer from exported files: (rows, problems). `box`, `boxes` as in
    read_photos."""
    reader = Reader(model, top_k=top_k, batch_size=batch_size)
    spec = reader.spec
    detector = None
    needs_search = any(b is None for b in boxes) if boxes is not None else box is None
    if needs_search:
        if reader.detector_path is None or not reader.detector_path.is_file():
            raise localize.PhotoError(f"{reader.detector_path or reader.path.parent / 'detector.onnx'}: the detector "
                                      f"is missing; export the run again, or give --box")
        detector = localize.Detector(reader.detector_path, min_side=spec["localize"]["det_min_side"],
                                     second_side=spec["localize"].get("det_second_side"))
    return read_photos(paths, reader, detector, spec["threshold"], spec["input"]["widen"],
                       spec["input"].get("cache_size", 0), box, boxes, batch_size,
                       read_boxes=reader.read_boxes if reader.line is not None else None, chooser=reader.chooser,
                       fitter=reader.fitter)
