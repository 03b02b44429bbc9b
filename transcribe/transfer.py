"""Transfer: fine-tune the pretrained line recognizer on house numbers, cross-validated.

The recipe (recognizer.py has the model; ctc.py the likelihood and decoding):
1. Every photo of a format-1 folder is read once; its number box (the union of the digit boxes)
   and the pixels around it are kept in memory.
2. Views: an evaluation view per photo (the box widened by `widen`, resized to height 48 and
   stretched `stretch` times in width), and `views` augmented views per photo for training
   (box jitter and widening 1.0-1.3, stretch jitter, small rotation, colour and contrast jitter,
   blur). Augmentation suited to house numbers: they are upright, printed, framed by people.
3. Most of the convolutional backbone is frozen (Practical Methodology, sec. 11.2: copy the
   model; with 1,800 photos its 1.2M early weights would only overfit, and freezing them is what
   makes the recipe fit in minutes on 2 cores): every view's features at the cut are computed
   ONCE, with onnxruntime. The backbone's last stage (`tune_stages` 1: 1.5M weights, at a lower
   rate), the neck (two convolutions, two transformer blocks, 0.33M) and the digits-only head
   (6k) train on them with AdamW and CTC, log P(S|X) as the objective, under bf16 autocast where
   a few measured steps say it is faster. `tune_stages` 0 freezes the whole backbone (features
   at its end: the earlier recipe).
4. k-fold cross-validation (default 5): each fold trains on the other folds and predicts its
   own photos, so every photo gets one out-of-fold prediction; the refusal threshold for a fold
   is chosen on half of its photos and applied to the other half (and the other way round),
   never on photos that chose it. The model shipped is trained on every photo; its threshold is
   chosen on all the out-of-fold predictions.

`transcribe transfer --train FOLDER --folds 5 --out RUN` does all of it and writes the run folder
(config.json, model.pt, threshold.json, metrics.jsonl, cv.json, and eval/cv/ with the
out-of-fold predictions.jsonl, report, plots and gallery: the usual tools read them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from . import card, crops, ctc, dataset, metrics, predictions, runs, sequence, svhn
from . import recognizer as rec
from .config import MAX_DIGITS, TARGET, TransferConfig, from_args, to_dict
from .progress import bar as progress_bar
from .runs import save_json

MARGIN = 1.8      # pixels kept around the number box: enough for widening 1.3, jitter and rotation
CHECKPOINT = "model.pt"


# ----------------------------------------------------------------------------- photos and views

@dataclass
class Photo:
    path: str
    text: str | None                            # the label, None for a user's photo
    region: np.ndarray                          # (h, w, 3) uint8: the pixels around the number
    box: tuple[float, float, float, float]      # the number's box in region pixels


def load_photos(folder: str | Path, limit: int | None = None) -> tuple[list[Photo], list[svhn.Problem]]:
    """Every usable photo of a format-1 folder; unreadable ones are counted, not fatal."""
    split = svhn.read_split(folder)
    photos, problems = [], [p for p in split.problems if p.skipped]
    for record in split.records[:limit]:
        path = Path(split.folder) / record.file
        try:
            image = svhn.load_image(path)
        except svhn.DataError as err:
            problems.append(svhn.Problem(record.file, str(err), True))
            continue
        try:
            photos.append(photo_from(image, crops.number_box(record.boxes), str(path), record.text))
        except ValueError as err:
            problems.append(svhn.Problem(record.file, f"{path}: {err}", True))
    return photos, problems


def photo_from(image: np.ndarray, box, path: str, text: str | None = None) -> Photo:
    """The pixels around a number box (l, t, w, h) of a photo, enough for widening and jitter."""
    l, t, w, h = (float(v) for v in box)
    H, W = image.shape[:2]
    if not all(map(math.isfinite, (l, t, w, h))) or w <= 0 or h <= 0:
        raise ValueError(f"number box {tuple(box)} is not a box")
    side = max(w, h)
    x0 = int(max(0, math.floor(l + w / 2 - MARGIN * side / 2 - MARGIN * w / 2)))
    x1 = int(min(W, math.ceil(l + w / 2 + MARGIN * side / 2 + MARGIN * w / 2)))
    y0 = int(max(0, math.floor(t + h / 2 - MARGIN * h)))
    y1 = int(min(H, math.ceil(t + h / 2 + MARGIN * h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"number box {tuple(box)} lies outside the {W}x{H} photo")
    return Photo(path, text, image[y0:y1, x0:x1].copy(), (l - x0, t - y0, w, h))


def eval_view(photo: Photo, cfg: TransferConfig) -> torch.Tensor:
    return rec.to_input(crops.strip(photo.region, crops.widen(photo.box, cfg.widen)), cfg.stretch)


def train_view(photo: Photo, cfg: TransferConfig, rng: np.random.Generator) -> torch.Tensor:
    """One augmented view: box jitter and widening, rotation, colour, blur, stretch jitter."""
    l, t, w, h = photo.box
    cx = l + w / 2 + rng.uniform(-0.06, 0.06) * w
    cy = t + h / 2 + rng.uniform(-0.06, 0.06) * h
    w2, h2 = w * rng.uniform(1.0, 1.3), h * rng.uniform(1.0, 1.2)
    img = Image.fromarray(photo.region)
    angle = rng.uniform(-5, 5)
    if abs(angle) > 0.5:
        img = img.rotate(angle, resample=Image.BILINEAR, center=(cx, cy), fillcolor=tuple(photo.region.mean((0, 1)).astype(int)))
    if rng.random() < 0.8:
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.0, 1.5))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * h / 48))
    crop = crops.strip(np.asarray(img), (cx - w2 / 2, cy - h2 / 2, w2, h2))
    return rec.to_input(crop, cfg.stretch * rng.uniform(0.85, 1.15))


# ----------------------------------------------------------------------------- stem features

def stem_features(stem, inputs: list[torch.Tensor], cfg: TransferConfig, batch: int = 32,
                  desc: str = "features", progress: bool = True) -> list[torch.Tensor]:
    """The frozen stem's float16 features of each input ((384, 1, W/8) for a frozen backbone, a
    stage's input (C, H, W/s) with --tune-stages), each padded as RapidOCR pads it alone (to
    max(min_width, its width)); inputs of equal padded width share a batch."""
    widths = [max(cfg.min_width, x.shape[-1]) for x in inputs]
    widths = [int(math.ceil(w / rec.FRAME)) * rec.FRAME for w in widths]
    out: list[torch.Tensor | None] = [None] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda i: widths[i])
    bar = progress_bar(total=len(inputs), desc=desc, unit="view", disable=not progress)
    for width in sorted(set(widths)):
        idx = [i for i in order if widths[i] == width]
        for k in range(0, len(idx), batch):
            chunk = idx[k:k + batch]
            x, _ = rec.collate([inputs[i] for i in chunk], width)
            feats = stem(x).to(torch.float16)                        # (b, C, H, T)
            for i, f in zip(chunk, feats):
                out[i] = f.clone()
            bar.update(len(chunk))
    bar.close()
    return out  # type: ignore[return-value]


def batches_by_width(items: list[int], feats: list[torch.Tensor], size: int, rng: np.random.Generator | None):
    """Indices grouped so a batch holds features of one width; shuffled when rng is given."""
    groups: dict[int, list[int]] = {}
    for i in items:
        groups.setdefault(feats[i].shape[-1], []).append(i)
    out = []
    for idx in groups.values():
        if rng is not None:
            idx = list(rng.permutation(idx))
        out += [idx[k:k + size] for k in range(0, len(idx), size)]
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def stack(feats: list[torch.Tensor], idx: list[int]) -> torch.Tensor:
    return torch.stack([feats[i] for i in idx]).float()   # (B, C, H, T)


class SequenceHead(torch.nn.Module):
    """Goodfellow et al. 2014's output layer on the recognizer's frame features: the frames
    (resampled to FRAMES) flattened, then a length softmax over {0..5, >5} and 5 digit softmaxes,
    trained on log P(S|X) = log P(L=n|X) + sum log P(S_i|X) (sequence.py)."""

    FRAMES = 40  # frames resampled to 40 (RapidOCR's 320 px / 8), whatever the padding

    def __init__(self, dim: int = 120, dropout: float = 0.3):
        super().__init__()
        self.drop = torch.nn.Dropout(dropout)
        self.length = torch.nn.Linear(dim * self.FRAMES, MAX_DIGITS + 2)
        self.digits = torch.nn.Linear(dim * self.FRAMES, MAX_DIGITS * 10)

    def forward(self, features: torch.Tensor):
        x = torch.nn.functional.adaptive_avg_pool1d(features.transpose(1, 2), self.FRAMES)  # (B, D, 40)
        x = self.drop(x.flatten(1))
        return self.length(x), self.digits(x).view(-1, MAX_DIGITS, 10)


def use_head(model: rec.LineRecognizer, cfg: TransferConfig) -> rec.LineRecognizer:
    """Replace the CTC head by the paper's sequence head when cfg.head says so (seeded)."""
    if cfg.head == "sequence":
        torch.manual_seed(cfg.seed)
        model.head = SequenceHead()
    return model


