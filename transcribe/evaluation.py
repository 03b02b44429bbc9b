"""Evaluation: run a model over a split, write its predictions once, then score and look at them.

    transcribe evaluate RUN --split val|test|train|PATH

Inference (`predict_images`, `predict_rows`) is kept apart from scoring (metrics.py) and
looking (report.py): `transcribe evaluate` writes RUN/eval/<split>/predictions.jsonl
(predictions.py) and every metric, curve and gallery is a pure function of that file
(airbench's infer()/evaluate() split), so a report can be redrawn without the model.
The refusal threshold is chosen on validation only and saved in the run folder (runs.py).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from transcribe import card, dataset, metrics, predictions, report, sequence
from transcribe.config import INPUT_SIZE, TARGET
from transcribe.predictions import round_probs, write_predictions
from transcribe.progress import bar as progress_bar
from transcribe.runs import THRESHOLD_FILE, atomic_write, load_run, read_threshold, save_json, write_threshold
from transcribe.svhn import DataError

# ---------------------------------------------------------------- inference

EVAL_BATCH = 256      # photos per forward pass (memory only: results do not depend on it)


def predict_images(model, images, crop: int = INPUT_SIZE, batch_size: int = EVAL_BATCH, top_k: int = 0) -> list[dict]:
    """Decode (N, S, S, 3) uint8 crops: one dict per image with pred, confidences and probabilities
    (and, with top_k, "alternatives": the top_k most probable [text, log P(S|X)], sequence.top_k).

    The centre crop and mean subtraction are dataset.prepare_batch's (train=False), exactly what
    validation during training sees. The decoding is sequence.decode for the model's head.
    """
    head = model.cfg.head
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = dataset.prepare_batch(images[start:start + batch_size], crop=crop, train=False).to(device)
                length_logits, digit_logits = model(x)            # (B, 7), (B, 5, C)
                d = sequence.decode(length_logits, digit_logits, head=head)
                texts = d.texts()
                logp, adhoc = d.logp.cpu().tolist(), d.adhoc_logp.cpu().tolist()
                length_probs, digit_probs = d.length_probs.cpu().tolist(), d.digit_probs.cpu().tolist()
                for j, text in enumerate(texts):
                    out.append({"pred": text, "confidence": logp[j], "adhoc_confidence": adhoc[j],
                                "length_probs": round_probs(length_probs[j]), "digit_probs": round_probs(digit_probs[j])})
                if top_k:
                    for row, alts in zip(out[-len(texts):], sequence.top_k(length_logits, digit_logits, top_k, head)):
                        row["alternatives"] = [[t, lp] for t, lp in alts]
    finally:
        model.train(was_training)
    return out


def predict_rows(model, cache, indices: Sequence[int] | None = None, batch_size: int = EVAL_BATCH,
                 crop: int = INPUT_SIZE, progress: bool = False) -> list[dict]:
    """The predictions.jsonl rows (docs/architecture.md) for the photos of a dataset.Cache.
    progress: a bar on a terminal, plain lines in a log (progress.bar), counting photos."""
    indices = np.arange(len(cache)) if indices is None else np.asarray(indices, dtype=np.int64)
    rows = []
    bar = progress_bar(total=len(indices), desc="predicting", unit="img", disable=not progress)
    for start in range(0, len(indices), batch_size):
        part = indices[start:start + batch_size]
        decoded = predict_images(model, cache.images[part], crop=crop, batch_size=batch_size)
        for i, d in zip(part.tolist(), decoded):
            rows.append({"image": os.path.abspath(cache.path(i)), "file": str(cache.files[i]),
                         "truth": cache.text(i), **d,
                         "box": [round(float(v), 2) for v in cache.boxes[i]]})
        bar.update(len(part))
    bar.close()
    return rows


# ---------------------------------------------------------------- evaluating a run

def _split_name(split: str) -> str:
    """Folder name under RUN/eval for a split: val, test, or a cleaned-up name of the path."""
    if split in SPLITS:
        return split
    p = Path(split)
    name = p.stem if p.suffix == ".h5" else p.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"


SPLITS = ("train", "val", "test")  # the words --split knows; anything else is a path


def split_cache(split: str, data_cfg):
    """The dataset.Cache to evaluate: the run's own training or validation part of its training
    folders (the same seeded split training made), its sibling test folder, or PATH.

    `train` is the photos the run trained on and nothing else: a gallery of training mistakes
    (book sec. 11.5) must not mix in the validation photos carved out of the same folders.
    Every cache is built with the run's crop parameters (widen, size), as in training.
    """
    if split in ("train", "val"):
        return dataset.load_splits(data_cfg)[0 if split == "train" else 1]
    if split == "test":
        first = Path(data_cfg.train[0])
        if first.suffix == ".h5":
            raise FileNotFoundError(f"--split test: the run trained on the cache {first}, which has no sibling "
                                    f"'test' folder; give the test folder or cache as --split PATH")
        folder = first.parent / "test"
        if not folder.is_dir():
            raise FileNotFoundError(f"--split test: {folder} (the sibling of the training folder {first}) "
                                    f"does not exist; give the test data as --split PATH")
        return dataset.evaluation_cache(folder, data_cfg)
    return dataset.evaluation_cache(split, data_cfg)


def _threshold_matches(saved: dict | None, ckpt: dict, checkpoint: str, target: float) -> bool:
    return (saved is not None and saved.get("checkpoint") == checkpoint and saved.get("step") == ckpt.get("step")
            and abs(float(saved.get("target", -1)) - target) < 1e-12)


def evaluate(run: str | Path, split: str = "val", target: float = TARGET, checkpoint: str = "best",
             gallery_n: int = 50, say=print, device: str = "cpu") -> dict[str, Any]:
    """Predict a split, score it, write RUN/eval/<name>/{predictions.jsonl, report.json, report.md,
    plots, gallery.html, mistakes.png}; returns {"report", "out", "gallery", "threshold"}.

    The refusal threshold is chosen on validation only (evaluating val writes RUN/threshold.json);
    any other split gets that threshold unchanged, and the best threshold for the split itself is
    reported separately (an oracle number, never the headline).
    """
    run = Path(run)
    model, ckpt, data_cfg = load_run(run, checkpoint, device=device)
    saved = read_threshold(run)
    if split != "val" and not _threshold_matches(saved, ckpt, checkpoint, target):
        say(f"no validation threshold for ckpt-{checkpoint}.pt (step {ckpt.get('step')}) at target "
            f"{100 * target:g}% in {run / THRESHOLD_FILE}: evaluating the validation split first")
        evaluate(run, "val", target, checkpoint, gallery_n, say, device)
        saved = read_threshold(run)
    name = _split_name(split) + ("" if checkpoint == "best" else f"-{checkpoint}")
    out = run / "eval" / name
    if split == "val":  # split_cache("val") is load_splits' second half; the first is counted for the card
        train_cache, cache = dataset.load_splits(data_cfg)
        data_facts = card.data_facts(train_cache, cache)
        del train_cache
    else:
        cache, data_facts = split_cache(split, data_cfg), None
    started = time.perf_counter()
    rows = predict_rows(model, cache, crop=data_cfg.crop, progress=True)
    seconds = time.perf_counter() - started
    write_predictions(rows, out / predictions.FILE_NAME)
    # images/s of inference from the cached crops (cropping happened once, when the cache was built)
    save_json({"system": f"transcribe {run.name}", "images_per_second": round(len(rows) / seconds, 2),
               "speed_measured": f"model inference on cached 64x64 crops, batch {EVAL_BATCH}, "
                                 f"{torch.get_num_threads()} threads",
               "checkpoint": str(run / f"ckpt-{checkpoint}.pt"), "step": ckpt.get("step"),
               **({"data": data_facts} if data_facts else {})}, out / "meta.json")
    if split == "val":
        rep = metrics.report(rows, target=target)
        th = rep["threshold"]
        write_threshold(run, {"threshold": th["value"], "target": target, "checkpoint": checkpoint, "step": ckpt.get("step"),
                   "chosen_on": "val", "photos": rep["n_scored"], "coverage": th["coverage"],
                   "accuracy": th["accuracy"],
                   "note": "accept a transcription when log P(S|X) >= threshold; null = no threshold reaches "
                           "the target on validation: refer every photo"})
    else:
        rep = metrics.report(rows, threshold=saved["threshold"], target=target,
                             threshold_source="chosen on validation")
    rep["split"] = split
    rep["checkpoint"] = {"name": checkpoint, "step": ckpt.get("step")}
    title = f"{run.name}: {name}"
    gallery = write_report(rows, rep, out, title, gallery_n, target)
    report.write_pr_curve(rows, out / "tb", tag=f"accept/{name}", step=int(ckpt.get("step") or 0))
    model_card = card.write_card(run, sum(p.numel() for p in model.parameters()))
    say(headline(rep, name))
    say(f"report: {out / 'report.md'}")
    say(f"gallery: {gallery['gallery']}")
    say(f"model card: {model_card}")
    return {"report": rep, "out": out, "gallery": gallery["gallery"], "threshold": rep["threshold"]["value"]}


def write_report(rows: Sequence[dict], rep: dict[str, Any], out: Path, title: str, gallery_n: int,
                 target: float) -> dict[str, Any]:
    """An evaluation's files beside its predictions: report.json, the plots, the gallery marked with
    the threshold applied, and report.md linking them. -> write_gallery's answer."""
    save_json(rep, out / "report.json")
    plots = report.write_plots(rows, rep, out, title=title)
    th = rep["threshold"]
    gallery = report.write_gallery(rows, out, n=gallery_n, title=f"transcribe {title}", source=str(out),
                                   plots=plots, threshold={"value": th["value"], "target": target,
                                                           "source": th["source"]})
    atomic_write(out / "report.md", metrics.to_markdown(rep, title=title)
                 + report.markdown_links(plots, gallery["gallery"], gallery["contact_sheet"]))
    return gallery


