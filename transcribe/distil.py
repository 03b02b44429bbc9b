"""Distillation: the fine-tuned recognizer (a `transcribe transfer` run) teaches the paper's ConvNet.

    transcribe distil --teacher runs/sample-teacher --alpha 0.5 --top-k 5 \\
        --preset cpu --init runs/demo/ckpt-best.pt --train SAMPLE --mix data/synth/train --mix-size 3600 \\
        --out runs/sample-distil --steps 1000 ...          (every flag of `transcribe train`)

1. The student's training rows (dataset.load_splits: the real training photos, never the
   validation split, plus the --mix photos) are read ONCE by the teacher: for each photo its
   `top_k` most probable transcriptions under CTC (prefix beam search, the survivors rescored
   exactly: log P(S|X), ctc.decode_top_k), with probabilities q_k renormalised over the K. The labels are
   cached (data/cache/distil/<key>.json, written atomically), keyed by the teacher's weights, its
   settings, K and the photos, so a second student reuses them.
2. The student trains with training.py's loop, unchanged but for its loss (sequence.distillation_loss):

       alpha * -log P(S = y | X) + (1 - alpha) * sum_k q_k * -log P(S = s_k | X)

   soft targets at the level of whole transcriptions, the paper's own quantity (Goodfellow et al.
   2014, sec. 3; Hinton et al. 2015; sequence-level distillation, Kim & Rush 2016). alpha = 1 is
   plain training on the true labels (the same run as `transcribe train` with the same flags).
   The run folder is an ordinary training run (config.json, ckpt-*.pt, metrics.jsonl) plus
   distil.json: `transcribe evaluate RUN --split val` reads it.

The teacher needs the `transfer` extra (rapidocr, onnx, onnx2torch, onnxruntime); the student does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transcribe import crops, dataset, svhn, training, transfer
from transcribe import recognizer as rec
from transcribe.config import MAX_DIGITS, DistilConfig, from_args, to_dict
from transcribe.runs import save_json

LABELS_VERSION = 1   # bump when what a label file holds changes: old files are recomputed
DISTIL_FILE = "distil.json"


# ----------------------------------------------------------------------------- teacher labels

def photos_of(cache: dataset.Cache) -> list[transfer.Photo]:
    """The teacher's view of every row of a student cache: the photo and its number box (the union
    of the digit boxes, as `transcribe transfer` reads it), in row order."""
    photos: list[transfer.Photo | None] = [None] * len(cache)
    for f, folder in enumerate(cache.folders):
        rows = np.flatnonzero(cache.source == f)
        if not len(rows):
            continue
        records = {r.file: r for r in svhn.read_split(folder).records}
        for i in rows:
            name = str(cache.files[i])
            if name not in records:
                raise ValueError(f"{Path(folder) / name}: in the cache but not in {folder}/digitStruct.mat (stale cache?)")
            path = Path(folder) / name
            photos[i] = transfer.photo_from(svhn.load_image(path), crops.number_box(records[name].boxes), str(path),
                                            records[name].text)
    return photos  # type: ignore[return-value]


def read_top_k(model: rec.LineRecognizer, cfg, photos: list[transfer.Photo], k: int,
               threads: int) -> list[list[tuple[str, float]]]:
    """The teacher's k most probable transcriptions of each photo with their exact log P(S|X)."""
    stem = rec.StemSession(model, threads)
    out: list[list[tuple[str, float]]] = [[] for _ in photos]
    start = time.time()
    for s in range(0, len(photos), 1024):  # in chunks: the stem features of 20,000 views would fill memory
        chunk = photos[s:s + 1024]
        feats = transfer.stem_features(stem, [transfer.eval_view(p, cfg) for p in chunk], cfg, desc="teacher")
        rows = transfer.read(model, feats, chunk, list(range(len(chunk))), cfg.beam, top_k=k)
        for i, row in enumerate(rows):  # transfer.read's alternatives: the beam's survivors, rescored exactly
            out[s + i] = [(text, logp) for text, logp in row["alternatives"]]
        print(f"  teacher: {min(s + 1024, len(photos))}/{len(photos)} photos labelled "
              f"({time.time() - start:.0f} s)", file=sys.stderr)
    return out


def label_key(teacher: str | Path, k: int, paths: list[str]) -> dict:
    """Everything the labels depend on: the teacher's fine-tuned weights, K, and the photos."""
    weights = hashlib.sha256(Path(teacher, transfer.CHECKPOINT).read_bytes()).hexdigest()
    photos = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return {"version": LABELS_VERSION, "teacher_sha256": weights, "top_k": k, "photos_sha256": photos,
            "photos": len(paths)}


