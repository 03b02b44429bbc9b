"""Practical methodology: learning curves, the underfit/overfit/defect diagnosis, the lr U-curve.

Deep Learning book, chapter 11 (Goodfellow, Bengio & Courville 2016):
- 11.3 "Determining whether to gather more data": first look at the training error, then the
  test error; plot error against training-set size on a log scale (doubling the set each time)
  and extrapolate to see how much more data a target error needs  -> `learning-curve`.
- 11.4.1: the learning rate is the one hyperparameter to tune if there is time for only one;
  training error after a fixed budget is U-shaped in it (fig. 11.1)  -> `lr-sweep`.
- 11.3 / 11.4.1 / 11.5: training error above target -> underfitting (capacity, learning rate);
  training fine but test much worse -> overfitting (more data, regularization); both high or
  inconsistent -> suspect a defect and run the debugging tests  -> `diagnose`.

The pure parts (`fit_power_law`, `examples_needed`, `bootstrap_examples_needed`, `diagnose`,
`lr_grid`, `best_rate`) import only numpy; the commands train through training.train and read
the run folders it writes (config.json, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGET_ACCURACY = 0.98   # Goodfellow et al. 2014 / DL book 11.6: human-level, 98% sequence accuracy
ERR_FLOOR = 1e-4         # errors are floored here before taking logs (a training error of exactly 0)
# Chance level for whole-sequence error: a predictor that ignores the photo can at best output
# the most frequent house number, which covers ~1% of SVHN photos -> ~0.99 sequence error.
# "Near chance" after training is flagged within CHANCE_MARGIN of it.
CHANCE_ERR = 0.99
CHANCE_MARGIN = 0.05
# "Close to target": within this fraction of the target error (2% +- 0.5 points at the default);
# smaller differences are below the noise of a few hundred validation photos
# (binomial s.e. of 2% on 400 photos = 0.7 points).
TARGET_TOL = 0.25
# "Validation far better than training": more than this many points, and less than half of it.
# Training accuracy in metrics.jsonl is measured with augmentation/dropout on, so validation
# may be a little better legitimately; this much better points at a leak or a bookkeeping bug.
VAL_BETTER_MARGIN = 0.10
# Learning-curve sizes: doubling, as 11.3 recommends.
DEFAULT_SIZES = (125, 250, 500, 1000, 2000)
LR_GRID = (1e-4, 1.0, 2)  # lo, hi, points per decade (half-decades)


# ----------------------------------------------------------------------------------------------
# Learning curve: err(n) = a * n^-b + c


@dataclass(frozen=True)
class PowerLaw:
    """err(n) = a * n**(-b) + c, fitted to errors in log space."""
    a: float
    b: float
    c: float
    rmse_log: float      # root mean square residual of log(err)
    n_points: int
    with_offset: bool    # c was fitted (else fixed at 0)

    def __call__(self, n):
        return self.a * np.asarray(n, dtype=float) ** (-self.b) + self.c


def _fit_given_c(logn: np.ndarray, err: np.ndarray, c: float) -> tuple[float, float, float]:
    """Least squares of log(err - c) = log a - b log n; returns (a, b, sse of log err)."""
    y = np.log(np.maximum(err - c, ERR_FLOOR * 1e-3))
    A = np.stack([np.ones_like(logn), -logn], axis=1)
    (loga, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = np.log(np.exp(loga) * np.exp(-b * logn) + c)
    sse = float(np.sum((pred - np.log(err)) ** 2))
    return float(np.exp(loga)), float(b), sse


def fit_power_law(n, err, with_offset: bool | None = None) -> PowerLaw:
    """Fit err(n) = a n^-b + c with c >= 0, minimizing squared residuals of log(err).

    Log space because errors span orders of magnitude and their noise is roughly relative.
    c (the irreducible error: label noise, ambiguous photos) is bounded to [0, min(err)) and
    found by profiling: for each c the rest is a straight line in log-log coordinates.
    With fewer than 4 distinct sizes, 3 parameters would interpolate the points with no
    degree of freedom left, so the pure law a n^-b (c = 0) is fitted instead
    (`with_offset=None` decides so; True/False forces it).
    """
    n = np.asarray(n, dtype=float)
    err = np.maximum(np.asarray(err, dtype=float), ERR_FLOOR)
    if n.shape != err.shape or n.ndim != 1:
        raise ValueError(f"fit_power_law: n and err must be 1-D of equal length, got {n.shape} and {err.shape}")
    if len(np.unique(n)) < 2 or np.any(n <= 0):
        raise ValueError("fit_power_law: need at least 2 distinct positive training-set sizes")
    if with_offset is None:
        with_offset = len(np.unique(n)) >= 4
    logn = np.log(n)
    best = (*_fit_given_c(logn, err, 0.0), 0.0)
    if with_offset:
        hi = float(err.min()) * (1 - 1e-6)
        # coarse geometric grid over (0, min err), then a finer one around the best
        grid = hi * np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 200)])
        for c in grid:
            a, b, sse = _fit_given_c(logn, err, float(c))
            if sse < best[2]:
                best = (a, b, sse, float(c))
        step = hi / 200
        for c in np.clip(np.linspace(best[3] - step, best[3] + step, 101), 0.0, hi):
            a, b, sse = _fit_given_c(logn, err, float(c))
            if sse < best[2]:
                best = (a, b, sse, float(c))
    a, b, sse, c = best
    return PowerLaw(a=a, b=b, c=c, rmse_log=math.sqrt(sse / len(n)), n_points=len(n), with_offset=with_offset)


def examples_needed(fit: PowerLaw, target_err: float) -> float:
    """Training-set size at which the fitted curve reaches `target_err` (inf if it never does)."""
    if target_err <= fit.c or fit.b <= 0 or fit.a <= 0:
        return math.inf
    return float((fit.a / (target_err - fit.c)) ** (1.0 / fit.b))


def bootstrap_examples_needed(n, err, target_err: float, n_eval: int | None = None, reps: int = 500,
                              seed: int = 0, with_offset: bool | None = None,
                              level: float = 0.9) -> dict:
    """Interval for `examples_needed` by a parametric bootstrap.

    Each replicate redraws every point's error as Binomial(n_eval, err)/n_eval -- the noise of
    measuring an error rate on n_eval validation photos -- and, where several seeds were run at
    one size, also resamples those runs (seed-to-seed variance). Without n_eval the log-space
    residuals of the fit are resampled instead (inflated by sqrt(k / (k - p)) for the p fitted
    parameters). Returns {"lo", "hi", "median", "unreachable"}: the `level` interval (inf where
    more than that share of replicates never reach the target) and the share that never do.
    """
    n = np.asarray(n, dtype=float)
    err = np.asarray(err, dtype=float)
    rng = np.random.default_rng(seed)
    fit = fit_power_law(n, err, with_offset)
    groups = [np.flatnonzero(n == v) for v in np.unique(n)]
    p = 3 if fit.with_offset else 2
    resid = np.log(np.maximum(err, ERR_FLOOR)) - np.log(fit(n))
    resid = resid * math.sqrt(len(n) / max(len(n) - p, 1))
    needed = []
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        nb, eb = n[idx], err[idx]
        if n_eval:
            eb = rng.binomial(n_eval, np.clip(eb, 0, 1)) / n_eval
        else:
            eb = np.exp(np.log(fit(nb)) + rng.choice(resid, size=len(nb)))
        try:
            needed.append(examples_needed(fit_power_law(nb, eb, fit.with_offset), target_err))
        except (ValueError, np.linalg.LinAlgError):
            needed.append(math.inf)
    needed = np.array(needed)
    q = (1 - level) / 2
    srt = np.sort(needed)  # inf sorts last; order statistics instead of interpolation (inf - inf)
    lo, med, hi = (srt[min(len(srt) - 1, int(round(f * (len(srt) - 1))))] for f in (q, 0.5, 1 - q))
    return {"lo": float(lo), "median": float(med), "hi": float(hi),
            "unreachable": float(np.mean(~np.isfinite(needed))), "level": level, "reps": reps}


# ----------------------------------------------------------------------------------------------
# Diagnosis (DL book 11.3, 11.4.1, 11.5)


@dataclass(frozen=True)
class Diagnosis:
    regime: str                 # "defect" | "underfitting" | "overfitting" | "ok"
    reasons: tuple[str, ...]    # the numbers behind the verdict
    next_steps: tuple[str, ...]


def diagnose(train_err: float, val_err: float, test_err: float | None = None, target_err: float = 0.02,
             chance_err: float = CHANCE_ERR, tol: float = TARGET_TOL, nonfinite: bool = False) -> Diagnosis:
    """Name the regime from sequence errors (fractions in [0, 1]).

    Order of the rules: evidence of a defect first (it invalidates the rest), then the
    training error against the target (11.3: "determine whether the performance on the training
    set is acceptable" before anything else), then the gap to validation/test.
    """
    errs = [train_err, val_err] + ([test_err] if test_err is not None else [])
    pct = lambda e: f"{100 * e:.2f}%"  # noqa: E731
    ok_level = target_err * (1 + tol)
    reasons: list[str] = [f"training error {pct(train_err)}, validation error {pct(val_err)}"
                          + (f", test error {pct(test_err)}" if test_err is not None else "")
                          + f"; target {pct(target_err)} (tolerance {pct(ok_level)}), chance {pct(chance_err)}"]
    check_steps = ("run `transcribe check` (tiny-set fit, gradient checks, activation and update statistics)",
                   "look at the most confident training mistakes: `transcribe evaluate` on the training "
                   "split, then `transcribe gallery` (11.5: too-tight crops were found this way)")

    # --- defects (11.5: "reasoning about software using train and test error")
    defect: list[str] = []
    if nonfinite or not all(math.isfinite(e) for e in errs):
        defect.append("a loss or error is NaN/inf: the optimization diverged or a computation overflows")
    elif train_err >= chance_err - CHANCE_MARGIN and val_err >= chance_err - CHANCE_MARGIN:
        defect.append(f"training and validation errors are both near chance ({pct(chance_err)}): "
                      "nothing was learned (a data/label bug, or a learning rate far off)")
    elif val_err < train_err - VAL_BETTER_MARGIN and val_err < train_err / 2:
        defect.append(f"validation error is far below training error ({pct(val_err)} vs {pct(train_err)}): "
                      "validation photos may overlap training, or the two are measured differently")
    if (test_err is not None and math.isfinite(test_err) and math.isfinite(val_err)
            and test_err > max(2 * val_err, val_err + VAL_BETTER_MARGIN)):
        defect.append(f"test error {pct(test_err)} is far above validation error {pct(val_err)}: "
                      "check that the test data is prepared like the training data and that the "
                      "saved model reloads correctly (11.5)")
    if defect:
        steps = check_steps + (("run `transcribe lr-sweep`: a rate far from the optimum leaves training "
                                "error stuck (fig. 11.1)",) if "chance" in defect[0] else ())
        return Diagnosis("defect", tuple(reasons + defect), steps)

    held_out = test_err if test_err is not None else val_err
    held_name = "test" if test_err is not None else "validation"
    gap = held_out - train_err
    # --- underfitting (11.3: poor training performance -> bigger model / tune the learning rate)
    if train_err > ok_level:
        reasons.append(f"training error {pct(train_err)} is above the target {pct(target_err)}: the model "
                       "does not fit the data it already has, so more data will not help yet")
        if gap > ok_level:
            reasons.append(f"the {held_name} gap is {pct(gap)} as well; deal with it once training error is low")
        return Diagnosis("underfitting", tuple(reasons), (
            "tune the learning rate first: `transcribe lr-sweep` (11.4.1: the most important hyperparameter)",
            "then raise capacity: more/wider layers (a larger --preset, wider widths/fc), less dropout "
            "and weight decay, train longer (table 11.1)",
            "if a large, well-tuned model still underfits, inspect data quality: `transcribe check`, "
            "`transcribe gallery` on training mistakes (11.3)",
        ))
    # --- overfitting (11.3: test much worse than train -> gather more data, regularize)
    if held_out > ok_level:
        reasons.append(f"training error is at target but {held_name} error is {pct(held_out)} "
                       f"(gap {pct(gap)}): the model overfits")
        return Diagnosis("overfitting", tuple(reasons), (
            "gather more data: `transcribe learning-curve` estimates how many photos the target needs (11.3)",
            "regularize: more dropout, weight decay, augmentation (random crops, crop widening) (11.4.1)",
            "or reduce capacity if regularization does not close the gap; search with `transcribe search`",
        ))
    reasons.append(f"training and {held_name} errors are both within {pct(ok_level)} of the target")
    return Diagnosis("ok", tuple(reasons), (
        "done for this target: measure on the test set if not yet done (11.3)",
        "to reach more coverage at 98% accuracy, gather more data and keep train and test errors close",
    ))


# ----------------------------------------------------------------------------------------------
# Learning-rate sweep


def lr_grid(lo: float = LR_GRID[0], hi: float = LR_GRID[1], per_decade: int = LR_GRID[2]) -> list[float]:
    """Rates spaced evenly in log10 from lo to hi inclusive, `per_decade` per decade (11.4.3)."""
    if not (0 < lo < hi):
        raise ValueError(f"lr_grid: need 0 < lo < hi, got {lo}, {hi}")
    k = round(math.log10(hi / lo) * per_decade)
    return [float(f"{x:.3g}") for x in np.logspace(math.log10(lo), math.log10(hi), k + 1)]


def best_rate(rows: list[dict]) -> dict:
    """The row with the lowest training error (ties: the smaller rate, the safer side of fig. 11.1)."""
    if not rows:
        raise ValueError("best_rate: no rows")
    return min(rows, key=lambda r: (r["train_err"], r["lr"]))


# ----------------------------------------------------------------------------------------------
# Reading run folders


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of RUN/metrics.jsonl; a clear error naming the file when missing or malformed."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is {run_dir} a run folder written by `transcribe train`?)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not JSON ({e.msg})") from None
    if not rows:
        raise ValueError(f"{path}: no evaluation rows yet")
    return rows


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def run_errors(rows: list[dict]) -> dict:
    """Sequence errors at the best-validation row and the last row, and whether anything was non-finite."""
    def errs(r):
        return {"step": r.get("step"), "train_err": 1 - _num(r.get("train_seq_acc")),
                "val_err": 1 - _num(r.get("val_seq_acc")),
                "train_loss": _num(r.get("train_loss")), "val_loss": _num(r.get("val_loss"))}
    finite = [r for r in rows if math.isfinite(_num(r.get("val_seq_acc")))]
    best = max(finite, key=lambda r: _num(r["val_seq_acc"])) if finite else rows[-1]
    nonfinite = any(not math.isfinite(_num(r.get(k))) for r in rows
                    for k in ("train_loss", "val_loss", "train_seq_acc", "val_seq_acc"))
    return {"best": errs(best), "last": errs(rows[-1]), "nonfinite": nonfinite}


def _fmt_n(x: float) -> str:
    return "never" if not math.isfinite(x) else f"{x:,.0f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _save_figure(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
