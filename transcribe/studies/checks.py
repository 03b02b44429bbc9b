"""The debugging strategies of DL book sec. 11.5 as one command with a pass/fail table.

Hard checks (a failure means a defect; the command exits 1):
- fit a tiny dataset: 16 photos must reach 100% training sequence accuracy ("usually even small
  models can be guaranteed to be able to fit a sufficiently small dataset");
- back-propagated vs numerical derivatives of the whole model, by centred finite differences
  (eq. 11.7) in float64 through random projections f(t) = u . g(theta + t v, x + t w)
  ("apply the test to f(x) = u^T g(v x) ... repeat for more than one u and v");
- complex-step derivative (eq. 11.8-11.9, Squire & Trapp 1998) of log P(S|X) written out
  independently in complex128 numpy, against autograd through sequence.log_likelihood;
  its real part must equal sequence.log_likelihood (the likelihood is the hand formula);
- every parameter receives a finite, non-zero gradient.
Soft checks (warn): initial loss of near-uniform softmaxes; dead ReLUs (units never active over a
batch) and how often units are off; gradient norms per layer; update/weight ratios after a few
optimizer steps against the ~1% guide (Bottou 2015, quoted in 11.5).

Size: about 470 lines: each check is short; together they are the chapter's one checklist.
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transcribe.config import BLANK, INPUT_SIZE, MAX_DIGITS, PRESETS

TINY_SET = 16            # photos in the tiny-set fit
TINY_STEPS = 300         # Adam steps allowed to fit them
TINY_LR = 1e-2
FD_EPS = 1e-5            # centred-difference step in float64: measured best on the tiny model (rel. err ~1e-9);
                         # smaller steps lose digits to rounding (1e-8: ~1e-6), larger ones risk crossing kinks
FD_TOL = 1e-5            # relative error allowed; a wrong backward is off by O(1)
# Real photos have flat regions: neighbouring conv outputs are exactly equal there, and a max-pool
# over a tie has only one-sided derivatives (autograd takes one side, a centred difference averages
# both). Noise of 1% of the pixel range ([-1, 1]) separates tied values by more than the finite-
# difference step moves them (1e-3 was measured too small on 9x9 flat blocks: rel. err 6e-5).
TIE_NOISE = 1e-2
N_PROJECTIONS = 3        # (u, v) pairs: a mistake orthogonal to one projection is caught by another
CS_STEP = 1e-20          # complex step: no subtractive cancellation, so h can be tiny (eq. 11.9)
CS_TOL = 1e-10
# Update/weight ratio per step: the chapter wants ~1% (not 50%, not 0.001%); flag an order of
# magnitude beyond either side of it, i.e. outside [1e-4, 1e-1].
UPDATE_RATIO = (1e-4, 1e-1)
UPDATE_STEPS = 5
DEAD_WARN = 0.5          # warn when more than half of a layer's units never fire on a batch
INIT_LOSS_TOL = 0.1      # relative distance of the initial loss from the uniform-softmax value


@dataclass
class CheckResult:
    name: str
    status: str          # "pass" | "fail" | "warn"
    value: str           # the measured number(s)
    threshold: str       # what it is compared against
    hard: bool           # a failure is a defect (exit code 1)
    detail: dict = field(default_factory=dict)


def _status(ok: bool, hard: bool) -> str:
    return "pass" if ok else ("fail" if hard else "warn")


# ----------------------------------------------------------------------------------------------
# Helpers on a model and a batch


def gradient_check(model, x, lengths, digits, head: str = "sequence", n_proj: int = N_PROJECTIONS,
                   eps: float = FD_EPS, tol: float = FD_TOL, seed: int = 0) -> CheckResult:
    """Directional derivatives of u . g(theta + t v, x + t w) at t = 0: autograd vs eq. 11.7
    (centred differences at t = +-eps and +-eps/10; the closer one counts).

    Runs a float64 copy in training mode (batch-norm batch statistics, dropout), re-seeding the
    RNG before every forward so each evaluation uses the same dropout masks.
    """
    import torch
    from torch.func import functional_call
    model = copy.deepcopy(model).double().train()
    gen = torch.Generator().manual_seed(seed)
    x = x.double() + TIE_NOISE * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    worst, rows = 0.0, []

    def f(params, inputs, u):
        torch.manual_seed(seed)  # same dropout masks at every evaluation
        bufs = {n: b.clone() for n, b in buffers.items()}  # batch norm updates running stats
        out = functional_call(model, {**params, **bufs}, (inputs,))
        return torch.dot(u, _flatten_outputs(out, lengths, digits, head))

    for k in range(n_proj):
        with torch.no_grad():
            m = _flatten_outputs(model(x), lengths, digits, head).numel()
        u = torch.randn(m, generator=gen, dtype=torch.float64)
        v = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in theta.items()}
        w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        scale = math.sqrt(sum(float((t ** 2).sum()) for t in v.values()) + float((w ** 2).sum()))
        v = {n: t / scale for n, t in v.items()}
        w = w / scale
        params = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
        xin = x.clone().requires_grad_(True)
        grads = torch.autograd.grad(f(params, xin, u), [params[n] for n in names] + [xin], allow_unused=True)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, [v[n] for n in names] + [w]) if g is not None)
        # Two step sizes: a kink (ReLU at 0, a max-pool or maxout switching) between t - h and
        # t + h spoils one centred difference by chance (measured: ~1 projection in 10 at
        # h = 1e-4); a wrong backward is off by O(1) at every step size.
        best = None
        for h in (eps, eps / 10):
            with torch.no_grad():
                plus = f({n: theta[n] + h * v[n] for n in names}, x + h * w, u)
                minus = f({n: theta[n] - h * v[n] for n in names}, x - h * w, u)
            numeric = float(plus - minus) / (2 * h)
            rel = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-8)
            if best is None or rel < best[1]:
                best = (numeric, rel, h)
        numeric, rel, h = best
        worst = max(worst, rel)
        rows.append({"projection": k, "autograd": analytic, "finite_difference": numeric, "step": h,
                     "relative_error": rel})
    ok = math.isfinite(worst) and worst <= tol
    return CheckResult("gradient: finite differences (eq. 11.7), u.g(theta+tv, x+tw)", _status(ok, True),
                       f"max rel. err {worst:.1e} over {n_proj} projections", f"<= {tol:g}", True,
                       {"projections": rows, "eps": eps})


def _flatten_outputs(out, lengths, digits, head):
    import torch
    from transcribe import sequence
    length_logits, digit_logits = out
    ll = sequence.log_likelihood(length_logits, digit_logits, lengths, digits, head)
    return torch.cat([length_logits.flatten(), digit_logits.flatten(), ll])


def _log_softmax_complex(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, analytic in z (complex-step safe): the shift m uses real
    parts only and cancels exactly, exp and log are holomorphic on the principal branch here."""
    m = z.real.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def log_likelihood_complex(length_logits: np.ndarray, digit_logits: np.ndarray, lengths: np.ndarray,
                           digits: np.ndarray, head: str = "sequence", blank: int = 10) -> np.ndarray:
    """log P(S|X) from its formula (Goodfellow et al. 2014, sec. 3), in numpy, any dtype. -> (B,)

    sequence: log P(L = n) + sum_{i < n} log P(S_i = s_i)
    blank:    sum_{i < n} log P(S_i = s_i) + [n < N] log P(S_n = blank)
    """
    lp_len = _log_softmax_complex(length_logits)
    lp_dig = _log_softmax_complex(digit_logits)
    b, n_pos, _ = digit_logits.shape
    out = np.zeros(b, dtype=np.result_type(length_logits, digit_logits))
    for j in range(b):
        n = int(lengths[j])
        out[j] = sum(lp_dig[j, i, int(digits[j, i])] for i in range(n))
        if head == "sequence":
            out[j] += lp_len[j, n]
        elif n < n_pos:
            out[j] += lp_dig[j, n, blank]
    return out


