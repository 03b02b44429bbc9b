"""Plots and galleries from a predictions file: look at the model in action, worst mistakes first.

Deep Learning book, sec. 11.5: "Visualize the model in action" and "Visualize the worst
mistakes" — sorting the *training* transcriptions by confidence and looking at the most
confident mistakes is how the Street View team found that crops were too tight (sec. 11.6).
So the gallery works on any predictions file (validation, test, training, an OCR baseline).

The gallery is one self-contained HTML page: every image is embedded as a base64 data URI,
so the page opens from disk and still works when moved or mailed. Every string put into the
page is HTML-escaped (file names and truths come from files we do not control).

pyplot is imported on the first plot (`_pyplot`), after selecting the file-only Agg backend:
selecting it at import time would change matplotlib's state for whoever imports this module.

Size: about 460 lines: the plots and the gallery are two views of one predictions file.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.tensorboard import SummaryWriter

from transcribe import crops, metrics, svhn
from transcribe.config import BLANK, CACHE_SIZE, GALLERY_N
from transcribe.predictions import read_predictions
from transcribe.runs import atomic_write, save_figure

PHOTO_HEIGHT = 160      # px, the full photo's thumbnail height (width follows, capped below)
PHOTO_MAX_WIDTH = 320   # px (the page shows it at most 128 px high: a little headroom stays sharp)
SHEET_COLUMNS = 10      # contact sheet layout
SHEET_TILE = 96         # px, a 64x64 crop upscaled for the contact sheet


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
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("exp(confidence) = P(S|X)")
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


def _prob_cell(text: str, p: float, cls: str = "") -> str:
    # Cell shade = probability, so a confident head reads dark at a glance.
    alpha = max(0.0, min(1.0, float(p)))
    cls = f' class="{cls}"' if cls else ""
    return (f'<td{cls} style="background:rgba(33,102,172,{alpha:.2f});color:{"#fff" if alpha > 0.55 else "#111"}"'
            f' title="{html.escape(f"{text}: {p:.4f}")}">{html.escape(text)}<br><small>{p:.2f}</small></td>')


def _probabilities_html(row: dict) -> str:
    """Length probabilities and the top digit (with its probability) at each position; '' if absent."""
    length_probs = row.get("length_probs")
    digit_probs = row.get("digit_probs")
    parts = []
    if length_probs:
        top = max(range(len(length_probs)), key=lambda i: length_probs[i])
        cells = "".join(_prob_cell(_length_label(i), p, "pick" if i == top else "") for i, p in enumerate(length_probs))
        parts.append(f'<tr><th title="P(length)">len</th>{cells}</tr>')
    if digit_probs:
        read = len(str(row.get("pred", "")))
        cells = []
        for position, probs in enumerate(digit_probs):  # positions past the reading are faded
            k = max(range(len(probs)), key=lambda i: probs[i])
            cells.append(_prob_cell("·" if k == BLANK else str(k), probs[k], "" if position < read else "past"))
        parts.append(f'<tr><th title="top digit per position">digit</th>{"".join(cells)}</tr>')
    return f'<table class="probs">{"".join(parts)}</table>' if parts else ""


def _card(row: dict, photos: Photos) -> str:
    esc = html.escape
    truth, pred = row.get("truth"), str(row.get("pred", ""))
    right = truth is not None and str(truth) == pred
    conf = row.get("confidence")
    photo_uri, crop_uri = _thumbnails(row, photos)
    image = str(row.get("image") or "")
    photo_html = (f'<img class="photo" src="{photo_uri}" alt="photo {esc(str(row.get("file", "")))}" '
                  f'title="{esc(image)}">' if photo_uri else
                  f'<div class="missing" title="{esc(photos.problems.get(image, "no photo path"))}">'
                  f'photo not available<br><small>{esc(image)}</small></div>')
    crop_html = f'<img class="crop" src="{crop_uri}" alt="crop">' if crop_uri else ""
    verdict = "unlabelled" if truth is None else ("right" if right else "wrong")
    # In a mistake, the characters that differ from the truth at their position are marked.
    pred_html = "".join(esc(c) if right or truth is None or (i < len(str(truth)) and str(truth)[i] == c)
                        else f'<span class="bad">{esc(c)}</span>' for i, c in enumerate(pred))
    if truth is not None and len(pred) < len(str(truth)):  # digits the reading left out
        pred_html += f'<span class="bad" title="missing digits">{"_" * (len(str(truth)) - len(pred))}</span>'
    conf_text = "–" if conf is None else f"log P = {float(conf):.3f} &nbsp; P = {100 * math.exp(min(float(conf), 0.0)):.1f}%"
    adhoc = row.get("adhoc_confidence")
    adhoc_text = "" if adhoc is None else f'<div class="adhoc">ad hoc: {100 * math.exp(min(float(adhoc), 0.0)):.1f}%</div>'
    return (
        f'<div class="card {verdict}">'
        f'<div class="pics">{photo_html}{crop_html}</div>'
        f'<div class="text"><div class="read"><span class="label">read</span> <b class="pred">{pred_html or "(nothing)"}</b>'
        f' <span class="label">truth</span> <b>{esc("?" if truth is None else str(truth))}</b></div>'
        f'<div class="conf">{conf_text}</div>{adhoc_text}'
        f'<div class="file" title="{esc(image)}">{esc(str(row.get("file", "")))}</div></div>'
        f'{_probabilities_html(row)}</div>'
    )


def select_sections(rows: Sequence[dict], n: int = GALLERY_N, seed: int = 0) -> dict[str, list[dict]]:
    """The gallery's three lists: most confident mistakes, a random sample, least confident right answers."""
    conf = metrics.confidences(rows)
    order = sorted(range(len(rows)), key=lambda i: -conf[i])  # most confident first; stable for ties
    is_right = [r.get("truth") is not None and str(r["truth"]) == str(r.get("pred", "")) for r in rows]
    is_wrong = [r.get("truth") is not None and not ok for r, ok in zip(rows, is_right)]
    sample = random.Random(seed).sample(range(len(rows)), min(n, len(rows)))
    return {
        "mistakes": [rows[i] for i in order if is_wrong[i]][:n],
        "sample": [rows[i] for i in sample],
        "least_confident_right": [rows[i] for i in reversed(order) if is_right[i]][:n],
    }


