"""`transcribe data`: get photos in format 1 and build their preprocessed caches.

Four forms (listed by `transcribe data --help`; the flags are defined in cli.py): `svhn`
downloads the official archives (fetch.py) and caches each split, `synth` writes synthetic
photos (synth.py), a format-1 FOLDER is cached (dataset.build_cache) and described: counts,
length histogram, validation split sizes, what was skipped and why; a CACHE.h5 is described.

Errors in the data (DataError) end the command with a one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from transcribe import fetch, svhn, synth
from transcribe.config import from_args
from transcribe.dataset import (CacheConfig, DataConfig, build_cache, cache_path, load_summary,
                                validation_size)

EXAMPLES = 5  # files listed per kind of problem
BAR = 40  # characters of the longest histogram bar


def run_data(args: argparse.Namespace) -> int:
    try:
        if args.target == "svhn":
            return _run_svhn(args)
        if args.target == "synth":
            return _run_synth(args)
        return _run_folder(args)
    except svhn.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _data_config(args: argparse.Namespace) -> DataConfig:
    return from_args(DataConfig, args, DataConfig())


def _run_svhn(args: argparse.Namespace) -> int:
    root = Path(args.root)
    start = time.perf_counter()
    fetch.fetch_svhn(root, list(args.splits))
    print(f"fetched {', '.join(args.splits)} into {root} in {time.perf_counter() - start:.0f} s")
    for split in args.splits:
        _describe_folder(root / split, _data_config(args), args.strict, args.workers)
    return 0


def _run_synth(args: argparse.Namespace) -> int:
    if args.photos is None or args.photos <= 0:
        print("error: transcribe data synth needs --photos N (a positive number of photos)", file=sys.stderr)
        return 2
    seed = args.synth_seed
    start = time.perf_counter()
    synth.generate(args.out, args.photos, seed, progress=True)
    print(f"wrote {args.photos:,} synthetic photos to {args.out} (seed {seed}) in {time.perf_counter() - start:.1f} s")
    print(f"cache them with: transcribe data {args.out}")
    return 0


def _run_folder(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.suffix == ".h5" and target.is_file():
        _print_summary(load_summary(target), target, _data_config(args), reused=True, seconds=0.0)
        return 0
    if not target.is_dir():
        print(f"error: {target}: not 'svhn', 'synth', a folder or a .h5 cache", file=sys.stderr)
        return 2
    _describe_folder(target, _data_config(args), args.strict, args.workers)
    return 0


def _describe_folder(folder: Path, cfg: DataConfig, strict: bool, workers: int | None) -> None:
    start = time.perf_counter()
    cache_cfg = CacheConfig(widen=cfg.widen, size=cfg.size)
    before = _stamp(cache_path(folder, cache_cfg, cfg.cache_dir))
    path = build_cache(folder, cache_cfg, strict=strict, out_dir=cfg.cache_dir, progress=True, workers=workers)
    seconds = time.perf_counter() - start
    _print_summary(load_summary(path), path, cfg, reused=before == _stamp(path), seconds=seconds)


def _stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None if absent: unchanged means build_cache reused it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _print_summary(s: dict, path: Path, cfg: DataConfig, reused: bool, seconds: float) -> None:
    out = print
    out(f"folder     {s['folder']}")
    out(f"cache      {path}  ({'reused; built in' if reused else 'built in'} {s['seconds']:.2f} s"
        + (f", {s['images_per_second']:,.0f} photos/s" if s.get("images_per_second") else "") + ")")
    out(f"records    {s['records']:,} in digitStruct.mat: {s['usable']:,} usable, {s['skipped']:,} skipped, "
        f"{s['noted']:,} kept with a note")
    lengths = {int(k): v for k, v in s["lengths"].items()}
    if lengths:
        top = max(lengths.values())
        out("lengths    digits  photos")
        for n in range(1, max(lengths) + 1):
            v = lengths.get(n, 0)
            out(f"           {n:>6}  {v:>6,}  {'#' * max(v * BAR // top, 1 if v else 0)}")
    try:
        k = validation_size(s["usable"], cfg)
        how = f"val_size {cfg.val_size}" if cfg.val_size > 0 else f"val_fraction {cfg.val_fraction:g}"
        out(f"validation {s['usable'] - k:,} train / {k:,} val  ({how}, split seed {cfg.seed}; used when this "
            f"folder alone is the training set)")
    except ValueError as e:
        out(f"validation none: {e}")
    problems = [svhn.Problem(p["file"], p["problem"], p["skipped"]) for p in s["problems"]]
    out("problems   " + svhn.summarize(problems, examples=EXAMPLES).replace("\n", "\n           "))
    for kind, _ in Counter(p.kind for p in problems).most_common():  # the full message of one of each kind
        first = next(p for p in problems if p.kind == kind)
        out(f"           e.g. {first.file}: {first.problem}")
    out(f"time       {seconds:.2f} s")
