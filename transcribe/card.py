"""The model card of a run: RUN/MODEL_CARD.md, what a person needs before relying on the model.

Written (atomically) by every `transcribe evaluate RUN --split ...` and by `transcribe transfer`
for its run, from the files the run folder already holds, so it is always the whole picture:
config.json (data, preset or recipe), threshold.json (the refusal threshold, its target and
where it was chosen), every RUN/eval/*/report.json (metrics with their split, accuracy by
length) and RUN/eval/val/meta.json (the training photos, counted when validation is evaluated).
Known limits are stated from those numbers, never from guesses: the training set's size and
kind, the lengths read worst, how often photos are referred, what was not measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from transcribe.config import MAX_DIGITS, TARGET
from transcribe.metrics import pct
from transcribe.runs import atomic_write

CARD_FILE = "MODEL_CARD.md"
WEAK_LENGTH = 0.05    # a length read this much (5 points) below the split's sequence accuracy is named as a limit
FEW_PHOTOS = 20       # a length with fewer validation photos than this: its accuracy is not reliable

INTENDED_USE = (
    "Reading house numbers (1 to 5 digits) in street-level photos, as in Goodfellow et al. 2014, "
    "inside a refer-to-a-human workflow: a transcription is accepted only when its log P(S|X) reaches "
    "the threshold below; every other photo goes to a person with the model's best guess "
    "(`transcribe predict`, `transcribe serve`). Not intended for other text, for numbers longer than "
    "5 digits, or for any use without that human path: the threshold is what makes the accepted "
    "answers as accurate as the target, and only on photos like the ones it was chosen on.")


def data_facts(train, val) -> dict[str, Any]:
    """What the card says about the data, from the (train, val) caches of dataset.load_splits."""
    import numpy as np
    lengths = np.bincount(np.asarray(train.lengths), minlength=MAX_DIGITS + 1)
    return {"folders": [str(f) for f in train.folders], "train_photos": len(train), "val_photos": len(val),
            "train_lengths": {str(n): int(c) for n, c in enumerate(lengths) if n and c}}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _synthetic(folders: list[str]) -> bool:
    # `transcribe data synth` writes under data/synth/ (config.DEFAULT_SYNTH_OUT); real folders do not
    return any("synth" in Path(f).parts or Path(f).parent.name == "synth" for f in folders)


def _reports(run: Path) -> dict[str, dict]:
    """split folder name -> report.json, validation first."""
    found = {p.parent.name: r for p in sorted((run / "eval").glob("*/report.json")) if (r := _read(p)) is not None}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "val", kv[0] != "cv", kv[0])))


def _metrics_table(reports: dict[str, dict]) -> list[str]:
    lines = ["| split | photos | sequence accuracy | character accuracy | coverage at target | accuracy there | "
             "threshold used | AUC |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name, rep in reports.items():
        th = rep.get("threshold") or {}
        where = {"chosen on this split": "chosen here"}.get(th.get("source"), th.get("source") or "–")
        if "localization" in rep:
            where += "; boxes found by transcribe, not given"
        auc = rep.get("auc")
        lines.append(f"| {name} | {rep.get('n_scored', rep.get('n', '–'))} | {pct(rep.get('sequence_accuracy'))} | "
                     f"{pct(rep.get('character_accuracy'))} | {pct(th.get('coverage'))} | {pct(th.get('accuracy'))} | "
                     f"{where} | {'–' if auc is None else f'{auc:.4f}'} |")
    return lines


def _length_table(reports: dict[str, dict], train_lengths: dict | None) -> list[str]:
    names = [n for n, r in reports.items() if r.get("accuracy_by_length")]
    lengths = sorted({int(k) for n in names for k in reports[n]["accuracy_by_length"]} |
                     {int(k) for k in (train_lengths or {})})
    if not lengths:
        return ["(no split has been scored by length)"]
    head = "| digits |" + (" training photos |" if train_lengths else "") + "".join(f" {n}: photos | {n}: accuracy |" for n in names)
    lines = [head, "| ---: |" + (" ---: |" if train_lengths else "") + " ---: | ---: |" * len(names)]
    for k in lengths:
        row = f"| {k} |" + (f" {train_lengths.get(str(k), 0)} |" if train_lengths else "")
        for n in names:
            cell = reports[n]["accuracy_by_length"].get(str(k))
            row += f" {cell['n']} | {pct(cell['accuracy'])} |" if cell else " 0 | – |"
        lines.append(row)
    return lines


def _limits(run: Path, facts: dict | None, reports: dict[str, dict], threshold: dict | None, kind: str,
            photos: int | None, folders: list[str]) -> list[str]:
    out = []
    if photos is not None:
        out.append(f"Trained on {photos:,} photos from {', '.join(f'`{f}`' for f in folders)}"
                   + (" (a small training set: the paper trained on 235,755)." if photos < 30_000 else "."))
    if _synthetic(folders):
        out.append("The training photos are synthetic (drawn by `transcribe data synth`), not real street "
                   "photos: nothing here measures how it reads real house numbers.")
    first = reports.get("val") or reports.get("cv")
    where = "validation" if "val" in reports else "out-of-fold"
    if first and first.get("accuracy_by_length"):
        overall = first.get("sequence_accuracy") or 0.0
        for k, cell in sorted(first["accuracy_by_length"].items()):
            if cell["n"] < FEW_PHOTOS:
                out.append(f"{k}-digit numbers: only {cell['n']} {where} photos, too few to trust their "
                           f"accuracy ({pct(cell['accuracy'])}).")
            elif cell["accuracy"] < overall - WEAK_LENGTH:
                out.append(f"{k}-digit numbers are read worse: {pct(cell['accuracy'])} on {cell['n']} {where} "
                           f"photos (all lengths: {pct(overall)}).")
    for k, count in sorted(((facts or {}).get("train_lengths") or {}).items()):
        if count < FEW_PHOTOS:
            out.append(f"{k}-digit numbers: only {count} training photos; the model has barely seen them.")
    out.append(f"Reads at most {MAX_DIGITS} digits; a longer number is refused ('>{MAX_DIGITS}') and referred.")
    target = (threshold or {}).get("target", TARGET)
    for name, rep in reports.items():
        th = rep.get("threshold") or {}
        if th.get("source") != "chosen on this split" and th.get("accuracy") is not None and th["accuracy"] < target:
            out.append(f"On {name} the photos accepted with the validation threshold were {pct(th['accuracy'])} "
                       f"accurate, under the {pct(target)} target: the threshold does not carry over exactly.")
    if kind == "transfer":
        out.append("Reads a crop around the number's box; `transcribe predict` without a box reads the whole "
                   "photo as the number (no search): give boxes (--box, --boxes) for whole street photos.")
    elif not any("localization" in r for r in reports.values()):
        out.append("Measured on crops around given number boxes only; reading whole photos (the number found by "
                   "localize.py) is not measured for this run (`transcribe evaluate RUN --no-boxes`).")
    else:
        for name, rep in reports.items():
            if "localization" in rep:
                out.append(f"Without given boxes ({name}): {pct(rep.get('sequence_accuracy'))} sequence accuracy, "
                           f"the box found overlaps the true one (IoU >= 0.5) for "
                           f"{pct(rep['localization'].get('iou_at_least_0.5'))} of photos.")
    if threshold is not None and threshold.get("threshold") is None:
        out.append(f"No threshold reached {pct(threshold.get('target'))} accuracy where it was chosen: every photo "
                   f"is referred to a person.")
    elif first and (first.get("threshold") or {}).get("coverage") is not None:
        cov = first["threshold"]["coverage"]
        out.append(f"At the threshold about {pct(1 - cov)} of photos like the {where} "
                   f"photos are referred to a person; photos unlike them (other fonts, countries, cameras) are "
                   f"not measured and may be accepted wrongly.")
    return out


def _threshold_lines(threshold: dict | None) -> list[str]:
    if threshold is None:
        return ["No threshold yet: `transcribe evaluate RUN --split val` chooses one."]
    value = threshold.get("threshold")
    lines = [f"- rule: accept when log P(S|X) >= **{'none' if value is None else f'{value:.4f}'}** "
             f"(P >= {'–' if value is None else f'{math.exp(value):.4f}'}), else refer to a person",
             f"- target: {pct(threshold.get('target', TARGET))} accuracy on the accepted photos",
             f"- chosen on: {threshold.get('chosen_on', '–')}" + (f" ({threshold['photos']:,} photos)" if threshold.get("photos") else "")]
    if threshold.get("coverage") is not None:
        lines.append(f"- there: coverage {pct(threshold['coverage'])}, accuracy {pct(threshold.get('accuracy'))}")
    if threshold.get("step") is not None:
        lines.append(f"- checkpoint: ckpt-{threshold.get('checkpoint', 'best')}.pt at step {threshold['step']}")
    return lines


def render(run: Path, kind: str, model: list[str], data: list[str], facts: dict | None, photos: int | None,
           folders: list[str], extra_metrics: Sequence[str] = (), written_by: str = "`transcribe evaluate`") -> str:
    reports = _reports(run)
    threshold = _read(run / "threshold.json")
    lines = [f"# Model card: {run.name}", "",
             "Written by transcribe from this run folder's files (config.json, threshold.json, eval/*/report.json); "
             f"rewritten by every {written_by} of the run.", "",
             "## Intended use", "", INTENDED_USE, "", "## Model", "", *model, "", "## Data", "", *data, "",
             "## Refusal threshold", "", *_threshold_lines(threshold), "", "## Metrics", ""]
    lines += _metrics_table(reports) if reports else ["No split has been evaluated yet."]
    lines += [*extra_metrics, "", "## Accuracy by length", ""]
    lines += _length_table(reports, (facts or {}).get("train_lengths"))
    lines += ["", "## Known limits", ""]
    lines += [f"- {t}" for t in _limits(run, facts, reports, threshold, kind, photos, folders)]
    return "\n".join(lines) + "\n"


def write_card(run: str | Path, parameters: int | None = None) -> Path:
    """RUN/MODEL_CARD.md for a ConvNet run (`transcribe train`)."""
    run = Path(run)
    cfg = _read(run / "config.json") or {}
    facts = (_read(run / "eval" / "val" / "meta.json") or {}).get("data")
    train, model_cfg, data_cfg = cfg.get("train", {}), cfg.get("model", {}), cfg.get("data", {})
    folders = list(data_cfg.get("train", [])) or (facts or {}).get("folders") or []  # as the user named them
    model = [f"- preset: `{train.get('preset', '–')}`, head: {model_cfg.get('head', '–')} "
             f"(length softmax over 0..{MAX_DIGITS}, >{MAX_DIGITS} and {MAX_DIGITS} digit softmaxes; "
             f"confidence log P(S|X))",
             f"- parameters: {parameters:,}" if parameters else "- parameters: –",
             f"- recipe: {train.get('optimizer', '–')}, lr {train.get('lr', '–')} ({train.get('schedule', '–')}), "
             f"batch {train.get('batch_size', '–')}, up to {train.get('steps', '–')} steps / "
             f"{train.get('max_seconds', '–')} s, seed {train.get('seed', '–')}",
             f"- input: {data_cfg.get('crop', '–')} px crops of the number's box widened {data_cfg.get('widen', '–')}x"]
    if facts:
        data = [f"- training folders: {', '.join(f'`{f}`' for f in folders)}",
                f"- {facts['train_photos']:,} training photos, {facts['val_photos']:,} validation photos held out "
                f"(seed {data_cfg.get('seed', '–')})"]
    else:
        data = [f"- training folders: {', '.join(f'`{f}`' for f in folders) or '–'}",
                "- photo counts: not known until `transcribe evaluate RUN --split val` runs"]
    return atomic_write(run / CARD_FILE, render(run, "convnet", model, data, facts,
                                               facts and facts["train_photos"], folders))


def write_transfer_card(run: str | Path, parameters: dict | None = None) -> Path:
    """RUN/MODEL_CARD.md for a transfer run (`transcribe transfer`): metrics out of fold."""
    run = Path(run)
    cfg = _read(run / "config.json") or {}
    t = cfg.get("transfer", {})
    cv = (_read(run / "cv.json") or {}).get("cv", {})
    folders = [str(cfg.get("train", "–"))]
    model = [f"- pretrained recognizer `{t.get('recognizer', '–')}` (rapidocr wheel, Apache-2.0), fine-tuned; "
             f"head: {t.get('head', 'ctc')}, confidence log P(S|X)",
             f"- parameters: {parameters['total']:,} ({parameters['trainable']:,} fine-tuned)" if parameters
             else "- parameters: –",
             f"- recipe: {t.get('epochs', '–')} epochs, {t.get('views', '–')} augmented views per photo, lr "
             f"{t.get('lr', '–')} (head {t.get('head_lr', '–')}), batch {t.get('batch_size', '–')}, stretch "
             f"{t.get('stretch', '–')}, beam {t.get('beam', '–')}, seed {t.get('seed', '–')}"]
    data = [f"- training folder: `{folders[0]}`, {cfg.get('photos', 0):,} photos, all used for the shipped model",
            f"- metrics: {cfg.get('folds', 0)}-fold cross-validation; each photo predicted by the model that did "
            f"not see it (eval/cv/)"]
    extra = []
    if cv.get("fine_tuned"):
        s = cv["fine_tuned"]
        extra = ["", f"Per fold (mean ± std over {len(s.get('folds', []))} folds): sequence accuracy "
                 f"{pct(s['sequence_accuracy']['mean'])} ± {pct(s['sequence_accuracy']['std'])}, coverage at the target "
                 f"with thresholds chosen out of sample {pct(s['coverage']['mean'])} ± {pct(s['coverage']['std'])}."]
    return atomic_write(run / CARD_FILE, render(run, "transfer", model, data, None, cfg.get("photos"), folders, extra,
                                               written_by="`transcribe transfer`"))
