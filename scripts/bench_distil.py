"""Photos per second of a ConvNet run (the distilled student) and a transfer run (its teacher), side
by side in one process: the same photos, batches of 32, the same threads, alternated over several
rounds (the median is reported, so a burst of load from other jobs hits both alike).

    student: photo -> number box widened (1.3) -> 64x64 crop -> centre 54x54 -> ConvNet -> exact
             decoding and log P(S|X) (sequence.decode)
    teacher: photo -> tight box, height 48, stretch 1.5, padded to 320 px -> stem (onnxruntime) ->
             neck and head (torch) -> prefix beam search, exact log P(S|X) (transfer.transcribe_photos)

Both start from photos already decoded in memory (PNG decoding, the same for both, is left out).

    python scripts/bench_distil.py runs/sample-distil runs/sample-teacher --train ../shared/data/svhn-sample/train
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from transcribe import crops, dataset, sequence, transfer
from transcribe import recognizer as rec
from transcribe.runs import load_run

BATCH = 32


def read_student(model, data_cfg, photos) -> list[tuple[str, float]]:
    out = []
    with torch.no_grad():
        for s in range(0, len(photos), BATCH):
            chunk = photos[s:s + BATCH]
            images = np.stack([crops.crop(p.region, crops.widen(p.box, data_cfg.widen), data_cfg.size) for p in chunk])
            x = dataset.prepare_batch(images, data_cfg.crop, train=False)       # (B, 3, 54, 54)
            d = sequence.decode(*model(x), head=model.cfg.head)
            out += list(zip(d.texts(), d.logp.tolist()))
    return out


def read_teacher(model, cfg, stem, photos) -> list[tuple[str, float]]:
    out = []
    for s in range(0, len(photos), BATCH):
        out += [(r["pred"], r["confidence"]) for r in transfer.transcribe_photos(model, cfg, photos[s:s + BATCH], stem)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", help="ConvNet run folder (ckpt-best.pt)")
    parser.add_argument("teacher", help="transfer run folder (model.pt)")
    parser.add_argument("--train", required=True, help="format-1 folder to read photos from")
    parser.add_argument("--limit", type=int, default=256, help="photos per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    student, _, data_cfg = load_run(args.student)
    student.eval()
    teacher, cfg, _ = transfer.load(args.teacher)
    stem = rec.StemSession(teacher, args.threads)
    photos, _ = transfer.load_photos(args.train, args.limit)
    read_student(student, data_cfg, photos[:BATCH])        # warm-up
    read_teacher(teacher, cfg, stem, photos[:BATCH])
    rates: dict[str, list[float]] = {"student": [], "teacher": []}
    for _ in range(args.rounds):
        for name, read in (("student", lambda: read_student(student, data_cfg, photos)),
                           ("teacher", lambda: read_teacher(teacher, cfg, stem, photos))):
            start = time.perf_counter()
            read()
            rates[name].append(len(photos) / (time.perf_counter() - start))
    result = {name: {"photos_per_second": round(statistics.median(r), 1), "rounds": [round(v, 1) for v in r]}
              for name, r in rates.items()}
    result.update(ratio=round(result["student"]["photos_per_second"] / result["teacher"]["photos_per_second"], 1),
                  photos=len(photos), batch=BATCH, threads=args.threads, cpu=transfer._cpu_name())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
