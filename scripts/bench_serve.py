"""Load figures of `transcribe serve`: concurrent clients post photos; throughput and latency,
against reading the same photos in one process (what `transcribe predict` does, minus start-up).

    python scripts/bench_serve.py --run runs/demo --split data/synth/test --limit 2000 --clients 16

The server is started here (a fresh SQLite database in a temp folder, the run's threshold), each
photo is posted once with its number box and its own Idempotency-Key, and afterwards the
database is checked: every photo accepted or referred exactly once. Writes OUT (JSON) and
prints one table. Timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from transcribe import crops, reviews, svhn

TOKEN = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, db: Path, token: str, *extra: str):
    """`transcribe serve RUN` in a child process on a free port, once /healthz answers.
    -> (process, base URL, auth headers). Also used by serve_screenshot.py."""
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "transcribe.cli", "serve", str(run), "--port", str(port),
                             "--db", str(db), "--token", token, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, url, headers


def photos(folder: Path, n: int) -> list[tuple[Path, tuple[float, ...]]]:
    """n (photo, number box) pairs from a format-1 folder, cycling if it holds fewer."""
    records = svhn.read_split(folder).records
    if not records:
        raise SystemExit(f"{folder}: no photos")
    return [(folder / r.file, crops.number_box(r.boxes)) for r in (records[i % len(records)] for i in range(n))]


def single_process(run: Path, items, threads: int, batch: int = 256) -> float:
    """Photos per second: decode, crop and read in batches of 256 in this process, model loaded."""
    import torch

    from transcribe.reader import Reader
    torch.set_num_threads(threads)
    reader = Reader(run)
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        reader.read([svhn.load_image(p) for p, _ in part], [b for _, b in part])
    return len(items) / (time.perf_counter() - started)


def serve(run: Path, items, clients: int, threads: int) -> dict:
    import httpx
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    db = folder / "reviews.sqlite"
    proc, url, headers = start_server(run, db, TOKEN, "--threads", str(threads))
    try:
        data = {p: p.read_bytes() for p, _ in items}
        latencies: list[float] = []
        failures: list[str] = []
        counter = iter(range(len(items)))
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    path, box = items[i]
                    t = time.perf_counter()
                    r = http.post(url + "/v1/transcriptions", headers={**headers, "Idempotency-Key": f"bench-{i}"},
                                  files={"photo": (path.name, data[path], "image/png")},
                                  data={"box": ",".join(f"{v:g}" for v in box)})
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        if r.status_code != 200:
                            failures.append(f"{i}: {r.status_code}")

        started = time.perf_counter()
        pool = [threading.Thread(target=client) for _ in range(clients)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.perf_counter() - started
        batches = httpx.get(url + "/metrics", headers=headers).text
    finally:
        proc.terminate()
        proc.wait(30)
    st = reviews.stats(reviews.open_db(reviews.sqlite_url(db)))
    shutil.rmtree(folder, ignore_errors=True)
    ms = np.array(latencies) * 1000
    mean_batch = _metric(batches, "transcribe_batch_size_sum") / max(_metric(batches, "transcribe_batch_size_count"), 1)
    return {"photos_per_second": round(len(items) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "failures": len(failures),
            "stored": st.photos, "accepted": st.accepted, "referred": st.referred, "pending": st.pending,
            "mean_batch": round(mean_batch, 1)}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument("--split", type=Path, default=Path("data/synth/test"),
                        help="format-1 folder of photos (default: data/synth/test)")
    parser.add_argument("--limit", type=int, default=2000, help="photos to post: the first N, cycling if the folder holds fewer (default: 2000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-serve/bench.json"), help="JSON written here")
    args = parser.parse_args()
    items = photos(args.split, args.limit)
    single = single_process(args.run, items, args.threads)
    served = serve(args.run, items, args.clients, args.threads)
    ok = served["failures"] == 0 and served["stored"] == args.limit and served["pending"] == 0
    result = {"run": str(args.run), "photos": args.limit, "clients": args.clients, "threads": args.threads,
              "cpus": os.cpu_count(), "single_process_photos_per_second": round(single, 1), **served,
              "every_photo_stored_once": ok}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"| {args.clients} clients, {args.limit} photos | served {served['photos_per_second']} photos/s "
          f"(p50 {served['p50_ms']} ms, p99 {served['p99_ms']} ms, mean batch {served['mean_batch']}) | "
          f"single process {single:.1f} photos/s | accepted {served['accepted']}, referred {served['referred']}, "
          f"failures {served['failures']}, stored once each: {ok} |")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
