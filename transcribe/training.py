"""Training: one loop you can read top to bottom, and the run folder it leaves behind.

    transcribe train --preset cpu --train data/synth/train --out runs/synth --steps 3000

The loop (nanoGPT style): lr from a pure `get_lr(step)`, a batch that is a pure function of
(seed, step), forward, `sequence.loss`, backward, clip, step; every `eval_every` steps it
evaluates a fixed training subset and the validation split, appends one row to
metrics.jsonl, prints one line and writes `ckpt-last.pt` (and `ckpt-best.pt` when validation
sequence accuracy improves). Batch order, crops and dropout masks are pure functions of
(seed, step, rank) and everything else that changes (weights, optimizer moments, plateau and
early-stopping state) is in the checkpoint, so a run killed at any moment and started again
on the same folder ends with the same weights as a run never interrupted (bit for bit in
`--deterministic` mode; tests/test_training.py kills one with SIGKILL).

Run folder (docs/architecture.md): config.json ({"model", "data", "train"}), metrics.jsonl,
ckpt-last.pt, ckpt-best.pt, tb/ (TensorBoard), commit.txt.

Instruments (Deep Learning book, sec. 11.5, "monitor histograms of activations and
gradient"): TensorBoard scalars for loss, accuracies and lr; every `hist_every` steps,
histograms of conv/linear outputs (pre-activations) and of block/ReLU outputs with the
fraction of units that are off, histograms of gradients, and per-layer ‖Δw‖/‖w‖ for one update
(Bottou 2015: about 1%, not 50% or 0.001%). The update ratios of the step before each
evaluation also go into metrics.jsonl.

Beyond one process: under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK set) the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on CUDA). Every rank builds the same global batch
and takes its own micro-batch of it, so the crops an image receives do not depend on the
number of processes; only rank 0 evaluates, writes files and prints.

Size: about 600 lines, one concept (a run): the loop, and what exact resume (RNG states,
the resume check) and the instruments (Probe, histograms, update ratios) need beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from transcribe import config as configlib
from transcribe import dataset, precision, sequence
from transcribe import model as modellib
from transcribe.cli import add_train_arguments
from transcribe.config import MAX_DIGITS, RESUMABLE_CHANGES, TrainConfig
from transcribe.progress import Progress
from transcribe.runs import (CHECKPOINT_VERSION, CKPT_BEST, CKPT_LAST, COMMIT_FILE, CONFIG_FILE, append_metrics,
                             LOCK_FILE, atomic_write, git_commit, lock_run, read_checkpoint, read_config, resolve_device,
                             save_checkpoint, save_json, truncate_metrics)

EVAL_BATCH = 256          # images per forward pass during evaluation (memory, not results)
PROGRESS_POSTFIX_EVERY = 20  # steps between progress-bar loss updates (.item() syncs a GPU)


# ---------------------------------------------------------------------------------------------
# The learning rate: a pure function of the step (and, for "plateau", a scale kept in the
# checkpoint).

def get_lr(step: int, cfg: TrainConfig, scale: float = 1.0, elapsed: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based) of `cfg.steps`, `elapsed` seconds into
    the run.

    The linear and exp schedules decay over whichever budget ends the run first: with
    `--max-seconds` the step counts as at least the share of `cfg.steps` that the share of the
    time spent stands for (progress = max(step/steps, elapsed/max_seconds)), so a run stopped by
    the clock at 42% of its steps still ends at lr_floor. Without `--max-seconds` the rate is a
    pure function of the step, and a resumed run is bit-identical to an uninterrupted one; with
    it, the rate depends on the clock, so only step-budget runs resume exactly."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "const":
        return cfg.lr
    if cfg.schedule == "plateau":
        return cfg.lr * scale
    span = max(1, cfg.steps - 1 - cfg.warmup)
    if cfg.max_seconds > 0:  # the step the time spent stands for: steps - 1 when the budget is spent
        step = max(step, (cfg.steps - 1) * min(1.0, elapsed / cfg.max_seconds))
    progress = min(1.0, max(0.0, (step - cfg.warmup) / span))  # 0 after warm-up -> 1 at last step
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.lr_floor - cfg.lr) * progress
    if cfg.schedule == "exp":
        return cfg.lr * (cfg.lr_floor / cfg.lr) ** progress if cfg.lr > 0 else 0.0
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def plateau_update(state: dict, score: float, cfg: TrainConfig) -> dict:
    """Plateau schedule: halve the lr scale after `plateau_patience` evaluations without a
    better validation score. Pure: returns the new state."""
    if score > state["best"]:
        return {"scale": state["scale"], "best": score, "bad": 0}
    bad = state["bad"] + 1
    if bad >= cfg.plateau_patience:
        return {"scale": state["scale"] * 0.5, "best": state["best"], "bad": 0}
    return {"scale": state["scale"], "best": state["best"], "bad": bad}


# ---------------------------------------------------------------------------------------------
# Batches: pure functions of (seed, step).

def dropout_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG (dropout) for one step of one process: a pure function, so
    a resumed run draws the same masks as an uninterrupted one, and processes draw different ones."""
    return int(np.random.SeedSequence([seed, step, rank, 2]).generate_state(1, dtype=np.uint64)[0] >> 1)


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int):
    return dataset.epoch_permutation(n, seed, epoch)  # (n,) LongTensor; cached: one per epoch


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> tuple[int, Any]:
    """(epoch, indices (batch_size,)) of step `step`: each epoch is a permutation of the n
    training images cut into n // batch_size batches (the remainder of each epoch is dropped)."""
    epoch, i = divmod(step, n // batch_size)
    return epoch, _epoch_order(n, seed, epoch)[i * batch_size:(i + 1) * batch_size]


# ---------------------------------------------------------------------------------------------
# Evaluation

def accuracies(decoded_lengths, decoded_digits, lengths, digits) -> tuple[Any, Any, Any]:
    """Per image: (sequence correct (B,) bool, correct characters (B,), true characters (B,)).

    A sequence is correct when the length and every digit match (Goodfellow et al. 2014,
    sec. 5: "the whole sequence"). A character is correct when the prediction has a digit at
    that position equal to the true one; characters are counted over the true length.
    """
    pos = torch.arange(MAX_DIGITS, device=lengths.device)
    true_mask = pos[None, :] < lengths[:, None]                      # (B, 5)
    pred_mask = pos[None, :] < decoded_lengths[:, None]              # (B, 5)
    same = (decoded_digits[:, :MAX_DIGITS] == digits) & true_mask & pred_mask
    chars_right = same.sum(1)
    seq_right = (decoded_lengths == lengths) & (chars_right == lengths)
    return seq_right, chars_right, lengths


def loss_and_accuracy(model, images, lengths, digits, crop: int, head: str, autocast, channels_last: bool,
                      worst: int = 0) -> dict:
    """Loss and sequence/character accuracy of `model` on uint8 images (N,64,64,3), centre crops.

    worst > 0 adds "worst": the `worst` most confident wrong readings, most confident first, as
    [(index into images, log P(S|X), the reading)] (TensorBoard shows them: sec. 11.5)."""
    was_training = model.training
    model.eval()
    n = images.shape[0]
    loss_sum, seq, chars, total_chars = 0.0, 0, 0, 0
    wrong: list[tuple[float, int, str]] = []  # (log P(S|X), index, reading) of every mistake
    with torch.no_grad():
        for start in range(0, n, EVAL_BATCH):
            x = dataset.prepare_batch(images[start:start + EVAL_BATCH], crop, False, None)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y_len, y_dig = lengths[start:start + EVAL_BATCH], digits[start:start + EVAL_BATCH]
            with autocast():
                length_logits, digit_logits = model(x)
            length_logits, digit_logits = length_logits.float(), digit_logits.float()
            loss_sum += float(sequence.loss(length_logits, digit_logits, y_len, y_dig, head)) * x.shape[0]
            dec = sequence.decode(length_logits, digit_logits, head)
            s, c, t = accuracies(dec.lengths.to(y_len.device), dec.digits.to(y_len.device), y_len, y_dig)
            seq += int(s.sum())
            chars += int(c.sum())
            total_chars += int(t.sum())
            if worst:
                bad = (~s).nonzero().flatten().tolist()
                texts = sequence.to_texts(dec.lengths[bad], dec.digits[bad])
                wrong += zip(dec.logp[bad].tolist(), [start + i for i in bad], texts)  # one transfer, not one per photo
    model.train(was_training)
    out = {"loss": loss_sum / max(1, n), "seq_acc": seq / max(1, n), "char_acc": chars / max(1, total_chars)}
    if worst:
        out["worst"] = [(i, logp, text) for logp, i, text in sorted(wrong, key=lambda w: -w[0])[:worst]]
    return out


# ---------------------------------------------------------------------------------------------
# What a checkpoint adds for an exact resume (runs.py writes and reads it): RNG states, and a
# check that the resumed run is the same run.

def rng_state() -> dict:
    """RNG states as tensors (torch.load(weights_only=True) accepts tensors, not numpy arrays)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
        "python": torch.tensor(py_state, dtype=torch.int64), "python_version": py_version,
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_resume(ckpt: dict, model_cfg, data_cfg, cfg: TrainConfig, path: Path) -> None:
    """A resumed run must be the same run: name every differing setting that would change it."""
    problems = []
    for name, given, stored in (("model", configlib.to_dict(model_cfg), ckpt["model_config"]),
                                ("data", configlib.to_dict(data_cfg), ckpt["data_config"]),
                                ("train", configlib.to_dict(cfg), ckpt["train_config"])):
        given, stored = json.loads(json.dumps(given)), json.loads(json.dumps(stored))
        for key in sorted(set(given) | set(stored)):
            if name == "train" and key in RESUMABLE_CHANGES:
                continue
            if given.get(key) != stored.get(key):
                problems.append(f"{name}.{key}: checkpoint {stored.get(key)!r}, now {given.get(key)!r}")
    if problems:
        raise ValueError(f"{path}: cannot resume with different settings (use a new --out, or the "
                         f"stored ones): " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Instruments (sec. 11.5)

class Probe:
    """Forward hooks for one step, then removed: conv and linear outputs (pre-activations),
    and the outputs of ReLU modules and of conv blocks (after the nonlinearity and pooling)."""

    def __init__(self, model):
        self.outputs: dict[str, Any] = {}
        self.handles = []
        for name, module in model.named_modules():
            kind = ("pre" if isinstance(module, (nn.Conv2d, nn.Linear)) else
                    "out" if isinstance(module, nn.ReLU) or type(module).__name__.endswith("Block") else None)
            if kind and name:
                self.handles.append(module.register_forward_hook(self._hook(f"{kind}/{name}")))

    def _hook(self, key):
        def hook(module, inputs, output):
            self.outputs.setdefault(key, output.detach().float().cpu())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def update_ratios(before: dict, model) -> dict[str, float]:
    """‖Δw‖/‖w‖ per weight tensor (dim > 1) for one optimizer step."""
    out = {}
    for name, p in model.named_parameters():
        if name in before:
            w0 = before[name]
            out[name] = float((p.detach().float() - w0).norm() / w0.norm().clamp_min(1e-12))
    return out


# ---------------------------------------------------------------------------------------------
# The loop

def make_optimizer(model, cfg: TrainConfig):
    """SGD with momentum or AdamW; weight decay on weights only (not on biases and norms)."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


@dataclass(frozen=True)
class Processes:
    """Where this process trains: its rank among `world` processes (torchrun), its device,
    and the autocast context of its forward passes."""
    ddp: bool
    rank: int
    world: int
    local_rank: int
    device: torch.device
    autocast: Any  # () -> context manager

    @property
    def master(self) -> bool:  # rank 0 evaluates, writes files and prints
        return self.rank == 0


def start_processes(cfg: TrainConfig) -> Processes:
    """One process, or one of WORLD_SIZE under torchrun (DDP: gloo on CPU, nccl on CUDA)."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    want_cuda = resolve_device(cfg.device).type == "cuda"  # --device as every command reads it
    if ddp:
        rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    else:
        rank, world, local_rank = 0, 1, 0
    device = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    if cfg.batch_size % (world * cfg.accum):
        raise ValueError(f"batch_size {cfg.batch_size} must divide into {world} processes x {cfg.accum} micro-batches")
    return Processes(ddp, rank, world, local_rank, device, autocast)


@contextlib.contextmanager
def numerics(cfg: TrainConfig, device: torch.device):
    """Threads and deterministic algorithms for the run, restored afterwards."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.threads or cfg.deterministic:
        torch.set_num_threads(cfg.threads or 1)  # one thread: CPU reductions in a fixed order
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


@dataclass(frozen=True)
class TrainingData:
    """uint8 crops and labels on the training device; batches are cut from them there."""
    images: torch.Tensor       # (N, S, S, 3) uint8
    lengths: torch.Tensor      # (N,)
    digits: torch.Tensor       # (N, MAX_DIGITS), -1 past the length
    train_eval: tuple          # a fixed training subset (images, lengths, digits), scored like validation
    val_eval: tuple            # the validation split (or its first eval_limit photos)
    n_val: int                 # photos in the whole validation split
    soft: tuple | None = None  # distillation (distil.py): a teacher's top-K per training row:
                               # lengths (N, K), digits (N, K, 5), q (N, K); None = true labels only


def load_data(data_cfg, cfg: TrainConfig, procs: Processes, soft: tuple | None = None) -> TrainingData:
    if procs.ddp and not procs.master:
        dist.barrier()  # rank 0 builds any missing cache first; the others then read it
    train_set, val_set = dataset.load_splits(data_cfg, progress=procs.master and cfg.progress)
    if procs.ddp and procs.master:
        dist.barrier()
    n_train = len(train_set.images)
    if n_train < cfg.batch_size:
        raise ValueError(f"training set has {n_train} images, fewer than batch_size {cfg.batch_size}")
    as_t = lambda a: torch.as_tensor(a, device=procs.device)  # noqa: E731
    images, lengths, digits = as_t(train_set.images), as_t(train_set.lengths), as_t(train_set.digits)
    # a fixed training subset, evaluated like validation (centre crops) to compare the two
    g = torch.Generator().manual_seed(cfg.seed)
    sub = torch.randperm(n_train, generator=g)[:cfg.eval_limit or n_train].sort().values.to(procs.device)
    vlim = cfg.eval_limit or len(val_set.images)
    if soft is not None and any(len(t) != n_train for t in soft):
        raise ValueError(f"soft targets for {len(soft[0])} photos, but the training split has {n_train}")
    return TrainingData(images, lengths, digits, (images[sub], lengths[sub], digits[sub]),
                        (as_t(val_set.images[:vlim]), as_t(val_set.lengths[:vlim]), as_t(val_set.digits[:vlim])),
                        len(val_set.images), tuple(as_t(t) for t in soft) if soft is not None else None)


FRESH_STATE = {"step": 0, "elapsed": 0.0, "best": -1.0, "best_step": -1, "bad_evals": 0,
               "stopped": "", "plateau": {"scale": 1.0, "best": -1.0, "bad": 0}}


def build_model(model_cfg, data_cfg, cfg: TrainConfig, procs: Processes, last_path: Path, resumed: bool):
    """(raw model, model to call (compiled / DDP-wrapped), optimizer, state): fresh, from
    --init, or resumed from ckpt-last.pt with its optimizer, state and RNG states."""
    torch.manual_seed(cfg.seed)
    raw_model = modellib.build_model(model_cfg).to(procs.device)
    optimizer = make_optimizer(raw_model, cfg)
    state = FRESH_STATE
    if resumed:
        ckpt = read_checkpoint(last_path)  # on the CPU: RNG states must stay there
        _check_resume(ckpt, model_cfg, data_cfg, cfg, last_path)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
    elif cfg.init:
        init = read_checkpoint(cfg.init)
        try:
            raw_model.load_state_dict(init["model"])
        except RuntimeError as e:
            raise ValueError(f"{cfg.init}: its weights do not fit this model ({e})") from e
    # channels_last everywhere: faster convolutions on CUDA and, measured by `transcribe bench`,
    # 30-40% faster training of the cpu preset on 2 CPU cores too. prepare_batch already returns
    # channels_last batches, so only the model is converted.
    raw_model = raw_model.to(memory_format=torch.channels_last)
    model = torch.compile(raw_model) if cfg.compile else raw_model
    if procs.ddp:
        model = DDP(model, device_ids=[procs.local_rank] if procs.device.type == "cuda" else None)
    return raw_model, model, optimizer, state


def open_run_folder(out: Path, model_cfg, data_cfg, cfg: TrainConfig, state: dict, resumed: bool):
    """config.json, commit.txt, metrics.jsonl cut back to the checkpoint when resuming; returns
    the TensorBoard writer."""
    out.mkdir(parents=True, exist_ok=True)
    save_json({"model": model_cfg, "data": data_cfg, "train": cfg}, out / CONFIG_FILE)
    atomic_write(out / COMMIT_FILE, git_commit() + "\n")
    if resumed:
        note = truncate_metrics(out, state["step"])
        if note:
            print(f"note: {note}", file=sys.stderr)
    writer = SummaryWriter(str(out / "tb"), purge_step=state["step"] if resumed else None)
    text = json.dumps({k: configlib.to_dict(c) for k, c in (("model", model_cfg), ("data", data_cfg), ("train", cfg))},
                      indent=2)
    writer.add_text("config", "    " + text.replace("\n", "\n    "), state["step"])  # indented: a code block
    return writer


def after_evaluation(state: dict, step: int, elapsed: float, val_seq_acc: float, cfg: TrainConfig) -> tuple[dict, bool]:
    """(new state, improved): best score, early stopping and plateau schedule after one
    evaluation. Pure, so every rank can apply rank 0's numbers."""
    improved = val_seq_acc > state["best"]
    new = dict(state, step=step, elapsed=elapsed, plateau=plateau_update(state["plateau"], val_seq_acc, cfg))
    if improved:
        new.update(best=val_seq_acc, best_step=step, bad_evals=0)
    else:
        new.update(bad_evals=state["bad_evals"] + 1)
    if cfg.patience and new["bad_evals"] >= cfg.patience:
        new["stopped"] = f"no better validation sequence accuracy in {cfg.patience} evaluations"
    return new, improved


SCALARS = ("lr", "batch_loss", "train_loss", "train_seq_acc", "train_char_acc", "val_loss", "val_seq_acc", "val_char_acc")


def log_line(row: dict, steps: int, improved: bool) -> str:
    """The one line printed per evaluation."""
    shown = "   -   " if row["batch_loss"] is None else f"{row['batch_loss']:7.4f}"
    pct = {k: 100 * row[k] for k in ("train_seq_acc", "train_char_acc", "val_seq_acc", "val_char_acc")}
    return (f"step {row['step']:6d}/{steps} | epoch {row['epoch']:3d} | lr {row['lr']:.2e} | loss {shown} | "
            f"train loss {row['train_loss']:7.4f} seq {pct['train_seq_acc']:5.1f}% char {pct['train_char_acc']:5.1f}% | "
            f"val loss {row['val_loss']:7.4f} seq {pct['val_seq_acc']:5.1f}% char {pct['val_char_acc']:5.1f}% | "
            f"{row['seconds']:7.1f} s" + (" *" if improved else ""))


def write_histograms(writer, raw_model, probe, step: int) -> None:
    """Gradients and activations (DL book sec. 11.5), and how often units are off."""
    for name, p in raw_model.named_parameters():
        if p.grad is not None:
            writer.add_histogram(f"grad/{name}", p.grad.detach().float().cpu(), step)
    for name, act in (probe.outputs if probe else {}).items():
        writer.add_histogram(f"activation/{name}", act, step)
        if name.startswith("out/"):  # maxout units are off when <= 0 too
            writer.add_scalar(f"off_fraction/{name[4:]}", float((act <= 0).float().mean()), step)


WORST_MISTAKES = 16  # most confident wrong validation readings shown in TensorBoard at each evaluation


def write_worst_mistakes(writer, val_eval: tuple, worst: list, step: int) -> None:
    """The most confident wrong validation readings as an image grid (the cached crops, most
    confident first, row by row), with a table of truth, reading and confidence beside it."""
    if not worst:
        return
    images, lengths, digits = val_eval
    idx = torch.tensor([i for i, _, _ in worst], device=images.device)
    crops = images[idx].permute(0, 3, 1, 2).float().div(255)  # (K, 3, S, S) in [0, 1]
    writer.add_image("val/worst_mistakes", make_grid(crops, nrow=8, padding=2), step)
    truths = sequence.to_texts(lengths[idx], digits[idx])
    table = [f"| {k + 1} | {truth} | {text} | {100 * math.exp(min(logp, 0.0)):.1f}% |"
             for k, (truth, (_, logp, text)) in enumerate(zip(truths, worst))]
    writer.add_text("val/worst_mistakes", "| # | truth | read | model's confidence |\n| --- | --- | --- | --- |\n"
                    + "\n".join(table), step)


def flat_config(model_cfg, data_cfg, cfg: TrainConfig) -> dict[str, Any]:
    """{"model.depth": 8, "train.lr": 0.05, ...}: the frozen configs as TensorBoard hparams
    (numbers, strings and booleans; tuples and None as their JSON text)."""
    out = {}
    for part, c in (("model", model_cfg), ("data", data_cfg), ("train", cfg)):
        for key, value in configlib.to_dict(c).items():
            ok = isinstance(value, (bool, int, float, str))
            out[f"{part}.{key}"] = value if ok else json.dumps(value)
    return out


def write_hparams(writer, model_cfg, data_cfg, cfg: TrainConfig, state: dict, step: int) -> None:
    """The run's settings beside its final numbers (TensorBoard's HPARAMS tab compares runs)."""
    writer.add_hparams(flat_config(model_cfg, data_cfg, cfg),
                       {"hparam/best_val_seq_acc": state["best"], "hparam/best_step": state["best_step"],
                        "hparam/steps": step, "hparam/seconds": state["elapsed"]},
                       run_name=".")  # into the run's own tb/ folder, not a timestamped one below it


def banner(out: Path, model_cfg, data_cfg, cfg: TrainConfig, device: torch.device, amp: str, parameters: int,
           photos: tuple[int, int], start_step: int = 0) -> str:
    """What the run is about to do, printed once at its start (rank 0)."""
    n_train, n_val = photos
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)} ({precision.cpu_name()} host)"
    else:
        machine = f"{precision.cpu_name()}, {os.cpu_count()} CPUs"
    budget = f", budget {cfg.max_seconds:g} s" if cfg.max_seconds > 0 else ""
    early = (f", early stopping after {cfg.patience} evaluations without a better validation accuracy"
             if cfg.patience else "")
    scored = "all" if not cfg.eval_limit or cfg.eval_limit >= n_val else f"the first {cfg.eval_limit:,}"
    threads = torch.get_num_threads()
    return "\n".join([
        f"run {out}: " + (f"resuming at step {start_step}" if start_step else "new"),
        f"  machine    {machine}; torch {torch.__version__}",
        f"  device     {device}, {threads} thread{'' if threads == 1 else 's'}, "
        f"{'bf16 autocast' if amp == 'bf16' else 'float32'} (--amp {cfg.amp})",
        f"  model      preset {cfg.preset}, head {model_cfg.head}, {parameters:,} parameters",
        f"  photos     {n_train:,} training, {n_val:,} validation ({scored} scored at each evaluation); "
        f"from {', '.join(data_cfg.train)}",
        f"  schedule   {cfg.steps:,} steps of {cfg.batch_size} ({cfg.steps * cfg.batch_size / max(1, n_train):.1f} "
        f"epochs){budget}; {cfg.optimizer}, lr {cfg.lr:g} {cfg.schedule}"
        + (f" to {cfg.lr_floor:g}" if cfg.schedule in ("linear", "exp") else "")
        + f"; evaluation every {cfg.eval_every} steps{early}",
    ])


