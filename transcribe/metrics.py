"""Scores of a predictions file: accuracy, the accuracy-vs-coverage trade, calibration.

Everything here is a pure function of the rows of a predictions.jsonl file (see
docs/architecture.md) or of plain arrays, so any predictions file can be scored the same way:
this model's, an OCR baseline's, on validation, test or training photos.

Definitions (Deep Learning book, sec. 11.1; Goodfellow et al. 2014, sec. 5):
- A transcription is *correct* when the whole predicted string equals the truth.
  Rows without a truth (unlabelled photos) are counted and left out of every score.
- *Sequence accuracy*: the fraction of photos transcribed correctly (the paper's metric).
- *Character accuracy*: sum over photos of the positions i where truth[i] == pred[i], divided
  by the sum over photos of max(len(truth), len(pred)). A missing or extra digit thus costs
  one position, and a shifted string ("849" for "1849") scores 0 of 4 — it is a diagnostic,
  not the headline.
- *Accept rule*: a transcription is accepted when confidence >= threshold, else the photo is
  referred to a person. *Coverage* is the fraction accepted; the accuracy that matters is the
  accuracy of the accepted ones. Photos with equal confidence cannot be separated by any
  threshold, so they are always accepted or refused together (curve points are taken at the
  ends of groups of equal confidence).
- *Threshold for a target accuracy*: the lowest threshold (= the largest coverage) whose
  accepted set has accuracy >= target. It is chosen on validation and applied unchanged to
  other splits; `best_at_target` on a split reports what an oracle threshold would give there.
- *AUC*: the area under the accuracy-coverage curve, the mean over k = 1..N of the accuracy
  of the k most confident photos. Within a group of tied confidences each photo counts with
  the group's mean correctness, so the AUC does not depend on the order of tied rows.
- *Accept decision as a detector* (sec. 11.1, precision and recall): positive = a correct
  transcription, predicted positive = accepted. Precision is the accuracy of the accepted,
  recall the fraction of the correct transcriptions that were accepted.
- *Calibration*: p = exp(confidence) is the model's probability that the whole transcription
  is right. Reliability bins split [0, 1] into equal-width bins; the expected calibration
  error (ECE) is sum_b (n_b / N) |accuracy_b - mean p_b|.

Only numpy is imported.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from transcribe.config import TARGET

COVERAGE_GOAL = 0.95  # the Street View project's coverage goal at that accuracy (book sec. 11.1)
ECE_BINS = 10         # equal-width bins of exp(confidence) over [0, 1]
CURVE_POINTS = 501    # report.json keeps at most this many points of each curve
EPS = 1e-9            # slack when comparing an accuracy (a ratio of counts) with the target


# ---------------------------------------------------------------- rows -> arrays

def labelled(rows: Iterable[dict]) -> list[dict]:
    """The rows that have a truth; only these can be scored."""
    return [r for r in rows if r.get("truth") is not None]


def correctness(rows: Sequence[dict]) -> np.ndarray:
    """(N,) bool: pred == truth for each (labelled) row."""
    return np.array([r.get("truth") is not None and str(r.get("pred", "")) == str(r["truth"])
                     for r in rows], dtype=bool)


def confidences(rows: Sequence[dict], key: str = "confidence") -> np.ndarray:
    """(N,) float64 log-confidences; a missing or NaN confidence becomes -inf (always refused)."""
    out = np.array([-math.inf if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)
    out[np.isnan(out)] = -math.inf
    return out


def has_key(rows: Sequence[dict], key: str) -> bool:
    """True when every row has a non-null value for `key` (e.g. adhoc_confidence)."""
    return len(rows) > 0 and all(r.get(key) is not None for r in rows)


# ---------------------------------------------------------------- accuracy

def sequence_accuracy(truth: Sequence[str], pred: Sequence[str]) -> float:
    """Fraction of whole strings transcribed exactly."""
    if len(truth) == 0:
        return math.nan
    return float(np.mean([t == p for t, p in zip(truth, pred, strict=True)]))


def character_accuracy(truth: Sequence[str], pred: Sequence[str]) -> float:
    """Per-position matches over max(len(truth), len(pred)), summed over photos (see module doc)."""
    matches = total = 0
    for t, p in zip(truth, pred, strict=True):
        matches += sum(a == b for a, b in zip(t, p))
        total += max(len(t), len(p))
    return matches / total if total else math.nan


def accuracy_by_length(truth: Sequence[str], pred: Sequence[str]) -> dict[int, dict[str, float]]:
    """{true length: {"n": count, "accuracy": sequence accuracy}}, lengths ascending."""
    groups: dict[int, list[bool]] = {}
    for t, p in zip(truth, pred, strict=True):
        groups.setdefault(len(t), []).append(t == p)
    return {n: {"n": len(v), "accuracy": float(np.mean(v))} for n, v in sorted(groups.items())}


# ---------------------------------------------------------------- accuracy vs coverage

def _groups(conf: np.ndarray, correct: np.ndarray):
    """Sort by confidence descending and group equal confidences.

    Returns (thresholds (G,), cum_count (G,), cum_correct (G,), group_count (G,), group_correct (G,)):
    accepting every photo with confidence >= thresholds[g] accepts cum_count[g] photos of which
    cum_correct[g] are correct.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if conf.shape != correct.shape or conf.ndim != 1:
        raise ValueError(f"confidence {conf.shape} and correctness {correct.shape} must be equal 1-d shapes")
    conf = np.where(np.isnan(conf), -math.inf, conf)
    if len(conf) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0), empty, empty, empty, empty
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order]
    # A group ends where the next confidence differs (or at the end).
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True))
    cum_count = ends + 1
    cum_correct = np.cumsum(ok)[ends]
    group_count = np.diff(np.concatenate([[0], cum_count]))
    group_correct = np.diff(np.concatenate([[0], cum_correct]))
    return c[ends], cum_count, cum_correct, group_count, group_correct


