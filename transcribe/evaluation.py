"""Inference and evaluation: write predictions once, score them, refer unsure photos to a person.

Inference (`predict_rows`) is kept apart from scoring (metrics.py) and looking (report.py):
`transcribe evaluate` writes RUN/eval/<split>/predictions.jsonl and everything else is a pure
function of that file (airbench's infer()/evaluate() split; STYLE.md item 6).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

PREDICTION_KEYS = ("image", "file", "truth", "pred", "confidence", "adhoc_confidence",
                   "length_probs", "digit_probs", "box")
REQUIRED_KEYS = ("file", "pred", "confidence")  # what every metric and the gallery need


# ---------------------------------------------------------------- predictions.jsonl

def write_predictions(rows: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line, written to a temp file and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions.jsonl file; ValueError naming the file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise ValueError(f"{path}: line {number} lacks {', '.join(missing)}")
            if row["confidence"] is not None and not isinstance(row["confidence"], (int, float)):
                raise ValueError(f"{path}: line {number}: confidence {row['confidence']!r} is not a number")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no predictions in the file")
    return rows


# ---------------------------------------------------------------- inference

EVAL_BATCH = 256      # photos per forward pass (memory only: results do not depend on it)
DIGIT_DECIMALS = 5    # probabilities stored in predictions.jsonl: enough to rank and plot, 5x smaller
THRESHOLD_FILE = "threshold.json"
CHECKPOINTS = ("best", "last")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_RUN = "runs/svhn"  # the Makefile's RUN


def _round(values, decimals: int = DIGIT_DECIMALS):
    return [round(float(v), decimals) if not isinstance(v, list) else _round(v, decimals) for v in values]


def predict_images(model, images, crop: int = 54, batch_size: int = EVAL_BATCH) -> list[dict]:
    """Decode (N, S, S, 3) uint8 crops: one dict per image with pred, confidences and probabilities.

    The centre crop and mean subtraction are dataset.prepare_batch's (train=False), exactly what
    validation during training sees. The decoding is sequence.decode for the model's head.
    """
    import torch
    from transcribe import dataset, sequence
    head = model.cfg.head
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = dataset.prepare_batch(images[start:start + batch_size], crop=crop, train=False).to(device)
                length_logits, digit_logits = model(x)            # (B, 7), (B, 5, C)
                d = sequence.decode(length_logits, digit_logits, head=head)
                texts = d.texts()
                logp, adhoc = d.logp.cpu().tolist(), d.adhoc_logp.cpu().tolist()
                length_probs, digit_probs = d.length_probs.cpu().tolist(), d.digit_probs.cpu().tolist()
                for j, text in enumerate(texts):
                    out.append({"pred": text, "confidence": logp[j], "adhoc_confidence": adhoc[j],
                                "length_probs": _round(length_probs[j]), "digit_probs": _round(digit_probs[j])})
    finally:
        model.train(was_training)
    return out


def predict_rows(model, cache, indices: Sequence[int] | None = None, batch_size: int = EVAL_BATCH,
                 crop: int = 54) -> list[dict]:
    """The predictions.jsonl rows (docs/architecture.md) for the photos of a dataset.Cache."""
    import numpy as np
    indices = np.arange(len(cache)) if indices is None else np.asarray(indices, dtype=np.int64)
    rows = []
    for start in range(0, len(indices), batch_size):
        part = indices[start:start + batch_size]
        decoded = predict_images(model, cache.images[part], crop=crop, batch_size=batch_size)
        for i, d in zip(part.tolist(), decoded):
            rows.append({"image": os.path.abspath(cache.path(i)), "file": str(cache.files[i]),
                         "truth": cache.text(i), **d,
                         "box": [round(float(v), 2) for v in cache.boxes[i]]})
    return rows


# ---------------------------------------------------------------- run folders

def load_run(run: str | Path, checkpoint: str = "best"):
    """(model, checkpoint dict, DataConfig) of a run folder; the data config is the checkpoint's own."""
    from transcribe import config as configlib
    from transcribe import dataset
    from transcribe.training import load_checkpoint
    run = Path(run)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    path = run / f"ckpt-{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (is {run} a run folder? it should hold "
                                f"config.json and ckpt-best.pt / ckpt-last.pt)")
    model, ckpt = load_checkpoint(path)
    data_cfg = configlib.from_dict(dataset.DataConfig, ckpt["data_config"])
    return model, ckpt, data_cfg