def summary(out: Path, cfg: TrainConfig, state: dict, step: int, n_val: int | None = None) -> str:
    """How the run ended, printed once at its end (rank 0): the best validation accuracy and its
    step, why it stopped, where the checkpoints are, and the next command."""
    why = state["stopped"] or (f"all {cfg.steps:,} steps done" if step >= cfg.steps else "interrupted")
    best = (f"{100 * state['best']:.2f}% at step {state['best_step']}" if state["best_step"] >= 0 else "none yet")
    lines = [f"run {out}: stopped at step {step} after {state['elapsed']:.1f} s: {why}",
             f"  best validation sequence accuracy  {best}"
             + (f" (the first {cfg.eval_limit:,} photos)" if cfg.eval_limit and (n_val is None or cfg.eval_limit < n_val)
                else ""),
             f"  checkpoints  {out / CKPT_BEST} (the best), {out / CKPT_LAST} (to resume: run the same command)",
             f"  TensorBoard  tensorboard --logdir {out / 'tb'}",
             f"  next         transcribe evaluate {out} --split val   (chooses the refusal threshold, "
             f"scores every validation photo, writes the gallery)"]
    return "\n".join(lines)


def train(model_cfg, data_cfg, cfg: TrainConfig, soft: tuple | None = None, alpha: float = 1.0) -> Path:
    """Train (or resume) the run in `cfg.out`; returns the run folder. With `soft` (a teacher's
    top-K transcriptions of every training row, distil.py) the loss is
    sequence.distillation_loss with weight `alpha` on the true labels."""
    if model_cfg.in_size != data_cfg.crop:  # two fields, one quantity: the side of the network's input
        raise ValueError(f"the model's in_size ({model_cfg.in_size}) differs from the data's crop ({data_cfg.crop}): "
                         f"give --in-size and --crop the same value")
    procs = start_processes(cfg)
    master, device, autocast = procs.master, procs.device, procs.autocast
    micro = cfg.batch_size // (procs.world * cfg.accum)  # images per forward pass of this process
    out = Path(cfg.out)
    last_path = out / CKPT_LAST
    # Rank 0 writes the run folder; it holds the lock, so a second trainer is refused (RunInUse).
    lock = lock_run(out) if master else contextlib.nullcontext()
    try:
        with lock as stale, numerics(cfg, device):
            if stale:
                print(f"note: {out / LOCK_FILE}: taken over from {stale}, which ended without "
                      f"releasing it (killed?)", file=sys.stderr)
            resumed = last_path.exists()  # decided before any rank can write a checkpoint (see the barrier)
            data = load_data(data_cfg, cfg, procs, soft)
            n_train, steps_per_epoch = len(data.images), len(data.images) // cfg.batch_size
            raw_model, model, optimizer, state = build_model(model_cfg, data_cfg, cfg, procs, last_path, resumed)
            amp = "bf16" if cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda") else "off"
            if cfg.amp == "auto":  # bf16 where a few measured steps say it is faster (precision.py)
                amp = precision.resolve(cfg.amp, "train", model_cfg, micro, data_cfg.crop, device,
                                        cfg.deterministic, log=print if master else (lambda _: None))
                autocast = precision.autocast_for(amp, device.type)
            writer = open_run_folder(out, model_cfg, data_cfg, cfg, state, resumed) if master else None
            if master:
                print(banner(out, model_cfg, data_cfg, cfg, device, amp, modellib.count_parameters(raw_model),
                             (n_train, data.n_val), state["step"]),
                      flush=True)
            pbar = None  # a bar on a terminal, plain lines in a log (progress.py)
            if master and cfg.progress:
                pbar = Progress(cfg.steps, cfg.max_seconds, cfg.batch_size, state["step"], state["elapsed"])
            log = pbar.write if pbar is not None else print
            t_start, elapsed_before = time.time(), state["elapsed"]  # seconds: this session, earlier ones

            def agree(flag: bool) -> bool:  # rank 0 decides stopping; the others follow
                if not procs.ddp:
                    return flag
                t = torch.tensor([1.0 if flag else 0.0], device=device)
                dist.broadcast(t, 0)
                return bool(t.item())

            def schedule_seconds() -> float:  # rank 0's clock on every rank: the rate follows it
                seconds = elapsed_before + time.time() - t_start
                if not procs.ddp or cfg.max_seconds <= 0:
                    return seconds
                t = torch.tensor([seconds], dtype=torch.float64, device=device)
                dist.broadcast(t, 0)
                return float(t.item())

            def evaluate_log_checkpoint(step: int, lr: float, batch_loss: float | None, ratios: dict) -> None:
                """Evaluate, append a metrics row, print a line, write checkpoints (rank 0); update
                early stopping and plateau state (all ranks, from rank 0's numbers)."""
                nonlocal state
                new = None
                if master:
                    tr = loss_and_accuracy(raw_model, *data.train_eval, data_cfg.crop, model_cfg.head, autocast, True)
                    va = loss_and_accuracy(raw_model, *data.val_eval, data_cfg.crop, model_cfg.head, autocast, True,
                                           worst=WORST_MISTAKES)
                    write_worst_mistakes(writer, data.val_eval, va.pop("worst"), step)
                    elapsed = elapsed_before + time.time() - t_start
                    new, improved = after_evaluation(state, step, elapsed, va["seq_acc"], cfg)
                    row = {"step": step, "epoch": step // steps_per_epoch, "examples": step * cfg.batch_size,
                           "lr": lr, "batch_loss": batch_loss,
                           **{f"train_{k}": v for k, v in tr.items()}, **{f"val_{k}": v for k, v in va.items()},
                           "best_val_seq_acc": new["best"], "seconds": round(elapsed, 3), "update_ratio": ratios,
                           "precision": "bf16" if amp == "bf16" else "float32"}   # what --amp auto chose
                    append_metrics(out, row)
                    for key in SCALARS:
                        if row[key] is not None:  # batch_loss is None at step 0: no batch yet
                            writer.add_scalar(key.replace("_", "/", 1), row[key], step)
                    writer.flush()
                    log(log_line(row, cfg.steps, improved))
                    ckpt = {"version": CHECKPOINT_VERSION, "step": step,
                            "model_config": configlib.to_dict(model_cfg), "data_config": configlib.to_dict(data_cfg),
                            "train_config": configlib.to_dict(cfg),
                            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                            "state": new, "rng": rng_state(), "metrics": row}
                    save_checkpoint(ckpt, last_path)
                    if improved:
                        save_checkpoint(ckpt, out / CKPT_BEST)
                if procs.ddp:
                    box = [new]
                    dist.broadcast_object_list(box, 0)
                    new = box[0]
                state = new

            step = state["step"]
            ratios: dict[str, float] = {}
            loss_sum, loss_count = torch.zeros((), device=device), 0
            if not resumed:
                evaluate_log_checkpoint(0, get_lr(0, cfg, 1.0), None, {})
            elif master:
                log(f"resumed from {last_path} at step {step}")
            if state["stopped"] and master:
                log(f"stopped at step {state['step']}: {state['stopped']}")

            model.train()
            while step < cfg.steps and not state["stopped"]:
                lr = get_lr(step, cfg, state["plateau"]["scale"], schedule_seconds())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                instrument = writer is not None and cfg.hist_every > 0 and (step + 1) % cfg.hist_every == 0
                measure = instrument or (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps
                # Batch order, crops and dropout are pure functions of (seed, step, rank), so a
                # resumed run sees exactly what an uninterrupted one would.
                torch.manual_seed(dropout_seed(cfg.seed, step, procs.rank))

                # the global batch (identical on every rank), then this rank's micro-batches
                epoch, idx = batch_indices(step, n_train, cfg.batch_size, cfg.seed)
                idx = idx.to(device)
                gen = dataset.batch_generator(cfg.seed, epoch, step)  # CPU generator: same crops on any device
                x_all = dataset.prepare_batch(data.images, data_cfg.crop, True, gen, index=idx)  # (B, 3, crop, crop)
                y_len_all, y_dig_all = data.lengths[idx], data.digits[idx]                  # (B,), (B, 5)
                probe = Probe(raw_model) if instrument and not cfg.compile else None  # hooks would recompile
                for a in range(cfg.accum):
                    part = slice((procs.rank * cfg.accum + a) * micro, (procs.rank * cfg.accum + a + 1) * micro)
                    x = x_all[part]  # a slice of a channels_last batch is still channels_last
                    sync = not procs.ddp or a == cfg.accum - 1  # all-reduce gradients on the last micro-batch only
                    with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                        length_logits, digit_logits = model(x)  # (b, 7), (b, 5, C)
                        if data.soft is None:
                            loss = sequence.loss(length_logits.float(), digit_logits.float(),
                                                 y_len_all[part], y_dig_all[part], model_cfg.head)
                        else:  # the teacher's soft targets too (distil.py)
                            soft_len, soft_dig, soft_q = (t[idx][part] for t in data.soft)
                            loss = sequence.distillation_loss(length_logits.float(), digit_logits.float(),
                                                              y_len_all[part], y_dig_all[part],
                                                              soft_len, soft_dig, soft_q, alpha)
                    (loss / cfg.accum).backward()
                    loss_sum += loss.detach() / cfg.accum
                    if probe is not None:
                        probe.close()  # activations of the first micro-batch are enough
                loss_count += 1
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                if instrument:
                    write_histograms(writer, raw_model, probe, step + 1)
                before = {n: p.detach().float().clone() for n, p in raw_model.named_parameters() if p.dim() > 1} \
                    if measure else {}
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if measure:
                    ratios = update_ratios(before, raw_model)
                    if instrument:
                        for name, r in ratios.items():
                            writer.add_scalar(f"update_ratio/{name}", r, step + 1)
                step += 1
                if pbar is not None:
                    pbar.update(step, elapsed_before + time.time() - t_start,
                                loss.item() if step % PROGRESS_POSTFIX_EVERY == 0 else None)

                out_of_time = agree(cfg.max_seconds > 0 and elapsed_before + time.time() - t_start > cfg.max_seconds)
                if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
                    batch_loss = float(loss_sum) / max(1, loss_count)
                    loss_sum, loss_count = torch.zeros((), device=device), 0
                    evaluate_log_checkpoint(step, lr, batch_loss, ratios)
                    if out_of_time and not state["stopped"]:
                        # not stored in the checkpoint: resuming with a larger budget continues
                        state = dict(state, stopped=f"wall-clock budget of {cfg.max_seconds:g} s spent")
                    if state["stopped"] and master:
                        log(f"stopped at step {step}: {state['stopped']}")
            if pbar is not None:
                pbar.close()
            if writer is not None:
                write_hparams(writer, model_cfg, data_cfg, cfg, state, step)
                writer.close()
                print(summary(out, cfg, state, step, data.n_val), flush=True)
    finally:
        if procs.ddp:
            dist.destroy_process_group()
    return out


# ---------------------------------------------------------------------------------------------
# Command line

def _from_args(cls, args, base, clash: set[str], prefix: str):
    merged = argparse.Namespace(**{f.name: getattr(args, (prefix if f.name in clash else "") + f.name, None)
                                   for f in dataclasses.fields(cls)})
    return configlib.from_args(cls, merged, base)


def configs_from_args(args: argparse.Namespace):
    """(model_cfg, data_cfg, train_cfg): defaults < stored run (when resuming) < --config < flags.

    The model starts from the preset named by --preset (or the config file's model, or the
    stored run's), then model flags override single fields."""
    model_clash, data_clash = configlib.flag_collisions()
    base: dict[str, Any] = {}
    if args.config:
        try:
            base = read_config(args.config)
        except (OSError, ValueError) as e:
            raise SystemExit(f"{args.config}: cannot read the configuration ({e})") from None
    out = args.out or base.get("train", {}).get("out") or TrainConfig.out
    last = Path(out) / CKPT_LAST
    if last.exists():  # resuming: the run's own settings are the defaults
        ckpt = read_checkpoint(last)
        stored = {"model": ckpt["model_config"], "data": ckpt["data_config"], "train": ckpt["train_config"]}
        base = {k: {**stored[k], **base.get(k, {})} for k in stored}
    train_cfg = configlib.from_args(TrainConfig, args, configlib.from_dict(TrainConfig, base.get("train", {})))
    if args.preset is not None or "model" not in base:
        if train_cfg.preset not in modellib.PRESETS:
            raise SystemExit(f"--preset {train_cfg.preset!r}: choose one of {sorted(modellib.PRESETS)}")
        model_base = modellib.PRESETS[train_cfg.preset]
    else:
        model_base = configlib.from_dict(modellib.ModelConfig, base["model"])
    model_cfg = _from_args(modellib.ModelConfig, args, model_base, model_clash, "model_")
    data_base = configlib.from_dict(dataset.DataConfig, base["data"]) if "data" in base else dataset.DataConfig()
    data_cfg = _from_args(dataset.DataConfig, args, data_base, data_clash, "data_")
    return model_cfg, data_cfg, train_cfg


def run_train(args: argparse.Namespace) -> int:
    model_cfg, data_cfg, train_cfg = configs_from_args(args)
    out = train(model_cfg, data_cfg, train_cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python train.py ...` (and `torchrun ... train.py ...`) = `transcribe train ...`."""
    parser = argparse.ArgumentParser(prog="train.py", description="train a model; writes a run folder")
    add_train_arguments(parser)  # the flags of `transcribe train`, defined in cli.py
    return run_train(parser.parse_args(argv))