def accuracy_coverage_curve(conf: Sequence[float], correct: Sequence[bool]) -> dict[str, list[float]]:
    """The curve at every achievable threshold: {"threshold", "coverage", "accuracy"} (lists, coverage ascending).

    Point g accepts every photo with confidence >= threshold[g].
    """
    t, k, c, _, _ = _groups(np.asarray(conf), np.asarray(correct))
    n = len(np.asarray(conf))
    return {"threshold": t.tolist(), "coverage": (k / n).tolist() if n else [],
            "accuracy": (c / k).tolist() if n else []}


def _expected_top_k_accuracy(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(N,) accuracy of the k most confident photos, k = 1..N, ties counted at their group mean."""
    _, k, c, gk, gc = _groups(conf, correct)
    # Per sorted position: within its group each photo counts gc/gk correct.
    per_item = np.repeat(gc / np.maximum(gk, 1), gk)
    cum = np.cumsum(per_item)
    return cum / np.arange(1, len(cum) + 1)


def area_under_curve(conf: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean over k = 1..N of the accuracy of the k most confident photos (ties at group mean)."""
    acc = _expected_top_k_accuracy(np.asarray(conf), np.asarray(correct))
    return float(acc.mean()) if len(acc) else math.nan


def accuracy_at_coverage(conf: Sequence[float], correct: Sequence[bool], coverage: float) -> float:
    """Accuracy of the ceil(coverage * N) most confident photos (ties at group mean)."""
    acc = _expected_top_k_accuracy(np.asarray(conf), np.asarray(correct))
    if len(acc) == 0:
        return math.nan
    k = min(max(math.ceil(coverage * len(acc) - EPS), 1), len(acc))
    return float(acc[k - 1])


def threshold_for_accuracy(conf: Sequence[float], correct: Sequence[bool], target: float = TARGET) -> float | None:
    """The lowest threshold whose accepted set (confidence >= threshold) has accuracy >= target.

    This is the largest coverage meeting the target (coverage need not fall monotonically with
    the threshold; we take the largest that works). Ties are accepted together. Returns None
    when no non-empty accepted set reaches the target: refuse everything.
    """
    t, k, c, _, _ = _groups(np.asarray(conf), np.asarray(correct))
    ok = np.flatnonzero(c >= target * k - EPS)
    if len(ok) == 0:
        return None
    return float(t[ok[-1]])


def apply_threshold(conf: Sequence[float], correct: Sequence[bool], threshold: float | None) -> tuple[float, float | None]:
    """(coverage, accuracy of the accepted) when accepting confidence >= threshold.

    threshold None refuses everything; accuracy is None when nothing is accepted.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return math.nan, None
    if threshold is None:
        return 0.0, None
    accepted = np.nan_to_num(conf, nan=-math.inf) >= threshold
    coverage = float(accepted.mean())
    return coverage, (float(correct[accepted].mean()) if accepted.any() else None)


def best_at_target(conf: Sequence[float], correct: Sequence[bool], target: float = TARGET) -> dict[str, Any]:
    """What an oracle threshold chosen on this very split gives: {"threshold", "coverage", "accuracy"}."""
    threshold = threshold_for_accuracy(conf, correct, target)
    coverage, accuracy = apply_threshold(conf, correct, threshold)
    return {"threshold": threshold, "coverage": coverage, "accuracy": accuracy}


def accept_precision_recall(conf: Sequence[float], correct: Sequence[bool], threshold: float | None) -> dict[str, float | None]:
    """The accept decision as a detector of correct transcriptions (book sec. 11.1, eq. 11.1).

    precision = correct & accepted / accepted, recall = correct & accepted / correct, F = 2pr/(p+r).
    """
    conf = np.nan_to_num(np.asarray(conf, dtype=np.float64), nan=-math.inf)
    correct = np.asarray(correct, dtype=bool)
    accepted = np.zeros_like(correct) if threshold is None else conf >= threshold
    tp = int((accepted & correct).sum())
    precision = tp / int(accepted.sum()) if accepted.any() else None
    recall = tp / int(correct.sum()) if correct.any() else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"precision": precision, "recall": recall, "f1": f1, "accepted": int(accepted.sum()),
            "true_positives": tp}


# ---------------------------------------------------------------- calibration

def reliability_bins(conf: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width bins of p = exp(confidence) over [0, 1]: lo, hi, count, mean_confidence, accuracy.

    Bin b holds lo <= p < hi; the last bin also holds p == 1. Empty bins have count 0 and None means.
    """
    p = np.exp(np.nan_to_num(np.asarray(conf, dtype=np.float64), nan=-math.inf))
    p = np.clip(p, 0.0, 1.0)  # a confidence above log 1 would be a bug upstream; clip, don't crash
    correct = np.asarray(correct, dtype=bool)
    index = np.minimum((p * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": n,
                     "mean_confidence": float(p[mask].mean()) if n else None,
                     "accuracy": float(correct[mask].mean()) if n else None})
    return bins


def expected_calibration_error(conf: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS) -> float:
    """sum_b (n_b / N) |accuracy_b - mean p_b| over the reliability bins."""
    bins = reliability_bins(conf, correct, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return math.nan
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]))


