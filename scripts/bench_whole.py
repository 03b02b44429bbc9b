"""Start time and speed of reading whole photos: the torch path against the ONNX runtime.

    python scripts/bench_whole.py --run runs/sample --model runs/sample/export --limit 50

- start: wall time of one `transcribe predict` of one photo in a fresh interpreter (median of
  --repeats), which is what a user waits for; and of `import transcribe.runtime` alone;
- whole photos/s: localize + read the first --limit validation photos, in process, after a warm-up;
- crops/s: the reader alone on the validation crops, batch 256 (torch) and 64 (onnxruntime).
Timings on a shared machine are indicative; the JSON written to --out records the conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wall(cmd: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder (with threshold.json)")
    p.add_argument("--model", type=Path, required=True, help="folder written by `transcribe export`")
    p.add_argument("--limit", type=int, default=50, help="the first N validation photos, read whole (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="fresh-interpreter starts per figure (median)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/whole.json"), help="JSON written here")
    args = p.parse_args()

    import torch

    from transcribe import dataset, localize, runtime, whole
    from transcribe.evaluation import load_run, read_threshold
    torch.set_num_threads(args.threads)
    model, ckpt, data_cfg = load_run(args.run, read_threshold(args.run).get("checkpoint", "best"))
    val = dataset.load_splits(data_cfg, progress=False)[1]
    photos = [val.path(i) for i in range(min(args.limit, len(val)))]
    py = sys.executable
    result = {"photos": len(photos), "threads": args.threads, "cpu": os.cpu_count(),
              "load_average_at_start": os.getloadavg()[0]}
    result["start_s"] = {
        "runtime: import transcribe.runtime": _wall([py, "-c", "import transcribe.runtime"], args.repeats),
        "runtime: transcribe predict --model (1 photo)": _wall(
            [py, "-m", "transcribe.cli", "predict", "--model", str(args.model), photos[0]], args.repeats),
        "torch: transcribe predict --run (1 photo)": _wall(
            [py, "-m", "transcribe.cli", "predict", "--run", str(args.run), photos[0]], args.repeats),
    }
    readers = {"torch": whole._torch_reader(model, data_cfg), "onnxruntime": runtime.Reader(args.model, args.threads)}
    detector = localize.Detector(args.model / "detector.onnx", threads=args.threads)
    result["whole_photos_per_s"], result["crops_per_s"] = {}, {}
    for name, read in readers.items():
        runtime.read_photos(photos[:3], read, detector, None, data_cfg.widen, data_cfg.size)  # warm-up
        t = time.perf_counter()
        runtime.read_photos(photos, read, detector, None, data_cfg.widen, data_cfg.size)
        result["whole_photos_per_s"][name] = round(len(photos) / (time.perf_counter() - t), 2)
        read(val.images[:64])
        t = time.perf_counter()
        read(val.images)
        result["crops_per_s"][name] = round(len(val.images) / (time.perf_counter() - t), 1)
    result["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
