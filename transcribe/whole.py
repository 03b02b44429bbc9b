"""Whole photos with a run's torch model: `transcribe predict` without --box, and
`transcribe evaluate RUN --no-boxes` (localize, read, score as usual).

Either kind of run reads: a ConvNet run (ckpt-*.pt: 54 x 54 crops of the widened box) or a transfer
run (model.pt: the fine-tuned PP-OCRv6 line recognizer, which reads a strip of the box at any width).
Both become a `RunReader`, whose `read_boxes(photo, number boxes)` localize.locate calls on every
candidate box. Every use of the existing run and evaluation code goes through the small adapter at
the top (`run_reader`, `_split`, `_torch_reader`, `_transfer_reader`, `_write_rows`), so moving those functions to other
modules changes only these lines.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transcribe import boxfit
from transcribe import chooser as chooser_mod
from transcribe import crops, localize, runtime, svhn

NO_READING = runtime.NO_READING   # log P of a candidate box the reader cannot cut (outside the photo)

# ---------------------------------------------------------------- adapter to the run code


@dataclass
class RunReader:
    """A run's reader as localize.locate uses it."""
    kind: str                      # "convnet" or "transfer"
    read_boxes: localize.BoxReader  # (photo, number boxes) -> rows (pred, confidence, ...)
    widen: float                   # the reader's widening of a number box: the crop box it reads
    size: int                      # crop side (ConvNet), 0 for a line recognizer
    data_cfg: Any                  # the run's data configuration: which photos `--split val` means
    step: Any                      # the checkpoint's step (None for a transfer run)
    threshold: dict | None         # the saved refusal threshold that belongs to this reader, if any
    parameters: Any                # for the model card: a count (ConvNet) or {total, trainable} (transfer)
    chooser: Any = None            # RUN/chooser.json (chooser.Chooser): the learned choice among candidates
    fitter: Any = None             # RUN/boxfit.onnx (boxfit.BoxFitter): moves the chosen box onto the number


def is_transfer(run: Path) -> bool:
    from transcribe import transfer
    return (Path(run) / transfer.CHECKPOINT).is_file()


def run_reader(run: str | Path, checkpoint: str = "best", device: str = "cpu", top_k: int = 0) -> RunReader:
    """A ConvNet run's checkpoint, or a transfer run's model.pt, as a RunReader on `device` (a
    --device value); with top_k its rows carry the top_k most probable alternatives."""
    from transcribe import runs
    run = Path(run)
    if is_transfer(run):
        from transcribe import transfer
        model, cfg, _ = transfer.load(run)
        model.to(runs.resolve_device(device))  # the trained stage, neck and head; the frozen stem runs in onnxruntime
        return RunReader("transfer", _transfer_reader(model, cfg, top_k), cfg.widen, 0, _transfer_data_cfg(run), None,
                         runs.read_threshold(run), _transfer_parameters(model), _chooser(run),
                         boxfit.BoxFitter.beside(run))
    model, ckpt, data_cfg = runs.load_run(run, checkpoint, device=device)
    saved = runs.read_threshold(run)
    if saved is not None and not (saved.get("step") == ckpt.get("step") and saved.get("checkpoint") == checkpoint):
        saved = None
    return RunReader("convnet", localize.crop_reader(_torch_reader(model, data_cfg, top_k), data_cfg.widen, data_cfg.size),
                     data_cfg.widen, data_cfg.size, data_cfg, ckpt.get("step"), saved,
                     sum(p.numel() for p in model.parameters()), _chooser(run), boxfit.BoxFitter.beside(run))


def _transfer_data_cfg(run: Path):
    """Which photos a transfer run's `--split val` means: those `transfer --val-fraction F --split-seed
    S` held out, else the usual 10% with seed 0 of its training folder (photos a run without
    --val-fraction trained on)."""
    from transcribe.config import DataConfig
    config = json.loads((run / "config.json").read_text())
    held = config.get("val_fraction") or 0
    return DataConfig(train=(config["train"],), **({"val_fraction": held, "seed": config.get("split_seed", 0)}
                                                   if held > 0 else {}))


