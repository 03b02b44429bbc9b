"""Whole photos with a run's torch model: `transcribe predict` without --box, and
`transcribe evaluate RUN --no-boxes` (localize, read, score as usual).

Every use of the existing run and evaluation code goes through the small adapter at the top
(`_load_run`, `_split`, `_torch_reader`, `_finish_report`), so moving those functions to other
modules changes only these lines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from transcribe import crops, localize, runtime

# ---------------------------------------------------------------- adapter to the run code


def _load_run(run: Path, checkpoint: str, device: str = "cpu"):
    from transcribe import runs
    return runs.load_run(run, checkpoint, device=device)                     # (model, ckpt, data_cfg)


def _split(split: str, data_cfg):
    from transcribe import evaluation
    return evaluation.split_cache(split, data_cfg), evaluation._split_name(split)


def _torch_reader(model, data_cfg, top_k: int = 0, batch_size: int | None = None):
    """localize.Reader from a torch model: crops -> evaluation.predict_images rows."""
    from transcribe import evaluation
    batch = batch_size or evaluation.EVAL_BATCH
    return lambda images: evaluation.predict_images(model, images, crop=data_cfg.crop, batch_size=batch, top_k=top_k)


def _write_rows(rows, path):
    from transcribe import predictions
    return predictions.write_predictions(rows, path)


def _write_card(run: Path, model) -> Path:
    from transcribe import card
    return card.write_card(run, sum(p.numel() for p in model.parameters()))


def _threshold(run: Path) -> dict | None:
    from transcribe import runs
    return runs.read_threshold(run)


# ---------------------------------------------------------------- predict


def read_whole(paths, model, data_cfg, threshold: float | None, box=None, boxes=None, top_k: int = 0,
               batch_size: int = runtime.READ_BATCH) -> tuple[list[dict], list[str]]:
    """predict.predict with the torch model: a photo without a box is searched for its number
    (localize.py), a photo with one (`box`, or its entry in `boxes`) is cropped around it; then read."""
    needs_search = any(b is None for b in boxes) if boxes is not None else box is None
    detector = localize.Detector() if needs_search else None
    return runtime.read_photos(paths, _torch_reader(model, data_cfg, top_k, batch_size), detector, threshold,
                               data_cfg.widen, data_cfg.size, box, boxes, batch_size)


# ---------------------------------------------------------------- evaluate --no-boxes

def _number_box(crop_box, widen: float):
    """The number's box from the cache's widened crop box (crops.widen inverted)."""
    return crops.widen(crop_box, 1.0 / widen)


def run_evaluate_without_boxes(args) -> int:
    """`transcribe evaluate RUN --split S --no-boxes` (cli.py routes the flag here)."""
    if not 0 < args.target <= 1:
        raise SystemExit(f"--target must be in (0, 1], got {args.target}")
    evaluate_without_boxes(args.run, args.split, args.target, args.checkpoint, args.cards, args.limit,
                           device=args.device)
    return 0


def evaluate_without_boxes(run: str | Path, split: str = "val", target: float = 0.98, checkpoint: str = "best",
                           gallery_n: int = 50, limit: int = 0, say=print, device: str = "cpu") -> dict[str, Any]:
    """Ignore the given boxes: localize, read, write RUN/eval/<split>-noboxes/{predictions.jsonl,
    report.json, report.md, gallery.html}. Each row holds the predicted crop box ("box"), the true
    one ("true_box") and their number boxes' IoU. The report adds the share with IoU >= 0.5 and,
    beside the figures, the with-box figures of RUN/eval/<split>/report.json when that exists."""
    from transcribe import metrics, report
    from transcribe.runs import save_json
    run = Path(run)
    model, ckpt, data_cfg = _load_run(run, checkpoint, device)
    cache, name = _split(split, data_cfg)
    indices = np.arange(len(cache)) if not limit else np.arange(min(limit, len(cache)))
    out = run / "eval" / (name + ("" if checkpoint == "best" else f"-{checkpoint}") + "-noboxes")
    detector, read = localize.Detector(), _torch_reader(model, data_cfg)
    rows, sources, reachable = [], {}, []
    started = time.perf_counter()
    for i in indices.tolist():
        path = cache.path(i)
        true_box = [float(v) for v in cache.boxes[i]]
        try:
            image = localize.load_photo(path)
        except localize.PhotoError as err:
            say(f"unreadable: {err}")
            continue
        loc = localize.locate(image, detector, read, data_cfg.widen, data_cfg.size)
        truth_box = _number_box(true_box, data_cfg.widen)
        overlap = localize.iou(loc.box, truth_box)
        reachable.append(max(localize.iou(b, truth_box) for b in loc.boxes))
        sources[loc.source] = sources.get(loc.source, 0) + 1
        rows.append({"image": str(Path(path).resolve()), "file": str(cache.files[i]), "truth": cache.text(i),
                     **loc.read, "box": [round(float(v), 2) for v in loc.crop_box],
                     "true_box": [round(v, 2) for v in true_box], "iou": round(overlap, 4),
                     "source": loc.source, "candidates": loc.candidates})
    seconds = time.perf_counter() - started
    if not rows:
        raise ValueError(f"{split}: no readable photos")
    _write_rows(rows, out / "predictions.jsonl")
    rep = metrics.report(rows, target=target)
    ious = np.array([r["iou"] for r in rows])
    saved = _threshold(run)
    with_box_threshold = None
    if saved is not None and saved.get("step") == ckpt.get("step") and saved.get("checkpoint") == checkpoint:
        with_box_threshold = metrics.report(rows, threshold=saved["threshold"], target=target,
                                            threshold_source="chosen on validation with boxes")["threshold"]
    with_boxes = None
    with_path = run / "eval" / (name + ("" if checkpoint == "best" else f"-{checkpoint}")) / "report.json"
    if with_path.is_file():
        prev = json.loads(with_path.read_text())
        with_boxes = {"photos": prev.get("n_scored"), "sequence_accuracy": prev.get("sequence_accuracy"),
                      "coverage": prev.get("best_at_target", {}).get("coverage"), "source": str(with_path)}
    rep["localization"] = {"iou_at_least_0.5": float((ious >= 0.5).mean()), "mean_iou": float(ious.mean()),
                           "some_candidate_iou_at_least_0.5": float((np.array(reachable) >= 0.5).mean()),
                           "chosen_from": sources, "seconds_per_photo": seconds / len(rows),
                           "with_box_threshold_applied": with_box_threshold, "with_boxes": with_boxes}
    rep["split"] = split
    rep["checkpoint"] = {"name": checkpoint, "step": ckpt.get("step")}
    save_json(rep, out / "report.json")
    title = f"{run.name}: {out.name} (boxes found by transcribe, not given)"
    tmp = out / "report.md.tmp"
    tmp.write_text(metrics.to_markdown(rep, title=title) + _markdown(rep["localization"], rep))
    tmp.replace(out / "report.md")
    gallery = report.write_gallery(rows, out, n=gallery_n, title=f"transcribe {title}", source=str(out))
    model_card = _write_card(run, model)
    say(summary(rep, out.name))
    say(f"report: {out / 'report.md'}")
    say(f"model card: {model_card}")
    say(f"gallery: {gallery['gallery']}  (red: the box found; green: the true box)")
    return {"report": rep, "out": out}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def summary(rep: dict, name: str) -> str:
    loc, th = rep["localization"], rep["best_at_target"]
    lines = [f"{name}: {rep['n_scored']} photos, no boxes given",
             f"  localization IoU >= 0.5   {_pct(loc['iou_at_least_0.5'])} (mean IoU {loc['mean_iou']:.3f}; "
             f"chosen from {', '.join(f'{k} {v}' for k, v in sorted(loc['chosen_from'].items()))})",
             f"  some candidate IoU >= 0.5 {_pct(loc['some_candidate_iou_at_least_0.5'])} (the most the reader's "
             f"choice could reach)",
             f"  sequence accuracy         {_pct(rep['sequence_accuracy'])}",
             f"  coverage at {_pct(rep['target'])}       {_pct(th['coverage'])} (threshold chosen on these photos)"]
    if loc["with_box_threshold_applied"]:
        t = loc["with_box_threshold_applied"]
        lines.append(f"  with the with-box validation threshold: coverage {_pct(t['coverage'])}, "
                     f"accuracy there {_pct(t['accuracy'])}")
    if loc["with_boxes"]:
        w = loc["with_boxes"]
        lines.append(f"  with the given boxes      accuracy {_pct(w['sequence_accuracy'])}, coverage at "
                     f"{_pct(rep['target'])} {_pct(w['coverage'])} ({w['photos']} photos)")
    lines.append(f"  {loc['seconds_per_photo']:.3f} s per photo (detector + every candidate read)")
    return "\n".join(lines)


def _markdown(loc: dict, rep: dict) -> str:
    return "\n## Without boxes\n\n```\n" + summary(rep, "this split") + "\n```\n"

