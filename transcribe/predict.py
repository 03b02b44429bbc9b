"""Prediction: read the number in new photos, or refer them to a person.

    transcribe predict PHOTO... [--box L,T,W,H] [--run RUN] [--csv OUT]

A photo is cropped as the cache builder crops (crops.py, with the run's widening and size),
read by the run's best model (evaluation.predict_images) and accepted when log P(S|X) reaches
the threshold chosen on the run's validation split (RUN/threshold.json); otherwise it is
referred to a person with the model's best guess.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from transcribe import crops, svhn
from transcribe.config import CACHE_SIZE, DEFAULT_RUN, WIDEN
# The torch path (evaluation, runs, sequence) is imported inside predict(): `predict --model`
# runs on the light runtime (runtime.py) where torch is not installed.
from transcribe.svhn import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"--box {text!r}: expected left,top,width,height in photo pixels (finite numbers) "
                         f"with width, height > 0")
    return box  # type: ignore[return-value]


def prepare_photo(path: str | Path, box=None, widen: float = WIDEN, size: int = CACHE_SIZE):
    """(size x size x 3 uint8 crop, crop box) of one photo, as the cache builder makes them.

    With a box (the number's box, e.g. from a detector): widened about its centre by the run's
    factor and cropped (crops.py). Without one the photo is taken as an already cropped number
    and the whole of it is resized to size x size (no widening: there is nothing to widen into).
    """
    image = svhn.load_image(path)
    h, w = image.shape[:2]
    crop_box = crops.widen(box, widen) if box is not None else (0.0, 0.0, float(w), float(h))
    why = crops.unusable_box(crop_box, w, h)
    if why:
        raise DataError(f"{path}: --box {tuple(box)} widened to a {why}")
    return crops.crop(image, crop_box, size), crop_box


def predict(paths: Sequence[str | Path], run: str | Path = DEFAULT_RUN, box=None) -> tuple[list[dict], list[str]]:
    """Read photos with a run's model; decide accept/refer with the run's validation threshold.

    Returns (rows, problems): rows with file, pred, confidence (log P(S|X)), probability, decision,
    box; problems = unreadable photos (each also a row with decision "unreadable").
    """
    from transcribe.evaluation import predict_images
    from transcribe.runs import THRESHOLD_FILE, load_run, read_threshold
    from transcribe.sequence import REFUSED_TEXT
    run = Path(run)
    if (run / "model.pt").is_file():  # a fine-tuned line recognizer (`transcribe transfer`)
        return _predict_transfer(paths, run, box)
    saved = read_threshold(run)
    if saved is None:
        raise FileNotFoundError(f"{run / THRESHOLD_FILE}: no refusal threshold yet; run "
                                f"`transcribe evaluate {run} --split val` first")
    model, ckpt, data_cfg = load_run(run, saved.get("checkpoint", "best"))
    threshold = saved["threshold"]
    if box is None:  # a whole photo: find the number's box first (localize.py via whole.py)
        from transcribe.whole import read_whole
        return read_whole(paths, model, data_cfg, threshold)
    crops_, rows, problems = [], [], []
    for path in paths:
        try:
            crop, crop_box = prepare_photo(path, box, data_cfg.widen, data_cfg.size)
        except DataError as err:
            problems.append(str(err))
            rows.append({"file": str(path), "pred": "", "confidence": None, "probability": None,
                         "decision": "unreadable", "box": None})
            continue
        crops_.append(crop)
        rows.append({"file": str(path), "box": [round(float(v), 2) for v in crop_box]})
    decoded = iter(predict_images(model, np.stack(crops_), crop=data_cfg.crop) if crops_ else [])
    for row in rows:
        if row.get("decision") == "unreadable":
            continue
        d = next(decoded)
        refused = d["pred"] == REFUSED_TEXT  # '>5': more digits than the model can spell
        accept = threshold is not None and d["confidence"] >= threshold and not refused
        row.update(pred=d["pred"], confidence=d["confidence"], probability=math.exp(d["confidence"]),
                   decision="accept" if accept else "refer")
    return rows, problems


def _predict_transfer(paths: Sequence[str | Path], run: Path, box=None) -> tuple[list[dict], list[str]]:
    """predict() for a transfer run: its threshold was chosen on the out-of-fold predictions.
    Without a box the number is found in the photo first (localize.py via whole.py)."""
    if box is None:
        from transcribe.whole import read_whole_run
        return read_whole_run(paths, run)
    from transcribe.reader import Reader
    reader = Reader(run)
    rows, problems, images, boxes, where = [], [], [], [], []
    for path in paths:
        try:
            image = svhn.load_image(path)
        except DataError as err:
            problems.append(str(err))
            rows.append({"file": str(path), "pred": "", "confidence": None, "probability": None,
                         "decision": "unreadable", "box": None})
            continue
        where.append(len(rows))
        rows.append({"file": str(path)})
        images.append(image)
        boxes.append(box)
    for i, reading in zip(where, reader.read(images, boxes) if images else []):
        rows[i].update(pred=reading.text, confidence=reading.log_prob, probability=math.exp(reading.log_prob),
                       decision="accept" if reading.accepted else "refer", box=list(reading.box))
    return rows, problems


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "transcription", "confidence", "log_confidence", "decision"])
    for r in rows:
        writer.writerow([r["file"], r["pred"] if r["decision"] == "accept" else "",
                         "" if r["probability"] is None else f"{r['probability']:.4f}",
                         "" if r["confidence"] is None else f"{r['confidence']:.4f}", r["decision"]])
    return buf.getvalue()


def run_predict(args) -> int:
    paths, folders = [], False
    for p in args.images:
        if p.is_dir():
            folders = True
            paths += sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        else:
            paths.append(p)
    if not paths:
        print(f"transcribe predict: no images in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 1
    try:
        box = parse_box(args.box) if args.box else None
        if box is not None and len(paths) > 1:
            raise ValueError("--box applies to a single photo; give one image with it")
        if args.model is not None:  # the light runtime: ONNX files, no torch (runtime.py)
            from transcribe.runtime import predict as predict_onnx
            rows, problems = predict_onnx(paths, args.model, box)
        else:
            rows, problems = predict(paths, args.run, box)
    except (FileNotFoundError, ValueError) as err:
        print(f"transcribe predict: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"unreadable: {problem}", file=sys.stderr)
    if args.csv:
        from transcribe.runs import atomic_write
        atomic_write(args.csv, _csv_text(rows))
    if folders and not args.csv:
        sys.stdout.write(_csv_text(rows))
    else:
        for r in rows:
            if r["decision"] == "accept":
                print(f"{r['file']}: {r['pred'] or 'no number'}  (confidence {100 * r['probability']:.1f}%)")
            elif r["decision"] == "refer":
                print(f"{r['file']}: refer to a human  (best guess {r['pred'] or 'no number'}, confidence "
                      f"{100 * r['probability']:.1f}%)")
            else:
                print(f"{r['file']}: unreadable")
        if args.csv:
            print(f"wrote {args.csv}")
    counts = {k: sum(r["decision"] == k for r in rows) for k in ("accept", "refer", "unreadable")}
    print(f"{len(rows)} photos: {counts['accept']} read, {counts['refer']} referred to a human"
          + (f", {counts['unreadable']} unreadable" if counts["unreadable"] else ""), file=sys.stderr)
    return 1 if counts["unreadable"] else 0