def _split_name(split: str) -> str:
    """Folder name under RUN/eval for a split: val, test, or a cleaned-up name of the path."""
    import re
    if split in ("val", "test"):
        return split
    p = Path(split)
    name = p.stem if p.suffix == ".h5" else p.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"


def split_cache(split: str, data_cfg):
    """The dataset.Cache to evaluate: the run's own validation split, its sibling test folder, or PATH.

    Every cache is built with the run's crop parameters (widen, size), as in training.
    """
    from transcribe import dataset
    if split == "val":
        return dataset.load_splits(data_cfg)[1]
    if split == "test":
        first = Path(data_cfg.train[0])
        if first.suffix == ".h5":
            raise FileNotFoundError(f"--split test: the run trained on the cache {first}, which has no sibling "
                                    f"'test' folder; give the test folder or cache as --split PATH")
        folder = first.parent / "test"
        if not folder.is_dir():
            raise FileNotFoundError(f"--split test: {folder} (the sibling of the training folder {first}) "
                                    f"does not exist; give the test data as --split PATH")
        return dataset.evaluation_cache(folder, data_cfg)
    return dataset.evaluation_cache(split, data_cfg)


def read_threshold(run: str | Path) -> dict | None:
    path = Path(run) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg}); delete it and evaluate --split val again") from None
    if not isinstance(data, dict) or "threshold" not in data:
        raise ValueError(f"{path}: no 'threshold' key; delete it and evaluate --split val again")
    return data


def _threshold_matches(saved: dict | None, ckpt: dict, checkpoint: str, target: float) -> bool:
    return (saved is not None and saved.get("checkpoint") == checkpoint and saved.get("step") == ckpt.get("step")
            and abs(float(saved.get("target", -1)) - target) < 1e-12)


