"""The preprocessed cache (one HDF5 file per split folder) and the batches cut from it.

A format-1 folder (N.png + digitStruct.mat, see svhn.py) is read once: every usable photo
is cropped to the widened number box and resized to 64x64 (crops.py), and the crops,
labels and crop boxes are written to `data/cache/<name>-w<widen>-s<size>-<hash>.h5`
together with the parameters that made it and a summary of what was skipped and why.
The file is reused while those parameters match and rebuilt when they do not.

Batches follow Goodfellow et al. 2014, sec. 5.1: a random 54x54 crop of the 64x64 image
during training (the centre crop at evaluation) and subtraction of each image's mean.
They are cut from whole uint8 tensors with advanced indexing: no per-sample Python loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from transcribe import crops, svhn
from transcribe.config import CACHE_WORKERS, INPUT_SIZE, MAX_DIGITS, PARALLEL_FROM, CacheConfig, DataConfig
from transcribe.progress import bar as progress_bar

CACHE_VERSION = 1  # bump when the crop/caching code changes what a cache holds: old caches rebuild
# Workers are spawned, not forked: training calls build_cache with torch (and its thread pools)
# loaded, which fork does not survive reliably; spawning costs ~0.2 s.
_START = "spawn"
CHUNK = 32  # photos per task sent to a worker: few round trips, still a smooth progress bar
PIXEL_SCALE = 255.0  # batches are (pixel - image mean) / 255: within [-1, 1], typically |x| < 0.5


@dataclass
class Cache:
    """A cache in memory. Row i of every array is one photo."""
    images: np.ndarray   # (N, size, size, 3) uint8
    lengths: np.ndarray  # (N,) int64, 1..MAX_DIGITS
    digits: np.ndarray   # (N, MAX_DIGITS) int64, -1 past the length
    files: np.ndarray    # (N,) str, name inside its folder ("1.png")
    boxes: np.ndarray    # (N, 4) float32, widened crop box (left, top, width, height) in photo pixels
    folder: str          # source folder; several joined by os.pathsep after concatenation
    summary: dict[str, Any] = field(default_factory=dict)  # build summary(ies): counts, problems
    folders: tuple[str, ...] = ()     # distinct source folders (extension of the contract)
    source: np.ndarray | None = None  # (N,) int, index into `folders` of each row

    def __post_init__(self) -> None:
        if not self.folders:
            self.folders = (self.folder,)
        if self.source is None:
            self.source = np.zeros(len(self.lengths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def path(self, i: int) -> str:
        """Full path of the photo behind row i."""
        return str(Path(self.folders[int(self.source[i])]) / str(self.files[i]))

    def text(self, i: int) -> str:
        return "".join(str(int(d)) for d in self.digits[i, : self.lengths[i]])

    def subset(self, index: np.ndarray) -> "Cache":
        index = np.asarray(index, dtype=np.int64)
        return Cache(self.images[index], self.lengths[index], self.digits[index], self.files[index],
                     self.boxes[index], self.folder, self.summary, self.folders, self.source[index])


# ---------------------------------------------------------------------------------------
# Building and loading a cache


def cache_path(folder: str | Path, cfg: CacheConfig, out_dir: str | Path = "data/cache") -> Path:
    """`<parent>-<split>-w1.3-s64-<hash of the absolute folder>.h5`: readable, and unique per folder."""
    folder = Path(folder).resolve()
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{folder.parent.name}-{folder.name}")
    return Path(out_dir) / f"{stem}-w{cfg.widen:g}-s{cfg.size}-{digest}.h5"


def _parameters(folder: Path, cfg: CacheConfig) -> dict[str, Any]:
    """Everything a cache's contents depend on; a stored cache is reused only if all match."""
    mat = folder / "digitStruct.mat"
    st = mat.stat() if mat.exists() else None
    return {"widen": float(cfg.widen), "size": int(cfg.size), "folder": str(folder),
            "mat_size": st.st_size if st else -1, "mat_mtime": st.st_mtime if st else -1.0,
            "cache_version": CACHE_VERSION}


def _stored_parameters(path: Path) -> dict[str, Any] | None:
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["parameters"])
    except Exception:  # unreadable, truncated or foreign file: rebuild it
        return None


def problem_kind(problem: str) -> str:
    """A problem's category for counting, as svhn.Problem.kind: the text before the first ':'."""
    return problem.split(":", 1)[0]


