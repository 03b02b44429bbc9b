"""Prediction: read the number in new photos, or refer them to a person.

    transcribe predict PHOTO|FOLDER... [--run RUN | --model MODEL.onnx] [--box L,T,W,H | --boxes FILE]
                      [--top-k K] [--format csv|jsonl] [--out FILE] [--device D] [--batch-size N]

One record per photo (CSV or JSON lines, on stdout or in --out): the file; the decision
(accepted, referred or unreadable) and its reason; the transcription, which is the model's best
guess even when the photo is referred; its confidence log P(S|X) and P; the box read and where it
came from; with --top-k, the K most probable transcriptions with their log P(S|X).

The box: `--box` for one photo, `--boxes FILE` for many (a CSV of digit or number boxes, or a
format-1 digitStruct.mat; the union of a photo's rows is its number's box, as format 1 does),
else the number is found in the photo (localize.py via whole.py or runtime.py; a transfer run reads
the whole photo as the number). A given box is widened by the run's factor and cropped as the
cache builder crops (crops.py). A photo missing from --boxes is not read: it is reported as
unreadable with that reason (give its box, or leave --boxes out to have it searched).

The decision: accepted when log P(S|X) reaches the threshold chosen on the run's validation split
(RUN/threshold.json, or the exported model.json), otherwise referred to a person.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from transcribe import crops, runtime, svhn
from transcribe.config import CACHE_SIZE, DEFAULT_RUN, WIDEN
# The torch path (runs, whole.py, transfer.py) is imported inside predict(): `predict --model`
# runs on the light runtime (runtime.py) where torch is not installed.
from transcribe.svhn import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FORMATS = ("csv", "jsonl")
BATCH_SIZE = runtime.READ_BATCH   # crops per forward pass (memory only: results do not depend on it)
BOX_COLUMNS = ("file", "left", "top", "width", "height")
CSV_COLUMNS = ("file", "decision", "reason", "transcription", "log_p", "p", "box_left", "box_top", "box_width",
               "box_height", "box_source", "alternatives")
DECISIONS = {"accept": "accepted", "refer": "referred", "unreadable": "unreadable"}
DECIMALS = 6                      # of log P and P in the output: differences below 1e-6 mean nothing here


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


# ---------------------------------------------------------------- --boxes FILE

def read_boxes(path: str | Path) -> dict[str, tuple[float, float, float, float] | str]:
    """file -> its number's box (the union of its rows' boxes), or a string saying why its box is
    unusable. From a CSV with columns file,left,top,width,height (one row per digit or one per
    number) or from a format-1 digitStruct.mat (svhn.read_entries). Raises ValueError / DataError
    naming the file when the file itself cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such boxes file" if not path.exists() else f"{path}: not a file")
    digit_boxes: dict[str, list] = {}
    bad: dict[str, str] = {}
    if path.suffix.lower() == ".mat":
        for e in svhn.read_entries(path):
            digit_boxes.setdefault(e.file, []).extend(e.boxes)
    elif path.suffix.lower() == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or ())]
                if missing:
                    raise ValueError(f"{path}: no column {', '.join(missing)} (the header must name "
                                     f"{','.join(BOX_COLUMNS)})")
                for row in reader:
                    file = (row["file"] or "").strip()
                    if not file:
                        raise ValueError(f"{path}: line {reader.line_num}: empty file name")
                    try:
                        box = tuple(float(row[c]) for c in BOX_COLUMNS[1:])
                    except (TypeError, ValueError):
                        raise ValueError(f"{path}: line {reader.line_num}: left, top, width, height must be "
                                         f"numbers") from None
                    digit_boxes.setdefault(os.path.normpath(file), []).append(box)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a UTF-8 text file") from None
    else:
        raise ValueError(f"{path}: --boxes takes a .csv ({','.join(BOX_COLUMNS)}) or a format-1 digitStruct.mat")
    table: dict[str, tuple[float, float, float, float] | str] = {}
    for file, boxes in digit_boxes.items():
        if not boxes or any(not all(math.isfinite(v) for v in b) or b[2] <= 0 or b[3] <= 0 for b in boxes):
            bad[file] = f"its box in {path} is not a box (width and height must be positive numbers)"
        else:
            table[file] = crops.number_box(boxes)
    return {**table, **bad}


def box_of(table: dict, path: str | Path):
    """The entry of --boxes for a photo: by its path as given, else by its file name (format 1
    names photos by file name alone); None if it is not listed."""
    key = os.path.normpath(str(path))
    if key in table:
        return table[key]
    return table.get(Path(path).name)