def evaluate(run: str | Path, split: str = "val", target: float = 0.98, checkpoint: str = "best",
             gallery_n: int = 50, say=print) -> dict[str, Any]:
    """Predict a split, score it, write RUN/eval/<name>/{predictions.jsonl, report.json, report.md,
    plots, gallery.html, mistakes.png}; returns {"report", "out", "gallery", "threshold"}.

    The refusal threshold is chosen on validation only (evaluating val writes RUN/threshold.json);
    any other split gets that threshold unchanged, and the best threshold for the split itself is
    reported separately (an oracle number, never the headline).
    """
    import torch

    from transcribe import metrics, report
    from transcribe.config import save_json
    run = Path(run)
    model, ckpt, data_cfg = load_run(run, checkpoint)
    saved = read_threshold(run)
    if split != "val" and not _threshold_matches(saved, ckpt, checkpoint, target):
        say(f"no validation threshold for ckpt-{checkpoint}.pt (step {ckpt.get('step')}) at target "
            f"{100 * target:g}% in {run / THRESHOLD_FILE}: evaluating the validation split first")
        evaluate(run, "val", target, checkpoint, gallery_n, say)
        saved = read_threshold(run)
    name = _split_name(split) + ("" if checkpoint == "best" else f"-{checkpoint}")
    out = run / "eval" / name
    cache = split_cache(split, data_cfg)
    started = time.perf_counter()
    rows = predict_rows(model, cache, crop=data_cfg.crop)
    seconds = time.perf_counter() - started
    write_predictions(rows, out / "predictions.jsonl")
    # images/s of inference from the cached crops (cropping happened once, when the cache was built)
    save_json({"system": f"transcribe {run.name}", "images_per_second": round(len(rows) / seconds, 2),
               "speed_measured": f"model inference on cached 64x64 crops, batch {EVAL_BATCH}, "
                                 f"{torch.get_num_threads()} threads",
               "checkpoint": str(run / f"ckpt-{checkpoint}.pt"), "step": ckpt.get("step")}, out / "meta.json")
    if split == "val":
        rep = metrics.report(rows, target=target)
        th = rep["threshold"]
        save_json({"threshold": th["value"], "target": target, "checkpoint": checkpoint, "step": ckpt.get("step"),
                   "chosen_on": "val", "photos": rep["n_scored"], "coverage": th["coverage"],
                   "accuracy": th["accuracy"],
                   "note": "accept a transcription when log P(S|X) >= threshold; null = no threshold reaches "
                           "the target on validation: refer every photo"}, run / THRESHOLD_FILE)
    else:
        rep = metrics.report(rows, threshold=saved["threshold"], target=target,
                             threshold_source="chosen on validation")
    rep["split"] = split
    rep["checkpoint"] = {"name": checkpoint, "step": ckpt.get("step")}
    save_json(rep, out / "report.json")
    title = f"{run.name}: {name}"
    tmp = out / "report.md.tmp"
    tmp.write_text(metrics.to_markdown(rep, title=title))
    tmp.replace(out / "report.md")
    plots = report.write_plots(rows, rep, out, title=title)
    report.write_pr_curve(rows, out / "tb", tag=f"accept/{name}", step=int(ckpt.get("step") or 0))
    gallery = report.write_gallery(rows, out, n=gallery_n, title=f"transcribe {title}", source=str(out),
                                   plots=plots)
    say(headline(rep, name))
    say(f"report: {out / 'report.md'}")
    say(f"gallery: {gallery['gallery']}")
    return {"report": rep, "out": out, "gallery": gallery["gallery"], "threshold": rep["threshold"]["value"]}


def headline(rep: dict[str, Any], name: str) -> str:
    """One line per headline number (these are what users come for)."""
    from transcribe.metrics import _num, _pct
    th, best = rep["threshold"], rep["best_at_target"]
    target = _pct(rep["target"])
    where = "threshold chosen here" if th["source"] == "chosen on this split" else "validation threshold"
    lines = [f"{name}: {rep['n_scored']} photos",
             f"  sequence accuracy   {_pct(rep['sequence_accuracy'])}",
             f"  character accuracy  {_pct(rep['character_accuracy'])}",
             f"  coverage at {target} ({where}): {_pct(th['coverage'])}, accuracy there {_pct(th['accuracy'])}"]
    if th["source"] != "chosen on this split":
        lines.append(f"  best achievable coverage at {target} on this split (oracle, not a result): "
                     f"{_pct(best['coverage'])}")
    lines += [f"  AUC (accuracy vs coverage) {_num(rep['auc'])}",
              f"  ECE of exp(confidence)     {_num(rep['calibration']['ece'])}"]
    return "\n".join(lines)


def add_evaluate_arguments(parser) -> None:
    parser.add_argument("run", type=Path, help="run folder (holds config.json, ckpt-best.pt, ckpt-last.pt)")
    parser.add_argument("--split", default="val",
                        help="val (the run's validation split: chooses the refusal threshold), test (the "
                             "'test' folder beside the run's first training folder) or PATH (a format-1 "
                             "folder or .h5 cache); default: val")
    parser.add_argument("--target", type=float, default=0.98,
                        help="accuracy the accepted transcriptions must reach (default: 0.98, human level)")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="which checkpoint (default: best)")
    parser.add_argument("--n", type=int, default=50, help="photos per gallery section (default: 50)")
    parser.add_argument("--no-boxes", action="store_true",
                        help="ignore the given boxes: find the number in each whole photo, then read it; "
                             "writes RUN/eval/<split>-noboxes (whole.py)")
    parser.add_argument("--limit", type=int, default=0, help="with --no-boxes: the first LIMIT photos only (0: all)")