def save_labels(path: str | Path, key: dict, paths: list[str], readings: list[list[tuple[str, float]]]) -> None:
    save_json({"key": key, "labels": [{"image": p, "readings": [[t, lp] for t, lp in r]}
                                      for p, r in zip(paths, readings)]}, path)


def load_labels(path: str | Path, key: dict) -> list[list[tuple[str, float]]] | None:
    """The cached readings if the file holds labels for exactly this key, else None."""
    try:
        stored = json.loads(Path(path).read_text())
        if stored["key"] != key:
            return None
        return [[(str(t), float(lp)) for t, lp in row["readings"]] for row in stored["labels"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        if Path(path).exists():
            print(f"  {path}: unreadable label cache ({err}); recomputing it", file=sys.stderr)
        return None


def teacher_labels(teacher: str | Path, cache: dataset.Cache, k: int, threads: int,
                   cache_dir: str | Path) -> list[list[tuple[str, float]]]:
    """Top-k readings of every row of `cache` by the teacher run: computed once, then read back."""
    paths = [str(Path(cache.path(i)).resolve()) for i in range(len(cache))]
    key = label_key(teacher, k, paths)
    path = Path(cache_dir) / "distil" / f"{hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"
    readings = load_labels(path, key)
    if readings is not None:
        print(f"  teacher labels of {len(paths)} photos read from {path}", file=sys.stderr)
        return readings
    model, cfg, _ = transfer.load(teacher)
    readings = read_top_k(model, cfg, photos_of(cache), k, threads)
    save_labels(path, key, paths, readings)
    print(f"  teacher labels written to {path}", file=sys.stderr)
    return readings


def soft_targets(readings: list[list[tuple[str, float]]], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Readings -> (lengths (N, K), digits (N, K, MAX_DIGITS) with -1 past the length, q (N, K)):
    q_k = P(s_k|X) / sum_j P(s_j|X) over the K found; missing candidates padded with q = 0."""
    n = len(readings)
    lengths = torch.zeros(n, k, dtype=torch.long)
    digits = torch.full((n, k, MAX_DIGITS), -1, dtype=torch.long)
    q = torch.zeros(n, k)
    for i, row in enumerate(readings):
        row = [(t, lp) for t, lp in row if len(t) <= MAX_DIGITS][:k]
        if not row:
            continue
        logp = torch.tensor([lp for _, lp in row], dtype=torch.float64)
        q[i, :len(row)] = torch.softmax(logp, 0).float()
        for j, (text, _) in enumerate(row):
            lengths[i, j] = len(text)
            digits[i, j, :len(text)] = torch.tensor([int(c) for c in text], dtype=torch.long)
    return lengths, digits, q


# ----------------------------------------------------------------------------- the command

def run_distil(args: argparse.Namespace) -> int:
    model_cfg, data_cfg, train_cfg = training.configs_from_args(args)
    out = Path(train_cfg.out)
    stored = out / DISTIL_FILE
    distil_cfg = from_args(DistilConfig, args, DistilConfig(**json.loads(stored.read_text())) if stored.exists() else None)
    if not distil_cfg.teacher:
        raise ValueError("--teacher: give a `transcribe transfer` run folder (with model.pt)")
    if not Path(distil_cfg.teacher, transfer.CHECKPOINT).is_file():
        raise ValueError(f"{distil_cfg.teacher}: no {transfer.CHECKPOINT} (not a `transcribe transfer` run)")
    if not 0.0 <= distil_cfg.alpha <= 1.0 or distil_cfg.top_k < 1:
        raise ValueError(f"--alpha {distil_cfg.alpha} must lie in [0, 1] and --top-k {distil_cfg.top_k} be >= 1")
    if stored.exists() and json.loads(stored.read_text()) != to_dict(distil_cfg):
        raise ValueError(f"{stored}: cannot resume with other distillation settings (use a new --out)")
    torch.set_num_threads(train_cfg.threads or torch.get_num_threads())
    train_set, _ = dataset.load_splits(data_cfg, progress=train_cfg.progress)  # the rows training will use
    t0 = time.time()
    readings = teacher_labels(distil_cfg.teacher, train_set, distil_cfg.top_k, train_cfg.threads or 2, data_cfg.cache_dir)
    agree = np.mean([bool(r) and r[0][0] == train_set.text(i) for i, r in enumerate(readings)])
    print(f"distil: teacher {distil_cfg.teacher}, top {distil_cfg.top_k}, alpha {distil_cfg.alpha}; its best reading "
          f"equals the label on {agree:.2%} of the {len(readings)} training photos ({time.time() - t0:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    save_json(distil_cfg, stored)
    soft = soft_targets(readings, distil_cfg.top_k)
    training.train(model_cfg, data_cfg, train_cfg, soft=soft, alpha=distil_cfg.alpha)
    print(f"run folder: {out}")
    return 0
