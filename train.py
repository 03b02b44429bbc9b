"""`python train.py ...` is `transcribe train ...`; `torchrun --nproc_per_node N train.py ...`
trains with N processes (DistributedDataParallel). See transcribe/training.py."""

import sys

from transcribe.training import main

if __name__ == "__main__":
    sys.exit(main())
