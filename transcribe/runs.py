"""The run folder: what `transcribe train` leaves behind, and the one way files are written.

    RUN/config.json      {"model", "data", "train"}: the run rebuilt from its folder alone
    RUN/metrics.jsonl    one row per evaluation (step, lr, losses, accuracies, update ratios)
    RUN/ckpt-last.pt     self-describing checkpoint: configs, step, weights, optimizer, RNG, state
    RUN/ckpt-best.pt     the same, at the best validation sequence accuracy
    RUN/threshold.json   the refusal threshold chosen on validation (`transcribe evaluate`)
    RUN/commit.txt       the git commit of the code that trained it
    RUN/lock             held by the process training into RUN (`lock_run`): pid and host
    RUN/tb/              TensorBoard events
    RUN/eval/<split>/    predictions.jsonl (predictions.py), report.json/.md, plots, gallery

Training writes these files; evaluation, prediction, reports and the study tools read them
through the functions here. Every file is written with `atomic_write` (a uniquely named
temporary file beside the target, flushed to disk, then renamed over it), so a reader or a
crash never sees half a file and two writers never share a temporary file. The exceptions
are the HDF5 writers (svhn.write_digitstruct, dataset.build_cache): h5py writes to a path,
so they create their own unique temporary file and rename it the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from transcribe import config as configlib
from transcribe.config import CHECKPOINTS, DEVICES
from transcribe import dataset
from transcribe import model as modellib

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
COMMIT_FILE = "commit.txt"
THRESHOLD_FILE = "threshold.json"
CKPT_LAST = "ckpt-last.pt"
CKPT_BEST = "ckpt-best.pt"
LOCK_FILE = "lock"
CHECKPOINT_VERSION = 1
FILE_MODE = 0o644  # mkstemp creates 0600 files; run folders are meant to be read by others


# ---------------------------------------------------------------- writing files

def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function that writes to an open binary file,
    e.g. `lambda f: torch.save(obj, f)`) to `path` all at once: readers see the old file or the
    new one, never a part. Creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(obj: Any, path: str | Path) -> Path:
    """Indented, key-sorted JSON; dataclasses (or a dict of them) converted with config.to_dict."""
    data = {k: configlib.to_dict(v) if _is_dataclass(v) else v for k, v in obj.items()} \
        if isinstance(obj, dict) else configlib.to_dict(obj)
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _is_dataclass(v: Any) -> bool:
    return dataclasses.is_dataclass(v) and not isinstance(v, type)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """A matplotlib figure as PNG, written atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", **savefig_kwargs))


# ---------------------------------------------------------------- config.json