def complex_step_check(length_logits, digit_logits, lengths, digits, head: str = "sequence",
                       n_proj: int = N_PROJECTIONS, h: float = CS_STEP, tol: float = CS_TOL,
                       seed: int = 0) -> list[CheckResult]:
    """Two rows: value of sequence.log_likelihood vs the formula; derivative vs Im f(z + ih v)/h."""
    import torch
    from transcribe import sequence
    L = length_logits.detach().double()
    D = digit_logits.detach().double()
    lengths_np, digits_np = lengths.numpy(), digits.numpy()
    formula = log_likelihood_complex(L.numpy(), D.numpy(), lengths_np, digits_np, head, BLANK)
    torch_ll = sequence.log_likelihood(L, D, lengths, digits, head).numpy()
    diff = float(np.max(np.abs(formula - torch_ll)))
    value_ok = math.isfinite(diff) and diff <= 1e-9 * max(1.0, float(np.max(np.abs(formula))))
    rng = np.random.default_rng(seed)
    worst, rows = 0.0, []
    for k in range(n_proj):
        u = rng.normal(size=len(formula))
        vl, vd = rng.normal(size=L.shape), rng.normal(size=D.shape)
        Lr, Dr = L.clone().requires_grad_(True), D.clone().requires_grad_(True)
        f = torch.dot(torch.from_numpy(u), sequence.log_likelihood(Lr, Dr, lengths, digits, head))
        gl, gd = torch.autograd.grad(f, [Lr, Dr], allow_unused=True)  # blank head: no length term
        analytic = sum(float((g.numpy() * v).sum()) for g, v in ((gl, vl), (gd, vd)) if g is not None)
        fc = u @ log_likelihood_complex(L.numpy() + 1j * h * vl, D.numpy() + 1j * h * vd,
                                        lengths_np, digits_np, head, BLANK)
        numeric = float(fc.imag / h)
        rel = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)
        worst = max(worst, rel)
        rows.append({"projection": k, "autograd": analytic, "complex_step": numeric, "relative_error": rel})
    grad_ok = math.isfinite(worst) and worst <= tol
    return [
        CheckResult(f"log P(S|X) ({head} head) equals its formula", _status(value_ok, True),
                    f"max |diff| {diff:.1e}", "<= 1e-9 x |logP|", True),
        CheckResult("likelihood gradient: complex step (eq. 11.9)", _status(grad_ok, True),
                    f"max rel. err {worst:.1e}, h={h:g}", f"<= {tol:g}", True, {"projections": rows}),
    ]


