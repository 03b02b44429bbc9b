"""Which candidate box holds the number: a choice learned from out-of-fold readings.

localize.locate reads every candidate box of a photo (detections, their unions and rescalings, the
whole photo, prior boxes). Summing each transcription's probability over the candidates (the rule
localize.choose keeps as the fallback) loses where a crop of *part* of the number is read surely
("2" of "23", "922" of "1922") or a loose box takes in a neighbour's digit: the right box is among
the candidates for 98% of the sample's validation photos, and that rule picks one for 85%.

A conditional logit over the candidates of one photo (McFadden's choice model: a linear score per
candidate, softmax over the photo's candidates) learns the choice from a few features that say why
a reading is doubtful: its log P(S|X) and its distance to the photo's best; the probability of its
transcription summed over every candidate (the old rule's quantity); its length, and whether a
surer-or-nearly-as-sure candidate reads a longer transcription that contains it; its box's size,
shape and place in the photo; where the box came from. It is fitted to maximize the probability of
the candidates that read the true number at a box overlapping the true one (IoU >= 0.5), on photos
read by models that never trained on them (`transcribe transfer --keep-folds`, then `transcribe
fit-chooser`), and stored as a small JSON next to the run (CHOOSER_FILE), read by numpy alone so the
torch-free runtime chooses the same way.

The confidence reported stays the chosen candidate's log P(S|X): the refusal threshold chosen with
boxes given keeps its meaning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

CHOOSER_FILE = "chooser.json"
FORMAT = 1
SOURCES = ("detection", "merge", "photo", "prior")
FEATURES = ("logp", "logp_gap", "text_mass_gap", "text_share", "length", "empty", "too_long",
            "contained_in_surer", "contains_surer", "log_width", "log_height", "log_aspect", "centre_x", "centre_y",
            "area_vs_tightest_same", "area_vs_detections", "overlap_with_detections",
            *(f"source_{s}" for s in SOURCES))
FLOOR = -30.0          # log P floor: an unreadable candidate (NO_READING) is as doubtful as this
NEAR = math.log(10)    # "nearly as sure": within a factor 10 of the probability


def features(results: Sequence[dict], boxes: Sequence[Sequence[float]], sources: Sequence[str],
             shape: tuple[int, int]) -> np.ndarray:
    """(N, len(FEATURES)) features of a photo's N candidates: their readings (pred, confidence),
    their boxes (left, top, width, height) in a photo of shape (h, w), and where each came from."""
    h, w = shape
    n = len(results)
    logp = np.array([max(FLOOR, float(r["confidence"])) for r in results])
    preds = [r["pred"] if r["pred"] != ">5" else "" for r in results]
    mass: dict[str, float] = {}
    for p, lp in zip(preds, logp):
        mass[p] = mass.get(p, 0.0) + math.exp(lp)
    top_mass = max(mass.values()) if mass else 1.0
    area = np.array([max(b[2], 1.0) * max(b[3], 1.0) for b in boxes])
    dets = [j for j in range(n) if sources[j] in ("detection", "merge")]
    det_area = float(np.median(area[dets])) if dets else float(h * w)
    out = np.zeros((n, len(FEATURES)))
    for k in range(n):
        p, (bl, bt, bw, bh) = preds[k], boxes[k]
        surer = [j for j in range(n) if j != k and logp[j] >= logp[k] - NEAR and preds[j]]
        same = [j for j in range(n) if preds[j] == p and logp[j] >= logp[k] - NEAR] + [k]
        out[k] = [logp[k], logp[k] - logp.max(), math.log(max(mass[p], 1e-30)) - math.log(top_mass),
                  sum(q == p for q in preds) / n, len(p), float(p == ""), float(results[k]["pred"] == ">5"),
                  float(bool(p) and any(len(preds[j]) > len(p) and p in preds[j] for j in surer)),
                  float(bool(p) and any(len(preds[j]) < len(p) and preds[j] in p for j in surer)),
                  math.log(max(bw, 1.0) / w), math.log(max(bh, 1.0) / h), math.log(max(bw, 1.0) / max(bh, 1.0)),
                  (bl + bw / 2) / w - 0.5, (bt + bh / 2) / h - 0.5,
                  math.log(area[k] / area[same].min()), math.log(area[k] / det_area),
                  max((_iou(boxes[k], boxes[j]) for j in dets if j != k), default=0.0),
                  *(float(sources[k] == s) for s in SOURCES)]
    return out


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union > 0 else 0.0


class Chooser:
    """A fitted conditional logit: score = standardized features . weights; the photo's highest wins."""

    def __init__(self, spec: dict):
        if spec.get("format") != FORMAT or tuple(spec.get("features", ())) != FEATURES:
            raise ValueError("a chooser of another format or feature set: fit it again (transcribe fit-chooser)")
        self.spec = spec
        self.mean, self.std = np.array(spec["mean"]), np.array(spec["std"])
        self.weights = np.array(spec["weights"])

    @classmethod
    def load(cls, path: str | Path) -> "Chooser":
        try:
            spec = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a chooser ({err})") from None
        try:
            return cls(spec)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def scores(self, feats: np.ndarray) -> np.ndarray:
        return ((feats - self.mean) / self.std) @ self.weights

    def choose(self, results, boxes, sources, shape) -> int:
        return int(np.argmax(self.scores(features(results, boxes, sources, shape))))


def fit(photos: list[tuple[np.ndarray, np.ndarray]], l2: float = 1e-2, steps: int = 3000,
        lr: float = 0.1) -> dict:
    """Fit a conditional logit. photos: (features (N, F), positive (N,) bool) per photo; photos
    without a positive candidate teach nothing and are left out. Maximizes the mean over photos
    of log sum_{positive k} softmax(scores)_k minus l2 |w|^2 (convex in w; full-batch gradient
    ascent with Adam steps). -> the JSON spec of a Chooser."""
    used = [(f, y) for f, y in photos if y.any()]
    if not used:
        raise ValueError("no photo has a candidate that reads it right at the right box: nothing to learn from")
    allf = np.concatenate([f for f, _ in used])
    mean, std = allf.mean(0), allf.std(0)
    std[std < 1e-6] = 1.0
    n = max(len(f) for f, _ in used)
    x = np.zeros((len(used), n, allf.shape[1]))     # photos x candidates (padded) x features
    live = np.zeros((len(used), n), bool)
    pos = np.zeros((len(used), n), bool)
    for i, (f, y) in enumerate(used):
        x[i, :len(f)], live[i, :len(f)], pos[i, :len(f)] = (f - mean) / std, True, y
    w = np.zeros(allf.shape[1])
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, steps + 1):
        s = np.where(live, x @ w, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = np.where(pos, p, 0.0)
        q /= q.sum(1, keepdims=True)                 # the posterior over the positive candidates
        grad = np.einsum("pn,pnf->f", q - p, x) / len(used) - 2 * l2 * w
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        w += lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return {"format": FORMAT, "features": list(FEATURES), "mean": mean.tolist(), "std": std.tolist(),
            "weights": w.tolist(), "l2": l2, "photos": len(used), "photos_without_positive": len(photos) - len(used)}


def log_likelihood(spec: dict, photos: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean log P(a positive candidate is chosen) over the photos that have one."""
    ch = Chooser(spec)
    total, n = 0.0, 0
    for f, y in photos:
        if y.any():
            s = ch.scores(f)
            total += float(np.logaddexp.reduce(s[y]) - np.logaddexp.reduce(s))
            n += 1
    return total / max(n, 1)
