"""One fold of the transfer recipe with other training settings, on the cached features of
`make train-sample` (same views): a quick look before a full cross-validation.

    python scripts/transfer_probe.py --train ../shared/data/svhn-sample/train '{"lr": 1e-3, "head_lr": 3e-3}'
"""

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from transcribe import metrics, transfer
from transcribe import recognizer as rec
from transcribe.config import TransferConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", help="JSON of TransferConfig fields that change training only")
    parser.add_argument("--train", required=True, help="format-1 folder of labelled photos")
    parser.add_argument("--fold", type=int, default=0, help="which of the 5 folds is held out (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.overrides)
    # the views of `make train-sample`, cut where the overrides cut the backbone
    base = TransferConfig(views=4, epochs=8, tune_stages=overrides.get("tune_stages", TransferConfig.tune_stages))
    cfg = dataclasses.replace(base, **overrides)
    photos, _ = transfer.load_photos(args.train)
    model = transfer.use_head(rec.LineRecognizer(cfg.recognizer, base.tune_stages), cfg)
    evals, augmented, _ = transfer.views_and_features(model, photos, base, args.threads)
    held = transfer.folds_of(len(photos), 5, base.seed)[args.fold]
    start = time.time()
    amp = transfer.training_precision(model, augmented[0], photos, cfg)
    transfer.fine_tune(model, augmented, photos, sorted(set(range(len(photos))) - set(held)), cfg, amp=amp)
    rows = transfer.read(model, evals, photos, held, cfg.beam)
    ok = metrics.correctness(rows)
    best = metrics.best_at_target(np.array([r["confidence"] for r in rows]), ok)["coverage"]
    print(f"{args.overrides}: fold {args.fold} sequence accuracy {ok.mean():.2%}, best coverage {best:.2%}, "
          f"split-half coverage {transfer.split_half_scores(rows, base.seed + args.fold)['coverage']:.2%} "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