def fit_tiny_set(model, x, lengths, digits, head: str = "sequence", steps: int = TINY_STEPS,
                 lr: float = TINY_LR) -> CheckResult:
    """Adam on one fixed batch until every sequence is right (checked in eval mode, as predicted)."""
    import torch
    from transcribe import sequence
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    acc, loss_value, step = 0.0, float("nan"), 0
    for step in range(1, steps + 1):
        model.train()
        loss = sequence.loss(*model(x), lengths, digits, head)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            break
        if step % 10 == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                dec = sequence.decode(*model(x), head)
            right = (dec.lengths == lengths) & ((dec.digits == digits) | (digits < 0)).all(1)
            acc = float(right.float().mean())
            if acc == 1.0:
                break
    ok = acc == 1.0
    return CheckResult(f"fit a tiny dataset ({len(x)} photos)", _status(ok, True),
                       f"train seq. acc {100 * acc:.0f}% after {step} steps (loss {loss_value:.3g})",
                       f"100% within {steps} Adam steps, lr {lr:g}", True)


def initial_loss(model, x, lengths, digits, head: str = "sequence") -> CheckResult:
    """At initialization every softmax is ~uniform: loss ~ log 7 + E[n] log 10 (sequence head)."""
    import torch
    from transcribe import sequence
    with torch.no_grad():
        out = model.eval()(x)
        loss = float(sequence.loss(*out, lengths, digits, head))
    n_len, n_pos, n_cls = out[0].shape[1], out[1].shape[1], out[1].shape[2]
    if head == "sequence":
        expected = math.log(n_len) + float(lengths.float().mean()) * math.log(n_cls)
    else:
        expected = math.log(n_len) + n_pos * math.log(n_cls)
    rel = abs(loss - expected) / expected
    return CheckResult("initial loss = uniform softmaxes", _status(rel <= INIT_LOSS_TOL, False),
                       f"{loss:.3f} vs {expected:.3f}", f"within {100 * INIT_LOSS_TOL:.0f}%", False)


def activation_stats(model, x) -> CheckResult:
    """Per rectifier layer: fraction of units never active on the batch (dead) and fraction off.

    A unit of a conv layer is a channel (its weights are shared over positions); its
    pre-activation is the conv/BN output of a ConvBlock with ReLU units; FC units are the
    outputs of nn.ReLU modules. Maxout units cannot die and are skipped.
    """
    import torch
    import torch.nn as nn
    stats: dict[str, dict] = {}
    hooks = []

    def record(name, channel_dim_first):
        def hook(_module, _inputs, out):
            active = out > 0                                     # (B, C, H, W) or (B, H)
            per_unit = active.transpose(0, 1).flatten(1).any(1)  # (C,): fired anywhere on the batch
            stats[name] = {"units": int(per_unit.numel()), "dead": float((~per_unit).float().mean()),
                           "off": float((~active).float().mean())}
        return hook

    for name, m in model.named_modules():
        if getattr(m, "pieces", None) == 1 and hasattr(m, "bn"):
            # ConvBlock with ReLU units: its pre-activation is bn(conv(x)) (bn may be Identity)
            hooks.append(m.bn.register_forward_hook(record(name, True)))
        elif isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_hook(record(name, True)))
    try:
        with torch.no_grad():
            model.train()(x)
    finally:
        for h in hooks:
            h.remove()
    worst = max((s["dead"] for s in stats.values()), default=0.0)
    return CheckResult("dead ReLUs (never active on a batch)", _status(worst <= DEAD_WARN, False),
                       f"worst layer {100 * worst:.0f}% dead; off " + ", ".join(f"{100 * s['off']:.0f}%" for s in stats.values()),
                       f"<= {100 * DEAD_WARN:.0f}% dead per layer", False, {"layers": stats})


