"""Write the training side of a format-1 folder's usual split as a format-1 folder of its own.

    python scripts/training_side.py ../shared/data/svhn-sample/train data/sample-train1800

`transcribe transfer --train FOLDER` trains on every photo of FOLDER; to measure a transfer
reader on the validation photos (`--split val`: 10% held out with seed 0, dataset.load_splits)
without it having seen them, it is trained on this folder instead. The photos are symbolic
links to the originals; digitStruct.mat holds their records only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from transcribe import dataset, svhn
from transcribe.config import DataConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="format-1 folder (photos + digitStruct.mat)")
    p.add_argument("out", type=Path, help="folder to write (the training side only)")
    p.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    p.add_argument("--seed", type=int, default=DataConfig.seed)
    args = p.parse_args()
    cfg = DataConfig(train=(str(args.folder),), val_fraction=args.val_fraction, seed=args.seed)
    train, val = dataset.load_splits(cfg, progress=False)
    keep = {str(f) for f in train.files}
    records = [r for r in svhn.read_split(args.folder).records if r.file in keep]
    args.out.mkdir(parents=True, exist_ok=True)
    for r in records:
        link = args.out / r.file
        if not link.exists():
            os.symlink((args.folder / r.file).resolve(), link)
    svhn.write_digitstruct(args.out / "digitStruct.mat", records)
    print(f"{args.out}: {len(records)} training photos of {args.folder} "
          f"({len(val.files)} held out for validation, seed {args.seed})")


if __name__ == "__main__":
    main()
