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

Size: about 630 lines: the three commands of one chapter (learning curve, diagnosis, lr sweep)
share the run-folder reading and the training driver.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transcribe.config import DEVICE_HELP, DEVICES, PRESETS, TARGET

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
    log_n = (math.log(fit.a) - math.log(target_err - fit.c)) / fit.b  # in logs: a flat fit overflows
    return math.exp(log_n) if log_n < 700 else math.inf


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
    if (test_err is not None and math.isfinite(test_err) and math.isfinite(val_err)
            and test_err < val_err - VAL_BETTER_MARGIN and test_err < val_err / 2):
        defect.append(f"test error {pct(test_err)} is far below validation error {pct(val_err)}: "
                      "the test photos may overlap training/validation, or are scored differently")
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
    """The row with the lowest training error; ties (e.g. all 100% after a short budget) go to the
    lower training loss, then the smaller rate (the safer side of fig. 11.1)."""
    if not rows:
        raise ValueError("best_rate: no rows")
    def loss(r):
        x = r.get("train_loss", math.inf)
        return x if x is not None and math.isfinite(x) else math.inf
    return min(rows, key=lambda r: (r["train_err"], loss(r), r["lr"]))


# ----------------------------------------------------------------------------------------------
# Reading run folders


def _as_float(x) -> float:
    return float("nan") if x is None else float(x)


def run_errors(rows: list[dict]) -> dict:
    """Sequence errors at the best-validation row and the last row, and whether anything was non-finite."""
    def errs(r):
        return {"step": r.get("step"), "train_err": 1 - _as_float(r.get("train_seq_acc")),
                "val_err": 1 - _as_float(r.get("val_seq_acc")),
                "train_loss": _as_float(r.get("train_loss")), "val_loss": _as_float(r.get("val_loss"))}
    finite = [r for r in rows if math.isfinite(_as_float(r.get("val_seq_acc")))]
    best = max(finite, key=lambda r: _as_float(r["val_seq_acc"])) if finite else rows[-1]
    nonfinite = any(not math.isfinite(_as_float(r.get(k))) for r in rows
                    for k in ("train_loss", "val_loss", "train_seq_acc", "val_seq_acc"))
    return {"best": errs(best), "last": errs(rows[-1]), "nonfinite": nonfinite}


