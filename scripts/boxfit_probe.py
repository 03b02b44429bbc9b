"""Score the box fitter on photos neither it nor their reader trained on, and choose what to do with
the fitted box: only report it, or read it again.

`transcribe fit-chooser` stored, for 600 training-side photos of the sample, every candidate box read
by the fold model that never saw the photo (RUN/chooser-readings.jsonl). This script trains a fitter
on the sample's photos less those 600 and less the 200 validation photos (`make whole-sample`'s), then,
on the 600: the chooser's box as found and fitted (IoU >= 0.5), and sequence accuracy and coverage at
98% accuracy (threshold chosen on these photos) of three transcriptions: the chosen candidate's (what evaluate --no-boxes reports), the fitted box read again by
the same fold model, and the more probable of the two.

    python scripts/boxfit_probe.py --run runs/sample-transfer --out runs/boxfit-probe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from transcribe import boxfit, chooser, localize, metrics, train_boxfit, whole
    from transcribe.runs import save_json
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/sample-transfer", help="transfer run with folds/ and chooser-readings.jsonl")
    p.add_argument("--out", default="runs/boxfit-probe", help="where the probe's fitter and results go")
    p.add_argument("--seconds", type=float, default=300, help="the fitter's training budget (default 300, as fit-box)")
    args = p.parse_args()
    run, out = Path(args.run), Path(args.out)
    rows = [json.loads(line) for line in (run / "chooser-readings.jsonl").read_text().splitlines() if line.strip()]
    folder = Path(json.loads((run / "config.json").read_text())["train"])
    if not (out / boxfit.BOXFIT_FILE).is_file():
        train_boxfit.fit_box(folder, out, val_fraction=0.1, split_seed=0, seconds=args.seconds,
                             exclude={r["file"] for r in rows})
    fitter = boxfit.BoxFitter.beside(out)
    choose = chooser.Chooser.load(run / chooser.CHOOSER_FILE) if (run / chooser.CHOOSER_FILE).is_file() else None
    readers = {}
    found_hit, fitted_hit = [], []
    policies = {"chosen_candidate": [], "fitted_box_read_again": [], "the_more_probable_of_the_two": []}
    for r in rows:
        c = r["candidates"]
        boxes, sources = [x["box"] for x in c], [x["source"] for x in c]
        k = choose.choose(c, boxes, sources, tuple(r["shape"])) if choose else localize.choose(c)
        image = localize.load_photo(folder / r["file"])
        fitted = fitter.fit(image, [boxes[k]])[0]
        if r["fold"] not in readers:
            readers[r["fold"]] = whole.run_reader(run / "folds" / r["fold"]).read_boxes
        reread = readers[r["fold"]](image, [fitted])[0]
        found_hit.append(localize.iou(boxes[k], r["true_box"]) >= 0.5)
        fitted_hit.append(localize.iou(fitted, r["true_box"]) >= 0.5)
        for name, reading in zip(policies, (c[k], reread, reread if reread["confidence"] > c[k]["confidence"] else c[k])):
            policies[name].append({"truth": r["truth"], "pred": reading["pred"], "confidence": reading["confidence"]})
    result = {"photos": len(rows), "fitter": json.loads((out / boxfit.SPEC_FILE).read_text()),
              "iou_at_least_0.5": {"as_found": float(np.mean(found_hit)), "fitted": float(np.mean(fitted_hit))},
              "sequence_accuracy": {}, "coverage_at_98": {}}
    for name, got in policies.items():
        rep = metrics.report(got, target=0.98)
        result["sequence_accuracy"][name] = rep["sequence_accuracy"]
        result["coverage_at_98"][name] = rep["best_at_target"]["coverage"]
    save_json(result, out / "probe.json")
    print(json.dumps({k: v for k, v in result.items() if k != "fitter"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