# ---------------------------------------------------------------- the whole report

def _thin(curve: dict[str, list[float]], points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Keep at most `points` evenly spaced points of a curve (always the first and the last)."""
    n = len(curve["coverage"])
    if n <= points:
        return curve
    keep = np.unique(np.linspace(0, n - 1, points).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in curve.items()}


def _confidence_summary(conf: np.ndarray, correct: np.ndarray, target: float) -> dict[str, Any]:
    return {"auc": area_under_curve(conf, correct),
            "best_at_target": best_at_target(conf, correct, target),
            "curve": _thin(accuracy_coverage_curve(conf, correct))}


def report(rows: Sequence[dict], threshold: float | None = None, target: float = TARGET,
           threshold_source: str | None = None) -> dict[str, Any]:
    """Every score of a predictions file, as one JSON-ready dict.

    threshold: the refusal threshold to apply (chosen on validation). None = choose it on these
    rows (what evaluating the validation split does). threshold_source says where it came from.
    """
    scored = labelled(rows)
    truth = [str(r["truth"]) for r in scored]
    pred = [str(r.get("pred", "")) for r in scored]
    correct = correctness(scored)
    conf = confidences(scored)
    chosen_here = threshold is None and threshold_source is None
    if chosen_here:
        threshold = threshold_for_accuracy(conf, correct, target) if scored else None
    coverage, accuracy = apply_threshold(conf, correct, threshold)
    out: dict[str, Any] = {
        "n": len(rows),
        "n_scored": len(scored),
        "n_unlabelled": len(rows) - len(scored),
        "target": target,
        "sequence_accuracy": sequence_accuracy(truth, pred),
        "character_accuracy": character_accuracy(truth, pred),
        "accuracy_by_length": {str(k): v for k, v in accuracy_by_length(truth, pred).items()},
        "mistakes": int((~correct).sum()),
        "threshold": {
            "value": threshold,
            "source": "chosen on this split" if chosen_here else (threshold_source or "given"),
            "coverage": coverage,
            "accuracy": accuracy,
            **accept_precision_recall(conf, correct, threshold),
        },
        "accuracy_at_coverage_goal": {"coverage": COVERAGE_GOAL,
                                      "accuracy": accuracy_at_coverage(conf, correct, COVERAGE_GOAL)},
        "calibration": {"ece": expected_calibration_error(conf, correct),
                        "bins": reliability_bins(conf, correct)},
        "principled": _confidence_summary(conf, correct, target),
        "adhoc": (_confidence_summary(confidences(scored, "adhoc_confidence"), correct, target)
                  if has_key(scored, "adhoc_confidence") else None),
    }
    out["auc"] = out["principled"]["auc"]
    out["best_at_target"] = out["principled"]["best_at_target"]
    return _nan_to_none(out)


def _nan_to_none(value: Any) -> Any:
    """NaN (a score of nothing, e.g. no labelled rows) -> None, so report.json is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def pct(x: float | None) -> str:
    """0.9812 -> '98.12%'; None or NaN -> '–' (tables and headlines)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def num(x: float | None, fmt: str = ".4f") -> str:
    """x formatted with fmt; None or NaN -> '–'."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def to_markdown(rep: dict[str, Any], title: str = "Evaluation") -> str:
    """The report as a short Markdown page: headline, threshold, principled vs ad-hoc, lengths, calibration."""
    target = rep["target"]
    th = rep["threshold"]
    best = rep["best_at_target"]
    lines = [
        f"# {title}",
        "",
        f"{rep['n_scored']} photos scored" + (f" ({rep['n_unlabelled']} without a truth left out)"
                                               if rep["n_unlabelled"] else "") + ".",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| sequence accuracy (all photos) | {pct(rep['sequence_accuracy'])} |",
        f"| character accuracy (per position, over the longer string) | {pct(rep['character_accuracy'])} |",
        f"| coverage at {pct(target)} accuracy, threshold {th['source']} | {pct(th['coverage'])} "
        f"(accuracy there {pct(th['accuracy'])}) |",
        f"| best achievable coverage at {pct(target)} on this split (oracle threshold) | {pct(best['coverage'])} |",
        f"| accuracy at {pct(rep['accuracy_at_coverage_goal']['coverage'])} coverage | "
        f"{pct(rep['accuracy_at_coverage_goal']['accuracy'])} |",
        f"| area under the accuracy-coverage curve | {num(rep['auc'])} |",
        f"| expected calibration error of exp(confidence) | {num(rep['calibration']['ece'])} |",
        "",
        "## Refusal threshold",
        "",
        f"Accept when log P(S|X) >= {num(th['value'])} ({th['source']}); otherwise refer the photo to a person.",
        f"Accepted {th['accepted']} of {rep['n_scored']}: precision {pct(th['precision'])}, "
        f"recall {pct(th['recall'])}, F1 {num(th['f1'])} (positive = a correct transcription).",
    ]
    if rep["adhoc"] is not None:
        a, p = rep["adhoc"], rep["principled"]
        lines += [
            "",
            "## Principled vs ad-hoc confidence (same predictions)",
            "",
            "| confidence | AUC | best coverage at target |",
            "| --- | --- | --- |",
            f"| log P(S\\|X) (principled) | {num(p['auc'])} | {pct(p['best_at_target']['coverage'])} |",
            f"| log of the product of softmax maxima (ad hoc) | {num(a['auc'])} | "
            f"{pct(a['best_at_target']['coverage'])} |",
        ]
    lines += ["", "## Accuracy by true length", "", "| length | photos | accuracy |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['n']} | {pct(v['accuracy'])} |" for k, v in rep["accuracy_by_length"].items()]
    lines += ["", "## Calibration (reliability bins of exp(confidence))", "",
              "| bin | photos | mean confidence | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| {b['lo']:.1f}–{b['hi']:.1f} | {b['count']} | {num(b['mean_confidence'], '.3f')} | "
              f"{num(b['accuracy'], '.3f')} |" for b in rep["calibration"]["bins"] if b["count"]]
    return "\n".join(lines) + "\n"