def _fmt_n(x: float) -> str:
    if not math.isfinite(x):
        return "never"
    return f"{x:,.0f}" if x < 1e7 else f"{x:.1e}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _finish_error_plot(plt, fig, ax, path: Path, xlabel: str, title: str) -> None:
    """The common end of the error-against-log-x plots: axes, legend, atomic PNG, figure freed."""
    from transcribe.runs import save_figure
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sequence error (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Shared by the training-driven commands (learning-curve, lr-sweep, search)


def add_base_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the configurations come from: a config file and/or a preset and data folders."""
    parser.add_argument("--config", default=None, metavar="FILE.json",
                        help='base {"model", "data", "train"} (a run\'s config.json or a search\'s best.json)')
    parser.add_argument("--preset", default=None, choices=tuple(PRESETS),
                        help="model preset (default: the config's model, else tiny)")
    parser.add_argument("--train", nargs="+", default=None, metavar="FOLDER",
                        help="format-1 folders or .h5 caches (default: the config's data)")
    parser.add_argument("--val-fraction", type=float, default=None, help="held out for validation (default: config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: config's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: config's; e.g. lr-sweep's best)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per training run")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help=f"{DEVICE_HELP} (default: the config's, else auto)")
    parser.add_argument("--out", required=True, help="folder for the runs and the results")


def base_configs(args: argparse.Namespace):
    """(model_cfg, data_cfg, train_cfg) from --config, then --preset/--train/... overrides."""
    from transcribe.runs import read_config
    from transcribe import config as C
    from transcribe.dataset import DataConfig
    from transcribe.model import PRESETS, ModelConfig
    from transcribe.training import TrainConfig
    base: dict = {}
    if args.config:
        try:
            base = read_config(args.config)
        except (OSError, ValueError) as e:
            raise SystemExit(f"{args.config}: cannot read the configuration ({e})") from None
    train_cfg = C.from_dict(TrainConfig, base.get("train", {}))
    if args.preset or "model" not in base:
        name = args.preset or "tiny"
        if name not in PRESETS:
            raise SystemExit(f"--preset {name!r}: choose one of {sorted(PRESETS)}")
        model_cfg, train_cfg = PRESETS[name], dataclasses.replace(train_cfg, preset=name)
    else:
        model_cfg = C.from_dict(ModelConfig, base["model"])
    data_cfg = C.from_dict(DataConfig, base.get("data", {}))
    if args.train:
        data_cfg = dataclasses.replace(data_cfg, train=tuple(args.train))
    if args.val_fraction is not None:
        data_cfg = dataclasses.replace(data_cfg, val_fraction=args.val_fraction, val_size=0)
    changes = {"progress": True}  # each run's progress: a bar on a terminal, plain lines in a log
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.threads:
        changes["threads"] = args.threads
    if args.device:
        changes["device"] = args.device
    if getattr(args, "lr", None) is not None:
        changes["lr"] = args.lr
    return model_cfg, data_cfg, dataclasses.replace(train_cfg, **changes)


def run_result(run_dir: str | Path) -> dict:
    """Errors of a finished run: at its best-validation row (what early stopping keeps) and last row."""
    from transcribe.runs import read_metrics
    e = run_errors(read_metrics(run_dir))
    return {"run": str(run_dir), "train_err": e["best"]["train_err"], "val_err": e["best"]["val_err"],
            "best_step": e["best"]["step"], "last_train_err": e["last"]["train_err"],
            "last_val_err": e["last"]["val_err"], "last_train_loss": e["last"]["train_loss"],
            "nonfinite": e["nonfinite"]}


# ----------------------------------------------------------------------------------------------
# Training subsets with a fixed validation split


def subset_data_config(data_cfg, n: int):
    """`data_cfg` training on only n photos of its training side, with the same validation split.

    DataConfig.train_size takes the first n of one seeded order of the training side, so the
    subsets are nested (a larger size only adds photos) and validation does not change.
    """
    return dataclasses.replace(data_cfg, train_size=n)


# ----------------------------------------------------------------------------------------------
# Command: transcribe learning-curve


def budget_steps(n: int, batch_size: int, epochs: float, min_steps: int, max_steps: int) -> int:
    """Steps for a training-set size: `epochs` passes over it, at least min_steps, at most max_steps.

    A fixed number of epochs gives every size the same number of looks at each photo, so small
    sets are not starved of updates relative to their size; min_steps lets the smallest sets
    converge (a few dozen steps would leave them underfitting, inflating the curve's slope),
    max_steps bounds the compute of the largest. The best-validation row of each run is used
    (early stopping), so extra steps on a small set cannot hurt its point through overfitting.
    """
    return int(min(max_steps, max(min_steps, math.ceil(epochs * n / batch_size))))


def default_sizes(n_train: int, smallest: int = 125) -> list[int]:
    """Doubling sizes from `smallest` up to the whole training side (11.3: log scale)."""
    sizes, n = [], smallest
    while n < n_train:
        sizes.append(n)
        n *= 2
    if not sizes or n_train > sizes[-1] * 1.2:
        sizes.append(n_train)
    else:
        sizes[-1] = n_train
    return sizes


def add_learning_curve_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_arguments(parser)
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="training-set sizes (default: 125, 250, ... doubling, then the whole training side)")
    parser.add_argument("--smallest", type=int, default=125, help="first size of the default doubling")
    parser.add_argument("--epochs", type=float, default=30, help="passes over each subset (see --min-steps/--max-steps)")
    parser.add_argument("--min-steps", type=int, default=200, help="at least this many steps per size")
    parser.add_argument("--max-steps", type=int, default=1000, help="at most this many steps per size")
    parser.add_argument("--evals", type=int, default=5, help="evaluations per run (early stopping picks the best)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per size (different weights and batches, same subset)")
    parser.add_argument("--target", type=float, default=TARGET, help="target sequence accuracy")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the interval")


def learning_curve_results(points: list[dict], target_err: float, n_eval: int, reps: int = 1000) -> dict:
    """Fit err(n) to the validation errors of `points` ({"n", "train_err", "val_err", ...})."""
    n = np.array([p["n"] for p in points], float)
    val = np.array([p["val_err"] for p in points], float)
    fit = fit_power_law(n, val)
    need = examples_needed(fit, target_err)
    ci = bootstrap_examples_needed(n, val, target_err, n_eval=n_eval, reps=reps, with_offset=fit.with_offset)
    return {"target_err": target_err, "fit": dataclasses.asdict(fit), "examples_needed": need,
            "interval": ci, "n_val": n_eval, "points": points}


def learning_curve_markdown(res: dict) -> str:
    f = res["fit"]
    rows = [[p["n"], p.get("seed", 0), p["steps"], f"{100 * p['train_err']:.1f}%", f"{100 * p['val_err']:.1f}%",
             f"{100 * PowerLaw(**f)(p['n']):.1f}%"] for p in res["points"]]
    ci = res["interval"]
    return ("# Learning curve\n\n" + _table(["training photos", "seed", "steps", "train error",
                                             "validation error", "fit"], rows)
            + f"\nValidation: {res['n_val']} photos (the same split at every size). "
            + f"Fit: err(n) = {f['a']:.3g} n^-{f['b']:.3g} + {f['c']:.3g} (log-space residual rms {f['rmse_log']:.3f}"
            + ("" if f["with_offset"] else "; c fixed at 0: fewer than 4 sizes") + ").\n"
            + f"Photos needed for {100 * res['target_err']:.1f}% error: {_fmt_n(res['examples_needed'])} "
            + f"({100 * ci['level']:.0f}% bootstrap interval {_fmt_n(ci['lo'])} .. {_fmt_n(ci['hi'])}; "
            + f"{100 * ci['unreachable']:.0f}% of replicates never reach it).\n")


def plot_learning_curve(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = res["points"]
    n = np.array([p["n"] for p in pts], float)
    fit = PowerLaw(**res["fit"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(n, [100 * p["train_err"] for p in pts], "o", label="training error")
    ax.plot(n, [100 * p["val_err"] for p in pts], "s", label="validation error")
    need = res["examples_needed"]
    hi = max(n.max() * 2, min(need * 1.5, n.max() * 1000) if math.isfinite(need) else n.max() * 4)
    grid = np.geomspace(n.min(), hi, 200)
    ax.plot(grid, 100 * fit(grid), "-", label=f"fit {fit.a:.3g} n^-{fit.b:.2f} + {100 * fit.c:.2f}%")
    ax.axhline(100 * res["target_err"], ls="--", c="gray", label=f"target {100 * res['target_err']:.0f}%")
    if math.isfinite(need) and need <= hi:
        ax.axvline(need, ls=":", c="gray")
    _finish_error_plot(plt, fig, ax, path, "training photos (log scale)", "Learning curve (DL book 11.3)")


def run_learning_curve(args: argparse.Namespace) -> int:
    from transcribe.runs import METRICS_FILE, atomic_write, read_metrics
    from transcribe import dataset
    from transcribe.training import train
    model_cfg, data_cfg, train_cfg = base_configs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full_train, val = dataset.load_splits(data_cfg, progress=False)
    sizes = sorted(set(args.sizes)) if args.sizes else default_sizes(len(full_train), args.smallest)
    target_err = 1 - args.target
    print(f"learning curve: sizes {sizes} of {len(full_train)} training photos, validation {len(val)} photos")
    points, t0, count = [], time.time(), 0
    for n in sizes:
        for seed in range(args.seeds):
            count += 1
            print(f"learning curve: run {count}/{len(sizes) * args.seeds}, n={n} seed {seed} "
                  f"({time.time() - t0:.0f} s so far)", flush=True)
            steps = budget_steps(n, train_cfg.batch_size, args.epochs, args.min_steps, args.max_steps)
            run = out / f"n{n}-seed{seed}"
            d_cfg = subset_data_config(data_cfg, n)
            t_cfg = dataclasses.replace(train_cfg, out=str(run), steps=steps, seed=train_cfg.seed + seed,
                                        eval_every=max(1, math.ceil(steps / args.evals)), eval_limit=0,
                                        batch_size=min(train_cfg.batch_size, n), patience=0)
            if not (run / METRICS_FILE).exists() or read_metrics(run)[-1]["step"] < steps:
                train(model_cfg, d_cfg, t_cfg)
            r = run_result(run)
            points.append({"n": n, "seed": seed, "steps": steps, **r})
            print(f"  n={n:5d} seed {seed}: {steps} steps, train error {100 * r['train_err']:.1f}%, "
                  f"validation error {100 * r['val_err']:.1f}% (best at step {r['best_step']})")
    res = learning_curve_results(points, target_err, len(val), args.bootstrap)
    res["budget"] = {"epochs": args.epochs, "min_steps": args.min_steps, "max_steps": args.max_steps,
                     "batch_size": train_cfg.batch_size, "preset": train_cfg.preset}
    atomic_write(out / "learning_curve.json", json.dumps(res, indent=2, default=float) + "\n")
    md = learning_curve_markdown(res)
    atomic_write(out / "learning_curve.md", md)
    plot_learning_curve(res, out / "learning_curve.png")
    print(md)
    print(f"wrote {out / 'learning_curve.json'}, .md, .png")
    return 0


# ----------------------------------------------------------------------------------------------
# Command: transcribe diagnose RUN


def add_diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (reads metrics.jsonl)")
    parser.add_argument("--test-error", type=float, default=None, help="sequence error on the test set, if measured")
    parser.add_argument("--target", type=float, default=TARGET, help="target sequence accuracy")
    parser.add_argument("--chance", type=float, default=CHANCE_ERR, help="sequence error of guessing")
    parser.add_argument("--row", choices=("best", "last"), default="best",
                        help="metrics row to judge: best validation (what is kept) or last")


TRUNCATED_LR = 0.25  # a decaying schedule that ended above this share of its peak rate never decayed


def truncated_schedule(train: dict, last: dict) -> str | None:
    """A sentence when the run stopped (by --max-seconds or patience) before its linear/exp
    schedule had lowered the rate, else None: its errors then describe an unfinished run, not
    the rate. `train` is config.json's "train", `last` the last metrics row."""
    steps, lr, peak = train.get("steps"), _as_float(last.get("lr")), _as_float(train.get("lr"))
    if train.get("schedule") not in ("linear", "exp") or not steps or not math.isfinite(lr) or not peak > 0:
        return None
    step = int(last.get("step") or 0)
    if step >= steps or lr <= TRUNCATED_LR * peak:
        return None
    why = (f"its {train['max_seconds']:g} s budget ran out" if train.get("max_seconds") else "it stopped early")
    return (f"truncated schedule: {why} at step {step:,} of {steps:,} ({100 * step / steps:.0f}%), with the "
            f"rate still at {lr:.3g} ({100 * lr / peak:.0f}% of its {peak:g} peak); the rate never decayed, so "
            f"judge the rate only after a run whose schedule ends (fewer --steps for the budget, or a schedule "
            f"that follows --max-seconds)")


def run_diagnose(args: argparse.Namespace) -> int:
    from transcribe.runs import read_config, read_metrics
    try:
        rows = read_metrics(args.run)
        e = run_errors(rows)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"transcribe diagnose: {err}") from None
    try:
        truncated = truncated_schedule(read_config(args.run).get("train", {}), rows[-1])
    except (OSError, ValueError):  # metrics without a config.json: nothing to compare the rate with
        truncated = None
    row = e[args.row]
    d = diagnose(row["train_err"], row["val_err"], args.test_error, 1 - args.target, args.chance,
                 nonfinite=e["nonfinite"])
    print(f"run {args.run}, {args.row} row (step {row['step']}): train loss {row['train_loss']:.4g}, "
          f"validation loss {row['val_loss']:.4g}")
    print(f"regime: {d.regime.upper()}")
    if truncated:
        print(f"  ! {truncated}")
    for r in d.reasons:
        print(f"  - {r}")
    print("next:")
    for s in d.next_steps:
        print(f"  * {s}")
    return 0


# ----------------------------------------------------------------------------------------------
# Command: transcribe lr-sweep


def add_lr_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_arguments(parser)
    parser.add_argument("--lrs", nargs="+", type=float, default=None, help="rates to try (default: the log grid)")
    parser.add_argument("--lr-min", type=float, default=LR_GRID[0],
                        help=f"smallest rate of the log grid (default: {LR_GRID[0]:g})")
    parser.add_argument("--lr-max", type=float, default=LR_GRID[1],
                        help=f"largest rate of the log grid (default: {LR_GRID[1]:g})")
    parser.add_argument("--per-decade", type=int, default=LR_GRID[2], help="grid points per decade (2 = half-decades)")
    parser.add_argument("--steps", type=int, default=300, help="the fixed training budget per rate (fig. 11.1)")
    parser.add_argument("--schedule", default="const",
                        help="lr schedule of each run (default const: fig. 11.1 holds the rate fixed)")


def lr_sweep_markdown(rows: list[dict], best: dict, steps: int) -> str:
    table = _table(["learning rate", "train error", "train loss", "validation error", "note"],
                   [[f"{r['lr']:.3g}", f"{100 * r['train_err']:.1f}%",
                     "-" if not math.isfinite(r["train_loss"]) else f"{r['train_loss']:.3f}",
                     f"{100 * r['val_err']:.1f}%", "diverged (NaN/inf)" if r["diverged"] else
                     ("best" if r is best else "")] for r in rows])
    return (f"# Learning-rate sweep ({steps} steps each)\n\n" + table
            + f"\nBest rate: {best['lr']:.3g} (training error {100 * best['train_err']:.1f}%). "
            + "Training error after a fixed budget is U-shaped in the rate (DL book fig. 11.1); "
            + "diverged runs count as error 100%.\n")


def plot_lr_sweep(rows: list[dict], best: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lrs = [r["lr"] for r in rows]
    ax.plot(lrs, [100 * r["train_err"] for r in rows], "o-", label="training error")
    ax.plot(lrs, [100 * r["val_err"] for r in rows], "s--", alpha=0.6, label="validation error")
    div = [r for r in rows if r["diverged"]]
    if div:
        ax.plot([r["lr"] for r in div], [100.0] * len(div), "rx", ms=10, label="diverged")
    ax.axvline(best["lr"], ls=":", c="gray", label=f"best {best['lr']:.3g}")
    _finish_error_plot(plt, fig, ax, path, "learning rate (log scale)",
                       "Training error against learning rate (DL book fig. 11.1)")


def sweep_row(lr: float, result: dict) -> dict:
    """A sweep row from a run's result: divergence (any NaN/inf) counts as error 1.0."""
    diverged = bool(result["nonfinite"]) or not math.isfinite(result["last_train_err"])
    return {"lr": lr, "train_err": 1.0 if diverged else result["last_train_err"],
            "val_err": 1.0 if diverged or not math.isfinite(result["last_val_err"]) else result["last_val_err"],
            "train_loss": result["last_train_loss"], "diverged": diverged, "run": result["run"]}


def run_lr_sweep(args: argparse.Namespace) -> int:
    from transcribe.runs import METRICS_FILE, atomic_write, read_metrics
    from transcribe.training import train
    model_cfg, data_cfg, train_cfg = base_configs(args)
    lrs = sorted(args.lrs) if args.lrs else lr_grid(args.lr_min, args.lr_max, args.per_decade)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.time()
    for k, lr in enumerate(lrs):
        print(f"lr sweep: run {k + 1}/{len(lrs)}, lr {lr:.3g} ({time.time() - t0:.0f} s so far)", flush=True)
        run = out / f"lr{lr:.3g}"
        t_cfg = dataclasses.replace(train_cfg, out=str(run), lr=lr, steps=args.steps, schedule=args.schedule,
                                    warmup=0, eval_every=args.steps, patience=0)
        if not (run / METRICS_FILE).exists() or read_metrics(run)[-1]["step"] < args.steps:
            train(model_cfg, data_cfg, t_cfg)
        row = sweep_row(lr, run_result(run))
        rows.append(row)
        print(f"  lr {lr:<8.3g} training error {100 * row['train_err']:5.1f}%"
              + ("  diverged" if row["diverged"] else f"  (loss {row['train_loss']:.3f})"))
    best = best_rate(rows)
    atomic_write(out / "lr_sweep.json", json.dumps({"steps": args.steps, "schedule": args.schedule,
                                                   "best_lr": best["lr"], "rows": rows}, indent=2) + "\n")
    md = lr_sweep_markdown(rows, best, args.steps)
    atomic_write(out / "lr_sweep.md", md)
    plot_lr_sweep(rows, best, out / "lr_sweep.png")
    print(md)
    print(f"wrote {out / 'lr_sweep.json'}, .md, .png")
    return 0
