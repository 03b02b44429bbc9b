"""`make rehearsal`: the full-size path on a synthetic tree the size of SVHN, measured (issue 14).

Writes train (33,402 photos) and extra (202,353) with `transcribe data synth` (parallel over
processes), each with its own digitStruct.mat of that size; times reading each digitStruct.mat;
runs the data step (`transcribe data FOLDER`: the cache build) and a bounded `transcribe train`
(the `make train` recipe: the paper's network, train+extra, 6,000 held out, batch 128) for
--train-seconds; and reports, as JSON and a printed table:

- digitStruct.mat read time and size, per split; with --full-digitstruct, below full scale, also of
  a digitStruct.mat of the full split's size (the split's records repeated: labels only), written and read;
- cache build time, photos/s and size on disk, per split;
- peak memory of each step: the largest single process (wait4's ru_maxrss, which covers the
  step's waited-for descendants) and the whole process tree, summed (sampled from /proc);
- training images/s, from the progress lines (between the first and the last, so the
  evaluations at the start and at the end are not counted);
- the projected time per epoch of train+extra (235,755 photos less the 6,000 held out): on
  this machine from that rate, and on one GPU from runs/gpu-check/bench.json (written by
  scripts/gpu_check.sh on a GPU machine) if it exists, else "not measured".

`--scale` (REHEARSAL_SCALE in the Makefile) shrinks the photo counts (and the held-out 6,000)
for a quicker or smaller run; the projection is always for the full train+extra, from the rate
measured. Every step runs the real command line in a subprocess, as `make data train` would.
Steps whose output is in place (a digitStruct.mat with the right count, a cache) are reused:
rerunning after an interruption continues. Not part of `make test` (tests/test_rehearsal.py
runs it at a tiny scale).

    python scripts/rehearsal.py --scale 1 --root data/rehearsal --out runs/rehearsal
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPLITS = {"train": 33_402, "extra": 202_353}  # SVHN format 1 (Netzer et al. 2011)
VAL_SIZE = 6_000                              # held out of train+extra, as `make train` does
SEEDS = {"train": 101, "extra": 102}          # synthetic photos: a fixed seed per split
SAMPLE_EVERY = 0.5                            # seconds between /proc samples of the tree's memory
PROGRESS = re.compile(r"^\s+step (\d+)/\d+, .* \| (\d+) s")  # progress.py's plain line: step, elapsed s


def tree_rss(root: int) -> int:
    """Bytes resident in process `root` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid, ...
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo, page = 0, [root], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_step(name: str, argv: list[str], log: Path) -> dict:
    """Run one command line; its output goes to `log` (and this terminal). Returns seconds, peak
    memory (largest process, whole tree), the load average around it and the output's lines."""
    print(f"rehearsal: {name}: {' '.join(argv)}", flush=True)
    load0, start = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_EVERY):
            peak[0] = max(peak[0], tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    with open(log, "w") as f:
        for line in proc.stdout:  # a pipe: the commands print plain progress lines, not bars
            f.write(line)
            lines.append(line.rstrip("\n"))
            print(f"  {line}", end="", flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"rehearsal: {name} failed (exit status {code}); its output is in {log}")
    return {"seconds": round(seconds, 1), "peak_rss_process_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_rss_tree_mb": round(peak[0] / 2 ** 20, 1), "load_start": load0,
            "load_end": os.getloadavg()[0], "lines": lines}


def folder_bytes(folder: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())


def training_rate(lines: list[str], batch: int, run: Path) -> dict:
    """img/s between the first and last progress lines (evaluations at both ends excluded); with
    fewer than two (a short run), from metrics.jsonl's first and last rows (the last evaluation counted)."""
    points = [(int(m[1]), int(m[2])) for m in map(PROGRESS.match, lines) if m]
    if len(points) < 2 or points[-1][1] <= points[0][1]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        first, last = rows[0], rows[-1]
        if last["seconds"] <= first["seconds"]:
            return {"train_img_s": None, "rate_from": "one evaluation only"}
        return {"train_img_s": round((last["step"] - first["step"]) * batch / (last["seconds"] - first["seconds"]), 1),
                "rate_from": f"steps {first['step']}-{last['step']} from metrics.jsonl, the last evaluation included"}
    (s0, t0), (s1, t1) = points[0], points[-1]
    return {"train_img_s": round((s1 - s0) * batch / (t1 - t0), 1),
            "rate_from": f"steps {s0}-{s1}, {t1 - t0} s (progress lines; elapsed rounded to 1 s)"}


def precision_of(run: Path) -> str:
    """The precision the run trained in, as its metrics rows record it (`--amp auto` decides at run time)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1].get("precision", "as configured") if rows else "as configured"


def gpu_rate(preset: str, batch: int) -> dict | None:
    """Training img/s of `preset` measured on a GPU by scripts/gpu_check.sh, if it has run."""
    for path in (REPO / "runs/gpu-check/bench.json",):
        if path.is_file():
            bench = json.loads(path.read_text())
            rows = [r for r in bench.get("rows", []) if r.get("preset") == preset]
            if rows:
                best = max(rows, key=lambda r: r["train_img_s"])
                return {"train_img_s": best["train_img_s"], "batch": best["batch"], "precision": best["precision"],
                        "machine": bench.get("machine"), "from": str(path)}
    return None


def full_size_digitstruct(records: list, n: int, folder: Path) -> dict:
    """Write a digitStruct.mat of n records (`records` repeated) and time reading it back."""
    from transcribe import svhn
    path = folder / f"fullsize-{n}-{svhn.MAT_NAME}"
    start = time.perf_counter()
    svhn.write_digitstruct(path, [records[i % len(records)] for i in range(n)])
    written = time.perf_counter() - start
    start = time.perf_counter()
    got = len(svhn.read_digitstruct(path))
    row = {"records": got, "bytes": path.stat().st_size, "write_seconds": round(written, 2),
           "read_seconds": round(time.perf_counter() - start, 2)}
    path.unlink()
    return row


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of SVHN's photo counts (default 1: full size)")
    p.add_argument("--root", default="data/rehearsal", help="where the synthetic splits and caches go")
    p.add_argument("--out", default="runs/rehearsal", help="report.json, report.md, logs and the training run")
    p.add_argument("--train-seconds", type=float, default=300, help="training budget (default 300 s)")
    p.add_argument("--steps", type=int, default=100_000, help="training steps, if they end first (default 100000)")
    p.add_argument("--preset", default="goodfellow", help="model preset (default: goodfellow, as make train)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128, as make train)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2)")
    p.add_argument("--eval-limit", type=int, default=1000,
                   help="photos scored at the start and end of training (default 1000; 0: all 6,000)")
    p.add_argument("--full-digitstruct", action=argparse.BooleanOptionalAction, default=False,
                   help="below full scale, also write and read a digitStruct.mat of each split's full size "
                        "(default: no; extra's 202,353 records did not finish writing in 26 min: README)")
    p.add_argument("--delete-photos", action="store_true", help="delete the synthetic photos at the end (keeps caches)")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 1:
        raise SystemExit(f"rehearsal: --scale must be in (0, 1], got {args.scale}")

    from transcribe import svhn
    from transcribe.runs import atomic_write, git_commit, save_json

    root, out = (REPO / args.root).resolve(), (REPO / args.out).resolve()
    cache_dir = root / "cache"
    out.mkdir(parents=True, exist_ok=True)
    tr = [sys.executable, "-m", "transcribe.cli"]
    counts = {s: max(1, round(n * args.scale)) for s, n in SPLITS.items()}
    val_size = max(1, round(VAL_SIZE * args.scale))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    previous = out / "report.json"  # synth figures of the run that wrote photos still in place
    previous = json.loads(previous.read_text()) if previous.is_file() else {}
    report = {"scale": args.scale, "photos": counts, "val_size": val_size, "commit": git_commit(),
              "machine": f"{cpu}, {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "splits": {}}

    for split, n in counts.items():
        folder = root / split
        mat = folder / svhn.MAT_NAME
        row: dict = {"photos": n}
        if mat.is_file() and len(svhn.read_digitstruct(mat)) == n:
            print(f"rehearsal: {folder} already holds {n:,} photos", flush=True)
            earlier = previous.get("splits", {}).get(split, {}).get("synth")
            row["synth"] = earlier if isinstance(earlier, dict) and previous.get("scale") == args.scale else "reused"
        else:
            step = run_step(f"synth {split}", tr + ["data", "synth", "--photos", str(n), "--out", str(folder),
                                                     "--synth-seed", str(SEEDS[split])], out / f"synth-{split}.log")
            step.pop("lines")
            row["synth"] = {**step, "photos_per_s": round(n / step["seconds"], 1)}
        row["photos_bytes"] = folder_bytes(folder)
        start = time.perf_counter()
        records = svhn.read_digitstruct(mat)
        row["digitstruct"] = {"bytes": mat.stat().st_size, "records": len(records),
                              "read_seconds": round(time.perf_counter() - start, 2)}
        if n < SPLITS[split] and args.full_digitstruct:
            row["digitstruct_full_size"] = full_size_digitstruct(records, SPLITS[split], root)
        del records
        step = run_step(f"cache {split}", tr + ["data", str(folder), "--cache-dir", str(cache_dir)],
                        out / f"cache-{split}.log")
        lines = step.pop("lines")
        caches = [line.split()[1] for line in lines if line.startswith("cache ")]
        cache = Path(caches[0]) if caches else None
        row["cache"] = {**step, "path": str(cache) if cache else None,
                        "bytes": cache.stat().st_size if cache and cache.is_file() else None,
                        "photos_per_s": round(n / step["seconds"], 1)}
        earlier = previous.get("splits", {}).get(split, {}).get("cache")
        if any(line.startswith("reusing cache") for line in lines) and earlier and earlier.get("path") == row["cache"]["path"]:
            row["cache"] = {**earlier, "reused_later": True}  # the figures of the run that built it
        report["splits"][split] = row

    run = out / "train"
    if run.exists():
        shutil.rmtree(run)  # a fresh bounded run each time: its rate is what is measured
    step = run_step("train", tr + ["train", "--preset", args.preset, "--train", str(root / "train"), str(root / "extra"),
                                   "--val-size", str(val_size), "--cache-dir", str(cache_dir), "--out", str(run),
                                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", "0.05",
                                   "--eval-every", str(args.steps), "--eval-limit", str(args.eval_limit),
                                   "--threads", str(args.threads), "--max-seconds", str(args.train_seconds)],
                    out / "train.log")
    lines = step.pop("lines")
    amp = precision_of(run)
    train = {**step, **training_rate(lines, args.batch_size, run), "preset": args.preset, "batch": args.batch_size,
             "precision": amp, "threads": args.threads, "budget_seconds": args.train_seconds}
    report["train"] = train
    epoch_photos = sum(SPLITS.values()) - VAL_SIZE
    rate = train["train_img_s"]
    gpu = gpu_rate(args.preset, args.batch_size)
    report["projection"] = {
        "epoch_photos": epoch_photos,
        "this_machine_seconds": round(epoch_photos / rate, 0) if rate else None,
        "gpu": ({**gpu, "seconds": round(epoch_photos / gpu["train_img_s"], 0)} if gpu else
                "not measured: no runs/gpu-check/bench.json (scripts/gpu_check.sh has not run on a GPU machine)"),
    }
    if args.delete_photos:
        for split in counts:
            for entry in os.scandir(root / split):
                if entry.name.endswith(".png"):
                    os.unlink(entry.path)
        report["photos_deleted"] = True
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    table = markdown(report)
    report["markdown"] = table
    save_json(report, out / "report.json")
    atomic_write(out / "report.md", table + "\n")
    print(table)
    print(f"rehearsal: wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


def markdown(r: dict) -> str:
    mb = lambda b: "-" if b is None else f"{b / 1e6:,.0f} MB"  # noqa: E731
    lines = [f"Rehearsal at scale {r['scale']:g} ({', '.join(f'{s} {n:,}' for s, n in r['photos'].items())} photos), "
             f"{r['machine']}, commit {r['commit']}, {r['started']} to {r.get('finished', '?')}.", "",
             "| split | synth s (photos/s) | photos on disk | digitStruct.mat | read s | cache build s (photos/s) "
             "| cache size | peak RSS: process / tree | load avg start-end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for split, row in r["splits"].items():
        syn = row["synth"]
        syn_text = "reused" if syn == "reused" else f"{syn['seconds']:,.0f} ({syn['photos_per_s']:,.0f})"
        c, d = row["cache"], row["digitstruct"]
        earlier = " (an earlier run's)" if c.get("reused_later") else ""
        lines.append(f"| {split}{earlier} | {syn_text} | {mb(row['photos_bytes'])} | {mb(d['bytes'])} | {d['read_seconds']:.2f} "
                     f"| {c['seconds']:,.0f} ({c['photos_per_s']:,.0f}) | {mb(c['bytes'])} "
                     f"| {c['peak_rss_process_mb']:,.0f} / {c['peak_rss_tree_mb']:,.0f} MB "
                     f"| {c['load_start']:.1f}-{c['load_end']:.1f} |")
    full = [(s, row["digitstruct_full_size"]) for s, row in r["splits"].items() if "digitstruct_full_size" in row]
    if full:
        lines += ["", "| digitStruct.mat at full size (records repeated, no photos) | records | size | write s | read s |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {s} | {d['records']:,} | {mb(d['bytes'])} | {d['write_seconds']:.1f} | {d['read_seconds']:.1f} |"
                  for s, d in full]
    t, pr = r["train"], r["projection"]
    gpu = pr["gpu"]
    rate = "-" if t["train_img_s"] is None else f"{t['train_img_s']:,.1f}"
    gpu_text = gpu if isinstance(gpu, str) else f"{hms(gpu['seconds'])} ({gpu['train_img_s']:,.0f} img/s, {gpu['machine']})"
    lines += ["", "| training (train+extra) | value |", "|---|---|",
              f"| command wall time (load caches, {t['budget_seconds']:g} s budget, evaluations) | {t['seconds']:,.0f} s |",
              f"| preset, batch, precision, threads | {t['preset']}, {t['batch']}, {t['precision']}, {t['threads']} |",
              f"| training img/s | {rate} ({t['rate_from']}) |",
              f"| peak RSS: process / tree | {t['peak_rss_process_mb']:,.0f} / {t['peak_rss_tree_mb']:,.0f} MB |",
              f"| load average start-end | {t['load_start']:.1f}-{t['load_end']:.1f} |",
              f"| projected epoch of train+extra ({pr['epoch_photos']:,} photos), this machine "
              f"| {hms(pr['this_machine_seconds'])} |",
              f"| projected epoch, one GPU | {gpu_text} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