# ---------------------------------------------------------------- reading

def predict(paths: Sequence[str | Path], run: str | Path = DEFAULT_RUN, box=None, boxes: dict | None = None,
            top_k: int = 0, device: str = "auto", batch_size: int = BATCH_SIZE, model: str | Path | None = None,
            boxes_name: str = "--boxes") -> tuple[list[dict], list[str]]:
    """Read photos with a run's model (or the exported `model`); decide accept/refer with its threshold.

    Returns (rows, problems): rows with file, pred (the best guess), confidence (log P(S|X)),
    probability, decision (accept / refer / unreadable), reason, box (the crop box read), source
    (where the box came from) and, with top_k, alternatives ([text, log P(S|X)], most probable
    first); problems = one line per unreadable photo (each also a row)."""
    paths = [Path(p) for p in paths]
    rows: list[dict | None] = [None] * len(paths)
    problems: list[str] = []
    todo, wanted = [], []
    for i, p in enumerate(paths):
        if not p.is_file():  # before the run is loaded: a missing photo is reported as missing
            problems.append(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
            rows[i] = runtime.unreadable(p, problems[-1])
            continue
        if boxes is not None:
            entry = box_of(boxes, p)
            if entry is None or isinstance(entry, str):
                why = f"{p}: not listed in {boxes_name}" if entry is None else f"{p}: {entry}"
                problems.append(why)
                rows[i] = runtime.unreadable(p, why, "boxes file")
                continue
            wanted.append((entry, "boxes file"))
        todo.append(i)
    if todo:
        some = [paths[i] for i in todo]
        listed = wanted if boxes is not None else None
        if model is not None:
            if device == "cuda":
                raise ValueError("--device cuda: the ONNX runtime path reads on the CPU (onnxruntime); use --run")
            got, more = runtime.predict(some, model, box, listed, top_k, batch_size)
        else:
            got, more = _predict_run(some, Path(run), box, listed, top_k, device, batch_size)
        problems += more
        for i, row in zip(todo, got):
            rows[i] = row
    return rows, problems  # type: ignore[return-value]


def check_run(run: Path) -> str:
    """'convnet' or 'transfer'; FileNotFoundError naming the missing file and the command that makes it."""
    from transcribe import runs, transfer
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder; `transcribe train --out {run}` (or `make train "
                                f"RUN={run}`) makes one, or give --run RUN / --model MODEL.onnx")
    if (run / transfer.CHECKPOINT).is_file():
        if not (run / runs.THRESHOLD_FILE).is_file():
            raise FileNotFoundError(f"{run / runs.THRESHOLD_FILE}: missing; `transcribe transfer --folds 5 --out {run}` "
                                    f"writes it (chosen on the out-of-fold predictions)")
        return "transfer"
    best = run / "ckpt-best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best}: missing; `transcribe train --out {run}` writes it "
                                f"(a transfer run holds {transfer.CHECKPOINT}: `transcribe transfer --out {run}`)")
    if runs.read_threshold(run) is None:
        raise FileNotFoundError(f"{run / runs.THRESHOLD_FILE}: no refusal threshold yet; run "
                                f"`transcribe evaluate {run} --split val` first")
    return "convnet"


def _predict_run(paths, run: Path, box, boxes, top_k: int, device: str, batch_size: int):
    from transcribe.runs import load_run, read_threshold, resolve_device
    kind = check_run(run)
    if kind == "transfer":
        return _predict_transfer(paths, run, box, boxes, top_k, device, batch_size)
    from transcribe.whole import read_whole
    saved = read_threshold(run)
    model, ckpt, data_cfg = load_run(run, saved.get("checkpoint", "best"))
    model.to(resolve_device(device))
    return read_whole(paths, model, data_cfg, saved["threshold"], box, boxes, top_k, batch_size, run=run)


