"""Which candidate box holds the number: a choice learned from out-of-fold readings.

localize.locate reads every candidate box of a photo (detections, their unions and rescalings, the
whole photo, prior boxes) and keeps the transcription with the most probability summed over the
candidates (localize.choose); its box was the candidate most sure of that transcription. That box
overlaps the true number box (IoU >= 0.5) for 83% of 600 training-side photos, while a candidate
reading the same transcription does for 93%: most misses are a looser box read just as surely.

So the transcription stays the rule's, and the box is chosen among the candidates that read it
(within a factor NEAR of the surest) by a conditional logit (McFadden's choice model: a linear score
per candidate, softmax over the photo's set) on features of each box against the others of its set:
its area against the smallest and the median, its mean overlap with them, its log P(S|X) gap to the
surest, aspect, size and place in the photo, where it came from. It is fitted to maximize the
probability of the boxes with IoU >= 0.5, on photos read by models that never trained on them
(`transcribe transfer --keep-folds`, then `transcribe fit-chooser`, which keeps it only where it beats
the rule out of sample), and stored as a small JSON next to the run (CHOOSER_FILE), read by numpy
alone so the torch-free runtime chooses the same way. (A first version chose the transcription as
well, over every candidate; on the same photos it did not beat the rule.)

The confidence reported stays the chosen candidate's log P(S|X): the refusal threshold chosen with
boxes given keeps its meaning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from transcribe import localize

CHOOSER_FILE = "chooser.json"
FORMAT = 2
SOURCES = ("detection", "merge", "photo", "prior")
FEATURES = ("area_vs_smallest", "area_vs_median", "mean_overlap", "logp_gap", "log_aspect", "area_vs_photo",
            "centre_x", "centre_y", "set_size", *(f"source_{s}" for s in SOURCES))
NEAR = math.log(10)    # the set: candidates reading the transcription within a factor 10 of the surest


def same_reading(results: Sequence[dict]) -> list[int]:
    """The candidates the box is chosen among: those reading the rule's transcription
    (localize.choose) within a factor NEAR of its surest candidate, that one first."""
    k = localize.choose(results)
    text, best = results[k]["pred"], results[k]["confidence"]
    return [k] + [j for j, r in enumerate(results) if j != k and r["pred"] == text and r["confidence"] >= best - NEAR]


def features(results: Sequence[dict], boxes: Sequence[Sequence[float]], sources: Sequence[str],
             shape: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """The set of candidates (same_reading) and their (len(set), len(FEATURES)) features: their
    boxes (left, top, width, height) in a photo of shape (h, w), against one another."""
    h, w = shape
    chosen = same_reading(results)
    area = np.array([max(boxes[j][2], 1.0) * max(boxes[j][3], 1.0) for j in chosen])
    logp = np.array([float(results[j]["confidence"]) for j in chosen])
    out = np.zeros((len(chosen), len(FEATURES)))
    for n, j in enumerate(chosen):
        bl, bt, bw, bh = boxes[j]
        overlap = np.mean([localize.iou(boxes[j], boxes[i]) for i in chosen])
        out[n] = [math.log(area[n] / area.min()), math.log(area[n] / np.median(area)), overlap, logp[n] - logp.max(),
                  math.log(max(bw, 1.0) / max(bh, 1.0)), math.log(area[n] / (h * w)),
                  (bl + bw / 2) / w - 0.5, (bt + bh / 2) / h - 0.5, len(chosen),
                  *(float(sources[j] == s) for s in SOURCES)]
    return chosen, out


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
        chosen, feats = features(results, boxes, sources, shape)
        return chosen[int(np.argmax(self.scores(feats)))]


def fit(photos: list[tuple[np.ndarray, np.ndarray]], l2: float = 1e-2, steps: int = 3000,
        lr: float = 0.1) -> dict:
    """Fit a conditional logit. photos: (features (N, F), positive (N,) bool) per photo (its set of
    candidates); photos without a positive candidate teach nothing and are left out. Maximizes the mean over photos
    of log sum_{positive k} softmax(scores)_k minus l2 |w|^2 (convex in w; full-batch gradient
    ascent with Adam steps). -> the JSON spec of a Chooser."""
    used = [(f, y) for f, y in photos if y.any()]
    if not used:
        raise ValueError("no photo has a candidate box overlapping its number: nothing to learn from")
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