def labels(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> lengths (B,), digits (B, 5) with -1 past the length."""
    lengths = torch.tensor([len(t) for t in texts])
    digits = torch.full((len(texts), MAX_DIGITS), -1, dtype=torch.long)
    for i, t in enumerate(texts):
        for j, c in enumerate(t[:MAX_DIGITS]):
            digits[i, j] = int(c)
    return lengths, digits


def nll(model: rec.LineRecognizer, feats: torch.Tensor, texts: list[str], cfg: TransferConfig) -> torch.Tensor:
    """-log P(S|X), averaged over the batch, under either head."""
    out = model.from_stem(feats)
    if cfg.head == "sequence":
        return sequence.loss(*(o.float() for o in out), *(t.to(feats.device) for t in labels(texts)))
    return -ctc.log_likelihood(out.float(), texts).mean()


# ----------------------------------------------------------------------------- train and predict

def read(model: rec.LineRecognizer, feats: list[torch.Tensor], photos: list[Photo],
         idx: list[int], beam: int, top_k: int = 0) -> list[dict]:
    """Predictions rows (predictions.jsonl) for photos[idx] from their evaluation features; with
    top_k, "alternatives": the top_k most probable [text, log P(S|X)] (sequence.top_k, exact for
    the sequence head; ctc.decode_top_k, the beam's survivors rescored exactly, for CTC)."""
    model.eval()
    rows: dict[int, dict] = {}
    device = next(model.parameters()).device  # `--device`: features move there, decoding reads CPU copies
    with torch.no_grad():
        for b in batches_by_width(idx, feats, 64, None):
            if isinstance(model.head, SequenceHead):
                logits = model.from_stem(stack(feats, b).to(device))
                dec = sequence.decode(*logits)
                for i, text, logp, adhoc in zip(b, dec.texts(), dec.logp.tolist(), dec.adhoc_logp.tolist()):
                    rows[i] = {"image": photos[i].path, "file": Path(photos[i].path).name, "truth": photos[i].text,
                               "pred": text, "confidence": logp, "adhoc_confidence": adhoc,
                               "length_probs": None, "digit_probs": None}
                if top_k:
                    for i, alts in zip(b, sequence.top_k(*logits, top_k)):
                        rows[i]["alternatives"] = [[t, lp] for t, lp in alts]
                continue
            log_probs = model.from_stem(stack(feats, b).to(device)).float().cpu()
            best = log_probs.argmax(-1)
            if top_k:
                ranked = ctc.decode_top_k(log_probs, top_k, beam)
                decoded = [r[0] for r in ranked]
            else:
                decoded = ctc.decode(log_probs, beam)
            for n, (i, reading, lp, path) in enumerate(zip(b, decoded, log_probs, best)):
                photo = photos[i]
                emitted = [(t, int(path[t])) for t in range(len(path)) if path[t] != 0 and (t == 0 or path[t] != path[t - 1])]
                probs = [float(lp[t, c].exp()) for t, c in emitted]
                rows[i] = {"image": photo.path, "file": Path(photo.path).name, "truth": photo.text,
                           "pred": reading.text, "confidence": reading.logp,
                           # ad hoc, as RapidOCR scores a line: log of the mean probability of the
                           # best path's emitted characters
                           "adhoc_confidence": math.log(max(sum(probs) / len(probs), 1e-30)) if probs else -50.0,
                           "best_path_confidence": float(lp.max(-1).values.sum()),
                           "length_probs": None, "digit_probs": None}
                if top_k:
                    rows[i]["alternatives"] = [[r.text, r.logp] for r in ranked[n]]
    return [rows[i] for i in idx]


def training_precision(model: rec.LineRecognizer, feats: list[torch.Tensor], photos: list[Photo],
                       cfg: TransferConfig, log=print) -> str:
    """cfg.amp, with auto resolved as `transcribe train --amp auto` resolves it (precision.py): no
    bf16 on a processor without bf16 instructions; otherwise a few training steps (forward,
    CTC loss, backward) of the trained part on real features, timed in float32 and under bf16
    autocast in turns, and bf16 only where it is faster by more than precision.BF16_MARGIN."""
    from . import precision
    device = next(model.parameters()).device
    if cfg.amp != "auto":
        return cfg.amp
    known = precision.without_measuring(device)
    if known is not None:
        return known
    idx = batches_by_width(list(range(len(feats))), feats, cfg.batch_size, None)[0]
    x, texts = stack(feats, idx).to(device), [photos[i].text or "0" for i in idx]
    steps = {}
    with torch.random.fork_rng(devices=[]):
        model.train()
        for amp in ("off", "bf16"):
            def step(autocast=precision.autocast_for(amp, device.type)):
                with autocast():
                    out = model.from_stem(x)
                (-ctc.log_likelihood(out.float(), texts).mean()).backward()
            steps[amp] = step
        seconds = precision.time_calls(steps)
    model.zero_grad(set_to_none=True)
    amp = precision.pick(seconds)
    log(f"  --amp auto: a training step at batch {len(idx)} takes {1e3 * seconds['off']:.0f} ms in float32, "
        f"{1e3 * seconds['bf16']:.0f} ms under bf16 here: {'bf16' if amp == 'bf16' else 'float32'}")
    return amp


def fine_tune(model: rec.LineRecognizer, feats: list[list[torch.Tensor]] | None, photos: list[Photo],
              idx: list[int], cfg: TransferConfig, log=None, desc: str = "fine-tuning", amp: str = "off",
              stem=None) -> None:
    """Train the backbone's last stages (cfg.tune_stages), the neck and the head on the augmented
    views' features of photos[idx], in place; `amp` 'bf16' runs the forward pass under bf16
    autocast (training_precision chooses). feats: the cached views' features (views_and_features);
    or None and `stem` (frozen_stem), --stream: every epoch draws fresh augmented views and runs
    them through the frozen stem a batch at a time, for training sets whose cached views would not
    fit in memory (SVHN's 33,402 training photos: 30 GB of features at 5 views)."""
    from . import precision
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    groups = model.parameter_groups()
    opt = torch.optim.AdamW([{"params": groups["tail"], "lr": cfg.stem_lr},
                             {"params": groups["neck"], "lr": cfg.lr},
                             {"params": groups["head"], "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    device = next(model.parameters()).device
    autocast = precision.autocast_for(amp, device.type)
    steps = cfg.epochs * math.ceil(len(idx) / cfg.batch_size)
    step, start = 0, time.time()
    bar = progress_bar(total=steps, desc=desc, unit="step")
    for epoch in range(cfg.epochs):
        model.train()
        texts = [photos[i].text for i in idx]
        total, n = 0.0, 0
        if feats is not None:  # one of its augmented views per photo per epoch, drawn at random
            chosen = [feats[(epoch + int(rng.integers(cfg.views))) % cfg.views][i] for i in idx]
            batches = batches_by_width(list(range(len(idx))), chosen, cfg.batch_size, rng)
        else:                  # a fresh augmented view per photo per epoch
            order = rng.permutation(len(idx)).tolist()
            batches = [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
        for b in batches:
            for g, lr in zip(opt.param_groups, base):  # cosine decay to 0 over the run
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            if feats is not None:
                x = stack(chosen, b).to(device)
            else:
                views, _ = rec.collate([train_view(photos[idx[j]], cfg, rng) for j in b], cfg.min_width)
                x = stem(views).to(torch.float16).float().to(device)   # rounded as the cache rounds them
            with autocast():
                loss = nll(model, x, [texts[i] for i in b], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(b)
            n += len(b)
            step += 1
            bar.update(1)
        bar.set_postfix_str(f"epoch {epoch + 1}/{cfg.epochs}, train NLL {total / n:.3f}")
        if log is not None:
            log({"epoch": epoch + 1, "step": step, "train_nll": total / n, "seconds": round(time.time() - start, 1)})
    bar.close()


# ----------------------------------------------------------------------------- cross-validation

def folds_of(n: int, k: int, seed: int) -> list[list[int]]:
    """k disjoint folds covering range(n), sizes differing by at most one."""
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in perm[f::k]) for f in range(k)]


def split_half_scores(rows: list[dict], seed: int, key: str = "confidence", target: float = TARGET) -> dict:
    """Coverage and accuracy at `target` with thresholds chosen out of sample: the rows are split
    in two halves; each half's threshold is applied to the other half."""
    halves = folds_of(len(rows), 2, seed + 1)
    accepted = correct_accepted = 0
    for choose, apply in ((halves[0], halves[1]), (halves[1], halves[0])):
        conf = np.array([rows[i][key] for i in choose], dtype=float)
        ok = metrics.correctness([rows[i] for i in choose])
        threshold = metrics.threshold_for_accuracy(conf, ok, target)
        if threshold is None:
            continue
        conf2 = np.array([rows[i][key] for i in apply], dtype=float)
        ok2 = metrics.correctness([rows[i] for i in apply])
        acc = conf2 >= threshold
        accepted += int(acc.sum())
        correct_accepted += int((acc & ok2).sum())
    return {"coverage": accepted / len(rows), "accuracy": correct_accepted / accepted if accepted else None}


def fold_summary(rows: list[dict], folds: list[list[int]], seed: int, key: str = "confidence") -> dict:
    """Mean and standard deviation over folds of sequence accuracy and of coverage at 98%."""
    per = []
    for f, idx in enumerate(folds):
        sub = [rows[i] for i in idx]
        s = split_half_scores(sub, seed + f, key)
        per.append({"fold": f, "photos": len(sub), "sequence_accuracy": float(metrics.correctness(sub).mean()),
                    "coverage": s["coverage"], "accuracy_accepted": s["accuracy"],
                    "best_coverage": metrics.best_at_target(np.array([r[key] for r in sub]), metrics.correctness(sub))["coverage"]})
    out = {"folds": per}
    for name in ("sequence_accuracy", "coverage", "best_coverage"):
        v = np.array([p[name] for p in per], dtype=float)
        out[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def held_out(photos: list[Photo], folder: str | Path, fraction: float, seed: int) -> list[int]:
    """Indices of the photos among `photos` that `transcribe train --val-fraction F --split-seed S`
    holds out (dataset.held_out_names, matched by file name)."""
    names = dataset.held_out_names(folder, fraction, seed)
    return [i for i, p in enumerate(photos) if Path(p.path).name in names]


def frozen_stem(model: rec.LineRecognizer, threads: int):
    """The frozen stem as a function of a (B, 3, 48, W) batch: onnxruntime on the CPU (several times
    faster there than the converted module), the torch module on a GPU."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        return rec.StemSession(model, threads)

    def on_device(x: torch.Tensor) -> torch.Tensor:   # features come back to the CPU, as onnxruntime's do
        with torch.no_grad():
            return model.stem(x.to(device)).float().cpu()
    return on_device


def views_and_features(model, photos: list[Photo], cfg: TransferConfig, threads: int,
                       cache_dir: str | Path | None = "data/cache/transfer", stem=None):
    """Stem features of every photo's evaluation view and of its `views` augmented views,
    computed once and cached (keyed by the photos, the recognizer file and every setting that
    changes a view), so training settings can be tried without recomputing them.
    `stem`: the frozen stem to use (frozen_stem), made here when not given.
    -> (evaluation features, [features of view v for v in range(views)], seconds spent)."""
    key = json.dumps({"photos": [p.path for p in photos], "sha256": model.source_sha256,
                      "view": [cfg.stretch, cfg.widen, cfg.min_width, cfg.views, cfg.seed],
                      "cut": cfg.tune_stages, "version": 2})
    path = Path(cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt" if cache_dir else None
    t0 = time.time()
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return stored["evals"], stored["augmented"], time.time() - t0
        except Exception as err:  # a damaged cache is rebuilt, never trusted
            print(f"  {path}: unreadable feature cache ({err}); rebuilding it", file=sys.stderr)
    stem = stem or rec.StemSession(model, threads)
    rng = np.random.default_rng(cfg.seed)
    evals = stem_features(stem, [eval_view(p, cfg) for p in photos], cfg, desc="evaluation views")
    augmented = []
    for v in range(cfg.views):
        inputs = [train_view(p, cfg, rng) for p in photos]
        augmented.append(stem_features(stem, inputs, cfg, desc=f"training views {v + 1}/{cfg.views}"))
    if path is not None:
        runs.atomic_write(path, lambda f: torch.save({"evals": evals, "augmented": augmented}, f))
    return evals, augmented, time.time() - t0


def run_transfer(args: argparse.Namespace) -> int:
    from . import report as report_mod
    cfg = from_args(TransferConfig, args, TransferConfig())
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    photos, problems = load_photos(args.train, args.limit)
    if len(photos) < max(args.folds, 2):
        raise SystemExit(f"{args.train}: {len(photos)} usable photos, too few")
    print(f"transfer {cfg.recognizer}: {len(photos)} photos from {args.train} ({len(problems)} skipped), "
          f"stretch {cfg.stretch}, {cfg.views} views, {cfg.epochs} epochs, {args.folds} folds -> {out}", file=sys.stderr)
    # the tail, neck and head train on `--device`; the frozen stem runs once per view in onnxruntime (CPU)
    model = use_head(rec.LineRecognizer(cfg.recognizer, cfg.tune_stages), cfg).to(runs.resolve_device(args.device))
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("stem."))
    frozen = sum(p.numel() for p in model.stem.parameters())
    stem = frozen_stem(model, args.threads)
    if cfg.stream:  # views drawn afresh every epoch, through the frozen stem a batch at a time
        evals = augmented = None
        feat_seconds = 0.0
        sample = photos[:cfg.batch_size]
        probe = stem_features(stem, [train_view(p, cfg, np.random.default_rng(cfg.seed)) for p in sample], cfg,
                              progress=False)
        print("  --stream: fresh views every epoch, no feature cache", file=sys.stderr)
    else:
        evals, augmented, feat_seconds = views_and_features(model, photos, cfg, args.threads, args.cache_dir or None,
                                                            stem)
        print(f"  stem features of {len(photos) * (1 + cfg.views)} views: {feat_seconds:.0f} s", file=sys.stderr)
        sample, probe = photos, (augmented[0] if cfg.views else evals)
    amp = training_precision(model, probe, sample, cfg, log=lambda m: print(m, file=sys.stderr))

    def read_some(idx: list[int]) -> list[dict]:
        """Rows for photos[idx]: from the cached evaluation features, or (--stream) a chunk at a time."""
        if evals is not None:
            return read(model, evals, photos, idx, cfg.beam)
        rows = []
        for k in range(0, len(idx), 1024):
            rows += read_views(model, cfg, [photos[i] for i in idx[k:k + 1024]], stem)
        return rows
    print(f"  machine {_cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"{'bf16 autocast' if amp == 'bf16' else 'float32'}; {trainable:,} trainable parameters "
          + (f"(the backbone's last {cfg.tune_stages} stage(s), the neck, the head; {frozen:,} frozen)" if cfg.tune_stages
             else f"(the neck and the head; the backbone's {frozen:,} frozen)"), file=sys.stderr)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    save_json({"transfer": cfg, "amp": amp, "train": args.train, "folds": args.folds, "photos": len(photos),
               "val_fraction": args.val_fraction, "split_seed": args.split_seed,
               "source": {"name": cfg.recognizer, "sha256": model.source_sha256}}, out / "config.json")
    (out / runs.METRICS_FILE).write_text("")  # a new run: one row per epoch and per fold
    for stale in ("chooser.json", "chooser-rejected.json"):  # an earlier run's box chooser: fit it again
        (out / stale).unlink(missing_ok=True)

    def log(row):
        runs.append_metrics(out, row)

    # With --val-fraction, the usual validation split is held out of everything below (folds and
    # the shipped model) and read once at the end; the features still cover every photo (one cache).
    val_idx = held_out(photos, args.train, args.val_fraction, args.split_seed) if args.val_fraction > 0 else []
    everything = sorted(set(range(len(photos))) - set(val_idx))
    if val_idx:
        print(f"  held out for validation: {len(val_idx)} photos (--val-fraction {args.val_fraction:g}, "
              f"--split-seed {args.split_seed}); training on {len(everything)}", file=sys.stderr)
    # the off-the-shelf reader with the principled confidence (the CTC head at step 0), by photo index
    step0 = read_some(list(range(len(photos)))) if cfg.head == "ctc" and args.folds >= 2 else None
    summary: dict = {"photos": len(everything), "held_out": len(val_idx), "feature_seconds": round(feat_seconds, 1)}
    if args.folds >= 2:
        folds = [[everything[j] for j in f] for f in folds_of(len(everything), args.folds, cfg.seed)]
        oof: list[dict | None] = [None] * len(photos)
        for f, held in enumerate(folds):
            model.load_state_dict(initial)
            train_idx = sorted(set(everything) - set(held))
            fine_tune(model, augmented, photos, train_idx, cfg, log=lambda r, f=f: log({"fold": f, **r}),
                      desc=f"fold {f + 1}/{args.folds}", amp=amp, stem=stem)
            if args.keep_folds:  # a run folder per fold: its model and the photos it never saw
                save_model(model, cfg, out / "folds" / str(f))
                save_json({"transfer": cfg, "train": args.train, "fold": f, "held_out": [Path(photos[i].path).name for i in held]},
                          out / "folds" / str(f) / "config.json")
            for i, row in zip(held, read_some(held)):
                oof[i] = {**row, "fold": f}
            acc = float(np.mean([oof[i]["pred"] == oof[i]["truth"] for i in held]))
            acc0 = float(np.mean([step0[i]["pred"] == step0[i]["truth"] for i in held])) if step0 else None
            print(f"  fold {f + 1}/{args.folds}: {acc:.2%} sequence accuracy out of fold"
                  + (f" (step 0: {acc0:.2%})" if step0 else "") + f", {time.time() - t0:.0f} s", file=sys.stderr)
            log({"fold": f, "sequence_accuracy": acc, "step0_sequence_accuracy": acc0})
        rows = [oof[i] for i in everything]
        cv_dir = out / "eval" / "cv"
        predictions.write_predictions(rows, cv_dir / "predictions.jsonl")
        fold_of = {i: f for f, held in enumerate(folds) for i in held}
        if step0:
            predictions.write_predictions([{**step0[i], "fold": fold_of[i]} for i in everything],
                                         out / "eval" / "step0" / "predictions.jsonl")
        rep = metrics.report(rows)
        save_json(rep, cv_dir / "report.json")
        (cv_dir / "report.md").write_text(metrics.to_markdown(rep, title=f"Transfer {cfg.recognizer}, out of fold"))
        report_mod.write_plots(rows, rep, cv_dir, f"Transfer {cfg.recognizer}, out of fold")
        summary["cv"] = {"fine_tuned": fold_summary(oof, folds, cfg.seed),
                         "fine_tuned_adhoc": fold_summary(oof, folds, cfg.seed, "adhoc_confidence")}
        if step0:
            summary["cv"]["step0"] = fold_summary(step0, folds, cfg.seed)
            summary["cv"]["step0_adhoc"] = fold_summary(step0, folds, cfg.seed, "adhoc_confidence")
        threshold = metrics.threshold_for_accuracy(metrics.confidences(rows), metrics.correctness(rows))
        chosen_on = "out-of-fold predictions"
    else:
        threshold, chosen_on = None, None
    # The shipped model: every photo (but the held-out ones).
    model.load_state_dict(initial)
    fine_tune(model, augmented, photos, everything, cfg, log=lambda r: log({"fold": "all", **r}), desc="all photos",
              amp=amp, stem=stem)
    if val_idx:  # the held-out photos, read once by the shipped model: eval/val/
        val_rows = read_some(val_idx)
        val_dir = out / "eval" / "val"
        predictions.write_predictions(val_rows, val_dir / "predictions.jsonl")
        rep = metrics.report(val_rows)
        save_json(rep, val_dir / "report.json")
        (val_dir / "report.md").write_text(metrics.to_markdown(rep, title=f"Transfer {cfg.recognizer}, held-out validation"))
        summary["val"] = {"photos": len(val_idx), "sequence_accuracy": float(metrics.correctness(val_rows).mean()),
                          "best_coverage": metrics.best_at_target(metrics.confidences(val_rows),
                                                                  metrics.correctness(val_rows))["coverage"]}
        print(f"  held-out validation: {summary['val']['sequence_accuracy']:.2%} sequence accuracy, "
              f"best coverage at 98% {summary['val']['best_coverage']:.2%} ({len(val_idx)} photos)", file=sys.stderr)
        if threshold is None:  # no folds: the threshold is chosen on the held-out photos
            threshold = metrics.threshold_for_accuracy(metrics.confidences(val_rows), metrics.correctness(val_rows))
            chosen_on = "held-out validation photos"
    save_model(model, cfg, out)
    save_json({"threshold": threshold, "target": TARGET, "chosen_on": chosen_on,
               "photos": len(val_idx) if chosen_on == "held-out validation photos" else len(everything)},
              out / "threshold.json")
    summary["inference"] = inference_rate(model, photos, cfg, args.threads)
    summary["seconds"] = round(time.time() - t0, 1)
    save_json(summary, out / "cv.json")
    print(format_summary(summary), file=sys.stderr)
    print(f"inference: {summary['inference']['images_per_second']} photos/s ({args.threads} threads)", file=sys.stderr)
    evals_written = "".join(f", eval/{d}/" for d in ("cv", "val") if (out / "eval" / d).is_dir())
    card.write_transfer_card(out, {"total": sum(p.numel() for p in model.parameters()),
                                   "trainable": sum(p.numel() for n, p in model.named_parameters()
                                                    if not n.startswith("stem.") and p.requires_grad)})
    print(f"wrote {out}/model.pt, threshold.json, cv.json{evals_written}, {card.CARD_FILE} in {summary['seconds']:.0f} s",
          file=sys.stderr)
    if args.folds >= 2:
        print(f"next: transcribe gallery {out / 'eval' / 'cv' / 'predictions.jsonl'}   (the out-of-fold mistakes, "
              f"marked by the shipped threshold)", file=sys.stderr)
    print(f"next: transcribe predict PHOTO.png --box L,T,W,H --run {out}", file=sys.stderr)
    return 0


def save_model(model: rec.LineRecognizer, cfg: TransferConfig, folder: Path) -> None:
    """FOLDER/model.pt: the trained weights (the frozen stem is rebuilt from the wheel's file)."""
    folder.mkdir(parents=True, exist_ok=True)
    trained = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("stem.")}
    runs.atomic_write(folder / CHECKPOINT, lambda f: torch.save(
        {"kind": "transfer", "config": to_dict(cfg), "source": {"name": cfg.recognizer, "sha256": model.source_sha256},
         "model": trained}, f))


def read_views(model: rec.LineRecognizer, cfg: TransferConfig, photos: list[Photo], stem, top_k: int = 0) -> list[dict]:
    """Predictions rows of photos read at their evaluation views, the stem run here (no feature cache)."""
    feats = stem_features(stem, [eval_view(p, cfg) for p in photos], cfg, progress=False)  # a few crops: no bar
    return read(model, feats, photos, list(range(len(photos))), cfg.beam, top_k)


def transcribe_photos(model: rec.LineRecognizer, cfg: TransferConfig, photos: list[Photo], stem: "rec.StemSession",
                      threshold: float | None = None, top_k: int = 0) -> list[dict]:
    """Read photos (their number boxes known): predictions rows, each with `accepted` (its
    log P(S|X) at or above the threshold; never without a threshold), and top_k alternatives."""
    rows = read_views(model, cfg, photos, stem, top_k)
    for row in rows:
        row["accepted"] = threshold is not None and row["confidence"] >= threshold
    return rows


def inference_rate(model: rec.LineRecognizer, photos: list[Photo], cfg: TransferConfig, threads: int,
                   n: int = 256) -> dict:
    """Photos per second from the crop to the decoded number and its log P(S|X): view, stem
    (onnxruntime), neck and head (torch), beam decoding; batches of 32 on `threads` threads."""
    stem = rec.StemSession(model, threads)
    sample = photos[:n]
    start = time.perf_counter()
    transcribe_photos(model, cfg, sample, stem)
    seconds = time.perf_counter() - start
    return {"photos": len(sample), "seconds": round(seconds, 2), "images_per_second": round(len(sample) / seconds, 1),
            "threads": threads, "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def load(run: str | Path) -> tuple[rec.LineRecognizer, TransferConfig, float | None]:
    """A transfer run's model (rebuilt from the wheel's recognizer, fine-tuned weights loaded)."""
    run = Path(run)
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    cfg = TransferConfig(**{"tune_stages": 0, **ckpt["config"]})  # runs from before --tune-stages froze it all
    model = use_head(rec.LineRecognizer(ckpt["source"]["name"], cfg.tune_stages), cfg)
    if model.source_sha256 != ckpt["source"]["sha256"]:
        raise ValueError(f"{run / CHECKPOINT}: fine-tuned from another {ckpt['source']['name']} file "
                         f"(sha256 {ckpt['source']['sha256'][:12]}, installed {model.source_sha256[:12]})")
    missing = model.load_state_dict(ckpt["model"], strict=False)
    if missing.unexpected_keys or [k for k in missing.missing_keys if not k.startswith("stem.")]:
        raise ValueError(f"{run / CHECKPOINT}: weights do not fit the {ckpt['source']['name']} recognizer")
    threshold = json.loads((run / "threshold.json").read_text()).get("threshold") if (run / "threshold.json").exists() else None
    return model.eval(), cfg, threshold


def format_summary(summary: dict) -> str:
    if "cv" not in summary:
        return "trained on every photo (no cross-validation)"
    lines = ["| system | confidence | sequence accuracy | coverage at 98% (split-half thresholds) | best coverage |",
             "| --- | --- | ---: | ---: | ---: |"]
    names = {"step0": ("off the shelf (digits head, step 0)", "log P(S|X)"),
             "step0_adhoc": ("off the shelf (digits head, step 0)", "mean char prob"),
             "fine_tuned": ("fine-tuned", "log P(S|X)"), "fine_tuned_adhoc": ("fine-tuned", "ad hoc")}
    for key, (name, conf) in names.items():
        if key not in summary["cv"]:
            continue
        s = summary["cv"][key]
        lines.append(f"| {name} | {conf} | {100 * s['sequence_accuracy']['mean']:.2f} ± {100 * s['sequence_accuracy']['std']:.2f}% | "
                     f"{100 * s['coverage']['mean']:.2f} ± {100 * s['coverage']['std']:.2f}% | "
                     f"{100 * s['best_coverage']['mean']:.2f} ± {100 * s['best_coverage']['std']:.2f}% |")
    return "\n".join(lines)