def gradient_norms(model, x, lengths, digits, head: str = "sequence") -> list[CheckResult]:
    """One backward pass: every parameter gets a finite non-zero gradient; norms per layer."""
    import torch
    from transcribe import sequence
    model = copy.deepcopy(model).train()
    model.zero_grad(set_to_none=True)
    sequence.loss(*model(x), lengths, digits, head).backward()
    layers, missing = {}, []
    for name, p in model.named_parameters():
        if p.grad is None or not torch.isfinite(p.grad).all() or float(p.grad.abs().max()) == 0.0:
            missing.append(name)
            continue
        layers[name] = {"grad_norm": float(p.grad.norm()), "weight_norm": float(p.detach().norm())}
    weights = {n: s["grad_norm"] for n, s in layers.items() if n.endswith("weight")}
    spread = max(weights.values()) / min(weights.values()) if weights else float("nan")
    return [
        CheckResult("every parameter gets a finite, non-zero gradient", _status(not missing, True),
                    f"{len(layers)} of {len(layers) + len(missing)} tensors", "all", True,
                    {"without_gradient": missing}),
        CheckResult("gradient norms per layer (vanishing/exploding)", _status(spread <= 1e4, False),
                    f"{min(weights.values()):.1e} .. {max(weights.values()):.1e} (x{spread:.0f})" if weights else "-",
                    "largest/smallest <= 1e4", False, {"layers": layers}),
    ]


def update_ratio_check(model, x, lengths, digits, head: str = "sequence", make_optimizer=None,
                  steps: int = UPDATE_STEPS) -> CheckResult:
    """||delta theta|| / ||theta|| per weight tensor per step, over a few optimizer steps (11.5)."""
    import torch
    from transcribe import sequence, training
    model = copy.deepcopy(model).train()
    opt = make_optimizer(model) if make_optimizer else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios: dict[str, list[float]] = {}
    for _ in range(steps):
        before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.ndim >= 2}
        loss = sequence.loss(*model(x), lengths, digits, head)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for n, r in training.update_ratios(before, model).items():
            ratios.setdefault(n, []).append(r)
    mean = {n: float(np.mean(r)) for n, r in ratios.items()}
    lo, hi = UPDATE_RATIO
    outside = {n: r for n, r in mean.items() if not lo <= r <= hi}
    return CheckResult(f"update/weight ratio per step ({steps} steps)", _status(not outside, False),
                       f"{min(mean.values()):.1e} .. {max(mean.values()):.1e}; median {np.median(list(mean.values())):.1e}"
                       + "".join(f"; {n} {r:.1e}" for n, r in sorted(outside.items(), key=lambda kv: -abs(math.log10(kv[1] + 1e-30) + 2))[:3]),
                       f"~1e-2, flagged outside [{lo:g}, {hi:g}]", False, {"layers": mean, "outside": outside})


def check_all(model, x, lengths, digits, head: str = "sequence", make_optimizer=None,
               tiny_steps: int = TINY_STEPS, seed: int = 0) -> list[CheckResult]:
    """All checks on `model` and one batch (x (B,3,S,S) float, lengths (B,), digits (B,N))."""
    import torch
    torch.manual_seed(seed)
    results = [initial_loss(model, x, lengths, digits, head)]
    results.append(fit_tiny_set(model, x[:TINY_SET], lengths[:TINY_SET], digits[:TINY_SET], head, tiny_steps))
    small = slice(0, 4)  # the float64 checks need only a few photos
    results.append(gradient_check(model, x[small], lengths[small], digits[small], head, seed=seed))
    with torch.no_grad():
        out = model.eval()(x[small])
    results += complex_step_check(*out, lengths[small], digits[small], head, seed=seed)
    results += gradient_norms(model, x, lengths, digits, head)
    results.append(activation_stats(model, x))
    results.append(update_ratio_check(model, x, lengths, digits, head, make_optimizer))
    return results


def format_table(results: list[CheckResult]) -> str:
    lines = ["| check | result | value | threshold |", "|---|---|---|---|"]
    for r in results:
        cells = [r.name, r.status.upper() + ("" if r.hard else " (soft)"), r.value, r.threshold]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command: transcribe check [CONFIG.json | RUN] [--preset tiny] [--train FOLDER ...]