def entries_skipped(problems: Sequence[dict[str, Any]]) -> int:
    """How many digitStruct entries the skipped problems stand for (an entry may have several
    problems; a duplicate entry shares its file name with the first one)."""
    skipped = [p for p in problems if p["skipped"]]
    dup = sum(problem_kind(p["problem"]) == "duplicate entry" for p in skipped)
    return dup + len({p["file"] for p in skipped if problem_kind(p["problem"]) != "duplicate entry"})


TMP_MARK = ".tmp-"  # a cache's temporary file: .<cache name>.tmp-<pid of the building process>


def sweep_leftovers(path: Path) -> list[Path]:
    """Remove the temporary files of `path` left by builds that were killed (SIGKILL, power
    loss): those whose building process no longer runs on this machine. Returns them."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        pid = tmp.name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and not process_running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def process_running(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    if pid <= 0:  # 0 and negative numbers name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def _h5_writer(tmp: Path):
    """h5py.File(tmp, "w") that, when writing fails (a full disk), empties the file before
    closing it, so that HDF5's closing flush finds room and the file closes cleanly: closing
    it on a full disk fails inside h5py and the process later segfaults. Without a chunk
    cache, no unwritten chunk waits for that flush (build_cache writes whole chunks)."""
    f = h5py.File(tmp, "w", rdcc_nbytes=0)  # no chunk cache: chunks are written whole, at once
    try:
        yield f
    except BaseException:
        try:
            os.truncate(tmp, 0)  # frees the space the written chunks took
        except OSError:
            pass
        try:
            f.close()
        except Exception:  # the file is removed next; the first error is the one to report
            pass
        raise
    f.close()


def _crop_one(task: tuple[str, str, tuple, float, int]) -> tuple[np.ndarray | None, tuple, str | None, str | None]:
    """Decode one photo and crop its number. Returns (crop, crop box, skip reason, note).

    Runs in worker processes: module level, plain arguments, returns plain values.
    """
    folder, name, boxes, factor, size = task
    path = Path(folder) / name
    try:
        image = svhn.load_image(path)
    except svhn.DataError as e:  # "<path>: <why>" -> "unreadable image: <why>" (the file is recorded beside it)
        why = str(e).removeprefix(f"{path}: ")
        return None, (0.0, 0.0, 0.0, 0.0), f"unreadable image: {why}", None
    record = svhn.Record(file=name, digits=(0,) * len(boxes), boxes=boxes)
    note = svhn.box_problem(record, image.shape[1], image.shape[0])
    try:
        out, box = crops.crop_number(image, boxes, factor, size)
    except ValueError as e:  # a box far beyond the photo (crops.unusable_box): counted, skipped
        return None, (0.0, 0.0, 0.0, 0.0), f"unusable box: {str(e).removeprefix('crop: ')}", None
    return out, box, None, note


def build_cache(folder: str | Path, cfg: CacheConfig = CacheConfig(), strict: bool = False,
                out_dir: str | Path = "data/cache", progress: bool = True,
                workers: int | None = None) -> Path:
    """Build (or reuse) the cache of one format-1 folder; returns its path.

    Problems are recorded, never silently dropped: those from svhn.read_split (missing
    image, too many digits, ...), photos that fail to decode (skipped), and boxes reaching
    outside the photo (noted, the photo is kept, crops pad). strict=True makes any problem
    a DataError. `workers`: processes for decoding+cropping (None: CACHE_WORKERS when the split
    has PARALLEL_FROM photos or more, else 0 = in this process).
    """
    folder = Path(folder).resolve()
    path = cache_path(folder, cfg, out_dir)
    params = _parameters(folder, cfg)
    say = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    if path.exists():
        stored = _stored_parameters(path)
        if stored == params:
            if strict:
                summary = load_summary(path)
                if summary["problems"]:
                    p = summary["problems"][0]
                    raise svhn.DataError(f"{folder / p['file']}: {p['problem']} (strict; "
                                         f"{len(summary['problems'])} problem(s) recorded in {path})")
            say(f"reusing cache {path}")
            return path
        changed = sorted(k for k in params if stored is None or stored.get(k) != params[k])
        say(f"rebuilding cache {path} (changed: {', '.join(changed)})")

    start = time.perf_counter()
    split = svhn.read_split(folder, strict=strict)
    problems: list[dict[str, Any]] = [{"file": p.file, "problem": p.problem, "skipped": bool(p.skipped)}
                                      for p in split.problems]
    records = split.records
    n = len(records)
    if workers is None:
        workers = CACHE_WORKERS if n >= PARALLEL_FROM else 0
    tasks = [(str(folder), r.file, tuple(tuple(float(v) for v in b) for b in r.boxes), float(cfg.widen),
              int(cfg.size)) for r in records]

    path.parent.mkdir(parents=True, exist_ok=True)
    for old in sweep_leftovers(path):
        say(f"removed {old}, left by a cache build that was killed")
    need, free = n * cfg.size * cfg.size * 3, shutil.disk_usage(path.parent).free  # bytes: the images
    if need > free:
        raise svhn.DataError(f"{path}: the cache needs about {need / 1e6:,.0f} MB; {free / 1e6:,.0f} MB "
                             f"are free on that disk")
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")  # unique per process: see sweep_leftovers
    pool = None
    try:
        with _h5_writer(tmp) as f:
            s = cfg.size
            block = min(max(n, 1), 256)  # photos per chunk, written whole from `pending`
            images = f.create_dataset("images", (n, s, s, 3), np.uint8, maxshape=(None, s, s, 3),
                                      chunks=(block, s, s, 3))
            pending = np.empty((block, s, s, 3), np.uint8)
            boxes = np.zeros((n, 4), np.float32)
            keep = np.zeros(n, bool)
            if workers > 0:
                pool = multiprocessing.get_context(_START).Pool(workers)
                results = pool.imap(_crop_one, tasks, chunksize=CHUNK)
            else:
                results = map(_crop_one, tasks)
            row = 0
            for i, (out, box, skip, note) in enumerate(progress_bar(results, total=n, desc=f"caching {folder.name}",
                                                                    unit="img", disable=not progress)):
                if skip is not None:
                    if strict:
                        raise svhn.DataError(f"{folder / records[i].file}: {skip}")
                    problems.append({"file": records[i].file, "problem": skip, "skipped": True})
                    continue
                if note is not None:
                    if strict:
                        raise svhn.DataError(f"{folder / records[i].file}: {note}")
                    problems.append({"file": records[i].file, "problem": note, "skipped": False})
                pending[row % block] = out
                if row % block == block - 1:
                    images[row + 1 - block:row + 1] = pending
                boxes[row] = box
                keep[i] = True
                row += 1
            if row % block:
                images[row - row % block:row] = pending[:row % block]
            images.resize(row, axis=0)
            kept = [r for r, k in zip(records, keep) if k]
            lengths = np.array([len(r.digits) for r in kept], np.int64)
            digits = np.full((row, MAX_DIGITS), -1, np.int64)
            for j, r in enumerate(kept):
                digits[j, : len(r.digits)] = r.digits
            f.create_dataset("lengths", data=lengths)
            f.create_dataset("digits", data=digits)
            f.create_dataset("files", data=np.array([r.file for r in kept], dtype=object),
                             dtype=h5py.string_dtype())
            f.create_dataset("boxes", data=boxes[keep])
            seconds = time.perf_counter() - start
            summary = {
                "folder": str(folder),
                "records": n + entries_skipped(problems[:len(split.problems)]),  # entries in digitStruct.mat
                "usable": row,
                "skipped": entries_skipped(problems),  # entries left out (records - usable)
                "noted": sum(not p["skipped"] for p in problems),  # kept, with a note (box outside)
                "by_kind": dict(Counter(problem_kind(p["problem"]) for p in problems)),
                "lengths": {str(k): int(v) for k, v in sorted(Counter(lengths.tolist()).items())},
                "seconds": round(seconds, 3),
                "images_per_second": round(n / seconds, 1) if seconds > 0 else None,
                "workers": workers,
                "problems": problems,
            }
            f.attrs["parameters"] = json.dumps(params)
            f.attrs["summary"] = json.dumps(summary)
            for k, v in params.items():  # also as plain attributes, for h5dump / h5py users
                f.attrs[k] = v
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk (h5py raises either); `finally` removes tmp
        reason = os.strerror(e.errno) if getattr(e, "errno", None) else str(e).splitlines()[0]
        raise svhn.DataError(f"{path}: cannot write the cache ({reason}); nothing was left behind") from None
    finally:
        if pool is not None:
            pool.terminate()
        if tmp.exists():
            tmp.unlink()
    say(f"wrote cache {path}: {row} of {summary['records']} photos in {seconds:.1f} s "
        f"({summary['images_per_second']} img/s, {workers} worker(s))")
    return path


def load_summary(path: str | Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["summary"])


def load_cache(path: str | Path) -> Cache:
    """Read a whole cache into memory (numpy arrays). DataError if it is not a readable cache."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            summary = json.loads(f.attrs["summary"])
            return Cache(images=f["images"][...], lengths=f["lengths"][...].astype(np.int64),
                         digits=f["digits"][...].astype(np.int64),
                         files=np.array(f["files"].asstr()[...], dtype=str).reshape(-1),
                         boxes=f["boxes"][...].astype(np.float32), folder=summary["folder"], summary=summary)
    except (OSError, KeyError, ValueError) as e:
        raise svhn.DataError(f"{path}: not a readable transcribe cache ({e})") from None


