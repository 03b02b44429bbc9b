"""Which candidate boxes, and which rule for choosing among them: measured once, compared offline.

    python scripts/whole_rules.py --run runs/sample-transfer --side train --limit 200 \
        --out runs/whole-rules/transfer-train200.json

Reads --limit photos of the run's split (--side train: the first N of the training side, where rules
are chosen; val: the validation photos the README reports) with the run's reader at every box of a
superset of candidates: localize.candidates on the detector's boxes at DET_MIN_SIDE (the default
set, "det"), the same on the detector's boxes at --second-side ("det2"), and the true box itself.
Every reading is kept in --out (rerunning with the same --out only re-scores), and each subset of
candidates x choice rule is scored: share of photos whose chosen box has IoU >= 0.5 with the true
number box, sequence accuracy, coverage at 98% (threshold chosen on the same photos), and the
crops read per photo (the cost). The true box's own reading gives the with-box figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

RULES = ("surest", "tightest", "mean")


def _box_of(cands, results, k_best, rule):
    """The box reported for the transcription of candidate k_best, under a rule:
    surest: that candidate; tightest: the smallest candidate reading the same text with at least
    half its probability; mean: the probability-weighted mean of the candidates reading that text."""
    text = results[k_best]["pred"]
    same = [k for k, r in enumerate(results) if r["pred"] == text]
    if rule == "surest":
        return cands[k_best]
    if rule == "tightest":
        near = [k for k in same if results[k]["confidence"] >= results[k_best]["confidence"] - math.log(2)]
        return min((cands[k] for k in near), key=lambda b: b[2] * b[3])
    w = np.array([math.exp(results[k]["confidence"]) for k in same])
    b = np.array([cands[k] for k in same], dtype=float)
    return tuple(float(v) for v in (w[:, None] * b).sum(0) / w.sum())


def measure(args) -> dict:
    import torch

    from transcribe import crops, localize, whole
    torch.set_num_threads(args.threads)
    reader = whole.run_reader(args.run)
    cache, _ = whole._split("val", reader.data_cfg)
    if args.side == "train":
        from transcribe import dataset
        cache = dataset.load_splits(reader.data_cfg, progress=False)[0]
    det = localize.Detector(threads=args.threads)
    det2 = localize.Detector(min_side=args.second_side, threads=args.threads)
    photos, t0 = [], time.time()
    for i in range(min(args.limit, len(cache))):
        image = localize.load_photo(cache.path(i))
        truth = crops.widen([float(v) for v in cache.boxes[i]], 1 / reader.data_cfg.widen)
        cands = [(b, "det:" + s) for b, s in localize.candidates(det(image)[0], image.shape[:2], reader.widen)]
        seen = {tuple(round(v, 1) for v in b) for b, _ in cands}
        for b, s in localize.candidates(det2(image)[0], image.shape[:2], reader.widen):
            if s in ("detection", "merge") and tuple(round(v, 1) for v in b) not in seen:
                cands.append((b, "det2:" + s))
        results = reader.read_boxes(image, [b for b, _ in cands] + [truth])
        photos.append({"file": str(cache.files[i]), "truth": cache.text(i), "true_box": list(truth),
                       "cands": [[list(b), s, r["pred"], r["confidence"]] for (b, s), r in zip(cands, results)],
                       "given": [results[-1]["pred"], results[-1]["confidence"]]})
        if (i + 1) % 20 == 0:
            print(f"  {i + 1} photos, {time.time() - t0:.0f} s", file=sys.stderr)
    return {"run": str(args.run), "side": args.side, "second_side": args.second_side, "photos": photos,
            "seconds": time.time() - t0, "load_average": os.getloadavg()[0]}


def _single(results: list[dict]) -> int:
    """The alternative to localize.choose: the single most probable crop that reads a number."""
    says = [k for k, r in enumerate(results) if r["pred"] not in ("", ">5")] or list(range(len(results)))
    return max(says, key=lambda k: results[k]["confidence"])


def score(data: dict, subset, rule: str, text_rule: str = "sum") -> dict:
    from transcribe import localize, metrics
    rows, hits, reach, n_read = [], [], [], []
    for p in data["photos"]:
        cands = [c for c in p["cands"] if subset(c[1])]
        results = [{"pred": c[2], "confidence": c[3]} for c in cands]
        k = localize.choose(results) if text_rule == "sum" else _single(results)
        box = _box_of([tuple(c[0]) for c in cands], results, k, rule)
        hits.append(localize.iou(box, p["true_box"]) >= 0.5)
        reach.append(max(localize.iou(c[0], p["true_box"]) for c in cands) >= 0.5)
        n_read.append(len(cands))
        rows.append({"truth": p["truth"], "pred": results[k]["pred"], "confidence": results[k]["confidence"]})
    rep = metrics.report(rows)
    return {"iou_0.5": float(np.mean(hits)), "reachable": float(np.mean(reach)), "accuracy": rep["sequence_accuracy"],
            "coverage": rep["best_at_target"]["coverage"], "crops": float(np.mean(n_read))}


SUBSETS = {
    "det (default)": lambda s: s.startswith("det:"),
    "det without prior": lambda s: s.startswith("det:") and s != "det:prior",
    "det without photo": lambda s: s.startswith("det:") and s != "det:photo",
    "det + det2": lambda s: True,
    "det2 + photo + prior": lambda s: s.startswith("det2:") or s in ("det:photo", "det:prior"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--side", choices=("train", "val"), default="train")
    p.add_argument("--limit", type=int, default=200, help="photos of the side to read (the first N)")
    p.add_argument("--second-side", type=int, default=160, help="the second detector input's shorter side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="readings JSON (reused when present)")
    args = p.parse_args()
    if args.out.is_file():
        data = json.loads(args.out.read_text())
    else:
        from transcribe.runs import save_json
        data = measure(args)
        save_json(data, args.out)
    from transcribe import metrics
    given = metrics.report([{"truth": p["truth"], "pred": p["given"][0], "confidence": p["given"][1]} for p in data["photos"]])
    print(f"{args.run} on {len(data['photos'])} {data['side']} photos ({data['seconds']:.0f} s to read, load "
          f"{data['load_average']:.1f}); boxes given: accuracy {100 * given['sequence_accuracy']:.2f}%, "
          f"coverage at 98% {100 * given['best_at_target']['coverage']:.2f}%")
    print("| candidates | box rule | IoU >= 0.5 | some candidate | accuracy | coverage at 98% | crops/photo |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, subset in SUBSETS.items():
        for rule in RULES:
            s = score(data, subset, rule)
            print(f"| {name} | {rule} | {100 * s['iou_0.5']:.1f}% | {100 * s['reachable']:.1f}% | "
                  f"{100 * s['accuracy']:.1f}% | {100 * s['coverage']:.1f}% | {s['crops']:.1f} |")
    for name, subset in SUBSETS.items():  # the transcription of the single surest crop, not the summed one
        s = score(data, subset, "surest", "single")
        print(f"| {name} | single most probable crop | {100 * s['iou_0.5']:.1f}% | {100 * s['reachable']:.1f}% | "
              f"{100 * s['accuracy']:.1f}% | {100 * s['coverage']:.1f}% | {s['crops']:.1f} |")


if __name__ == "__main__":
    main()