def _load_config(path: str | None) -> dict:
    """{"model", "data", "train"} from a config JSON or a run folder's config.json ({} if none)."""
    from transcribe.runs import read_config
    if not path:
        return {}
    try:
        cfg = read_config(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"transcribe check: {e}") from None
    if "model" not in cfg:
        raise SystemExit(f"transcribe check: {path}: expected an object with a 'model' section")
    return cfg


def _batch(data_cfg, n: int, seed: int):
    """n photos: the first n training photos of `data_cfg` (centre crops), or random noise with
    random labels when no data is given (a tiny set of random labels can still be memorized)."""
    import torch
    if data_cfg is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, INPUT_SIZE, INPUT_SIZE, generator=g) * 0.25
        lengths = torch.randint(1, MAX_DIGITS + 1, (n,), generator=g)
        digits = torch.randint(0, 10, (n, MAX_DIGITS), generator=g)
        digits[torch.arange(MAX_DIGITS)[None, :] >= lengths[:, None]] = -1
        return x, lengths, digits, "random images with random labels (no --train given)"
    from transcribe import dataset
    train, _ = dataset.load_splits(data_cfg, progress=False)
    k = min(n, len(train))
    x = dataset.prepare_batch(train.images[:k], crop=data_cfg.crop, train=False)
    return (x, torch.as_tensor(train.lengths[:k]), torch.as_tensor(train.digits[:k]),
            f"first {k} training photos of {', '.join(data_cfg.train)}")


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="config JSON ({model, data, train}) or a run folder; "
                                                  "default: --preset with random data")
    parser.add_argument("--preset", default=None, choices=tuple(PRESETS),
                        help="model preset when no config is given (default: tiny)")
    parser.add_argument("--train", nargs="+", default=None, help="format-1 folders or .h5 caches to take the "
                                                                  "tiny set from (default: the config's data, else random)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="photos for the statistics (the tiny set is the first 16; default: 32)")
    parser.add_argument("--tiny-steps", type=int, default=TINY_STEPS, help="Adam steps allowed to fit the tiny set")
    parser.add_argument("--train-seed", type=int, default=0,
                        help="seed of the initial weights, the random data and the fitting (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (the checks run on the CPU: float64 and complex-step numpy)")
    parser.add_argument("--out", default=None, help="folder for check.json and check.md")


def run_check(args: argparse.Namespace) -> int:
    from transcribe.runs import atomic_write, save_json
    import torch
    from transcribe import config as C
    from transcribe.model import PRESETS, ModelConfig, build_model
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _load_config(args.config)
    if args.config and args.preset:
        raise SystemExit("transcribe check: give a config or --preset, not both")
    if cfg:
        model_cfg = C.from_dict(ModelConfig, cfg["model"])
    else:
        name = args.preset or "tiny"
        if name not in PRESETS:
            raise SystemExit(f"transcribe check: unknown preset {name!r} (one of {sorted(PRESETS)})")
        model_cfg = PRESETS[name]
    data_cfg = None
    if args.train or cfg.get("data"):
        from transcribe.dataset import DataConfig
        data_cfg = C.from_dict(DataConfig, cfg.get("data", {}))
        if args.train:
            data_cfg = C.from_dict(DataConfig, {**C.to_dict(data_cfg), "train": tuple(args.train)})
    make_optimizer = _optimizer_factory(cfg.get("train"))
    torch.manual_seed(args.train_seed)
    model = build_model(model_cfg)
    x, lengths, digits, source = _batch(data_cfg, max(args.batch_size, TINY_SET), args.train_seed)
    print(f"model: {model_cfg.head} head, widths {model_cfg.widths}, fc {model_cfg.fc}; data: {source}")
    results = check_all(model, x, lengths, digits, model_cfg.head, make_optimizer, args.tiny_steps, args.train_seed)
    table = format_table(results)
    print(table)
    failed = [r.name for r in results if r.status == "fail"]
    print(f"{len(failed)} hard check(s) failed" + (": " + "; ".join(failed) if failed else "")
          + f", {sum(r.status == 'warn' for r in results)} warning(s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_json({"source": source, "model": model_cfg, "results": [asdict(r) for r in results]},
                    out / "check.json")
        atomic_write(out / "check.md", table)
    return 1 if failed else 0


def _optimizer_factory(train_section: dict | None):
    """The optimizer exactly as `transcribe train` builds it, from the config's train section
    or, without one, TrainConfig's defaults."""
    import functools
    from transcribe import config as C
    from transcribe import training
    cfg = C.from_dict(training.TrainConfig, train_section or {})
    return functools.partial(training.make_optimizer, cfg=cfg)