def concatenate(caches: Sequence[Cache]) -> Cache:
    """One Cache holding the rows of all `caches` in order; remembers each row's folder."""
    if len(caches) == 1:
        return caches[0]
    folders: list[str] = []
    sources = []
    for c in caches:
        offset = len(folders)
        folders.extend(c.folders)
        sources.append(c.source + offset)
    return Cache(images=np.concatenate([c.images for c in caches]),
                 lengths=np.concatenate([c.lengths for c in caches]),
                 digits=np.concatenate([c.digits for c in caches]),
                 files=np.concatenate([c.files for c in caches]),
                 boxes=np.concatenate([c.boxes for c in caches]),
                 folder=os.pathsep.join(folders), summary={"parts": [c.summary for c in caches]},
                 folders=tuple(folders), source=np.concatenate(sources))


def evaluation_cache(path_or_folder: str | Path, cfg: DataConfig | CacheConfig = CacheConfig(),
                     strict: bool = False, progress: bool = True) -> Cache:
    """A Cache for an existing .h5 cache, or for a format-1 folder (built or reused)."""
    p = Path(path_or_folder)
    if p.suffix == ".h5" and p.is_file():
        return load_cache(p)
    if not p.is_dir():
        raise svhn.DataError(f"{p}: neither a .h5 cache nor a format-1 folder")
    cache_cfg = CacheConfig(widen=cfg.widen, size=cfg.size)
    out_dir = getattr(cfg, "cache_dir", "data/cache")
    return load_cache(build_cache(p, cache_cfg, strict=strict, out_dir=out_dir, progress=progress))


