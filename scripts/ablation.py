"""Crop-widening ablation (Deep Learning book sec. 11.6; Goodfellow et al. 2014 sec. 5.1).

The Street View team found, by looking at the most confident training mistakes, that crops
were too tight; making them systematically wider "added ten percentage points" of coverage.
This trains the same preset on the same photos with the same budget and seed, once per
widening factor, and compares accuracy and coverage at the target accuracy:

    python scripts/ablation.py --train data/svhn/train --preset cpu --steps 3000 --out runs/ablation

Each run's threshold is chosen on its own validation split (the same photos for every factor:
the split depends only on the photo pool, val size and seed) and applied unchanged to the test
split. Writes OUT/widen-<f>/ (ordinary run folders, evaluated) and OUT/ablation.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from transcribe import metrics
from transcribe.runs import atomic_write

WIDTHS = (1.0, 1.3)  # the tight union of the digit boxes vs the paper's 30% wider box


def ablation(train: tuple[str, ...], out: str | Path, widths=WIDTHS, preset: str = "cpu", steps: int = 3000,
             split: str = "test", target: float = metrics.TARGET, gallery_n: int = 50, say=print,
             **train_overrides) -> str:
    """Train and evaluate one run per widening factor; returns (and writes) the Markdown table."""
    from transcribe import dataset, model, training
    from transcribe.evaluation import evaluate
    out = Path(out)
    data_base = dataset.DataConfig(train=tuple(train), **{k: train_overrides.pop(k) for k in
                                                         ("val_size", "val_fraction", "cache_dir")
                                                         if k in train_overrides})
    results = []
    for w in widths:
        run = out / f"widen-{w:g}"
        data_cfg = replace(data_base, widen=float(w))
        train_cfg = training.TrainConfig(out=str(run), preset=preset, steps=steps, **train_overrides)
        say(f"== widen {w:g}: training {run}")
        training.train(model.PRESETS[preset], data_cfg, train_cfg)
        val = evaluate(run, "val", target=target, gallery_n=gallery_n, say=say)["report"]
        held = evaluate(run, split, target=target, gallery_n=gallery_n, say=say)["report"] if split != "val" else val
        results.append((w, val, held))
    pct = metrics.pct
    name = "val" if split == "val" else Path(split).name
    lines = [f"# Crop widening: {preset} preset, {steps} steps, target {pct(target)}", "",
             f"Training data: {', '.join(train)}. Same photos, budget and seed for every row; the threshold "
             f"is chosen on validation and applied unchanged to {name}.", ""]
    if split == "val":  # one set of columns: the threshold is chosen and measured on the same photos
        lines += [f"| widen | val seq. acc. | val char. acc. | val coverage at {pct(target)} (best achievable) "
                  "| accuracy there | val AUC |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {w:g} | {pct(val['sequence_accuracy'])} | {pct(val['character_accuracy'])} | "
                  f"{pct(val['threshold']['coverage'])} | {pct(val['threshold']['accuracy'])} | "
                  f"{metrics.num(val['auc'])} |" for w, val, _ in results]
    else:
        lines += [f"| widen | val seq. acc. | val coverage at {pct(target)} | {name} seq. acc. | "
                  f"{name} coverage at {pct(target)} (val threshold) | accuracy there | {name} AUC |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {w:g} | {pct(val['sequence_accuracy'])} | {pct(val['threshold']['coverage'])} | "
                  f"{pct(held['sequence_accuracy'])} | {pct(held['threshold']['coverage'])} | "
                  f"{pct(held['threshold']['accuracy'])} | {metrics.num(held['auc'])} |" for w, val, held in results]
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.md", table)
    say(table)
    say(f"wrote {out / 'ablation.md'}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="crop-widening ablation: the same training with several widening factors")
    parser.add_argument("--train", nargs="+", required=True, help="format-1 folders or .h5 caches to train on")
    parser.add_argument("--out", default="runs/ablation", help="parent folder of the runs (default: %(default)s)")
    parser.add_argument("--crop-widens", nargs="+", type=float, default=list(WIDTHS),
                        help="crop widening factors, one run each (default: 1.0 1.3)")
    parser.add_argument("--preset", default="cpu", help="model preset (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per run (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="wall-clock budget per run, 0 = none")
    parser.add_argument("--train-seed", type=int, default=0,
                        help="seed of the weights and batches (the validation split keeps seed 0)")
    parser.add_argument("--split", default="test", help="held-out split to report: test, val or PATH (default: test)")
    parser.add_argument("--target", type=float, default=metrics.TARGET, help="accuracy target (default: 0.98)")
    args = parser.parse_args(argv)
    ablation(tuple(args.train), args.out, tuple(args.crop_widens), args.preset, args.steps, args.split, args.target,
             max_seconds=args.max_seconds, seed=args.train_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
