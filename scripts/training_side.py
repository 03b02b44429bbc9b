"""Write the training side of a format-1 folder's usual split as a format-1 folder of its own.

    python scripts/training_side.py ../shared/data/svhn-sample/train data/sample-train1800 \
        --val-out data/sample-val200

`transcribe transfer --train FOLDER` trains on every photo of FOLDER; to measure a transfer
reader on the validation photos (`--split val`: 10% held out with seed 0, dataset.load_splits)
without it having seen them, it is trained on this folder instead, and evaluated on the
--val-out folder (`--split data/sample-val200`: the run's own `--split val` would be 10% of the
1,800). The photos are symbolic links to the originals; digitStruct.mat holds their records only.
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
    p.add_argument("--val-out", type=Path, default=None, help="folder to write the validation side to")
    p.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    p.add_argument("--split-seed", type=int, default=DataConfig.seed, help="seed of the train/validation split")
    args = p.parse_args()
    cfg = DataConfig(train=(str(args.folder),), val_fraction=args.val_fraction, seed=args.split_seed)
    train, val = dataset.load_splits(cfg, progress=False)
    every = svhn.read_split(args.folder).records
    for side, out in ((train, args.out), (val, args.val_out)):
        if out is None:
            continue
        keep = {str(f) for f in side.files}
        records = [r for r in every if r.file in keep]
        out.mkdir(parents=True, exist_ok=True)
        for r in records:
            link = out / r.file
            if not link.exists():
                os.symlink((args.folder / r.file).resolve(), link)
        svhn.write_digitstruct(out / "digitStruct.mat", records)
        print(f"{out}: {len(records)} {'training' if side is train else 'validation'} photos of {args.folder} "
              f"(10% held out with seed {args.split_seed}: {len(val.files)} photos)")


if __name__ == "__main__":
    main()
