"""Synthetic house numbers in SVHN format 1: the embedded default dataset.

Everything runs on a fresh machine with no download: `generate(out, n, seed)` writes
`1.png .. n.png` plus a `digitStruct.mat` (through `svhn.write_digitstruct`), so the rest of
the pipeline (crops, cache, training, evaluation) cannot tell it from the real archive.

What the photos look like is drawn from statistics of the real SVHN labels, stored in
`synth_stats.json` beside this file (regenerate with the command in its "source" field):
number length, digit frequencies, digit box height / aspect / spacing / vertical jitter, and
where the number sits in the photo and how big the photo is around it. Everything else
(plates, borders, brick and siding textures, clutter, blur, noise, JPEG artifacts, small
rotation/shear, tight framing) is hand-made to resemble street photos (Goodfellow et al. 2014,
sec. 5.1: SVHN photos are "cropped ... with the house number ... and its surroundings").

Digit boxes are tight boxes around each rendered glyph's ink, in reading order, as
(left, top, width, height) in integer pixels: the geometry the crop code expects.

Labels are sampled apart from rendering (`sample_labels`), so their statistics can be
tested cheaply. Every photo has its own random generator seeded by (seed, index), so the
same seed gives byte-identical PNGs and labels, and any photo can be re-rendered alone.

Size: about 670 lines, one concept (the generator): most of it is drawing code used only here.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import io
import json
import math
import multiprocessing as mp
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib  # only for where its fonts live
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from transcribe import svhn
from transcribe.config import MAX_DIGITS  # longer numbers are never generated
from transcribe.progress import bar as progress_bar
from transcribe.runs import atomic_write

STATS_PATH = Path(__file__).with_name("synth_stats.json")
QUANTILES = tuple(i / 20 for i in range(21))  # every 5%: 21 numbers per distribution keep the JSON small
GLYPH_PX = 64  # font size at which glyph masks are rendered once and cached, then resized per photo
MAX_NUMBER_HEIGHT = 150  # px; clip the long tail (real max 298) so a rare photo stays cheap to render
LETTERS = "ABCDEFGHKLMNPRSTabcdehnrst"  # clutter: parts of street names, "No", "bis"...

# Fonts that ship with matplotlib: sans, serif and mono, regular/bold/oblique, plus STIX (Times-like).
# Bold faces are listed twice: house numbers are mostly heavy strokes.
FONT_FILES = (
    "DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneralBol.ttf",
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
)


# ----------------------------------------------------------------------------- statistics

def _quantiles(values) -> list[float]:
    return [round(float(v), 4) for v in np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)]


def derive_stats(labels_csv: str | Path, images: str | Path | None = None) -> dict:
    """Statistics of real SVHN labels for the generator.

    labels_csv: `name;label;top;left;height;width`, one row per digit, label 10 = digit 0.
    images: optional format-1 folder whose PNG sizes (read from headers only) measure how big
    the photo is around the number; without it SVHN-like defaults are stored.
    Distributions are stored as 21 quantiles (levels in "quantile_levels").
    """
    labels_csv = Path(labels_csv)
    numbers: dict[str, list[tuple[int, float, float, float, float]]] = defaultdict(list)
    try:
        with open(labels_csv, newline="") as f:
            reader = csv.reader(f, delimiter=";")
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["name", "label", "top", "left", "height", "width"]:
                raise ValueError(f"{labels_csv}: expected header name;label;top;left;height;width, got {header}")
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    name, label, top, left, height, width = row
                    label = int(label)
                    numbers[name].append((label % 10, float(top), float(left), float(height), float(width)))
                except ValueError:
                    raise ValueError(f"{labels_csv}: line {line_no}: cannot parse {';'.join(row)!r}") from None
    except OSError as e:
        raise ValueError(f"{labels_csv}: cannot read ({e.strerror})") from None
    if not numbers:
        raise ValueError(f"{labels_csv}: no label rows")

    length_counts: dict[int, int] = defaultdict(int)
    first = np.zeros(10, np.int64)
    others = np.zeros(10, np.int64)
    digit_h, aspect, aspect_by_digit, gaps, jitter, spread, number_h = [], [], defaultdict(list), [], [], [], []
    for digits in numbers.values():
        length_counts[len(digits)] += 1
        labels = [d[0] for d in digits]
        first[labels[0]] += 1
        for d in labels[1:]:
            others[d] += 1
        tops = np.array([d[1] for d in digits])
        lefts = np.array([d[2] for d in digits])
        hs = np.array([d[3] for d in digits])
        ws = np.array([d[4] for d in digits])
        if hs.min() <= 0 or ws.min() <= 0:
            continue  # a degenerate box says nothing about geometry
        med_h = float(np.median(hs))
        number_h.append(float((tops + hs).max() - tops.min()))
        digit_h.extend(hs.tolist())
        for lab, w, h in zip(labels, ws, hs):
            aspect_by_digit[str(lab)].append(w / h)
            if lab != 1:  # a 1 is narrow in every font; the others set the font's stretch
                aspect.append(w / h)
        # gap from one box's right edge to the next box's left edge, in digit heights
        gaps.extend(((lefts[1:] - (lefts[:-1] + ws[:-1])) / med_h).tolist())
        if len(digits) > 1:
            centres = tops + hs / 2
            jitter.extend(((centres - np.median(centres)) / med_h).tolist())
            spread.extend((hs / med_h).tolist())

    stats = {
        "source": f"python -m transcribe.synth --derive-stats {labels_csv}"
                  + (f" --images {images}" if images else ""),
        "n_images": len(numbers),
        "n_digits": int(sum(length_counts[k] * k for k in length_counts)),
        "length_counts": {str(k): length_counts[k] for k in sorted(length_counts)},
        "first_digit_counts": first.tolist(),
        "other_digit_counts": others.tolist(),
        "quantile_levels": list(QUANTILES),
        "number_height_px": _quantiles(number_h or [32]),
        "digit_height_px": _quantiles(digit_h or [32]),
        "digit_aspect": _quantiles(aspect or [0.5]),  # width / height, digits other than 1
        "digit_aspect_median_by_digit": {k: round(float(np.median(v)), 3) for k, v in sorted(aspect_by_digit.items())},
        "gap_rel": _quantiles(gaps or [0.0]),
        "jitter_rel": _quantiles(jitter or [0.0]),
        "height_ratio": _quantiles(spread or [1.0]),  # digit height / the number's median digit height
        "photo": _photo_stats(numbers, images),
    }
    return stats


def _photo_stats(numbers: dict, images: str | Path | None) -> dict:
    """Where the number box sits in the photo, from PNG header sizes of a real folder."""
    if images is None:
        # SVHN-like defaults, measured once on svhn-sample/train (2,000 photos).
        return {"n_images": 0, "box_height_frac": [0.71] * 21, "box_width_frac": [0.29] * 21,
                "box_center_x": [0.5] * 21, "box_center_y": [0.49] * 21, "aspect": [2.23] * 21}

    images = Path(images)
    rh, rw, cx, cy, aspect = [], [], [], [], []
    for name, digits in numbers.items():
        path = images / name
        if not path.exists():
            continue
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
        tops = np.array([d[1] for d in digits]); lefts = np.array([d[2] for d in digits])
        bottoms = tops + np.array([d[3] for d in digits]); rights = lefts + np.array([d[4] for d in digits])
        rh.append((bottoms.max() - tops.min()) / h)
        rw.append((rights.max() - lefts.min()) / w)
        cx.append((lefts.min() + rights.max()) / 2 / w)
        cy.append((tops.min() + bottoms.max()) / 2 / h)
        aspect.append(w / h)
    if not rh:
        raise ValueError(f"{images}: none of the labelled images is there")
    return {"n_images": len(rh), "box_height_frac": _quantiles(rh), "box_width_frac": _quantiles(rw),
            "box_center_x": _quantiles(cx), "box_center_y": _quantiles(cy), "aspect": _quantiles(aspect)}


@lru_cache(maxsize=4)
def load_stats(path: str | Path = STATS_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def _draw(quantiles, rng: np.random.Generator) -> float:
    """One draw from a distribution stored as quantiles (inverse CDF, linear between levels).

    Plain Python: np.interp on one scalar costs ten times more, and this runs ~10 times a photo.
    """
    pos = rng.random() * (len(quantiles) - 1)
    i = int(pos)
    return quantiles[i] + (quantiles[i + 1] - quantiles[i]) * (pos - i)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(float(x), lo), hi)  # np.clip on a scalar is slow


# ----------------------------------------------------------------------------- labels

def sample_labels(n: int, rng: np.random.Generator, stats: dict | None = None) -> list[tuple[int, ...]]:
    """n digit sequences with SVHN's length distribution (1..MAX_DIGITS) and digit frequencies.

    The first digit has its own distribution (house numbers rarely start with 0).
    """
    stats = stats or load_stats()
    lengths, cdf_len, cdf_first, cdf_other = _label_cdfs(id(stats), stats)
    out = []
    for length in lengths[np.searchsorted(cdf_len, rng.random(n), side="right")]:
        head = int(np.searchsorted(cdf_first, rng.random(), side="right"))
        tail = np.searchsorted(cdf_other, rng.random(int(length) - 1), side="right")
        out.append((head, *(int(d) for d in tail)))
    return out


_CDF_CACHE: dict[int, tuple] = {}


def _label_cdfs(key: int, stats: dict) -> tuple:
    """(lengths, their CDF, first-digit CDF, other-digit CDF), computed once per stats dict."""
    if key not in _CDF_CACHE or _CDF_CACHE[key][0] is not stats:
        lengths = np.array([int(k) for k in stats["length_counts"]])
        counts = np.array(list(stats["length_counts"].values()), np.float64)
        keep = lengths <= MAX_DIGITS

        def cdf(c):
            c = np.cumsum(np.asarray(c, np.float64))
            c /= c[-1]
            c[-1] = 1.0 + 1e-9  # a draw of 0.9999... never falls past the last class
            return c

        _CDF_CACHE[key] = (stats, (lengths[keep], cdf(counts[keep]), cdf(stats["first_digit_counts"]),
                                   cdf(stats["other_digit_counts"])))
    return _CDF_CACHE[key][1]


# ----------------------------------------------------------------------------- glyphs

def _font_dir() -> Path:

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _font_paths() -> tuple[str, ...]:
    folder = _font_dir()
    paths = tuple(str(folder / f) for f in FONT_FILES if (folder / f).exists())  # duplicates = weights
    if not paths:
        raise RuntimeError(f"{folder}: none of the matplotlib fonts {FONT_FILES} found")
    return paths


@lru_cache(maxsize=None)
def _glyph(font_path: str, char: str) -> np.ndarray:
    """Ink of one character at GLYPH_PX, cropped to its tight bounds: (h, w) uint8 coverage."""

    font = ImageFont.truetype(font_path, GLYPH_PX)
    l, t, r, b = font.getbbox(char)
    im = Image.new("L", (r - l + 4, b - t + 4), 0)
    ImageDraw.Draw(im).text((2 - l, 2 - t), char, fill=255, font=font)
    a = np.asarray(im)
    ys, xs = np.nonzero(a > 40)
    return np.ascontiguousarray(a[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


@lru_cache(maxsize=None)
def _font_digit_aspect(font_path: str) -> float:
    """Median width/height of the font's digits other than 1: the font's natural aspect."""
    return float(np.median([_glyph(font_path, str(d)).shape[1] / _glyph(font_path, str(d)).shape[0]
                            for d in (0, 2, 3, 4, 5, 6, 7, 8, 9)]))


@lru_cache(maxsize=50_000)
def _resized_glyph(font_path: str, char: str, w: int, h: int) -> np.ndarray:
    """The glyph's ink resized to (h, w); cached: sizes repeat across thousands of photos."""
    return _resized(_glyph(font_path, char), w, h)


