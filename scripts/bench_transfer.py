"""Photos per second of a transfer run (`transcribe transfer`): crop -> view -> stem (onnxruntime)
-> neck and head (torch) -> beam decoding with the exact log P(S|X); batches of 32.

    python scripts/bench_transfer.py RUN --train ../shared/data/svhn-sample/train --limit 256 --threads 2
"""

import argparse
import json
import sys

import torch

from transcribe import transfer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a `transcribe transfer` run folder")
    parser.add_argument("--train", required=True, help="format-1 folder to read photos from")
    parser.add_argument("--limit", type=int, default=256, help="the first N photos (default: 256)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg, _ = transfer.load(args.run)
    photos, _ = transfer.load_photos(args.train, args.limit)
    transfer.inference_rate(model, photos[:32], cfg, args.threads)  # warm-up
    result = transfer.inference_rate(model, photos, cfg, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
