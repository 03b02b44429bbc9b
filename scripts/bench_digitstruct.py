"""How `svhn.write_digitstruct` scales with the number of records (and reading back the result).

    python scripts/bench_digitstruct.py --records 5000 10000 20000 40000
    timeout 900 python scripts/bench_digitstruct.py --records 33402 202353

Each size is one fresh file of random records (1-3 digits, random boxes, seeded), written into
--folder and deleted afterwards. Prints, per size: links in `#refs#`, file size, write seconds and
seconds per 1,000 records (flat when the writer is linear), and with --read the read seconds
(`svhn.read_digitstruct`, the mmap reader) and a check that the records came back unchanged.

`--links N` times the cause alone: N bare link inserts into one old-style group (what `#refs#`
is: its link names all in one local heap), seconds per 250,000 as it grows. The old writer's
names under h5py's default 32 MB metadata cache ceiling, `--links 2500000 --names r --cache-mb 32`,
stall between 1.75 and 2 million links (the old ~2.1 million for 202,353 records); with the
writer's ceiling (128 MB, `svhn.WRITE_CACHE_BYTES`) they do not. `--cache-mb` overrides that
ceiling for either mode.
Timings depend on the machine and on what else runs on its cores.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from transcribe import svhn
from transcribe.svhn import Record


def random_records(n: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(1, 3)
        boxes = tuple((float(rng.randint(0, 300)), float(rng.randint(0, 100)),
                       float(rng.randint(5, 60)), float(rng.randint(10, 120))) for _ in range(k))
        out.append(Record(f"{i + 1}.png", tuple(rng.randint(0, 9) for _ in range(k)), boxes))
    return out


def refs_links(n_records: list[Record]) -> int:
    """Objects written into #refs#: a name and a struct per record, and one (1, 1) double per
    field value of a record with 2+ digits (MATLAB's cell of doubles)."""
    return sum(2 + (5 * len(r.digits) if len(r.digits) > 1 else 0) for r in n_records)


def links_only(n: int, names: str, folder: str, every: int = 250_000) -> None:
    """The cause alone: n hard links to one dataset in one old-style group (what `#refs#` is),
    seconds per `every` links as the group grows. names "r": the old writer's "r0", "r1", ...;
    "36": base 36 as the writer now names them."""
    import h5py
    import numpy as np

    with h5py.File(Path(folder) / "links.h5", "w", libver="earliest") as f:
        mdc = f.id.get_mdc_config()
        mdc.max_size = getattr(svhn, "WRITE_CACHE_BYTES", mdc.max_size)
        mdc.min_size, mdc.initial_size = min(mdc.min_size, mdc.max_size), min(mdc.initial_size, mdc.max_size)
        f.id.set_mdc_config(mdc)
        print(f"{n:,} links, names {names!r}, cache ceiling {mdc.max_size / 2**20:g} MB", flush=True)
        group, target = f.create_group("#refs#"), f.create_dataset("x", data=np.zeros((1, 1)))
        start = last = time.perf_counter()
        for i in range(n):
            group[f"r{i}" if names == "r" else svhn._ref_name(i)] = target
            if (i + 1) % every == 0:
                now = time.perf_counter()
                print(f"{i + 1:>10,} links: {now - last:6.1f} s for the last {every:,}", flush=True)
                last = now
        print(f"total {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, nargs="+", default=[5000, 10000, 20000, 40000],
                   help="file sizes to write, in records (default: 5000 10000 20000 40000)")
    p.add_argument("--read", action="store_true", help="also time reading each file back and compare")
    p.add_argument("--cache-mb", type=float, default=None,
                   help="HDF5 metadata cache ceiling for the writer, MB (default: the writer's own)")
    p.add_argument("--folder", type=Path, default=None, help="where to write (default: a temp folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random records (default: 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--links", type=int, default=None,
                   help="instead: time N bare link inserts into one group (the cause, alone)")
    p.add_argument("--names", choices=("r", "36"), default="36",
                   help="with --links: the old writer's names r0, r1, ... or base 36 (default)")
    args = p.parse_args(argv)
    if args.cache_mb is not None:
        svhn.WRITE_CACHE_BYTES = int(args.cache_mb * 2**20)
    if args.links:
        with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
            links_only(args.links, args.names, tmp)
        return 0

    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        print(f"writer cache ceiling {getattr(svhn, 'WRITE_CACHE_BYTES', 32 * 2**20) / 2**20:g} MB", flush=True)
        print(f"{'records':>8} {'#refs# links':>12} {'MB':>7} {'write s':>8} {'s/1k rec':>8} {'read s':>7}", flush=True)
        for n in args.records:
            records = random_records(n, args.seed)
            path = Path(tmp) / f"{n}-{svhn.MAT_NAME}"
            start = time.perf_counter()
            svhn.write_digitstruct(path, records)
            written = time.perf_counter() - start
            row = {"records": n, "refs_links": refs_links(records), "bytes": path.stat().st_size,
                   "write_seconds": round(written, 2), "write_seconds_per_1k": round(1000 * written / n, 3)}
            if args.read:
                start = time.perf_counter()
                back = svhn.read_digitstruct(path)
                row["read_seconds"] = round(time.perf_counter() - start, 2)
                if back != records:
                    raise SystemExit(f"{path}: read back differs from what was written")
            path.unlink()
            rows.append(row)
            print(f"{n:>8,} {row['refs_links']:>12,} {row['bytes'] / 1e6:>7.1f} {written:>8.1f} "
                  f"{row['write_seconds_per_1k']:>8.2f} {row.get('read_seconds', float('nan')):>7.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cache_bytes": getattr(svhn, "WRITE_CACHE_BYTES", None), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
