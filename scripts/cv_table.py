"""Systems side by side on the same k folds of the same photos: mean ± standard deviation over
folds of sequence accuracy and of coverage at 98% accuracy, each fold's threshold chosen on one
half of its photos and applied to the other (transfer.split_half_scores); the best achievable
coverage (threshold chosen on the scored photos themselves) beside it.

    python scripts/cv_table.py --folds 5 --split-seed 0 \
        NAME=runs/transfer/eval/cv/predictions.jsonl[:confidence] NAME2=...:adhoc_confidence ...

Every predictions file must hold the same photos (matched by image path); the folds are
transfer.folds_of over the photos in the order of the first file, as `transcribe transfer` makes them.
An optional `--subset FILE` (a predictions file) restricts the table to its photos (e.g. the
200 validation photos of the sample's usual split); the folds are then unchanged, only fewer
photos in each.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from transcribe import metrics, predictions, transfer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="+", help="NAME=PREDICTIONS[:CONFIDENCE_KEY]")
    parser.add_argument("--folds", type=int, default=5, help="folds, as `transcribe transfer --folds` (default: 5)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the fold assignment, as transfer's --train-seed (default: 0)")
    parser.add_argument("--subset", default=None, help="predictions file whose photos alone are scored")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    specs = []
    for item in args.systems:
        name, _, rest = item.partition("=")
        path, _, key = rest.partition(":")
        specs.append((name, Path(path), key or "confidence"))
    first = predictions.read_predictions(specs[0][1])
    order = [str(Path(r["image"]).resolve()) for r in first]
    folds = transfer.folds_of(len(order), args.folds, args.split_seed)
    keep = None
    if args.subset:
        keep = {str(Path(r["image"]).resolve()) for r in predictions.read_predictions(args.subset)}
    table = []
    print("| system | confidence | photos | sequence accuracy | coverage at 98% (out-of-sample thresholds) | best coverage "
          "| all photos pooled: accuracy, best coverage |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, path, key in specs:
        rows = {str(Path(r["image"]).resolve()): r for r in predictions.read_predictions(path)}
        if set(rows) != set(order):
            raise SystemExit(f"{path}: holds other photos than {specs[0][1]}")
        ordered = [rows[i] for i in order]
        f2 = folds
        if keep is not None:
            ordered_keep = [i in keep for i in order]
            index = {}
            sub = []
            for i, r in enumerate(ordered):
                if ordered_keep[i]:
                    index[i] = len(sub)
                    sub.append(r)
            f2 = [[index[i] for i in f if i in index] for f in folds]
            ordered = sub
        s = transfer.fold_summary(ordered, f2, args.split_seed, key)
        correct = metrics.correctness(ordered)
        pooled = {"sequence_accuracy": float(correct.mean()),
                  "best_coverage": metrics.best_at_target(np.array([r[key] for r in ordered], dtype=float), correct)["coverage"]}
        table.append({"system": name, "confidence": key, "photos": len(ordered), "pooled": pooled, **s})
        print(f"| {name} | {key} | {len(ordered)} | {100 * s['sequence_accuracy']['mean']:.2f} ± {100 * s['sequence_accuracy']['std']:.2f}% | "
              f"{100 * s['coverage']['mean']:.2f} ± {100 * s['coverage']['std']:.2f}% | "
              f"{100 * s['best_coverage']['mean']:.2f} ± {100 * s['best_coverage']['std']:.2f}% | "
              f"{100 * pooled['sequence_accuracy']:.2f}%, {100 * pooled['best_coverage']:.2f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