def _resized(mask: np.ndarray, w: int, h: int) -> np.ndarray:

    out = np.asarray(Image.fromarray(mask).resize((max(1, w), max(1, h)), Image.BILINEAR))
    out.flags.writeable = False
    return out


# ----------------------------------------------------------------------------- colours

def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32) * 255


def _muted_hue(rng: np.random.Generator) -> float:
    k = rng.random()
    return rng.uniform(0.05, 0.13) if k < 0.5 else rng.uniform(0.52, 0.6) if k < 0.9 else rng.random()


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(background-of-digits, digit) colours with enough but varied contrast.

    Mostly achromatic or muted; sometimes the classic blue/green/red enamel plate.
    """
    kind = rng.random()
    if kind < 0.3:  # enamel plate: saturated dark blue/green/red, light digits
        hue = rng.choice([0.6, 0.6, 0.62, 0.35, 0.0]) + rng.normal(0, 0.02)
        back = _rgb(hue, rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.6))
        fore = _rgb(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.75, 1.0))
        return (back, fore) if rng.random() < 0.85 else (fore, back)  # or dark digits on a white plate
    # muted: walls are mostly warm (brick, beige, wood) or cool grey-blue
    hue_b, hue_f = (_muted_hue(rng) for _ in range(2))
    v_b = rng.uniform(0.05, 1.0)
    contrast = rng.uniform(0.3, 0.85)  # difference in value between digits and what is behind them
    darker = rng.random() < 0.5
    if v_b - contrast < 0.02:
        darker = False
    if v_b + contrast > 1.0:
        darker = True
    v_f = _clip(v_b - contrast if darker else v_b + contrast, 0.02, 1.0)
    back = _rgb(hue_b, rng.uniform(0, 0.55) ** 2, v_b)
    fore = _rgb(hue_f, rng.uniform(0, 0.6) ** 2 * (2.0 if rng.random() < 0.15 else 1), v_f)
    return back, fore


# ----------------------------------------------------------------------------- backgrounds

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""

    gh, gw = max(2, cells), max(2, int(cells * w / max(h, 1)))
    grid = ((rng.random((gh, gw)) * 255).astype(np.uint8))
    up = np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), np.float32)
    return up / 127.5 - 1


def _background(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 wall: flat, brick, siding or stucco, with a lighting gradient."""
    kind = rng.choice(["flat", "brick", "siding", "stucco"], p=[0.3, 0.25, 0.2, 0.25])
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    if kind == "brick":
        bh = max(3, int(h * rng.uniform(0.08, 0.25)))
        bw = int(bh * rng.uniform(2.0, 3.5))
        mortar = max(1, bh // 6)
        mortar_colour = np.clip(base * rng.uniform(0.5, 1.6), 0, 255)
        ys = np.arange(h)[:, None]; xs = np.arange(w)[None, :]
        oy = rng.integers(bh); ox = rng.integers(bw)
        row = (ys + oy) // bh
        col = (xs + ox + (row % 2) * (bw // 2)) // bw
        brick_id = (row * 7919 + col * 104729) % 97  # cheap per-brick hash: colour jitter per brick
        img *= (1 + (brick_id[..., None] / 97 - 0.5) * rng.uniform(0.1, 0.4))
        is_mortar = (((ys + oy) % bh) < mortar) | (((xs + ox + (row % 2) * (bw // 2)) % bw) < mortar)
        img[is_mortar] = mortar_colour
    elif kind == "siding":
        period = max(3, int(h * rng.uniform(0.1, 0.3)))
        ys = (np.arange(h) + rng.integers(period)) % period
        shade = 1 - rng.uniform(0.1, 0.35) * (ys / period)  # each board darker toward its lower edge
        img *= shade[:, None, None]
    elif kind == "stucco":
        img *= (1 + rng.uniform(0.05, 0.25) * _smooth_noise(rng, h, w, int(rng.integers(3, 12))))[..., None]
    # lighting: a linear gradient across the photo
    gy, gx = rng.normal(0, 0.25, 2)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    img *= (1 + gy * yy + gx * xx)[..., None]
    return img


def _paste_char(clutter, rng: np.random.Generator, h_num: float, cy: float, ox: float, num_w: float,
                W: int, near: bool) -> None:
    """Paste a letter or digit beside the number into the clutter mask (clutter is never labelled).

    near=False: at the photo's left/right edge, cut by it. near=True: a letter 0.4-0.8 digit
    heights from the number (SVHN crops often show bits of a street name or a neighbour).
    """

    # near the number only letters: a digit there would read as part of the number (label noise)
    chars = LETTERS if near or rng.random() < 0.5 else "0123456789"
    ch = chars[rng.integers(len(chars))]
    font_c = _font_paths()[rng.integers(len(_font_paths()))]
    g = _glyph(font_c, ch)
    ch_h = max(2, int(h_num * rng.uniform(0.5, 1.2)))
    ch_w = max(1, int(ch_h * g.shape[1] / g.shape[0]))
    m = Image.fromarray(_resized_glyph(font_c, ch, ch_w, ch_h))
    left_side = rng.random() < 0.5
    if near:
        gap = h_num * rng.uniform(0.4, 0.8)
        gx = int(ox - gap - ch_w) if left_side else int(math.ceil(ox + num_w + gap))
    else:
        # at least 0.6 digit heights away (the widest gap inside a number is 0.35): not read as a digit of it
        gx = int(ox - ch_w - 0.6 * h_num) if left_side else int(math.ceil(ox + num_w + 0.6 * h_num))
        gx = min(gx, -ch_w // 3) if left_side else max(gx, W - (2 * ch_w) // 3)
    clutter.paste(m, (gx, int(cy - ch_h / 2 + rng.normal(0, 0.2) * h_num)), m)


# ----------------------------------------------------------------------------- one photo

@dataclass(frozen=True)
class Photo:
    image: np.ndarray  # (H, W, 3) uint8
    digits: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]  # (left, top, width, height) per digit, ink-tight


def render(digits: tuple[int, ...], rng: np.random.Generator, stats: dict | None = None) -> Photo:
    """Render one house-number photo for `digits`; all randomness comes from `rng`."""

    stats = stats or load_stats()
    photo_stats = stats["photo"]
    font = _font_paths()[rng.integers(len(_font_paths()))]

    # --- number geometry in photo pixels (before rotation/shear)
    h_num = min(_draw(stats["number_height_px"], rng), MAX_NUMBER_HEIGHT)
    h_num = max(h_num, 9.0)
    stretch = _clip(_draw(stats["digit_aspect"], rng) / _font_digit_aspect(font), 0.6, 1.6)
    gap = _draw(stats["gap_rel"], rng) + 0.06  # human boxes are looser than ink: a little more air between inks
    gap = _clip(gap, -0.05, 0.35)
    jitter_scale = rng.uniform(0, 1) ** 2
    placed = []  # (digit, x, y, w, h) in number coordinates, y = top
    x = 0.0
    for d in digits:
        g = _glyph(font, str(d))
        dh = h_num * _clip(_draw(stats["height_ratio"], rng), 0.85, 1.15) * 0.92
        dw = dh * g.shape[1] / g.shape[0] * stretch
        dy = _clip(_draw(stats["jitter_rel"], rng), -0.15, 0.15) * h_num * jitter_scale
        placed.append((d, x, dy, dw, dh))
        x += dw + gap * h_num * rng.uniform(0.85, 1.15)
    num_w = placed[-1][1] + placed[-1][3]
    top0 = min(p[2] for p in placed)
    num_h = max(p[2] + p[4] for p in placed) - top0

    # --- photo size around the number (SVHN: the number fills ~70% of the height, is centred)
    H = num_h / _clip(_draw(photo_stats["box_height_frac"], rng), 0.3, 0.98)
    W = H * _clip(_draw(photo_stats["aspect"], rng), 1.0, 4.0)
    tight = rng.random() < 0.1  # number touching the photo's edges
    if tight:
        H = num_h * rng.uniform(1.0, 1.1)
    # SVHN: the number spans 29% of the photo's width (median), 67% at most
    if tight:
        W = max(W, num_w * rng.uniform(1.0, 1.1))
    else:
        W = max(W, num_w / rng.uniform(0.4, 0.7))
    H, W = max(int(round(H)), 12), max(int(round(W)), 16)
    cx = _clip(_draw(photo_stats["box_center_x"], rng), 0.3, 0.7) * W
    cy = _clip(_draw(photo_stats["box_center_y"], rng), 0.35, 0.65) * H
    # keep the number inside the photo (give or take a pixel when tight)
    cx = _clip(cx, num_w / 2, W - num_w / 2) if num_w < W else W / 2
    cy = _clip(cy, num_h / 2, H - num_h / 2) if num_h < H else H / 2
    ox, oy = cx - num_w / 2, cy - num_h / 2 - top0  # number coordinates -> photo coordinates

    # --- colours and background
    back, fore = _colour_pair(rng)
    plate = rng.random() < 0.55
    wall = back if not plate else _colour_pair(rng)[0]
    img = _background(rng, H, W, wall)

    # --- clutter on the wall: bits of neighbouring text at the edges, lines (door frames, plate edges)
    clutter = Image.new("L", (W, H), 0)
    cd = ImageDraw.Draw(clutter)
    for _ in range(rng.poisson(0.5)):
        if rng.random() < 0.5:
            xs_ = rng.integers(W) if rng.random() < 0.5 else None
            if xs_ is not None:
                cd.line([(xs_, 0), (xs_ + rng.integers(-3, 4), H)], fill=int(rng.integers(120, 256)),
                        width=int(rng.integers(1, max(2, H // 12))))
            else:
                ys_ = rng.integers(H)
                cd.line([(0, ys_), (W, ys_ + rng.integers(-3, 4))], fill=int(rng.integers(120, 256)),
                        width=int(rng.integers(1, max(2, H // 12))))
        else:  # a partial character beyond the number, cut by the photo edge
            _paste_char(clutter, rng, h_num, cy, ox, num_w, W, near=False)
    if rng.random() < 0.2:  # a neighbour close to the number, inside its widened crop
        _paste_char(clutter, rng, h_num, cy, ox, num_w, W, near=True)
    clutter_colour = fore if rng.random() < 0.5 else _colour_pair(rng)[1]

    # --- foreground layer (plate, border, digits, shadow) on a canvas with a margin, then one affine
    margin = int(0.12 * max(W, H)) + 2  # room for the plate to rotate in from beyond the photo's edge
    S = 2 if H < 40 else 1  # supersample small photos so plate edges anti-alias (glyphs are resized, so smooth)
    CW, CH = (W + 2 * margin) * S, (H + 2 * margin) * S
    plate_m = Image.new("L", (CW, CH), 0)
    border_m = Image.new("L", (CW, CH), 0)
    digit_m = np.zeros((CH, CW), np.uint8)
    shadow_m = Image.new("L", (CW, CH), 0)
    to_canvas = lambda px, py: ((px + margin) * S, (py + margin) * S)  # noqa: E731
    if plate:
        pad_x = h_num * rng.uniform(0.08, 0.4)
        pad_y = h_num * rng.uniform(0.03, 0.25)  # often inside the 1.3x crop: plate edges show, as in SVHN
        x0, y0 = to_canvas(ox - pad_x, cy - num_h / 2 - pad_y)
        x1, y1 = to_canvas(ox + num_w + pad_x, cy + num_h / 2 + pad_y)
        shape = rng.choice(["rect", "round", "ellipse"], p=[0.4, 0.5, 0.1])
        if shape == "ellipse":
            x0 -= pad_x * S; x1 += pad_x * S; y0 -= pad_y * S; y1 += pad_y * S
        radius = int(min(x1 - x0, y1 - y0) * rng.uniform(0.05, 0.35))
        draw_shape = {
            "rect": lambda d, box, **k: d.rectangle(box, **k),
            "round": lambda d, box, **k: d.rounded_rectangle(box, radius=radius, **k),
            "ellipse": lambda d, box, **k: d.ellipse(box, **k),
        }[shape]
        draw_shape(ImageDraw.Draw(plate_m), [x0, y0, x1, y1], fill=255)
        if rng.random() < 0.4:  # a border line inside the plate, usually in the digits' colour
            inset = max(1, int((y1 - y0) * rng.uniform(0.03, 0.08)))
            bw = max(1, int((y1 - y0) * rng.uniform(0.02, 0.06)))
            draw_shape(ImageDraw.Draw(border_m), [x0 + inset, y0 + inset, x1 - inset, y1 - inset],
                       outline=255, width=bw)
    ink_boxes = []  # per digit: ink pixel coordinates (x, y) on the canvas, for the tight box after the affine
    for d, x, y, dw, dh in placed:
        m = _resized_glyph(font, str(d), int(round(dw * S)), int(round(dh * S)))
        cx0, cy0 = to_canvas(ox + x, oy + y)
        cx0, cy0 = int(round(cx0)), int(round(cy0))
        region = digit_m[cy0:cy0 + m.shape[0], cx0:cx0 + m.shape[1]]
        np.maximum(region, m[:region.shape[0], :region.shape[1]], out=region)
        ys, xs = np.nonzero(m > 96)
        if len(xs) == 0:
            ys, xs = np.nonzero(m == m.max())
        ink_boxes.append((xs + cx0 + 0.5, ys + cy0 + 0.5))
    digit_img = Image.fromarray(digit_m)
    shadow = rng.random() < 0.2
    if shadow:  # drop shadow / engraved look
        off = max(1, int(h_num * S * rng.uniform(0.03, 0.08)))
        shadow_m.paste(digit_img, (off, off))
    layers = Image.merge("CMYK", (plate_m, border_m, digit_img, shadow_m))  # 4 plain bands (RGBA would premultiply by A)

    # small rotation and shear about the number's centre (forward map canvas -> photo)
    angle = math.radians(rng.normal(0, 4))
    shear = rng.normal(0, 0.08)
    c, s = math.cos(angle), math.sin(angle)
    A = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]])  # photo offset = A @ canvas offset
    pc = np.array(to_canvas(cx, cy))  # number centre on the canvas (supersampled px)
    qc = np.array([cx, cy]) * S  # ... lands here in the supersampled photo
    inv = np.linalg.inv(A)
    b = pc - inv @ qc  # canvas = inv @ photo + b
    fg = layers.transform((W * S, H * S), Image.AFFINE,
                          data=(inv[0, 0], inv[0, 1], b[0], inv[1, 0], inv[1, 1], b[1]),
                          resample=Image.BILINEAR)
    if S > 1:
        fg = fg.reduce(S)
    # composite only where the layers have something (the plate and number), not the whole photo
    fl, ft, fr, fb = fg.getbbox() or (0, 0, 1, 1)
    fg = np.asarray(fg.crop((fl, ft, fr, fb)), np.float32) / 255  # (h, w, 4) within that box

    # Tight ink box per digit, plus a little slack: SVHN's boxes were drawn by people and sit a
    # few percent of the digit height outside the ink (synth_stats: same aspect, looser edges).
    slack = rng.uniform(0.0, 0.06)
    boxes = []
    for xs, ys in ink_boxes:
        px = A[0, 0] * (xs - pc[0]) + A[0, 1] * (ys - pc[1]) + qc[0]
        py = A[1, 0] * (xs - pc[0]) + A[1, 1] * (ys - pc[1]) + qc[1]
        pad = slack * (py.max() - py.min()) / S
        left, top = math.floor(px.min() / S - pad), math.floor(py.min() / S - pad)
        right, bottom = math.ceil(px.max() / S + pad), math.ceil(py.max() / S + pad)
        # within the photo: SVHN's boxes leave it in 0.6% of photos (12 of svhn-sample's 2,000)
        left, top, right, bottom = max(left, 0), max(top, 0), min(right, W), min(bottom, H)
        boxes.append((float(left), float(top), float(max(1, right - left)), float(max(1, bottom - top))))

    # --- composite: wall, clutter, plate, border, shadow, digits
    def over(img, alpha, colour):
        img += alpha[..., None] * (colour - img)

    if clutter.getbbox():
        over(img, np.asarray(clutter, np.float32) / 255, clutter_colour)
    region = img[ft:fb, fl:fr]  # a view: compositing into it writes into img
    if plate:
        over(region, fg[..., 0], back * rng.uniform(0.9, 1.1))
        over(region, fg[..., 1], fore if rng.random() < 0.8 else _colour_pair(rng)[1])
    if shadow:
        over(region, fg[..., 3] * rng.uniform(0.4, 0.9), np.minimum(back, fore) * 0.4)
    over(region, fg[..., 2], fore * rng.uniform(0.9, 1.1, 3).astype(np.float32))

    # --- camera: colour cast, contrast loss, low resolution, blur, noise, JPEG
    wb = rng.uniform(0.9, 1.1, 3)  # white balance, per channel
    haze = rng.uniform(0.55, 1.0)  # contrast kept: mean + (x - mean) * haze
    exposure = rng.normal(0, 12)
    mean = float((img.reshape(-1, 3).mean(0) * wb).mean())
    img *= (wb * haze).astype(np.float32)  # all three as one multiply-add (fewer passes over the photo)
    img += np.float32(mean * (1 - haze) + exposure)
    out = Image.fromarray(np.clip(img, 0, 255, out=img).astype(np.uint8))
    if rng.random() < 0.6:  # SVHN photos are often upsampled from fewer pixels
        f = rng.uniform(1.3, 3.0)
        small = out.resize((max(4, int(W / f)), max(4, int(H / f))), Image.BILINEAR)
        out = small.resize((W, H), Image.BILINEAR)
    radius = rng.uniform(0, 1.4) * H / 40
    if radius > 0.3:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    arr = np.array(out, np.float32)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * rng.uniform(0, 6)  # sensor noise
    out = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(25, 80)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return Photo(np.asarray(out), tuple(digits), tuple(boxes))


def photo_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of photo `index` (1-based) of a set made with `seed`."""
    return np.random.default_rng([int(seed), int(index)])


# ----------------------------------------------------------------------------- a format-1 folder

def _write_photo(job: tuple[str, int, int, dict]) -> tuple[str, tuple[int, ...], tuple]:
    """Render photo `i` of (seed) into folder; returns its label. Runs in worker processes."""
    folder, seed, i, stats = job
    rng = photo_rng(seed, i)
    digits = sample_labels(1, rng, stats)[0]
    photo = render(digits, rng, stats)
    name = f"{i}.png"
    tmp = Path(folder) / f".{name}.tmp"
    Image.fromarray(photo.image).save(tmp, format="PNG", compress_level=1)  # level 6 costs 2x the time for 12% smaller files
    os.replace(tmp, Path(folder) / name)
    return name, photo.digits, photo.boxes


def generate(out_folder: str | Path, n: int, seed: int = 0, progress: bool = False,
             stats: dict | None = None, workers: int = 0) -> Path:
    """Write n synthetic photos `1.png .. n.png` and `digitStruct.mat` (SVHN format 1) into out_folder.

    Deterministic: the same (n, seed) gives byte-identical PNGs and the same labels, whatever
    the number of worker processes (each photo has its own generator). workers=0: one per CPU
    core for n >= 2,000, in-process below that. Prints nothing but its progress when progress=True (progress.bar).
    Returns the folder.
    """



    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    stats = stats or load_stats()
    jobs = [(str(out), seed, i, stats) for i in range(1, n + 1)]
    if workers == 0:
        workers = (os.cpu_count() or 1) if n >= 2000 else 1
    bar = dict(total=n, disable=not progress, desc=f"synth {out}", unit="img")
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:  # spawn: safe when torch is loaded
            labels = list(progress_bar(pool.imap(_write_photo, jobs, chunksize=64), **bar))
    else:
        labels = [_write_photo(job) for job in progress_bar(jobs, **bar)]
    records = [svhn.Record(file=name, digits=digits, boxes=boxes) for name, digits, boxes in labels]
    svhn.write_digitstruct(out / "digitStruct.mat", records)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transcribe.synth", description=__doc__.split("\n")[0])
    parser.add_argument("--derive-stats", metavar="CSV", help="real labels (name;label;top;left;height;width) to derive synth_stats.json from")
    parser.add_argument("--images", metavar="FOLDER", help="real format-1 photos named in CSV, for photo-size statistics")
    parser.add_argument("--stats-out", default=str(STATS_PATH), help="where to write the statistics JSON")
    parser.add_argument("--out", help="generate synthetic photos into this folder")
    parser.add_argument("--photos", type=int, default=100, help="how many photos to generate")
    parser.add_argument("--synth-seed", type=int, default=0, help="seed of the generator")
    args = parser.parse_args(argv)
    if args.derive_stats:
        try:
            stats = derive_stats(args.derive_stats, args.images)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        atomic_write(args.stats_out, json.dumps(stats, indent=1) + "\n")
        print(f"wrote {args.stats_out}: {stats['n_images']} numbers, lengths {stats['length_counts']}")
    if args.out:
        generate(args.out, args.photos, args.synth_seed, progress=True)
    if not (args.derive_stats or args.out):
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
