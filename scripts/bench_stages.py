"""Training cost of the recognizer's backbone by how many of its last stages train: one AdamW step
(forward, a stand-in loss, backward) of the trained stages alone on their cached input, batch 32 of
48 x 320 crops, float32 and bf16 autocast, on this machine. What `--tune-stages` costs per view.

    python scripts/bench_stages.py --threads 2
"""

import argparse
import time

import torch

from transcribe import recognizer as rec


def views_per_second(module: torch.nn.Module, x: torch.Tensor, amp: bool, calls: int = 3) -> float:
    opt = torch.optim.AdamW(module.parameters(), 1e-4)
    best = float("inf")
    for i in range(calls + 1):  # the first call warms oneDNN's kernels up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = module(x)
        y.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            best = min(best, time.perf_counter() - start)
    return x.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per step (default: 32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch_size, 3, rec.HEIGHT, rec.MIN_WIDTH)
    print("| stages trained | trained weights | float32 views/s | bf16 views/s |")
    print("| ---: | ---: | ---: | ---: |")
    for stages in (1, 2, 3):
        model = rec.LineRecognizer(tune_stages=stages).train()
        with torch.no_grad():
            feats = model.stem(x)
        weights = sum(p.numel() for p in model.tail.parameters())
        print(f"| {stages} | {weights:,} | {views_per_second(model.tail, feats, False):.1f} | "
              f"{views_per_second(model.tail, feats, True):.1f} |", flush=True)
    whole = rec.LineRecognizer().train().stem   # every stage: the whole backbone from the crop
    weights = sum(p.numel() for p in whole.parameters())
    print(f"| all (from the crop) | {weights:,} | {views_per_second(whole, x, False):.1f} | "
          f"{views_per_second(whole, x, True):.1f} |")


if __name__ == "__main__":
    main()