def _transfer_parameters(model) -> dict:
    """For the model card: all weights, and those the run trained (the frozen stem's are not)."""
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("stem."))}


def _chooser(run: Path):
    """The run's learned choice among candidate boxes (`transcribe fit-chooser`), if it has one."""
    path = run / chooser_mod.CHOOSER_FILE
    return chooser_mod.Chooser.load(path) if path.is_file() else None


def _split(split: str, data_cfg):
    from transcribe import evaluation
    return evaluation.split_cache(split, data_cfg), evaluation._split_name(split)


def _torch_reader(model, data_cfg, top_k: int = 0, batch_size: int | None = None):
    """localize.Reader from a torch model: crops -> evaluation.predict_images rows."""
    from transcribe import evaluation
    batch = batch_size or evaluation.EVAL_BATCH
    return lambda images: evaluation.predict_images(model, images, crop=data_cfg.crop, batch_size=batch, top_k=top_k)


def _transfer_reader(model, cfg, top_k: int = 0) -> localize.BoxReader:
    """localize.BoxReader from a transfer run: each box cut as transfer.eval_view cuts a known box
    (widened by cfg.widen, height 48, stretched), read by the stem (onnxruntime) and the fine-tuned
    neck and head, decoded by prefix beam search with its exact log P(S|X) (ctc.py)."""
    from transcribe import transfer
    stem = transfer.rec.StemSession(model)

    def read_boxes(image: np.ndarray, boxes: list) -> list[dict]:
        photos, where = [], []
        for k, box in enumerate(boxes):
            try:
                photos.append(transfer.photo_from(image, box, "candidate"))
                where.append(k)
            except ValueError:  # a candidate outside the photo: nothing to read
                continue
        out = [{"pred": "", "confidence": NO_READING, "adhoc_confidence": NO_READING} for _ in boxes]
        for k, row in zip(where, transfer.transcribe_photos(model, cfg, photos, stem, top_k=top_k) if photos else []):
            out[k] = {key: row[key] for key in ("pred", "confidence", "adhoc_confidence", "alternatives") if key in row}
        return out
    return read_boxes


def _write_rows(rows, path):
    from transcribe import predictions
    return predictions.write_predictions(rows, path)


def _write_card(run: Path, reader: RunReader) -> Path:
    from transcribe import card
    write = card.write_transfer_card if reader.kind == "transfer" else card.write_card
    return write(run, reader.parameters)


# ---------------------------------------------------------------- predict