_CSS = """
body{font:14px/1.35 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header{background:#1d2939;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px;font-size:21px} header p{margin:2px 0;color:#cfd6e0}
nav a{color:#9cc3ff;margin-right:16px}
main{padding:8px 28px 40px} h2{margin:26px 0 4px;font-size:18px} p.why{margin:0 0 12px;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);border-top:4px solid #999}
.card.wrong{border-top-color:#d64545} .card.right{border-top-color:#2f9e5b}
.pics{display:flex;gap:8px;align-items:center;justify-content:space-between;min-height:128px}
.photo{max-height:128px;max-width:calc(100% - 136px);border-radius:4px}
.crop{width:128px;height:128px;image-rendering:pixelated;border-radius:4px;outline:1px solid #ccc}
.missing{width:180px;height:120px;background:#eee;color:#777;font-size:12px;display:flex;flex-direction:column;
 justify-content:center;align-items:center;text-align:center;overflow:hidden;word-break:break-all}
.text{margin-top:6px} .label{color:#888;font-size:12px} .read b{font-size:20px;letter-spacing:1px;margin-right:8px}
.wrong .pred{color:#333} .wrong .pred .bad{color:#d32f2f;text-decoration:underline} .right .pred{color:#1b7f45}
.conf,.adhoc{font-size:12px;color:#333} .adhoc{color:#777}
.file{font-size:11px;color:#888;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
table.probs{border-collapse:separate;border-spacing:2px;margin-top:6px;font-size:11px}
table.probs th{font-weight:normal;color:#888;text-align:right;padding-right:4px}
table.probs td{width:30px;text-align:center;border-radius:3px;padding:1px 0}
table.probs td.pick{outline:2px solid #f5a623} table.probs td.past{opacity:.35}
.plots{display:flex;flex-wrap:wrap;gap:10px} .plots img{height:300px;background:#fff;border-radius:6px}
.empty{color:#777;font-style:italic} .problems{color:#a33}
"""