def validation_size(n: int, cfg: DataConfig) -> int:
    """How many of `n` pooled photos are held out: val_size if set, else round(val_fraction * n)."""
    k = cfg.val_size if cfg.val_size > 0 else int(round(cfg.val_fraction * n))
    if not 0 <= k < n:
        raise ValueError(f"validation size {k} leaves no training data out of {n} photos")
    return k


def load_splits(cfg: DataConfig, strict: bool = False, progress: bool = True) -> tuple[Cache, Cache]:
    """(train, val): every source's cache concatenated, then a seeded random hold-out; the
    `mix` photos (if any) are then added to the training side only.

    The split is a pure function of (the pooled rows, val size, seed): rerunning or resuming
    gives the same photos on each side. Rows keep their pool order within each side.
    """
    pool = concatenate([evaluation_cache(src, cfg, strict=strict, progress=progress) for src in cfg.train])
    k = validation_size(len(pool), cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    val_index, train_index = np.sort(order[:k]), np.sort(order[k:])
    if cfg.train_size > 0:
        if cfg.train_size > len(train_index):
            raise ValueError(f"train_size {cfg.train_size} is more than the {len(train_index)} training photos of {cfg.train}")
        # A second seeded order of the training side; its prefixes are nested subsets.
        prefix = np.random.default_rng([cfg.seed, 1]).permutation(len(train_index))[:cfg.train_size]
        train_index = train_index[np.sort(prefix)]
    train, val = pool.subset(train_index), pool.subset(val_index)
    if cfg.mix:
        extra = concatenate([evaluation_cache(src, cfg, strict=strict, progress=progress) for src in cfg.mix])
        if cfg.mix_size > 0:
            if cfg.mix_size > len(extra.images):
                raise ValueError(f"mix_size {cfg.mix_size} is more than the {len(extra.images)} photos of {cfg.mix}")
            pick = np.random.default_rng([cfg.seed, 2]).permutation(len(extra.images))[:cfg.mix_size]
            extra = extra.subset(np.sort(pick))
        train = concatenate([train, extra])
    return train, val


def held_out_names(folder: str | Path, fraction: float, seed: int) -> set[str]:
    """File names of the photos `transcribe train --train FOLDER --val-fraction F --split-seed S`
    holds out for validation (load_splits chooses them): what transfer --val-fraction, fit-chooser
    and fit-box leave out."""
    _, val = load_splits(DataConfig(train=(str(folder),), val_fraction=fraction, seed=seed), progress=False)
    return {Path(str(f)).name for f in val.files}


# ---------------------------------------------------------------------------------------
# Batches (torch from here on)


def epoch_permutation(n: int, seed: int, epoch: int):
    """Order of the n training rows in `epoch`: a pure function of (n, seed, epoch). (n,) LongTensor."""
    g = torch.Generator().manual_seed(_mix(seed, epoch))
    return torch.randperm(n, generator=g)


def batch_generator(seed: int, epoch: int, step: int):
    """The torch.Generator for the random crops of one step: a pure function of (seed, epoch, step)."""
    return torch.Generator().manual_seed(_mix(seed, epoch, step, 1))


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (numpy's SeedSequence hashing: no collisions like seed+epoch)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def prepare_batch(images, crop: int = INPUT_SIZE, train: bool = True, generator=None, index=None):
    """uint8 (B, S, S, 3) -> float32 (B, 3, crop, crop), ready for the network.

    train: a random crop per image (offsets drawn from `generator`, on the CPU, so the
    same generator gives the same crops on any device); eval: the centre crop.
    Then each image's mean (over its pixels and channels) is subtracted (Goodfellow et al.
    2014, sec. 5.1) and the result divided by PIXEL_SCALE = 255, so values lie in [-1, 1].
    `index` (B,) int64: the rows of `images` (N, S, S, 3) to use, e.g. the whole cache: one
    gather then cuts the crops straight from it, instead of copying the rows first.

    How, in three passes over uint8/float memory and no per-image Python (33-39x the earlier
    float-first version, one thread each, on the loaded 2-core VM; README, "Speed"): a strided view holds every window of every
    image, (N, S-crop+1, S-crop+1, crop, crop, 3), and one advanced-indexing gather copies the
    chosen windows as uint8 NHWC; each crop's sum is an exact integer (< 2^24 for crop <= 147,
    so its float32 equals the float32 sum of the earlier version, and so does the mean);
    uint8 - mean promotes to float32 in one pass into the output, which is divided in place.
    The result is the NHWC buffer seen as (B, 3, crop, crop): channels_last with no copy.
    The output equals the straightforward computation bit for bit (tests/test_dataset.py).
    It runs on torch's threads as set: pinning it to one thread per call (tried) read 66,000–87,000
    img/s on the quiet 2-core VM against 102,000–150,000 on two; it only helped under heavy load
    (README, "Speed").
    """
    return _prepare(torch.as_tensor(images), crop, train, generator, index)


def _prepare(images, crop: int, train: bool, generator, index):
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3 \
            or not 0 < crop <= images.shape[1]:
        raise ValueError(f"prepare_batch: expected (B, S, S, 3) with S >= crop={crop}, got {tuple(images.shape)}")
    n, s = images.shape[0], images.shape[1]
    rows = torch.arange(n, device=images.device) if index is None else torch.as_tensor(index).to(images.device)
    b = rows.shape[0]
    if train and crop < s:
        offsets = torch.randint(0, s - crop + 1, (b, 2), generator=generator)  # (B, 2): row, column
    else:
        offsets = torch.full((b, 2), (s - crop) // 2, dtype=torch.int64)
    offsets = offsets.to(images.device)
    st = images.stride()  # every window as a view: (N, S-crop+1, S-crop+1, crop, crop, 3)
    windows = images.as_strided((n, s - crop + 1, s - crop + 1, crop, crop, 3),
                                (st[0], st[1], st[2], st[1], st[2], st[3]))
    x = windows[rows, offsets[:, 0], offsets[:, 1]]                        # (B, crop, crop, 3) uint8
    mean = x.sum(dim=(1, 2, 3)).float() / float(crop * crop * 3)           # (B,) exact sum, then float32
    out = torch.sub(x, mean.view(b, 1, 1, 1))                               # float32 (B, crop, crop, 3)
    out.div_(PIXEL_SCALE)
    return out.permute(0, 3, 1, 2)  # (B, 3, crop, crop), channels_last memory
