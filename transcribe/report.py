"""Plots and galleries from a predictions file: look at the model in action, worst mistakes first.

Deep Learning book, sec. 11.5: "Visualize the model in action" and "Visualize the worst
mistakes" — sorting the *training* transcriptions by confidence and looking at the most
confident mistakes is how the Street View team found that crops were too tight (sec. 11.6).
So the gallery works on any predictions file (validation, test, training, an OCR baseline).

The gallery is one self-contained HTML page: every image is embedded as a base64 data URI,
so the page opens from disk and still works when moved or mailed. Its markup is a Jinja2
template (templates/gallery.html, with gallery.css and gallery.js inlined) with autoescaping
on: every string put into the page is HTML-escaped (file names and truths come from files we
do not control). It shows the decision: every card is marked accepted or referred by the
refusal threshold (a run's, chosen on validation), a line falls where the threshold does in
each sorted section, the header gives the coverage at the target accuracy, and the cards can
be filtered by length and kind of error and paged, GALLERY_PAGE at a time.

pyplot is imported on the first plot (`_pyplot`), after selecting the file-only Agg backend:
selecting it at import time would change matplotlib's state for whoever imports this module.

Size: about 500 lines: the plots and the gallery are two views of one predictions file.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import random
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.tensorboard import SummaryWriter

from transcribe import crops, metrics, svhn
from transcribe.config import BLANK, CACHE_SIZE, GALLERY_N, TARGET
from transcribe.predictions import read_predictions
from transcribe.runs import THRESHOLD_FILE, atomic_write, read_threshold, save_figure

PHOTO_HEIGHT = 160      # px, the full photo's thumbnail height (width follows, capped below)
PHOTO_MAX_WIDTH = 320   # px (the page shows it at most 128 px high: a little headroom stays sharp)
SHEET_COLUMNS = 10      # contact sheet layout
SHEET_TILE = 96         # px, a 64x64 crop upscaled for the contact sheet
GALLERY_PAGE = 50       # cards per page of a gallery section (the page holds all of them; gallery.js pages)


# ---------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, ax, path: Path, title: str) -> Path:
    """The common end of every plot: title, tight layout, write the PNG, free the figure."""
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_accuracy_coverage(rep: dict[str, Any], path: Path, title: str = "") -> Path:
    """Accuracy of the accepted photos against coverage, with the target line and the threshold point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    curve = rep["principled"]["curve"]
    ax.plot(curve["coverage"], curve["accuracy"], color="C0", lw=1.8, label="log P(S|X)")
    ax.axhline(rep["target"], color="0.4", ls="--", lw=1, label=f"target {100 * rep['target']:.0f}% accuracy")
    ax.axvline(metrics.COVERAGE_GOAL, color="0.7", ls=":", lw=1, label=f"{100 * metrics.COVERAGE_GOAL:.0f}% coverage goal")
    th = rep["threshold"]
    if th["accuracy"] is not None:
        ax.plot([th["coverage"]], [th["accuracy"]], "o", color="C3", ms=7,
                label=f"threshold ({th['source']}): {100 * th['coverage']:.1f}% coverage")
    best = rep["best_at_target"]
    if best["accuracy"] is not None and th["source"] != "chosen on this split":
        ax.plot([best["coverage"]], [best["accuracy"]], "s", mfc="none", color="C2", ms=7,
                label=f"best on this split: {100 * best['coverage']:.1f}%")
    ax.set_xlabel("coverage (fraction of photos transcribed)")
    ax.set_ylabel("accuracy of the transcribed photos")
    ax.set_xlim(0, 1)
    low = min([a for a in curve["accuracy"]] + [rep["target"]]) if curve["accuracy"] else 0.0
    ax.set_ylim(max(0.0, low - 0.02), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(plt, fig, ax, path, title or "accuracy vs coverage")


def plot_principled_vs_adhoc(rep: dict[str, Any], path: Path, title: str = "") -> Path | None:
    """Both confidences of the same predictions on one accuracy-coverage plot (book sec. 11.6)."""
    if rep.get("adhoc") is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for key, name, color in (("principled", "log P(S|X) (principled)", "C0"),
                             ("adhoc", "product of softmax maxima (ad hoc)", "C1")):
        part = rep[key]
        cov = part["best_at_target"]["coverage"]
        ax.plot(part["curve"]["coverage"], part["curve"]["accuracy"], color=color, lw=1.8,
                label=f"{name}: AUC {metrics.num(part['auc'])}, {metrics.pct(cov)} at target")
    ax.axhline(rep["target"], color="0.4", ls="--", lw=1)
    ax.set_xlabel("coverage")
    ax.set_ylabel("accuracy of the transcribed photos")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(plt, fig, ax, path, title or "principled vs ad-hoc confidence, same predictions")


def plot_confidence_histograms(rows: Sequence[dict], path: Path, threshold: float | None = None,
                               title: str = "") -> Path:
    """Histograms of -log P(S|X) for right and wrong transcriptions (a good confidence separates them).

    Log-spaced x axis: the thresholds that matter for 98% accuracy sit at -log P ~ 1e-3..1e-1,
    which a linear axis squeezes into one bin.
    """
    plt = _pyplot()
    scored = metrics.labelled(rows)
    surprise = -metrics.confidences(scored)  # -log P(S|X) >= 0; 0 = certain
    correct = metrics.correctness(scored)
    floor = 1e-5
    finite = np.isfinite(surprise)
    top = max(float(surprise[finite].max()) if finite.any() else 1.0, 10 * floor)
    x = np.clip(surprise, floor, top)  # certain (0) -> the first bin; -inf confidence -> the last
    bins = np.geomspace(floor, top, 41)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.hist(x[correct], bins=bins, alpha=0.6, color="C2", label=f"right ({int(correct.sum())})")
    ax.hist(x[~correct], bins=bins, alpha=0.6, color="C3", label=f"wrong ({int((~correct).sum())})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(max(-threshold, floor), color="k", ls="--", lw=1, label="refusal threshold (accept left of it)")
    ax.set_xscale("log")
    ax.set_xlabel("-log P(S|X)   (left = confident)")
    ax.set_ylabel("photos")
    ax.legend(fontsize=8)
    return _save(plt, fig, ax, path, title or "confidence of right and wrong transcriptions")


def plot_reliability(rep: dict[str, Any], path: Path, title: str = "") -> Path:
    """Reliability diagram: accuracy per bin of exp(confidence) against the diagonal."""
    plt = _pyplot()
    bins = [b for b in rep["calibration"]["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
    width = rep["calibration"]["bins"][0]["hi"] - rep["calibration"]["bins"][0]["lo"]
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           color="C0", alpha=0.7, edgecolor="k", lw=0.5, label="accuracy in bin")
    ax.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C3", ms=4,
            label="(mean confidence, accuracy)")
    for b in bins:  # photos per bin: a bar of 3 photos says little
        ax.annotate(f"{b['count']}", (b["lo"] + width / 2, b["accuracy"]), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, color="0.2")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("exp(confidence) = P(S|X)   (number on a bar: photos in it)")
    ax.set_ylabel("fraction correct")
    ax.legend(fontsize=8, loc="upper left")
    return _save(plt, fig, ax, path, title or f"reliability, ECE {metrics.num(rep['calibration']['ece'])}")


def write_pr_curve(rows: Sequence[dict], logdir: Path, tag: str = "accept", step: int = 0) -> Path:
    """TensorBoard PR curve of the accept decision: positive = a correct transcription, score = P(S|X)."""
    scored = metrics.labelled(rows)
    labels = torch.from_numpy(metrics.correctness(scored))
    scores = torch.from_numpy(np.clip(np.exp(metrics.confidences(scored)), 0.0, 1.0))
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        writer.add_pr_curve(tag, labels, scores, global_step=step)
    finally:
        writer.close()
    return Path(logdir)


def write_plots(rows: Sequence[dict], rep: dict[str, Any], out_dir: Path, title: str = "") -> list[Path]:
    """All the plots of one evaluation into out_dir; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_accuracy_coverage(rep, out_dir / "accuracy_coverage.png", title),
             plot_principled_vs_adhoc(rep, out_dir / "principled_vs_adhoc.png"),
             plot_confidence_histograms(rows, out_dir / "confidence_hist.png", rep["threshold"]["value"]),
             plot_reliability(rep, out_dir / "reliability.png")]
    return [p for p in paths if p is not None]


def markdown_links(plots: Sequence[Path], gallery: Path | None = None, sheet: Path | None = None) -> str:
    """The end of report.md: its plots as images and the gallery, linked relative to report.md
    (all live in the same folder, so the links survive moving it)."""
    captions = {"accuracy_coverage": "accuracy against coverage, with the refusal threshold",
                "principled_vs_adhoc": "model's confidence vs the ad-hoc per-digit score",
                "confidence_hist": "confidence of right and wrong readings",
                "reliability": "reliability (photos per bin on the bars)"}
    lines = ["", "## Plots and gallery", ""]
    if gallery is not None:
        lines.append(f"- [the gallery]({Path(gallery).name}): every card marked accepted or referred, "
                     f"filters by length and kind of error (open the file in a browser)")
    if sheet is not None:
        lines.append(f"- [contact sheet of the most confident mistakes]({Path(sheet).name})")
    for p in plots:  # one paragraph each: images side by side would not fit
        lines += ["", f"![{captions.get(Path(p).stem, Path(p).stem)}]({Path(p).name})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- gallery

def data_uri(image, fmt: str = "PNG") -> str:
    """A PIL image as a data: URI (base64 has no characters that need escaping in an attribute)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Photos:
    """Loads each photo once; remembers the ones that could not be read (reported, never hidden)."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}
        self.problems: dict[str, str] = {}
        self.uris: dict[int, tuple[str | None, str | None]] = {}  # id(row) -> (photo, crop) data URIs

    def get(self, path: str | None):
        if not path:
            return None
        if path not in self.cache:
            try:  # svhn.load_image: refuses photos over its pixel limit before decoding
                self.cache[path] = Image.fromarray(svhn.load_image(path))
            except svhn.DataError as err:  # missing, unreadable, too large or not an image
                self.cache[path] = None
                self.problems[path] = str(err).removeprefix(f"{path}: ")
        return self.cache[path]

    def crop(self, path: str, photo, box):
        """The CACHE_SIZE crop of `box`, or None (noted as a problem) when the box is unusable."""
        if box is None or len(box) != 4:
            return None
        why = crops.unusable_box(box, photo.width, photo.height)
        if why:
            self.problems[path] = why
            return None
        return crops.crop(np.asarray(photo), box, CACHE_SIZE)


def draw_boxes(photo, boxes) -> Any:
    """A thumbnail of `photo` (at most PHOTO_HEIGHT x PHOTO_MAX_WIDTH) with each (colour, box)
    drawn on it; boxes are (left, top, width, height) in photo pixels, None ones skipped."""
    scale = min(PHOTO_HEIGHT / photo.height, PHOTO_MAX_WIDTH / photo.width)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    thumb = photo.resize(size, Image.BILINEAR)
    draw = ImageDraw.Draw(thumb)
    for color, box in boxes:
        if box is not None and crops.unusable_box(box, photo.width, photo.height) is None:
            l, t, w, h = (float(v) * scale for v in box)
            draw.rectangle([l, t, l + w, t + h], outline=color, width=2)
    return thumb


def _thumbnails(row: dict, photos: Photos) -> tuple[str | None, str | None]:
    """(photo with the crop box drawn, the 64x64 crop the network saw) as data URIs, None if unavailable."""
    photo = photos.get(row.get("image"))
    if photo is None:
        return None, None
    box = row.get("box")
    thumb = draw_boxes(photo, [((40, 170, 40), row.get("true_box")), ((255, 40, 40), box)])  # true box: green
    crop_uri = None
    crop = photos.crop(row.get("image"), photo, box)
    if crop is not None:
        crop_uri = data_uri(Image.fromarray(crop))
    return data_uri(thumb, "JPEG"), crop_uri


def _length_label(i: int) -> str:
    return ">5" if i == 6 else str(i)  # Goodfellow et al. 2014, sec. 3: L in {0, ..., 5, more than 5}


def _probability_cells(row: dict) -> tuple[list, list]:
    """(length cells, digit cells) as (text, probability, css class); [] where the row has none
    (OCR baselines write null). The top length is outlined; positions past the reading fade."""
    length_probs, digit_probs = row.get("length_probs") or [], row.get("digit_probs") or []
    length_cells, digit_cells = [], []
    if length_probs:
        top = max(range(len(length_probs)), key=lambda i: length_probs[i])
        length_cells = [(_length_label(i), _unit(p), "pick" if i == top else "") for i, p in enumerate(length_probs)]
    read = len(str(row.get("pred", "")))
    for position, probs in enumerate(digit_probs):
        k = max(range(len(probs)), key=lambda i: probs[i])
        digit_cells.append(("·" if k == BLANK else str(k), _unit(probs[k]), "" if position < read else "past"))
    return length_cells, digit_cells


def _unit(p: float) -> float:
    return max(0.0, min(1.0, float(p)))


def error_kind(truth: str | None, pred: str) -> str:
    """right, or the kind of mistake: missing digit (shorter reading), extra digit (longer),
    wrong digit (same length); unlabelled without a truth. The gallery's kind filter."""
    if truth is None:
        return "unlabelled"
    truth = str(truth)
    if pred == truth:
        return "right"
    if len(pred) < len(truth):
        return "missing-digit"
    if len(pred) > len(truth):
        return "extra-digit"
    return "wrong-digit"


def accepted(row: dict, threshold: float | None) -> bool:
    """The refusal rule (evaluation.py, predict.py): accept when log P(S|X) >= threshold; no
    threshold (none reached the target) or a '>5' reading refers the photo to a person."""
    conf = row.get("confidence")
    return (threshold is not None and conf is not None and float(conf) >= threshold
            and str(row.get("pred", "")) != ">5")


def _percent(logp) -> str:
    return "–" if logp is None else f"{100 * math.exp(min(float(logp), 0.0)):.1f}%"


def _card(row: dict, photos: Photos, threshold: float | None) -> dict:
    """What the template shows for one photo (templates/gallery.html escapes every string)."""
    truth, pred = row.get("truth"), str(row.get("pred", ""))
    kind = error_kind(truth, pred)
    key = id(row)  # a photo in two sections is drawn once
    if key not in photos.uris:
        photos.uris[key] = _thumbnails(row, photos)
    photo_uri, crop_uri = photos.uris[key]
    image = str(row.get("image") or "")
    t = None if truth is None else str(truth)
    # In a mistake, the characters that differ from the truth at their position are marked.
    pred_chars = [(c, t is not None and kind != "right" and not (i < len(t) and t[i] == c)) for i, c in enumerate(pred)]
    length_cells, digit_cells = _probability_cells(row)
    conf = row.get("confidence")
    return {
        "verdict": "unlabelled" if t is None else ("right" if kind == "right" else "wrong"),
        "kind": kind, "kind_text": "" if kind in ("right", "unlabelled") else kind.replace("-", " "),
        "decision": "accepted" if accepted(row, threshold) else "referred",
        "length": len(t if t is not None else pred),
        "photo_uri": photo_uri, "crop_uri": crop_uri, "image": image, "file": str(row.get("file", "")),
        "problem": photos.problems.get(image, "no photo path"),
        "pred_chars": pred_chars, "missing": max(0, len(t) - len(pred)) if t is not None else 0,
        "truth": "?" if t is None else t,
        "confidence": _percent(conf), "logp": "–" if conf is None else f"{float(conf):.3f}",
        "adhoc": None if row.get("adhoc_confidence") is None else _percent(row["adhoc_confidence"]),
        "length_cells": length_cells, "digit_cells": digit_cells,
    }


def select_sections(rows: Sequence[dict], n: int = GALLERY_N, seed: int = 0) -> dict[str, list[dict]]:
    """The gallery's three lists, each sorted by confidence and at most n long: the mistakes
    (most confident first), a random sample of all photos (most confident first), and the right
    answers (least confident first)."""
    conf = metrics.confidences(rows)
    order = sorted(range(len(rows)), key=lambda i: -conf[i])  # most confident first; stable for ties
    is_right = [r.get("truth") is not None and str(r["truth"]) == str(r.get("pred", "")) for r in rows]
    is_wrong = [r.get("truth") is not None and not ok for r, ok in zip(rows, is_right)]
    sample = set(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return {
        "mistakes": [rows[i] for i in order if is_wrong[i]][:n],
        "sample": [rows[i] for i in order if i in sample],
        "least_confident_right": [rows[i] for i in reversed(order) if is_right[i]][:n],
    }


SECTIONS = (  # key, heading, why, the nav bar's short name
    ("mistakes", "Most confident mistakes",
     "Wrong transcriptions, most confident first (book sec. 11.5). A confident mistake is often a "
     "data problem: a crop that cuts digits off, a wrong label. Look at these on training photos too. "
     "Those above the threshold line were accepted: these are the errors users see.", "mistakes"),
    ("sample", "The model in action",
     "A random sample (seed {seed}), most confident first: what the model does on ordinary photos.", "in action"),
    ("least_confident_right", "Least confident correct answers",
     "Right, but the model was unsure, least confident first: these are referred to a person first "
     "as the threshold rises.", "least confident right"),
)


def decision_rule(rows: Sequence[dict], threshold: dict | None = None, target: float = TARGET) -> dict:
    """{"value", "target", "source"} of the refusal threshold the gallery marks: the given one
    (a run's, chosen on validation), else the one reaching `target` on these rows."""
    if threshold is not None:
        return {"value": threshold.get("value"), "target": float(threshold.get("target", target)),
                "source": threshold.get("source") or "given"}
    scored = metrics.labelled(rows)
    value = (metrics.threshold_for_accuracy(metrics.confidences(scored), metrics.correctness(scored), target)
             if scored else None)
    return {"value": value, "target": target, "source": "chosen on these photos"}


def _decision_text(rows: Sequence[dict], rule: dict) -> tuple[str, str]:
    """(the header's line on the threshold and coverage, the threshold line's own words)."""
    target, value = metrics.pct(rule["target"]), rule["value"]
    if value is None:
        return (f"No refusal threshold reaches {target} accuracy ({rule['source']}): every photo is "
                f"referred to a person.", "no threshold reaches the target: every photo referred")
    scored = metrics.labelled(rows)
    coverage, accuracy = metrics.apply_threshold(metrics.confidences(scored), metrics.correctness(scored), value)
    words = f"threshold: model's confidence {_percent(value)} (log P(S|X) = {value:.4f})"
    n_accepted = sum(accepted(r, value) for r in rows)
    return (f"Coverage at {target} accuracy: {metrics.pct(coverage)} of the photos with a truth accepted "
            f"(accuracy there {metrics.pct(accuracy)}); {n_accepted} of {len(rows)} photos accepted, the rest "
            f"referred to a person. Refusal {words}, {rule['source']}.", words)


_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                autoescape=True, trim_blocks=True, lstrip_blocks=True)


def gallery_html(rows: Sequence[dict], n: int = GALLERY_N, seed: int = 0, title: str = "transcribe gallery",
                 source: str = "", plots: Sequence[Path] = (), threshold: dict | None = None,
                 page_size: int = GALLERY_PAGE) -> tuple[str, dict[str, list[dict]], dict[str, str]]:
    """The page's HTML, the sections shown, and the photos that could not be read.

    threshold: {"value", "target", "source"} of the refusal rule to mark on the cards (a run's,
    chosen on validation); None: the one reaching TARGET on these rows, said so on the page."""
    rule = decision_rule(rows, threshold)
    sections = select_sections(rows, n, seed)
    photos = Photos()
    scored = metrics.labelled(rows)
    n_right = int(metrics.correctness(scored).sum())
    headline = (f"{len(rows)} photos, {len(scored)} with a truth: {n_right} read right, "
                f"{len(scored) - n_right} wrong" + (f" ({100 * n_right / len(scored):.2f}% sequence accuracy)"
                                                    if scored else ""))
    decision, line = _decision_text(rows, rule)
    blocks = []
    for key, heading, why, _ in SECTIONS:
        cards = [_card(r, photos, rule["value"]) for r in sections[key]]
        for before, card in zip(cards, cards[1:]):  # the line where the threshold falls (gallery.js redraws it)
            card["line_before"] = before["decision"] if before["decision"] != card["decision"] else ""
        total = {"mistakes": len(scored) - n_right, "sample": len(rows), "least_confident_right": n_right}[key]
        counts = {"total": total, "accepted": sum(c["decision"] == "accepted" for c in cards),
                  "referred": sum(c["decision"] == "referred" for c in cards)}
        blocks.append((key, heading, why.format(seed=seed), cards, counts))
    plot_uris = []
    for p in plots:
        with Image.open(p) as im:
            plot_uris.append((data_uri(im.convert("RGB")), Path(p).name))
    lengths = sorted({c["length"] for _, _, _, cards, _ in blocks for c in cards})
    page = _TEMPLATES.get_template("gallery.html").render(
        title=title, headline=headline, decision_text=decision, threshold_line=line, source=source,
        sections=blocks, short={key: short for key, _, _, short in SECTIONS}, lengths=lengths,
        plots=plot_uris, problems=sorted(photos.problems.items()), page_size=page_size)
    return page, sections, photos.problems


def contact_sheet(rows: Sequence[dict], path: Path, columns: int = SHEET_COLUMNS) -> Path | None:
    """A PNG grid of the crops of `rows` (e.g. the worst mistakes), truth and reading under each."""
    if not rows:
        return None
    photos = Photos()
    font = ImageFont.load_default()
    label_h = 30
    rows_n = math.ceil(len(rows) / columns)
    sheet = Image.new("RGB", (columns * SHEET_TILE, rows_n * (SHEET_TILE + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % columns) * SHEET_TILE, (i // columns) * (SHEET_TILE + label_h)
        photo = photos.get(row.get("image"))
        crop = None if photo is None else photos.crop(row.get("image"), photo, row.get("box"))
        if crop is not None:
            tile = Image.fromarray(crop).resize((SHEET_TILE, SHEET_TILE), Image.NEAREST)
            sheet.paste(tile, (x, y))
        else:
            draw.rectangle([x, y, x + SHEET_TILE - 1, y + SHEET_TILE - 1], fill=(220, 220, 220))
            draw.text((x + 4, y + 40), "no photo", fill=(90, 90, 90), font=font)
        conf = row.get("confidence")
        p = "" if conf is None else f" ({100 * math.exp(min(float(conf), 0.0)):.0f}%)"
        draw.text((x + 3, y + SHEET_TILE + 2), f"truth {row.get('truth')}", fill=(20, 20, 20), font=font)
        draw.text((x + 3, y + SHEET_TILE + 15), f"read {row.get('pred', '')}{p}", fill=(190, 30, 30), font=font)
    atomic_write(path, lambda f: sheet.save(f, format="PNG"))
    return Path(path)


def write_gallery(rows: Sequence[dict], out_dir: Path, n: int = GALLERY_N, seed: int = 0,
                  title: str = "transcribe gallery", source: str = "", plots: Sequence[Path] = (),
                  threshold: dict | None = None) -> dict[str, Any]:
    """gallery.html and mistakes.png (contact sheet of the first page of most confident mistakes)
    into out_dir. threshold: as gallery_html's."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page, sections, problems = gallery_html(rows, n, seed, title, source, plots, threshold)
    path = out_dir / "gallery.html"
    atomic_write(path, page)
    sheet = contact_sheet(sections["mistakes"][:GALLERY_PAGE], out_dir / "mistakes.png")
    return {"gallery": path, "contact_sheet": sheet, "counts": {k: len(v) for k, v in sections.items()},
            "unreadable_photos": problems}


def run_threshold(predictions_file: Path) -> dict | None:
    """The refusal threshold of the run a predictions file was evaluated from (RUN/eval/<split>/
    predictions.jsonl -> RUN/threshold.json, chosen on validation), or None."""
    run = Path(predictions_file).resolve().parent.parent.parent
    saved = read_threshold(run) if Path(predictions_file).resolve().parent.parent.name == "eval" else None
    if saved is None:
        return None
    return {"value": saved["threshold"], "target": saved.get("target", TARGET),
            "source": f"the run's, chosen on {saved.get('chosen_on', 'validation')} ({run / THRESHOLD_FILE})"}


# ---------------------------------------------------------------- command

def run_gallery(args: argparse.Namespace) -> int:
    rows = read_predictions(args.predictions)
    out = args.out or args.predictions.parent
    result = write_gallery(rows, out, n=args.cards, seed=args.sample_seed, title=f"transcribe: {args.predictions.name}",
                           source=str(args.predictions.resolve()), threshold=run_threshold(args.predictions))
    counts = result["counts"]
    print(f"{len(rows)} predictions: {counts['mistakes']} mistakes shown, {counts['sample']} sampled, "
          f"{counts['least_confident_right']} least confident right")
    if result["unreadable_photos"]:
        print(f"{len(result['unreadable_photos'])} photos could not be read (listed at the end of the page)")
    print(f"gallery: {result['gallery']}")
    if result["contact_sheet"]:
        print(f"contact sheet of the worst mistakes: {result['contact_sheet']}")
    return 0