# Sets <body data-images="loaded/total"> once the page has loaded: the browser test reads it.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def gallery_html(rows: Sequence[dict], n: int = GALLERY_N, seed: int = 0, title: str = "transcribe gallery",
                 source: str = "", plots: Sequence[Path] = ()) -> tuple[str, dict[str, list[dict]], dict[str, str]]:
    """The page's HTML, the sections shown, and the photos that could not be read."""
    esc = html.escape
    sections = select_sections(rows, n, seed)
    photos = Photos()
    scored = metrics.labelled(rows)
    n_right = int(metrics.correctness(scored).sum())
    headline = (f"{len(rows)} photos, {len(scored)} with a truth: {n_right} read right, "
                f"{len(scored) - n_right} wrong" + (f" ({100 * n_right / len(scored):.2f}% sequence accuracy)"
                                                    if scored else ""))
    blocks = [
        ("mistakes", "Most confident mistakes",
         "Wrong transcriptions, most confident first (book sec. 11.5). A confident mistake is often a "
         "data problem: a crop that cuts digits off, a wrong label. Look at these on training photos too."),
        ("sample", "The model in action",
         f"A random sample (seed {seed}): what the model does on ordinary photos."),
        ("least_confident_right", "Least confident correct answers",
         "Right, but the model was unsure: these are referred to a person first as the threshold rises."),
    ]
    body = []
    for key, heading, why in blocks:
        cards = "".join(_card(r, photos) for r in sections[key])
        body.append(f'<h2 id="{key}">{esc(heading)} <small>({len(sections[key])})</small></h2>'
                    f'<p class="why">{esc(why)}</p>'
                    + (f'<div class="grid">{cards}</div>' if cards else '<p class="empty">none</p>'))
    plot_html = ""
    if plots:
        imgs = []
        for p in plots:
            with Image.open(p) as im:
                imgs.append(f'<img src="{data_uri(im.convert("RGB"))}" alt="{esc(Path(p).stem)}" title="{esc(Path(p).name)}">')
        plot_html = f'<h2 id="plots">Plots</h2><div class="plots">{"".join(imgs)}</div>'
    problems = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in photos.problems.items())
    problem_html = (f'<h2>Photos that could not be read ({len(photos.problems)})</h2><ul class="problems">{problems}</ul>'
                    if problems else "")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head>\n<body data-images=\"pending\">"
        f"<header><h1>{esc(title)}</h1><p>{esc(headline)}</p>"
        + (f"<p>source: {esc(source)}</p>" if source else "")
        + '<nav><a href="#mistakes">mistakes</a><a href="#sample">in action</a>'
          '<a href="#least_confident_right">least confident right</a>'
        + ('<a href="#plots">plots</a>' if plots else "") + "</nav></header>\n<main>"
        + "\n".join(body) + plot_html + problem_html
        + f"</main>\n<script>{_SCRIPT}</script></body></html>\n"
    )
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
                  title: str = "transcribe gallery", source: str = "", plots: Sequence[Path] = ()) -> dict[str, Any]:
    """gallery.html and mistakes.png (contact sheet of the most confident mistakes) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page, sections, problems = gallery_html(rows, n, seed, title, source, plots)
    path = out_dir / "gallery.html"
    atomic_write(path, page)
    sheet = contact_sheet(sections["mistakes"], out_dir / "mistakes.png")
    return {"gallery": path, "contact_sheet": sheet, "counts": {k: len(v) for k, v in sections.items()},
            "unreadable_photos": problems}


# ---------------------------------------------------------------- command

def run_gallery(args: argparse.Namespace) -> int:
    rows = read_predictions(args.predictions)
    out = args.out or args.predictions.parent
    result = write_gallery(rows, out, n=args.cards, seed=args.sample_seed, title=f"transcribe: {args.predictions.name}",
                           source=str(args.predictions.resolve()))
    counts = result["counts"]
    print(f"{len(rows)} predictions: {counts['mistakes']} mistakes shown, {counts['sample']} sampled, "
          f"{counts['least_confident_right']} least confident right")
    if result["unreadable_photos"]:
        print(f"{len(result['unreadable_photos'])} photos could not be read (listed at the end of the page)")
    print(f"gallery: {result['gallery']}")
    if result["contact_sheet"]:
        print(f"contact sheet of the worst mistakes: {result['contact_sheet']}")
    return 0