def read_config(path: str | Path) -> dict:
    """{"model", "data", "train"} (any subset) from a run folder's config.json or a config JSON
    file (e.g. a search's best.json); ValueError naming the file when it is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such config file or run folder")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e.msg})") from None
    if not isinstance(cfg, dict) or not set(cfg) <= {"model", "data", "train"}:
        raise ValueError(f"{p}: expected a JSON object with keys model, data, train")
    return cfg


# ---------------------------------------------------------------- metrics.jsonl

def read_metrics(run: str | Path, partial_ok: bool = False) -> list[dict]:
    """Rows of RUN/metrics.jsonl; a clear error naming the file when missing or malformed.

    partial_ok: for a run still training (search.py polls it): a missing file is no rows yet,
    and reading stops at a line being written right now."""
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        if partial_ok:
            return []
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is {run} a run folder written by `transcribe train`?)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if partial_ok:
                break
            raise ValueError(f"{path}: line {i} is not JSON ({e.msg})") from None
    if not rows and not partial_ok:
        raise ValueError(f"{path}: no evaluation rows yet")
    return rows


def append_metrics(run: str | Path, row: dict) -> None:
    """One evaluation row. Appending one short line is atomic enough for readers: they stop at a
    line that does not parse yet (read_metrics(partial_ok=True))."""
    with open(Path(run) / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run: str | Path, step: int) -> str | None:
    """Keep the rows up to `step`: on resuming, rows written after the checkpoint belong to work
    that is being redone. A torn last line (the process was killed, or the disk filled, while
    appending it) is dropped, and a note saying so returned; a bad line before it is an error."""
    path = Path(run) / METRICS_FILE
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept, note = [], None
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            row_step = row["step"]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            if i < len(lines):
                raise ValueError(f"{path}: line {i} is not a metrics row ({e}); only the last line "
                                 f"can be half-written") from None
            note = f"{path}: dropped its half-written last line ({len(line)} characters: {line[:40]!r}...)"
            continue
        if row_step <= step:
            kept.append(line)
    atomic_write(path, "".join(r + "\n" for r in kept))
    return note


# ---------------------------------------------------------------- the lock

@contextlib.contextmanager
def lock_run(run: str | Path) -> Iterator[str | None]:
    """Hold RUN/lock while training into RUN: a second trainer gets RunInUse naming the owner.

    An advisory `flock` on the open lock file: the kernel releases it when the process ends,
    however it ends, so a lock can never outlive its owner. The file holds the owner's pid,
    host and start time while held and is emptied on a clean exit; finding it non-empty but
    unlocked means its owner was killed (a stale lock): yields that text (else None).
    flock works between processes of one machine, and on NFS only where it is mapped to
    NFS locks (Linux >= 2.6.12)."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_FILE
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = f.read().strip() or "another process"
        f.close()
        raise RunInUse(f"{run}: in use by {owner} ({path}); two trainings in one run folder would "
                       f"overwrite each other's files: wait for it, or train into another --out") from None
    try:
        stale = f.read().strip() or None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield stale
    finally:
        with contextlib.suppress(OSError):  # any end but a kill: emptied, so a non-empty
            f.seek(0)                       # unlocked file means a killed owner
            f.truncate()
        f.close()  # releases the lock


class RunInUse(OSError):
    """Another process holds the run folder's lock."""


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """The checkpoint dictionary, loaded with weights_only=True; a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unsafe pickle
        raise ValueError(f"{path}: not a readable transcribe checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path}: not a transcribe checkpoint (no 'model'/'model_config')")
    return ckpt


def load_checkpoint(path: str | Path, map_location: Any = "cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint alone: no flags needed."""
    ckpt = read_checkpoint(path, map_location)
    model = modellib.build_model(configlib.from_dict(modellib.ModelConfig, ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(map_location if isinstance(map_location, str) else "cpu")
    model.eval()
    return model, ckpt


def resolve_device(name: str = "auto") -> torch.device:
    """`--device`, one behaviour for every command: auto = cuda if available, else cpu; cuda
    without a CUDA device is an error (a clear line, not a silent fallback)."""
    if name not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def load_run(run: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """(model, checkpoint dict, DataConfig) of a run folder; the data config is the checkpoint's own.
    The model is on `device` (a `--device` value)."""
    run = Path(run)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    path = run / f"ckpt-{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (is {run} a run folder? it should hold "
                                f"config.json and ckpt-best.pt / ckpt-last.pt)")
    model, ckpt = load_checkpoint(path)
    model.to(resolve_device(device))
    data_cfg = configlib.from_dict(dataset.DataConfig, ckpt["data_config"])
    return model, ckpt, data_cfg


# ---------------------------------------------------------------- threshold.json

def read_threshold(run: str | Path) -> dict | None:
    """RUN/threshold.json ({"threshold", "target", "checkpoint", "step", ...}), None if absent."""
    path = Path(run) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg}); delete it and evaluate --split val again") from None
    if not isinstance(data, dict) or "threshold" not in data:
        raise ValueError(f"{path}: no 'threshold' key; delete it and evaluate --split val again")
    return data


def write_threshold(run: str | Path, data: dict) -> Path:
    return save_json(data, Path(run) / THRESHOLD_FILE)


# ---------------------------------------------------------------- commit.txt

def git_commit() -> str:
    """'<sha>' or '<sha> dirty' for the source tree this package runs from, else 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"{sha} dirty" if dirty else sha
    except Exception:
        return "unknown"
