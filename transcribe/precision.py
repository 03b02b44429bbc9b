"""Precision: float32 or bf16 autocast, chosen by measuring the model on the machine at hand.

`--amp auto` used to mean "bf16 on CUDA, float32 on the CPU". Whether bf16 is faster on a CPU
depends on the processor, not on the device type: measured with `transcribe bench`, the `cpu`
preset (batch 64, channels_last, 2 cores) trains at 110 img/s in float32 and 212 img/s under bf16
autocast on an Intel Xeon with AMX, and 117 vs 204 img/s on a 2-core AMD EPYC with
avx512_bf16 (Zen 4, quiet; README "Speed"); a processor with neither instruction runs bf16 in
emulation, slower than float32 (6-30x on an earlier machine). So on the CPU:

1. the processor's flags (/proc/cpuinfo) rule bf16 out when it has no bf16 instructions
   (neither avx512_bf16 nor amx_bf16): no measurement, float32;
2. otherwise a few training steps (or forward passes, for inference) of the actual model at the
   actual batch size are timed in each precision, and bf16 is used only when it is faster by
   more than BF16_MARGIN (below that, noise on a shared machine would decide);
3. the choice is cached per machine (CPU model, threads, torch version) and per model
   configuration, batch and kind, in CACHE_DIR/precision.json, so it is measured once.

On CUDA, auto is bf16 where the device supports it. `--deterministic` runs keep float32 under
auto: a choice made by a stopwatch would make the run depend on the machine's load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from transcribe import sequence
from transcribe.runs import atomic_write

CACHE_DIR = Path(os.environ.get("TRANSCRIBE_CACHE_DIR", "~/.cache/transcribe")).expanduser()
CACHE_FILE = "precision.json"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that do bf16 arithmetic natively
BF16_MARGIN = 1.10     # bf16 must be >10% faster: differences below that are noise on a shared machine
WARMUP_CALLS = 2       # untimed calls per precision (oneDNN picks and caches its kernels on the first)
TIMED_CALLS = 5        # timed calls per precision, interleaved with the other's; the median decides


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool | None:
    """True/False from /proc/cpuinfo's flags; None where there is no such file (measure then)."""
    text = _cpuinfo()
    if not text:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return any(f in flags for f in BF16_FLAGS)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def autocast_for(amp: str, device_type: str) -> Callable[[], contextlib.AbstractContextManager]:
    """() -> the autocast context of forward passes: bf16 autocast or nothing."""
    if amp == "bf16":
        return lambda: torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def time_calls(fns: dict[str, Callable[[], object]], timer: Callable[[], float] = time.perf_counter,
               warmup: int = WARMUP_CALLS, calls: int = TIMED_CALLS) -> dict[str, float]:
    """Median seconds of one call of each of `fns` after `warmup` untimed calls each. The timed
    calls take turns (a, b, a, b, ...), so other jobs on a shared machine slow both alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            t = timer()
            fn()
            times[name].append(timer() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def pick(seconds: dict[str, float]) -> str:
    """'bf16' when it is faster than float32 ('off') by more than BF16_MARGIN, else 'off'."""
    return "bf16" if seconds["bf16"] * BF16_MARGIN < seconds["off"] else "off"


def measure(kind: str, model_cfg, batch: int, crop: int, device: torch.device,
            timer: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of one training step ("train": forward, loss, backward, SGD step) or one
    forward pass ("infer") of a fresh model of `model_cfg` on random inputs, per precision.
    The global RNG is left as it was: a run that measures is the same run as one that reads
    the cache."""
    from transcribe.model import build_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(model_cfg).to(device, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        x = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
        lengths = torch.randint(1, 6, (batch,), device=device)                    # (B,)
        digits = torch.randint(0, 10, (batch, 5), device=device)                  # (B, 5)
        digits[torch.arange(5, device=device)[None, :] >= lengths[:, None]] = -1
        model.train(kind == "train")
        steps = {}
        for amp in ("off", "bf16"):
            def step(autocast=autocast_for(amp, device.type)):
                if kind == "infer":
                    with torch.inference_mode(), autocast():
                        model(x)
                    return
                with autocast():
                    length_logits, digit_logits = model(x)
                loss = sequence.loss(length_logits.float(), digit_logits.float(), lengths, digits, model_cfg.head)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            steps[amp] = step
        return time_calls(steps, timer)


def cache_key(kind: str, model_cfg, batch: int, crop: int) -> str:
    from transcribe import config as configlib
    model = hashlib.sha1(json.dumps(configlib.to_dict(model_cfg), sort_keys=True).encode()).hexdigest()[:12]
    return (f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {kind} | "
            f"model {model} | batch {batch} | crop {crop}")


def without_measuring(device: torch.device) -> str | None:
    """The answer of `--amp auto` where no stopwatch is needed: bf16 on a CUDA device that supports
    it, float32 ('off') on other CUDA devices, non-CPU devices and CPUs without bf16 instructions;
    None where only a measurement can tell (a CPU with them)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    if device.type != "cpu" or cpu_has_bf16() is False:
        return "off"
    return None


def choose(kind: str, model_cfg, batch: int, crop: int, device: torch.device,
           timer: Callable[[], float] = time.perf_counter, cache_dir: Path | None = None,
           log: Callable[[str], object] = print) -> str:
    """'bf16' or 'off' for `--amp auto` (see the module docstring)."""
    known = without_measuring(device)
    if known is not None:
        return known
    path = (cache_dir or CACHE_DIR) / CACHE_FILE
    key = cache_key(kind, model_cfg, batch, crop)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), dict) and cached[key].get("amp") in ("bf16", "off"):
        return cached[key]["amp"]
    seconds = measure(kind, model_cfg, batch, crop, device, timer)
    amp = pick(seconds)
    log(f"--amp auto: {kind} at batch {batch} takes {1e3 * seconds['off']:.0f} ms in float32, "
        f"{1e3 * seconds['bf16']:.0f} ms under bf16 here: {'bf16' if amp == 'bf16' else 'float32'} "
        f"(cached in {path})")
    cached[key] = {"amp": amp, "seconds": seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cached, indent=2, sort_keys=True) + "\n")
    except OSError as e:  # a read-only home: measure again next time
        log(f"--amp auto: cannot cache the choice in {path} ({e})")
    return amp


def resolve(amp: str, kind: str, model_cfg, batch: int, crop: int, device: torch.device,
            deterministic: bool = False, log: Callable[[str], object] = print) -> str:
    """The precision a run uses: `amp` itself unless it is 'auto'."""
    if amp != "auto":
        return amp
    if deterministic and device.type == "cpu":
        return "off"
    return choose(kind, model_cfg, batch, crop, device, log=log)