def run_evaluate(args) -> int:
    import sys
    from transcribe.svhn import DataError
    if not 0 < args.target <= 1:
        raise SystemExit(f"--target must be in (0, 1], got {args.target}")
    try:
        if args.no_boxes:  # whole photos: localize, then read (whole.py)
            from transcribe.whole import evaluate_without_boxes
            evaluate_without_boxes(args.run, args.split, args.target, args.checkpoint, args.n, args.limit)
            return 0
        evaluate(args.run, args.split, args.target, args.checkpoint, args.n)
    except (FileNotFoundError, ValueError, DataError) as err:
        print(f"transcribe evaluate: {err}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- predict

def _natural_key(path: Path):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"--box {text!r}: expected left,top,width,height in photo pixels with width, height > 0")
    return box  # type: ignore[return-value]


def prepare_photo(path: str | Path, box=None, widen: float = 1.3, size: int = 64):
    """(size x size x 3 uint8 crop, crop box) of one photo, as the cache builder makes them.

    With a box (the number's box, e.g. from a detector): widened about its centre by the run's
    factor and cropped (crops.py). Without one the photo is taken as an already cropped number
    and the whole of it is resized to size x size (no widening: there is nothing to widen into).
    """
    from transcribe import crops, svhn
    image = svhn.load_image(path)
    h, w = image.shape[:2]
    crop_box = crops.widen(box, widen) if box is not None else (0.0, 0.0, float(w), float(h))
    return crops.crop(image, crop_box, size), crop_box


def predict(paths: Sequence[str | Path], run: str | Path = DEFAULT_RUN, box=None) -> tuple[list[dict], list[str]]:
    """Read photos with a run's model; decide accept/refer with the run's validation threshold.

    Returns (rows, problems): rows with file, pred, confidence (log P(S|X)), probability, decision,
    box; problems = unreadable photos (each also a row with decision "unreadable").
    """
    import numpy as np
    from transcribe.svhn import DataError
    run = Path(run)
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
    from transcribe.sequence import REFUSED_TEXT
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


def _csv_text(rows: list[dict]) -> str:
    import csv
    import io
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "transcription", "confidence", "log_confidence", "decision"])
    for r in rows:
        writer.writerow([r["file"], r["pred"] if r["decision"] == "accept" else "",
                         "" if r["probability"] is None else f"{r['probability']:.4f}",
                         "" if r["confidence"] is None else f"{r['confidence']:.4f}", r["decision"]])
    return buf.getvalue()


def add_predict_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", type=Path,
                        help="photos, or folders (every image in them; the answer is then a CSV)")
    parser.add_argument("--box", default=None, metavar="L,T,W,H",
                        help="the number's box in the photo (pixels); it is widened by the run's factor "
                             "(write --box=-3,... when left is negative). Without it the number is found "
                             "in the photo (localize.py; an already cropped number is found too)")
    parser.add_argument("--model", type=Path, default=None, metavar="MODEL.onnx",
                        help="read with files from `transcribe export` instead of --run: no torch needed "
                             "(pip install 'transcribe[runtime]'; runtime.py)")
    parser.add_argument("--run", type=Path, default=Path(DEFAULT_RUN),
                        help=f"run folder with ckpt-*.pt and threshold.json (default: {DEFAULT_RUN})")
    parser.add_argument("--csv", type=Path, default=None, metavar="OUT",
                        help="write file, transcription (empty when referred), confidence, log_confidence, "
                             "decision to OUT")


def run_predict(args) -> int:
    import sys
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
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.csv.with_name(args.csv.name + ".tmp")
        tmp.write_text(_csv_text(rows))
        tmp.replace(args.csv)
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