def _predict_transfer(paths, run: Path, box, boxes, top_k: int, device: str, batch_size: int):
    """predict() for a transfer run: its threshold was chosen on the out-of-fold predictions.
    Without a box the number is found in the photo first (localize.py via whole.py)."""
    if box is None and boxes is None:
        from transcribe.whole import read_whole_run
        return read_whole_run(paths, run, device, top_k)
    from transcribe import localize, transfer
    from transcribe.runs import resolve_device
    model, cfg, threshold = transfer.load(run)
    model.to(resolve_device(device))  # the trained stage, neck and head; the frozen stem runs in onnxruntime on the CPU
    stem = transfer.rec.StemSession(model)
    wanted = boxes if boxes is not None else [None if box is None else (box, "given")] * len(paths)
    rows: list[dict | None] = [None] * len(paths)
    problems: list[str] = []
    for start in range(0, len(paths), max(1, batch_size)):
        where, photos, used = [], [], []
        for i in range(start, min(start + max(1, batch_size), len(paths))):
            path, entry = paths[i], wanted[i]
            try:
                image = localize.load_photo(path)
                b, source = entry if entry is not None else ((0.0, 0.0, float(image.shape[1]), float(image.shape[0])),
                                                             "whole photo")
                photos.append(transfer.photo_from(image, b, str(path)))
            except (localize.PhotoError, ValueError) as err:
                why = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
                problems.append(why)
                rows[i] = runtime.unreadable(path, why)
                continue
            where.append(i)
            used.append((crops.widen(b, cfg.widen) if entry is not None else b, source))
        for i, r, (b, source) in zip(where, transfer.transcribe_photos(model, cfg, photos, stem, threshold, top_k)
                                     if photos else [], used):
            rows[i] = runtime._row(paths[i], r, threshold, b, source)
    return rows, problems


# ---------------------------------------------------------------- the output

def box_source(row: dict) -> str | None:
    """Where the box read came from, in words."""
    src = row.get("source")
    if src in (None, "given", "boxes file", "whole photo"):
        return {"given": "given (--box)"}.get(src, src)
    return f"localized ({src})"   # localize.locate's candidate kind: detection, merge, photo, prior


def record(row: dict) -> dict:
    """The output record of one photo (a JSON line; the CSV flattens it)."""
    rec = {"file": row["file"], "decision": DECISIONS[row["decision"]], "reason": row.get("reason"),
           "transcription": row["pred"],
           "log_p": None if row["confidence"] is None else round(float(row["confidence"]), DECIMALS),
           "p": None if row["confidence"] is None else round(math.exp(row["confidence"]), DECIMALS),
           "box": row["box"], "box_source": box_source(row)}
    if "alternatives" in row:
        rec["alternatives"] = [{"transcription": t, "log_p": round(float(lp), DECIMALS)} for t, lp in row["alternatives"]]
    return rec


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def to_csv(records: list[dict]) -> str:
    """One row per photo; box as four columns; alternatives as 'text:log_p' separated by spaces
    (an empty text, no number, reads ':-3.2')."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        box = r["box"] or ["", "", "", ""]
        alts = " ".join(f"{a['transcription']}:{a['log_p']}" for a in r.get("alternatives", []))
        writer.writerow([r["file"], r["decision"], r["reason"] or "", "" if r["transcription"] is None else r["transcription"],
                         "" if r["log_p"] is None else r["log_p"], "" if r["p"] is None else r["p"], *box,
                         r["box_source"] or "", alts])
    return buf.getvalue()


def write_atomically(path: str | Path, text: str) -> None:
    """runs.atomic_write without its torch import (`predict --model` runs where torch is not
    installed): a temporary file beside `path`, then renamed over it."""
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_predict(args) -> int:
    paths = []
    for p in args.images:
        if p.is_dir():
            paths += sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        else:
            paths.append(p)
    if not paths:
        print(f"transcribe predict: no images in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 1
    try:
        if args.box and args.boxes:
            raise ValueError("--box and --boxes: give one (--box for one photo, --boxes FILE for many)")
        if args.top_k < 0 or args.batch_size < 1:
            raise ValueError("--top-k must be >= 0 and --batch-size >= 1")
        box = parse_box(args.box) if args.box else None
        if box is not None and len(paths) > 1:
            raise ValueError("--box applies to a single photo; give one image with it, or --boxes FILE for many")
        boxes = read_boxes(args.boxes) if args.boxes else None
        rows, problems = predict(paths, args.run, box, boxes, args.top_k, args.device, args.batch_size,
                                 model=args.model, boxes_name=str(args.boxes))
    except (FileNotFoundError, ValueError, DataError) as err:
        print(f"transcribe predict: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"unreadable: {problem}", file=sys.stderr)
    records = [record(r) for r in rows]
    text = to_jsonl(records) if args.format == "jsonl" else to_csv(records)
    if args.out is not None:
        write_atomically(args.out, text)
    else:
        sys.stdout.write(text)
    counts = {k: sum(r["decision"] == k for r in rows) for k in ("accept", "refer", "unreadable")}
    print(f"{len(rows)} photos: {counts['accept']} accepted, {counts['refer']} referred to a human"
          + (f", {counts['unreadable']} unreadable" if counts["unreadable"] else "")
          + (f"; wrote {args.out}" if args.out is not None else ""), file=sys.stderr)
    return 1 if counts["unreadable"] else 0