def read_whole(paths, model, data_cfg, threshold: float | None, box=None, boxes=None, top_k: int = 0,
               batch_size: int = runtime.READ_BATCH, run: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """predict.predict with the torch model: a photo without a box is searched for its number
    (localize.py; with the box chooser and fitter of `run`, where it has them), a photo with one
    (`box`, or its entry in `boxes`) is cropped around it; then read."""
    needs_search = any(b is None for b in boxes) if boxes is not None else box is None
    detector = localize.Detector() if needs_search else None
    chooser, fitter = (_chooser(Path(run)), boxfit.BoxFitter.beside(run)) if run is not None else (None, None)
    return runtime.read_photos(paths, _torch_reader(model, data_cfg, top_k, batch_size), detector, threshold,
                               data_cfg.widen, data_cfg.size, box, boxes, batch_size, chooser=chooser, fitter=fitter)


def read_whole_run(paths, run: str | Path, device: str = "cpu", top_k: int = 0) -> tuple[list[dict], list[str]]:
    """read_whole for any run (predict.py calls it for transfer runs): the run's reader and its
    saved threshold (a transfer run's is chosen on its out-of-fold predictions)."""
    reader = run_reader(run, device=device, top_k=top_k)
    threshold = (reader.threshold or {}).get("threshold")
    return runtime.read_photos(paths, None, localize.Detector(), threshold, reader.widen, reader.size,
                               read_boxes=reader.read_boxes, chooser=reader.chooser, fitter=reader.fitter)


# ---------------------------------------------------------------- evaluate a transfer run (boxes given)

def run_evaluate_transfer(args) -> int:
    """`transcribe evaluate TRANSFER_RUN --split S` (cli.py routes a run holding model.pt here)."""
    if not 0 < args.target <= 1:
        raise SystemExit(f"--target must be in (0, 1], got {args.target}")
    evaluate_transfer(args.run, args.split, args.target, args.cards, device=args.device)
    return 0


def evaluate_transfer(run: str | Path, split: str = "val", target: float = 0.98, gallery_n: int = 50,
                      say=print, device: str = "cpu", chunk: int = 1024) -> dict[str, Any]:
    """`transcribe evaluate TRANSFER_RUN --split S`: every photo of the split read at its given box
    (a strip of the number's box, as the run trained), scored with the run's own threshold (chosen
    on its out-of-fold predictions, or on its held-out photos), which evaluating never changes:
    RUN/eval/<split>/{predictions.jsonl, report.json, report.md, plots, gallery.html}."""
    from transcribe import card, evaluation, metrics, runs, transfer
    from transcribe.progress import bar as progress_bar
    from transcribe.runs import save_json
    run = Path(run)
    model, cfg, threshold = transfer.load(run)
    model.to(runs.resolve_device(device))   # the trained stage, neck and head; the frozen stem runs in onnxruntime
    data_cfg = _transfer_data_cfg(run)
    cache, name = _split(split, data_cfg)
    out = run / "eval" / name
    stem = transfer.rec.StemSession(model)
    rows: list[dict] = []
    started = time.perf_counter()
    bar = progress_bar(total=len(cache), desc=f"evaluate {name}", unit="photo")
    for start in range(0, len(cache), chunk):
        photos, files = [], []
        for i in range(start, min(start + chunk, len(cache))):
            path = cache.path(i)
            try:
                image = localize.load_photo(path)
                box = _number_box([float(v) for v in cache.boxes[i]], data_cfg.widen)
                photos.append(transfer.photo_from(image, box, str(Path(path).resolve()), cache.text(i)))
                files.append(str(cache.files[i]))
            except (localize.PhotoError, ValueError) as err:
                say(f"skipped: {err}")
        for row, file in zip(transfer.transcribe_photos(model, cfg, photos, stem, threshold) if photos else [], files):
            row["file"] = file
            rows.append(row)
        bar.update(min(chunk, len(cache) - start))
    bar.close()
    seconds = time.perf_counter() - started
    if not rows:
        raise ValueError(f"{split}: no readable photos")
    _write_rows(rows, out / "predictions.jsonl")
    save_json({"system": f"transcribe {run.name} (transfer)", "images_per_second": round(len(rows) / seconds, 2),
               "speed_measured": "photo to log P(S|X): strip, stem (onnxruntime), trained stage, neck, head, beam"},
              out / "meta.json")
    saved = runs.read_threshold(run) or {}
    rep = metrics.report(rows, threshold=threshold, target=target,
                         threshold_source=f"the run's ({saved.get('chosen_on', 'none saved')})")
    rep["split"] = split
    gallery = evaluation.write_report(rows, rep, out, f"{run.name}: {name}", gallery_n, target)
    model_card = card.write_transfer_card(run, _transfer_parameters(model))
    say(evaluation.headline(rep, name))
    say(f"report: {out / 'report.md'}")
    say(f"gallery: {gallery['gallery']}")
    say(f"model card: {model_card}")
    return {"report": rep, "out": out, "gallery": gallery["gallery"], "threshold": rep["threshold"]["value"]}


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
    with-boxes.jsonl, report.json, report.md, gallery.html}. Each row holds the predicted crop box
    ("box"), the true one ("true_box", widened as the reader widens) and their number boxes' IoU.

    The same reader also reads every photo at its given box (with-boxes.jsonl), so the report sets
    the figures without boxes beside those of the same reader on the same photos: the gap is what
    localization costs, whatever the reader saw in training."""
    from transcribe import metrics, report
    from transcribe.runs import save_json
    run = Path(run)
    reader = run_reader(run, checkpoint, device)
    cache, name = _split(split, reader.data_cfg)
    indices = np.arange(len(cache)) if not limit else np.arange(min(limit, len(cache)))
    out = run / "eval" / (name + ("" if checkpoint == "best" else f"-{checkpoint}") + "-noboxes")
    detector = localize.Detector()
    rows, given, sources, reachable, old_rule, unfitted = [], [], {}, [], [], []
    started = time.perf_counter()
    for i in indices.tolist():
        path = cache.path(i)
        try:
            image = localize.load_photo(path)
        except localize.PhotoError as err:
            say(f"unreadable: {err}")
            continue
        truth_box = _number_box([float(v) for v in cache.boxes[i]], reader.data_cfg.widen)
        true_box = [round(float(v), 2) for v in crops.widen(truth_box, reader.widen)]
        loc = localize.locate(image, detector, widen=reader.widen, read_boxes=reader.read_boxes, chooser=reader.chooser,
                              fitter=reader.fitter)
        overlap = localize.iou(loc.box, truth_box)
        unfitted.append(localize.iou(loc.found_box, truth_box))
        reachable.append(max(localize.iou(b, truth_box) for b in loc.boxes))
        if reader.chooser is not None:  # the summed-probability rule on the same readings, for comparison
            k = localize.choose(loc.readings)
            old_rule.append((localize.iou(loc.boxes[k], truth_box) >= 0.5, loc.readings[k]["pred"] == cache.text(i)))
        sources[loc.source] = sources.get(loc.source, 0) + 1
        common = {"image": str(Path(path).resolve()), "file": str(cache.files[i]), "truth": cache.text(i)}
        rows.append({**common, **loc.read, "box": [round(float(v), 2) for v in loc.crop_box],
                     "true_box": true_box, "iou": round(overlap, 4), "source": loc.source,
                     "candidates": loc.candidates})
        given.append({**common, **reader.read_boxes(image, [truth_box])[0], "box": true_box})
    seconds = time.perf_counter() - started
    if not rows:
        raise ValueError(f"{split}: no readable photos")
    _write_rows(rows, out / "predictions.jsonl")
    _write_rows(given, out / "with-boxes.jsonl")
    rep = metrics.report(rows, target=target)
    rep_given = metrics.report(given, target=target)
    ious = np.array([r["iou"] for r in rows])
    saved = reader.threshold
    applied = None
    if saved is not None and saved.get("threshold") is not None:
        kw = dict(threshold=saved["threshold"], target=target, threshold_source=f"the run's ({saved.get('chosen_on', 'val')})")
        applied = {"threshold": saved["threshold"], "chosen_on": saved.get("chosen_on", "val"),
                   "no_boxes": metrics.report(rows, **kw)["threshold"], "with_boxes": metrics.report(given, **kw)["threshold"]}
    with_boxes = {"photos": rep_given["n_scored"], "sequence_accuracy": rep_given["sequence_accuracy"],
                  "coverage": rep_given["best_at_target"]["coverage"], "source": str(out / "with-boxes.jsonl")}
    rep["localization"] = {"iou_at_least_0.5": float((ious >= 0.5).mean()), "mean_iou": float(ious.mean()),
                           "some_candidate_iou_at_least_0.5": float((np.array(reachable) >= 0.5).mean()),
                           "chosen_from": sources, "seconds_per_photo": seconds / len(rows),
                           "reader": reader.kind, "run_threshold_applied": applied, "with_boxes": with_boxes,
                           "choice": (f"learned ({run / chooser_mod.CHOOSER_FILE}, fitted on "
                                      f"{reader.chooser.spec['photos']} photos)" if reader.chooser is not None
                                      else "the transcription's probability summed over the candidates"),
                           "summed_probability_rule": ({"iou_at_least_0.5": float(np.mean([a for a, _ in old_rule])),
                                                        "sequence_accuracy": float(np.mean([b for _, b in old_rule]))}
                                                       if old_rule else None),
                           "box_fitter": ({"file": str(reader.fitter.path), "passes": reader.fitter.passes,
                                           "iou_at_least_0.5_as_found": float((np.array(unfitted) >= 0.5).mean()),
                                           "mean_iou_as_found": float(np.mean(unfitted))}
                                          if reader.fitter is not None else None)}
    rep["split"] = split
    rep["checkpoint"] = {"name": checkpoint, "step": reader.step}
    save_json(rep, out / "report.json")
    title = f"{run.name}: {out.name} (boxes found by transcribe, not given)"
    tmp = out / "report.md.tmp"
    tmp.write_text(metrics.to_markdown(rep, title=title) + _markdown(rep["localization"], rep))
    tmp.replace(out / "report.md")
    gallery = report.write_gallery(rows, out, n=gallery_n, title=f"transcribe {title}", source=str(out))
    model_card = _write_card(run, reader)
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
             f"  choice among candidates   {loc.get('choice', 'the transcription probability summed over the candidates')}",
             f"  sequence accuracy         {_pct(rep['sequence_accuracy'])}",
             f"  coverage at {_pct(rep['target'])}       {_pct(th['coverage'])} (threshold chosen on these photos)"]
    if loc.get("summed_probability_rule"):
        o = loc["summed_probability_rule"]
        lines.append(f"  the same readings, chosen by summed probability instead: IoU >= 0.5 "
                     f"{_pct(o['iou_at_least_0.5'])}, sequence accuracy {_pct(o['sequence_accuracy'])}")
    if loc.get("box_fitter"):
        f = loc["box_fitter"]
        lines.append(f"  box fitter ({f['file']}, {f['passes']} pass(es)): IoU >= 0.5 {_pct(f['iou_at_least_0.5_as_found'])} "
                     f"as found, {_pct(loc['iou_at_least_0.5'])} fitted (mean IoU {f['mean_iou_as_found']:.3f} as found)")
    if loc["with_boxes"]:
        w = loc["with_boxes"]
        lines.append(f"  the same reader, boxes given: accuracy {_pct(w['sequence_accuracy'])}, coverage at "
                     f"{_pct(rep['target'])} {_pct(w['coverage'])} ({w['photos']} photos, threshold chosen on them)")
    if loc["run_threshold_applied"]:
        t = loc["run_threshold_applied"]
        lines.append(f"  with the run's threshold ({t['chosen_on']}): coverage {_pct(t['no_boxes']['coverage'])} "
                     f"at accuracy {_pct(t['no_boxes']['accuracy'])} without boxes, "
                     f"{_pct(t['with_boxes']['coverage'])} at {_pct(t['with_boxes']['accuracy'])} with")
    lines.append(f"  {loc['seconds_per_photo']:.3f} s per photo (detector + every candidate read)")
    return "\n".join(lines)


def _markdown(loc: dict, rep: dict) -> str:
    return "\n## Without boxes\n\n```\n" + summary(rep, "this split") + "\n```\n"



# ---------------------------------------------------------------- fit-chooser

def add_fit_chooser_arguments(parser) -> None:
    import os
    parser.add_argument("run", type=Path, help="a `transcribe transfer --keep-folds` run: each of its folds/K/ "
                                               "models reads the photos it never trained on")
    parser.add_argument("--train", default=None, help="format-1 folder of those photos (default: the run's --train)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="leave out the validation split `transcribe train --val-fraction F --split-seed S` "
                             "holds out of --train (the photos the chooser will be judged on; default 0: none)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of that split (default: 0)")
    parser.add_argument("--limit", type=int, default=600, help="photos to read, spread over the folds (default: 600)")
    parser.add_argument("--out", type=Path, default=None, help="chooser JSON to write (default: RUN/chooser.json); "
                                                              "the readings go beside it (…-readings.jsonl)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="onnxruntime and torch CPU threads (default: %(default)s)")


def run_fit_chooser(args) -> int:
    import torch
    torch.set_num_threads(args.threads)
    fit_chooser(args.run, args.train, args.val_fraction, args.split_seed, args.limit, args.out, args.threads)
    return 0


def _digest(path: Path) -> str:
    """Which fold model read a photo: readings by another model (an earlier run in the same folder)
    are read again, never reused."""
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _photo_rows(path: Path) -> dict[str, dict]:
    """The readings stored so far (a cut-off last line, from an interrupted run, is read again)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows[row["file"]] = row
    return rows


