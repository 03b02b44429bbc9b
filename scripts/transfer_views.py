"""How the off-the-shelf recognizer (the digits head at step 0) reads the sample's first photos
with each stretch and padding: how the transfer recipe's crop settings were chosen.

    python scripts/transfer_views.py --train ../shared/data/svhn-sample/train --limit 600
"""

import argparse
import time

import numpy as np
import torch

from transcribe import metrics, transfer
from transcribe import recognizer as rec
from transcribe.config import TransferConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="format-1 folder of labelled photos")
    parser.add_argument("--limit", type=int, default=600, help="the first N photos (default: 600)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos, _ = transfer.load_photos(args.train, args.limit)
    model = rec.LineRecognizer().eval()
    stem = rec.StemSession(model, args.threads)
    print("| stretch | padded to | sequence accuracy | best coverage, log P(S|X) | best coverage, ad hoc |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for stretch, min_width in ((1.0, 320), (1.25, 320), (1.5, 320), (1.75, 320), (2.0, 320), (1.5, 0)):
        cfg = TransferConfig(stretch=stretch, min_width=min_width)
        t = time.time()
        rows = transfer.transcribe_photos(model, cfg, photos, stem)
        ok = metrics.correctness(rows)
        best = [metrics.best_at_target(np.array([r[k] for r in rows]), ok)["coverage"]
                for k in ("confidence", "adhoc_confidence")]
        print(f"| {stretch:g} | {min_width or 'own width'} | {ok.mean():.2%} | {best[0]:.2%} | {best[1]:.2%} |"
              f"  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