def headline(rep: dict[str, Any], name: str) -> str:
    """One line per headline number (these are what users come for)."""
    pct, num = metrics.pct, metrics.num
    th, best = rep["threshold"], rep["best_at_target"]
    target = pct(rep["target"])
    where = "threshold chosen here" if th["source"] == "chosen on this split" else "validation threshold"
    lines = [f"{name}: {rep['n_scored']} photos",
             f"  sequence accuracy   {pct(rep['sequence_accuracy'])}",
             f"  character accuracy  {pct(rep['character_accuracy'])}",
             f"  coverage at {target} ({where}): {pct(th['coverage'])}, accuracy there {pct(th['accuracy'])}"]
    if th["source"] != "chosen on this split":
        lines.append(f"  best achievable coverage at {target} on this split (oracle, not a result): "
                     f"{pct(best['coverage'])}")
    lines += [f"  AUC (accuracy vs coverage) {num(rep['auc'])}",
              f"  ECE of exp(confidence)     {num(rep['calibration']['ece'])}"]
    return "\n".join(lines)


def run_evaluate(args) -> int:
    if not 0 < args.target <= 1:
        raise SystemExit(f"--target must be in (0, 1], got {args.target}")
    try:
        evaluate(args.run, args.split, args.target, args.checkpoint, args.cards, device=args.device)
    except (FileNotFoundError, ValueError, DataError) as err:
        print(f"transcribe evaluate: {err}", file=sys.stderr)
        return 1
    return 0
