"""`transcribe fit-box`: train the box fitter (boxfit.py) on a format-1 folder's union boxes.

Each step shows the network a batch of windows round *simulated* found boxes and asks for the true
box (boxfit.targets); smooth L1 on the outputs. A simulated box is the photo's true number box moved
and rescaled (jitter): most like the boxes localize.locate finds (on 600 of the sample's training-side
photos, with runs/sample-transfer's chooser, found width / true width 0.73-1.35 and height 0.74-1.10
from the 10th to the 90th percentile, centres within a tenth of the size), the rest far off (shifted by
up to a fifth, rescaled 0.5-2.2 times: the found boxes that miss are mostly 0.3-0.5 or 1.5-6 times the
true area). A tenth of the photos (seeded) are kept
apart to score it the same way, one and two passes, and the number of passes that fits more of them
to IoU >= 0.5 is the one stored. The network, the windows and the outputs are boxfit.py's; the
result is RUN/boxfit.onnx (exported and checked against torch) and RUN/boxfit.json.

    transcribe fit-box --train ../shared/data/svhn-sample/train --out runs/sample-teacher \\
        --val-fraction 0.1 --split-seed 0      # leaves out the 200 photos `make whole-sample` scores
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from transcribe import boxfit, crops, dataset, localize, svhn

NEAR_SHARE = 0.7                 # simulated boxes like the found ones: sides x exp(N(0, NEAR_SCALE)), centre + N(0, NEAR_SHIFT)
NEAR_SCALE = (0.25, 0.18)        # log-scale spread of width and height
NEAR_SHIFT = (0.08, 0.05)        # centre shift spread, fractions of the true width and height
JITTER_SHIFT = (0.2, 0.15)       # the others: centre shifts, fractions of the true width and height (uniform, +-)
JITTER_SCALE = (0.5, 2.2)        # and a common rescaling drawn log-uniformly, each side then by exp(N(0, 0.15))
WIDTHS = (16, 32, 64, 96)        # channels of the four blocks (two 3x3 convolutions, then 2x2 max-pool)
OPSET = 17


class BoxNet(nn.Module):
    """(N, 3, SIZE, SIZE) standardized windows -> (N, 4) offsets (boxfit.decode). The last layer starts
    at zero: an untrained fitter gives every box back unchanged."""

    def __init__(self, widths=WIDTHS, hidden: int = 256):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = boxfit.SIZE // 2 ** len(widths)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(inplace=True))
        self.out = nn.Linear(hidden, 4)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.features(x)))


def jitter(rng: np.random.Generator, truth) -> tuple[float, float, float, float]:
    """A simulated found box round a true (left, top, width, height) box."""
    left, top, w, h = truth
    if rng.random() < NEAR_SHARE:
        sw, sh = math.exp(rng.normal(0, NEAR_SCALE[0])), math.exp(rng.normal(0, NEAR_SCALE[1]))
        cx, cy = left + w / 2 + rng.normal(0, NEAR_SHIFT[0]) * w, top + h / 2 + rng.normal(0, NEAR_SHIFT[1]) * h
    else:
        s = math.exp(rng.uniform(math.log(JITTER_SCALE[0]), math.log(JITTER_SCALE[1])))
        sw, sh = s * math.exp(rng.normal(0, 0.15)), s * math.exp(rng.normal(0, 0.15))
        cx = left + w / 2 + rng.uniform(-JITTER_SHIFT[0], JITTER_SHIFT[0]) * w
        cy = top + h / 2 + rng.uniform(-JITTER_SHIFT[1], JITTER_SHIFT[1]) * h
    return cx - sw * w / 2, cy - sh * h / 2, sw * w, sh * h


def load_photos(folder: Path, names: list[str], boxes: dict, say=print) -> list[tuple[Image.Image, tuple]]:
    out, skipped = [], 0
    for name in names:
        try:
            out.append((Image.fromarray(localize.load_photo(folder / name)), boxes[name]))
        except localize.PhotoError as err:
            say(f"skipped: {err}")
            skipped += 1
    if skipped:
        say(f"fit-box: {skipped} photo(s) skipped")
    return out


def batch(photos, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((size, 3, boxfit.SIZE, boxfit.SIZE), np.float32)
    y = np.empty((size, 4), np.float32)
    for n, k in enumerate(rng.integers(len(photos), size=size)):
        im, truth = photos[k]
        box = jitter(rng, truth)
        x[n] = boxfit.inputs(im, [box])[0]
        y[n] = boxfit.targets([box], [truth])[0]
    return x, y


def score(predict, photos, seed: int = 1, per_photo: int = 4, passes: int = 2) -> dict:
    """IoU >= 0.5 share of fixed simulated boxes round held-apart photos: as found, and after 1..passes."""
    rng = np.random.default_rng(seed)
    rows = [(im, truth, jitter(rng, truth)) for im, truth in photos for _ in range(per_photo)]
    hits = {0: np.mean([localize.iou(b, t) >= 0.5 for _, t, b in rows])}
    boxes = [b for _, _, b in rows]
    for p in range(1, passes + 1):   # every window of a pass through the network in batches, not one by one
        x = np.concatenate([boxfit.inputs(im, [b]) for (im, _, _), b in zip(rows, boxes)])
        out = np.concatenate([predict(x[k:k + 256]) for k in range(0, len(x), 256)])
        boxes = boxfit.decode(boxes, out)
        hits[p] = np.mean([localize.iou(b, t) >= 0.5 for (_, t, _), b in zip(rows, boxes)])
    return {"boxes": len(rows), **{f"iou_at_least_0.5_after_{p}_passes": round(float(v), 4) for p, v in hits.items()}}


def fit_box(train: str | Path, out: str | Path, val_fraction: float = 0.0, split_seed: int = 0,
            seconds: float = 300.0, steps: int = 6000, batch_size: int = 64, lr: float = 2e-3, threads: int = 2,
            seed: int = 0, limit: int = 0, exclude=(), say=print) -> dict:
    """Train the fitter on `train`'s photos, less those `transcribe train --val-fraction val_fraction
    --split-seed split_seed` holds out and the names in `exclude`; write OUT/boxfit.onnx and boxfit.json."""
    from transcribe.progress import Progress
    from transcribe.runs import git_commit, save_json
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    folder, out = Path(train), Path(out)
    split = svhn.read_split(folder)
    excluded = dataset.held_out_names(folder, val_fraction, split_seed) if val_fraction > 0 else set()
    excluded |= set(exclude)
    boxes = {r.file: crops.number_box(r.boxes) for r in split.records if r.file not in excluded}
    names = sorted(boxes)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    if limit:
        names = names[:limit]
    n_apart = max(1, len(names) // 10)
    if len(names) < 2:
        raise ValueError(f"{folder}: {len(names)} usable photo(s) after leaving out {len(excluded)}; fit-box needs more")
    say(f"fit-box: {len(names)} photos of {folder} ({len(excluded)} left out), {n_apart} of them kept apart to score it")
    apart = load_photos(folder, names[:n_apart], boxes, say)
    photos = load_photos(folder, names[n_apart:], boxes, say)

    model = BoxNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    started, step, losses = time.perf_counter(), 0, []
    bar = Progress(steps, seconds, batch_size)   # a bar on a terminal, plain lines in a log; ETA to whichever budget ends first
    model.train()
    while step < steps:
        progress = max(step / steps, (time.perf_counter() - started) / seconds)
        if progress >= 1:
            break
        for group in opt.param_groups:  # cosine decay over whichever budget ends first
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
        x, y = batch(photos, rng, batch_size)
        loss = F.smooth_l1_loss(model(torch.from_numpy(x)), torch.from_numpy(y), beta=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update(step, time.perf_counter() - started, float(np.mean(losses[-50:])) if step % 50 == 0 else None)
    bar.close()
    train_seconds = time.perf_counter() - started
    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    scored = score(predict, apart)
    passes = 2 if scored["iou_at_least_0.5_after_2_passes"] > scored["iou_at_least_0.5_after_1_passes"] else 1
    say(f"fit-box: {step} steps in {train_seconds:.0f} s; on {scored['boxes']} simulated boxes round the "
        f"{len(apart)} photos kept apart, IoU >= 0.5: {scored['iou_at_least_0.5_after_0_passes']:.2%} as found, "
        f"{scored['iou_at_least_0.5_after_1_passes']:.2%} after one pass, {scored['iou_at_least_0.5_after_2_passes']:.2%} "
        f"after two (kept: {passes})")

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (boxfit.BOXFIT_FILE + ".tmp")
    example = torch.from_numpy(batch(apart, np.random.default_rng(2), 8)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["windows"], output_names=["offsets"],
                          dynamic_axes={"windows": {0: "batch"}, "offsets": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    session = localize.onnx_session(tmp)
    diff = float(np.abs(session.run(None, {"windows": example.numpy()})[0] - predict(example.numpy())).max())
    if not diff < 1e-3:
        tmp.unlink()
        raise RuntimeError(f"fit-box: the ONNX export differs from the model by {diff:.2e}; nothing written")
    spec = {"format": boxfit.FORMAT, "context": boxfit.CONTEXT, "size": boxfit.SIZE, "unit": boxfit.UNIT,
            "passes": passes, "onnx_max_abs_diff": diff, "train": str(folder), "photos": len(photos),
            "photos_apart": len(apart), "left_out": len(excluded), "val_fraction": val_fraction,
            "split_seed": split_seed, "steps": step, "seconds": round(train_seconds, 1), "batch_size": batch_size,
            "lr": lr, "final_loss": round(float(np.mean(losses[-100:])), 5) if losses else None,
            "scored_apart": scored, "commit": git_commit()}
    tmp.replace(out / boxfit.BOXFIT_FILE)
    save_json(spec, out / boxfit.SPEC_FILE)
    say(f"fit-box: wrote {out / boxfit.BOXFIT_FILE} and {out / boxfit.SPEC_FILE}")
    return spec


def run_fit_box(args) -> int:
    if not 0 <= args.val_fraction < 1:
        raise SystemExit(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    fit_box(args.train, args.out, args.val_fraction, args.split_seed, args.seconds, args.steps, args.batch_size,
            args.lr, args.threads, limit=args.limit)   # bad input: cli.main prints the one-line message
    return 0