def chooser_data(rows: list[dict]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """(the set of candidates the box is chosen among, their features, positive) per photo:
    positive = the box overlaps the true number box, IoU >= 0.5 (chooser.features)."""
    out = []
    for r in rows:
        c = r["candidates"]
        chosen, feats = chooser_mod.features(c, [x["box"] for x in c], [x["source"] for x in c], tuple(r["shape"]))
        out.append((chosen, feats, np.array([localize.iou(c[j]["box"], r["true_box"]) >= 0.5 for j in chosen])))
    return out


def _score_choice(rows: list[dict], picks: list[int]) -> dict:
    ok = [r["candidates"][k]["pred"] == r["truth"] for r, k in zip(rows, picks)]
    near = [localize.iou(r["candidates"][k]["box"], r["true_box"]) >= 0.5 for r, k in zip(rows, picks)]
    return {"sequence_accuracy": float(np.mean(ok)), "iou_at_least_0.5": float(np.mean(near))}


def fit_chooser(run: str | Path, train: str | None = None, val_fraction: float = 0.0, split_seed: int = 0,
                limit: int = 600, out: str | Path | None = None, threads: int = 2, say=print, folds: int = 5) -> dict:
    """Read `limit` photos, each by the fold model of `run` that never trained on it, at every
    candidate box; fit chooser.Chooser to those readings; report it against the summed-probability
    rule, cross-validated over the photos (`folds`), and write the chooser fitted on all of them."""
    from transcribe import dataset
    from transcribe.progress import bar as progress_bar
    from transcribe.runs import atomic_write
    run = Path(run)
    fold_dirs = sorted((d for d in (run / "folds").glob("*") if (d / "config.json").is_file()), key=lambda d: d.name)
    if not fold_dirs:
        raise ValueError(f"{run / 'folds'}: no fold models; run `transcribe transfer ... --keep-folds` first")
    configs = [json.loads((d / "config.json").read_text()) for d in fold_dirs]
    folder = Path(train or configs[0]["train"])
    split = svhn.read_split(folder)
    records = {r.file: r for r in split.records}
    excluded = dataset.held_out_names(folder, val_fraction, split_seed) if val_fraction > 0 else set()
    out = Path(out) if out else run / chooser_mod.CHOOSER_FILE
    readings_path = out.with_name(out.stem + "-readings.jsonl")
    quota = -(-limit // len(fold_dirs))
    plan = [(d, [f for f in c["held_out"] if f in records and f not in excluded][:quota])
            for d, c in zip(fold_dirs, configs)]
    models = {d.name: _digest(d / "model.pt") for d, _ in plan}
    stored = _photo_rows(readings_path)
    done = {f: r for f, r in stored.items() if models.get(str(r.get("fold"))) == r.get("model")}
    if len(done) < len(stored):  # readings by other models (an earlier run in this folder): dropped
        atomic_write(readings_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    todo = sum(len([f for f in files if f not in done]) for _, files in plan)
    say(f"fit-chooser: {sum(len(f) for _, f in plan)} photos of {folder} ({len(excluded)} left out), each read by the "
        f"fold model that never saw it; {len(done)} already read ({readings_path}), {todo} to read")
    if todo:
        detector = localize.Detector(threads=threads)
        bar = progress_bar(total=todo, desc="candidates", unit="photo")
        with open(readings_path, "a") as fh:
            for d, files in plan:
                pending = [f for f in files if f not in done]
                if not pending:
                    continue
                reader = run_reader(d)
                for name in pending:
                    rec = records[name]
                    try:
                        image = localize.load_photo(folder / name)
                    except localize.PhotoError as err:
                        say(f"skipped: {err}")
                        continue
                    loc = localize.locate(image, detector, widen=reader.widen, read_boxes=reader.read_boxes)
                    row = {"file": name, "fold": d.name, "model": models[d.name], "truth": rec.text,
                           "shape": list(image.shape[:2]),
                           "true_box": [float(v) for v in crops.number_box(rec.boxes)],
                           "candidates": [{"box": [round(float(v), 2) for v in b], "source": s, "pred": r["pred"],
                                           "confidence": float(r["confidence"])}
                                          for b, s, r in zip(loc.boxes, loc.sources, loc.readings)]}
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    done[name] = row
                    bar.update(1)
        bar.close()
    wanted = [f for _, files in plan for f in files]
    rows = [done[f] for f in wanted if f in done]
    sets = chooser_data(rows)
    data = [(f, y) for _, f, y in sets]
    # Cross-validated over photos: each photo's choice by a chooser fitted on the other folds.
    order = np.random.default_rng(0).permutation(len(rows))
    learned = [0] * len(rows)
    for k in range(folds):
        test = set(order[k::folds].tolist())
        fitted = [data[i] for i in range(len(rows)) if i not in test]
        if not any(y.any() for _, y in fitted):  # nothing to learn from: the rule's own box
            for i in test:
                learned[i] = localize.choose(rows[i]["candidates"])
            continue
        ch = chooser_mod.Chooser(chooser_mod.fit(fitted))
        for i in test:
            learned[i] = sets[i][0][int(np.argmax(ch.scores(data[i][0])))]
    summed = [localize.choose(r["candidates"]) for r in rows]
    report = {"photos": len(rows), "folds": folds,
              "summed_probability": _score_choice(rows, summed), "learned": _score_choice(rows, learned),
              "reachable": {"iou_at_least_0.5": float(np.mean([any(localize.iou(c["box"], r["true_box"]) >= 0.5
                                                                   for c in r["candidates"]) for r in rows])),
                            "among_the_rules_reading": float(np.mean([y.any() for _, y in data]))}}
    spec = chooser_mod.fit(data)
    # Kept only where it beats the rule it would replace, out of sample (as a fine-tuned model is kept
    # only where it beats its step 0): otherwise written beside, for inspection, and not used.
    better = (report["learned"]["iou_at_least_0.5"] > report["summed_probability"]["iou_at_least_0.5"]
              and report["learned"]["sequence_accuracy"] >= report["summed_probability"]["sequence_accuracy"])
    kept = out if better else out.with_name(out.stem + "-rejected.json")
    spec.update({"run": str(run), "train": str(folder), "left_out": len(excluded), "readings": str(readings_path),
                 "cross_validated": report, "beats_the_rule": better})
    atomic_write(kept, json.dumps(spec, indent=2) + "\n")
    stale = out if not better else out.with_name(out.stem + "-rejected.json")
    if stale.is_file():
        stale.unlink()   # what an earlier fit wrote and this one replaces
    say(f"  on {len(rows)} photos, each choice by a chooser fitted on the other {folds - 1} of {folds} folds of them:")
    for name, key in (("summed probability (before)", "summed_probability"), ("learned chooser", "learned")):
        s = report[key]
        say(f"    {name:<28} IoU >= 0.5 {100 * s['iou_at_least_0.5']:.2f}%, sequence accuracy "
            f"{100 * s['sequence_accuracy']:.2f}%")
    say(f"    reachable: some candidate IoU >= 0.5 {100 * report['reachable']['iou_at_least_0.5']:.2f}%, "
        f"one among those reading the rule's transcription "
        f"{100 * report['reachable']['among_the_rules_reading']:.2f}%")
    if better:
        say(f"wrote {out} (fitted on all {len(rows)}); `transcribe evaluate RUN --no-boxes` and `predict` use it "
            f"when it sits in the run folder as {chooser_mod.CHOOSER_FILE}")
    else:
        say(f"the learned choice does not beat the summed-probability rule out of sample: not used; "
            f"wrote {kept} for inspection")
    return spec
