"""An off-the-shelf OCR engine through the same evaluation: the first baseline.

Practical Methodology (Goodfellow et al., Deep Learning, sec. 11.2): establish a reasonable
end-to-end system as soon as possible, and "if your task is similar to another task that
has been studied extensively ... copy the model ... already known to perform best". Scene
text recognition is such a task, so the first baseline is a pretrained recognizer, scored by
exactly the same metrics, plots and gallery as our own models: this module writes the same
`predictions.jsonl` rows as evaluation.py (docs/architecture.md).

Pipeline, per photo (no detection: the number box comes from the labels, as for our models):
  digit boxes --crops.number_box--> union --crops.widen(F)--> crop box
  --clamp to the photo--> crop, aspect ratio KEPT (not squashed to 64x64: a line
  recognizer reads a wide strip; squashing "1234" into a square would deform it)
  --resize to height 48 (PP-OCRv4 rec input), pad right to >= 320 px as RapidOCR does-->
  recognizer (ONNX, run by our own session) --> (T, 6625) per-frame softmax
  --CTC decode--> digits + score;  confidence = log(score).

Two decodings of the same output matrix (`--decode`):
  filter:  the engine's own greedy CTC over all 6,623 characters (+ blank, space), then every
           character that is not a digit deleted (after NFKC, so '１' counts as '1').
           Score = the engine's own: mean of the emitted characters' probabilities.
  digits:  greedy CTC restricted to {blank, 0..9}: per frame, argmax over those 11 columns
           (each digit's column sums its typographic variants: '1', '１', '①'), collapse
           repeats, drop blanks. A frame whose full-set argmax is 'l' or 'I' but that puts
           its next-largest mass on '1' now reads '1'.

How the defaults were chosen (`transcribe baseline --decodings-table --split train --train
/work/shared/data/svhn-sample/train --crop-widen F`: one recognizer pass per photo, every
decoding scored; on the 1,800 training photos of the sample's split, so the validation photos
that every system is compared on played no part in the choice; coverage = best achievable at 98%):

  crop widen | filter          | digits+mean     | digits+chars | digits+path | digits+renorm
  1.0        | 81.06% / 64.06% | 82.72% / 64.67% | .. / 62.06%  | .. / 55.11% | .. / 53.11%
  1.15       | 78.94% / 59.78% | 80.67% / 62.22% | .. / 58.83%  | .. / 54.39% | .. / 35.00%
  1.3        | 74.44% / 52.94% | 76.50% / 53.83% | .. / 52.44%  | .. / 41.06% | .. / 28.89%
  (sequence accuracy / coverage at 98%)

So: restricted `digits` decoding (+1.7 to 2.1 points of accuracy at every crop: frames that read
'l', 'I', 'O' become digits), scored by `mean` (the engine's kind of score: mean probability of
the emitted digits), on the tight crop (1.0). The paper's 30% margin suits a network trained on
such crops; this recognizer was trained on detector boxes that hug the text. With the margin it
drops digits more often and now and then reads a neighbour (validation mistakes, widen 1.3:
25 of 44 too short, 6 too long; widen 1.0: 18 of 31 too short, none too long). Most remaining
mistakes are dropped digits, often a doubled one ('44' read '4'): greedy CTC needs a blank frame
between equal digits, and a frame is 8 px of the 48 px high strip. The whole-path log-probability `path`,
though closer in form to log P(S|X), ranks worse: it adds the log-probabilities of the many
blank frames, which measure the background more than the digits.

Tesseract (`--engine tesseract`) runs as a subprocess (`--psm 7`: one text line, digit
whitelist, TSV output for word confidences), where it is installed; otherwise a clear message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transcribe import crops

DIGITS = "0123456789"
ENGINES = ("rapidocr", "rapidocr-v6", "tesseract")  # rapidocr: PP-OCRv4; rapidocr-v6: PP-OCRv6 small
DECODES = ("digits", "filter")
# How a digits-decoding is scored (all natural logs; T frames, emitted characters c_1..c_n):
#   path:   sum over all T frames of log p_t(chosen class), full softmax; the log-probability of
#           the single best CTC path (the Viterbi approximation of log P(S|X)); mass a frame
#           gives to letters or other symbols counts against the reading.
#   renorm: the same path over the probabilities renormalized to the 11 classes (letters ignored).
#   mean:   log of the mean probability of the emitted characters (the engine's own score).
#   chars:  sum over emitted characters of log p (product of the digit probabilities only).
SCORES = ("path", "renorm", "mean", "chars")  # default mean: see the measurements in the docstring
LOG_FLOOR = -50.0  # confidence of a reading with score 0 (e.g. nothing emitted): log(2e-22)

# Recognizers by engine name -> recognizer.SOURCES key: PP-OCRv4 inside rapidocr_onnxruntime 1.x,
# PP-OCRv6 small inside rapidocr 3.x (both: rec_img_shape [3, 48, 320] in their config.yaml).
REC_MODELS = {"rapidocr": "ppocr-v4", "rapidocr-v6": "ppocr-v6-small"}
REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # RapidOCR pads every line to at least 320 px wide (its training width)

DEFAULT_DATA = "data/svhn"  # the Makefile's DATA: a folder holding train/ and test/
TESSERACT_ARGS = ("--psm", "7", "-c", "tessedit_char_whitelist=0123456789")


@dataclass(frozen=True)
class BaselineConfig:
    engine: str = dataclasses.field(default="rapidocr", metadata={"help": "OCR engine", "choices": ENGINES})
    decode: str = dataclasses.field(default="digits", metadata={
        "help": "rapidocr: CTC restricted to blank+0-9 (digits) or the engine's text with non-digits deleted (filter)",
        "choices": DECODES})
    score: str = dataclasses.field(default="mean", metadata={
        "help": "confidence of a digits decoding (see baseline.SCORES)", "choices": SCORES})
    crop_widen: float = dataclasses.field(default=1.0, metadata={
        "help": "crop = union of digit boxes widened by this factor about its centre (1.0: tight, "
                "best for this recognizer; our models use 1.3)"})
    stretch: float = dataclasses.field(default=1.0, metadata={
        "help": "rapidocr: the crop is resized to height 48 and this many times its aspect ratio in width"})
    threads: int = dataclasses.field(default=1, metadata={"help": "CPU threads for the engine"})


# ----------------------------------------------------------------------------- CTC decoding

@dataclass(frozen=True)
class Reading:
    text: str  # digits only
    confidence: float  # natural log of the score, >= LOG_FLOOR


def _log(x: float) -> float:
    return max(math.log(x), LOG_FLOOR) if x > 0 else LOG_FLOOR


def _collapse(best: np.ndarray) -> np.ndarray:
    """Indices of frames that emit a character in greedy CTC: not blank (0), not a repeat."""
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    return np.flatnonzero(keep)


def decode_digits(probs: np.ndarray, columns: list[list[int]], score: str = "path") -> Reading:
    """Greedy CTC restricted to {blank, 0..9}. probs: (T, C) per-frame softmax, column 0 = blank."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    q = np.stack([probs[:, 0]] + [probs[:, c].sum(axis=1) for c in columns], axis=1)  # (T, 11)
    best = q.argmax(axis=1)  # (T,) 0 = blank, k = digit k-1
    p = q[np.arange(len(q)), best]  # (T,) probability of the chosen class
    emit = _collapse(best)
    text = "".join(str(int(best[t]) - 1) for t in emit)
    if score == "path":
        conf = float(np.log(np.maximum(p, 1e-30)).sum())
    elif score == "renorm":
        conf = float(np.log(np.maximum(p / q.sum(axis=1), 1e-30)).sum())
    elif score == "mean":
        conf = _log(float(p[emit].mean())) if len(emit) else LOG_FLOOR
    else:  # chars
        conf = float(np.log(np.maximum(p[emit], 1e-30)).sum()) if len(emit) else LOG_FLOOR
    return Reading(text, max(conf, LOG_FLOOR))


def decode_filter(probs: np.ndarray, characters: list[str]) -> Reading:
    """The engine's own greedy CTC over every character (RapidOCR CTCLabelDecode: argmax,
    collapse repeats, drop blank, score = mean max-probability of emitted characters), then
    non-digits deleted. characters[i] is column i+1; the last column is the space."""
    best = probs.argmax(axis=1)
    emit = _collapse(best)
    chars = [characters[int(best[t]) - 1] if best[t] - 1 < len(characters) else " " for t in emit]
    text = "".join(d for d in unicodedata.normalize("NFKC", "".join(chars)) if d in DIGITS)
    score = float(probs[emit, best[emit]].mean()) if len(emit) else 0.0
    return Reading(text, _log(score))


# ----------------------------------------------------------------------------- crops

def crop_box(digit_boxes, widen: float) -> tuple[float, float, float, float]:
    """Our crop box (crops.py): union of the digit boxes, widened about its centre."""
    from transcribe import crops
    return tuple(float(v) for v in crops.widen(crops.number_box(digit_boxes), widen))


# ----------------------------------------------------------------------------- engines

class RapidOCR:
    """A PP-OCR text recognizer shipped in a RapidOCR wheel (v4: rapidocr_onnxruntime, v6 small:
    rapidocr), run by our own ONNX session, so we see the raw (T, C) softmax and choose threads.
    No detection, no angle classifier."""

    def __init__(self, threads: int = 1, engine: str = "rapidocr", stretch: float = 1.0):
        from transcribe import recognizer
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise SystemExit(f"the {engine} engine needs the optional extra: pip install 'transcribe-svhn[baseline]'"
                             f" ({e})") from e
        self.name, self.stretch = engine, stretch
        self.model_path = recognizer.onnx_file(REC_MODELS[engine])  # SystemExit naming the extra if absent
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        # The character list is stored in the model's metadata, one per line (as RapidOCR reads it).
        self.characters = self.session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.columns = recognizer.digit_columns(self.characters)
        self.input_name = self.session.get_inputs()[0].name
        package = recognizer.SOURCES[REC_MODELS[engine]][0]
        self.version = _dist_version(package)

    def preprocess(self, crop_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB uint8 -> (1, 3, 48, W') float32 in [-1, 1], BGR (the engine reads
        photos with OpenCV), resized to height 48 keeping the aspect ratio, right-padded with
        0 to at least 320 px: RapidOCR's TextRecognizer.resize_norm_img for a batch of one.
        `stretch` multiplies the width (thin house-number digits read better a little wider)."""
        import cv2
        h, w = crop_rgb.shape[:2]
        width = max(1, int(math.ceil(REC_HEIGHT * self.stretch * w / h)))
        img = cv2.resize(np.ascontiguousarray(crop_rgb[:, :, ::-1]), (width, REC_HEIGHT))
        x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
        x = (x - 0.5) / 0.5
        out = np.zeros((1, 3, REC_HEIGHT, max(width, REC_MIN_WIDTH)), dtype=np.float32)
        out[0, :, :, :width] = x
        return out

    def probs(self, crop_rgb: np.ndarray) -> np.ndarray:
        """(T, C) per-frame softmax; T = padded width / 8."""
        return self.session.run(None, {self.input_name: self.preprocess(crop_rgb)})[0][0]

    def read(self, crop_rgb: np.ndarray, decode: str, score: str) -> Reading:
        probs = self.probs(crop_rgb)
        if decode == "digits":
            return decode_digits(probs, self.columns, score)
        return decode_filter(probs, self.characters)


class Tesseract:
    """Tesseract 4/5 LSTM engine via its command line: one text line (--psm 7), digits only."""

    name = "tesseract"

    def __init__(self, threads: int = 1):
        self.binary = shutil.which("tesseract")
        if self.binary is None:
            raise SystemExit("tesseract is not installed (Debian: apt-get install -y tesseract-ocr); "
                             "skipping the tesseract baseline")
        self.env = dict(os.environ, OMP_THREAD_LIMIT=str(threads))
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, env=self.env)
        self.version = (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else None
        self.model_path = None
        self._tmp = tempfile.TemporaryDirectory(prefix="transcribe-tess-")

    def read(self, crop_rgb: np.ndarray, decode: str, score: str) -> Reading:
        from PIL import Image
        path = Path(self._tmp.name) / "crop.png"
        # Tesseract's LSTM was trained on text lines ~ 30-50 px high; give it 48 px like RapidOCR.
        h, w = crop_rgb.shape[:2]
        img = Image.fromarray(crop_rgb).resize((max(1, round(REC_HEIGHT * w / h)), REC_HEIGHT), Image.BILINEAR)
        img.save(path)
        out = subprocess.run([self.binary, str(path), "stdout", *TESSERACT_ARGS, "tsv"],
                             capture_output=True, text=True, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"tesseract failed on a crop: {out.stderr.strip()}")
        return parse_tesseract_tsv(out.stdout)


def parse_tesseract_tsv(tsv: str) -> Reading:
    """Words (level 5) of Tesseract's TSV; text = their digits in order; score = mean word
    confidence / 100 (Tesseract gives no per-character probabilities on the command line)."""
    lines = tsv.strip().splitlines()
    if not lines:
        return Reading("", LOG_FLOOR)
    header = lines[0].split("\t")
    text, confs = "", []
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        if row.get("level") != "5" or not row.get("text", "").strip():
            continue
        text += "".join(c for c in row["text"] if c in DIGITS)
        confs.append(max(float(row["conf"]), 0.0) / 100.0)
    return Reading(text, _log(sum(confs) / len(confs)) if confs else LOG_FLOOR)


def make_engine(name: str, threads: int = 1, stretch: float = 1.0):
    if name in REC_MODELS:
        return RapidOCR(threads, name, stretch)
    if name == "tesseract":
        return Tesseract(threads)
    raise ValueError(f"unknown engine {name!r}; choose from {ENGINES}")


def _dist_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- which photos

def _train_folder(data: Path) -> Path:
    """--train may name a split folder (holding digitStruct.mat) or a root holding train/."""
    return data if (data / "digitStruct.mat").exists() else data / "train"


def validation_config(data: str | None, run: str | None):
    """The DataConfig whose validation photos our models are scored on: the run folder's, or
    DataConfig(train=(training folder,), val_fraction=0.1, seed=0)."""
    from transcribe import config as config_mod
    from transcribe import dataset
    if run is not None:
        cfg_path = Path(run) / "config.json"
        if not cfg_path.is_file():
            raise SystemExit(f"{cfg_path}: no such file (a run folder holds config.json)")
        return config_mod.from_dict(dataset.DataConfig, json.loads(cfg_path.read_text())["data"])
    return dataset.DataConfig(train=(str(_train_folder(Path(data or DEFAULT_DATA))),), val_fraction=0.1, seed=0)


def select_photos(split: str, data: str | None = None, run: str | None = None):
    """-> (name, [(photo path, Record)], problems as dicts).

    `val`: the validation photos of the training folder, exactly those our models hold out
    (dataset.load_splits; it builds/reuses the cache, which fixes the photo order);
    `train`: the rest of the training folder (the engine never saw them either: a larger set
    to choose the baseline's own settings on, leaving `val` untouched);
    `test`: every usable photo of the test folder beside the training folder;
    anything else: a format-1 folder, every usable photo.
    """
    from transcribe import svhn

    if split in ("val", "train"):
        from transcribe import dataset
        try:
            train, val = dataset.load_splits(validation_config(data, run))
        except (svhn.DataError, ValueError) as e:
            raise SystemExit(f"cannot make the validation split: {e}") from None
        val = val if split == "val" else train
        splits: dict[str, dict] = {}
        items = []
        for i in range(len(val)):
            path = Path(val.path(i))
            folder = str(path.parent)
            if folder not in splits:
                splits[folder] = {r.file: r for r in svhn.read_split(folder).records}
            record = splits[folder].get(path.name)
            if record is None:
                raise SystemExit(f"{path}: in the validation cache but not a usable entry of "
                                 f"{Path(folder) / svhn.MAT_NAME} any more; rebuild the cache")
            items.append((path, record))
        return split, items, []
    if split == "test":
        if data is not None:
            d = Path(data)
            root = d.parent if (d / "digitStruct.mat").exists() else d
        elif run is not None:
            root = Path(validation_config(None, run).train[0]).parent
        else:
            root = Path(DEFAULT_DATA)
        folder = root / "test"
    else:
        folder = Path(split)
    try:
        found = svhn.read_split(folder)
    except svhn.DataError as e:
        raise SystemExit(str(e)) from None
    problems = [dataclasses.asdict(p) for p in found.problems if p.skipped]
    return ("test" if split == "test" else folder.name), [(folder / r.file, r) for r in found.records], problems


# ----------------------------------------------------------------------------- the run

def predict_photos(engine, items, cfg: BaselineConfig, progress: bool = True):
    """-> (rows, problems, seconds). rows follow predictions.jsonl (docs/architecture.md);
    seconds = time spent cropping + recognizing (photo decoding from PNG not included)."""
    from transcribe import svhn
    from transcribe.progress import bar
    rows, problems, seconds = [], [], 0.0
    for path, rec in bar(items, desc="reading", unit="photo", disable=not progress):
        try:
            image = svhn.load_image(path)
            start = time.perf_counter()
            box = crop_box(rec.boxes, cfg.crop_widen)
            strip = crops.strip(image, box)
        except (svhn.DataError, ValueError) as e:
            problems.append({"file": rec.file, "problem": str(e) if str(e).startswith(str(path)) else f"{path}: {e}",
                             "skipped": True})
            continue
        reading = engine.read(strip, cfg.decode, cfg.score)
        seconds += time.perf_counter() - start
        rows.append({"image": str(path), "file": rec.file, "truth": rec.text, "pred": reading.text,
                     "confidence": reading.confidence, "adhoc_confidence": None, "length_probs": None,
                     "digit_probs": None, "box": [round(v, 2) for v in box]})
    return rows, problems, seconds


def decoding_table(engine: "RapidOCR", items, widen: float, target: float = 0.98) -> list[dict]:
    """Every decoding and score from ONE recognizer pass per photo: how the defaults were chosen.
    -> one dict per variant: sequence accuracy, best achievable coverage at `target`, AUC."""
    from transcribe import metrics, svhn
    variants = [("filter", "mean")] + [("digits", s) for s in SCORES]
    results: dict[tuple[str, str], list[tuple[bool, float]]] = {v: [] for v in variants}
    for path, rec in items:
        probs = engine.probs(crops.strip(svhn.load_image(path), crop_box(rec.boxes, widen)))
        for decode, score in variants:
            r = decode_filter(probs, engine.characters) if decode == "filter" else \
                decode_digits(probs, engine.columns, score)
            results[(decode, score)].append((r.text == rec.text, r.confidence))
    table = []
    for (decode, score), pairs in results.items():
        correct = np.array([c for c, _ in pairs], dtype=bool)
        conf = np.array([x for _, x in pairs])
        best = metrics.best_at_target(conf, correct, target)
        table.append({"decode": decode, "score": score, "crop_widen": widen, "photos": len(pairs),
                      "sequence_accuracy": float(correct.mean()), "coverage_at_target": best["coverage"],
                      "auc": metrics.area_under_curve(conf, correct)})
    return table


def system_name(cfg: BaselineConfig) -> str:
    """e.g. rapidocr-digits-w1.0, rapidocr-v6-digits-w1.0-s1.5, tesseract-whitelist-w1.3"""
    decode = cfg.decode if cfg.engine in REC_MODELS else "whitelist"
    widen = f"{cfg.crop_widen:g}"
    stretch = f"-s{cfg.stretch:g}" if cfg.stretch != 1.0 else ""
    return f"{cfg.engine}-{decode}-w{widen if '.' in widen else widen + '.0'}{stretch}"


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    from transcribe.config import add_dataclass_arguments
    add_dataclass_arguments(parser, BaselineConfig)
    parser.add_argument("--split", default="val",
                        help="val (the validation photos our models hold out of the training folder), train (the "
                             "rest of it), test (DATA/test) or a format-1 folder (default: val)")
    parser.add_argument("--train", default=None,
                        help=f"the labelled training folder the val/train photos come from, or a folder holding "
                             f"train/ and test/ (default: {DEFAULT_DATA})")
    parser.add_argument("--run", default=None,
                        help="a run folder: its config.json's data section defines the validation split")
    parser.add_argument("--out", default=None, help="output folder (default: runs/baseline/ENGINE-DECODE-wF-SPLIT)")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N photos (a quick look)")
    parser.add_argument("--decodings-table", action=argparse.BooleanOptionalAction, default=False,
                        help="rapidocr: score every --decode/--score from one pass per photo and write "
                             "OUT/decodings.md/.json instead of predictions (how the defaults were chosen)")


def run_baseline(args: argparse.Namespace) -> int:
    from transcribe import evaluation, metrics
    from transcribe.config import from_args
    from transcribe.runs import save_json
    cfg = from_args(BaselineConfig, args, BaselineConfig())
    engine = make_engine(cfg.engine, cfg.threads, cfg.stretch)  # SystemExit with the reason when absent
    name, items, problems = select_photos(args.split, args.train, args.run)
    if args.limit is not None:
        items = items[: args.limit]
    system = system_name(cfg)
    out = Path(args.out or f"runs/baseline/{system}-{name}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"baseline {system} ({cfg.threads} thread(s)) on {len(items)} photos ({args.split}) -> {out}",
          file=sys.stderr)
    if args.decodings_table:
        if cfg.engine not in REC_MODELS:
            raise SystemExit("--decodings-table needs a rapidocr engine (the only engines with a score matrix)")
        from transcribe.runs import save_json as _save
        table = decoding_table(engine, items, cfg.crop_widen)
        _save({"split": args.split, "rows": table}, out / "decodings.json")
        md = ["| decode | score | crop widen | photos | sequence accuracy | best coverage at 98% | AUC |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        md += [f"| {t['decode']} | {t['score'] if t['decode'] == 'digits' else 'engine mean'} | {t['crop_widen']:g} | "
               f"{t['photos']} | {100 * t['sequence_accuracy']:.2f}% | {100 * t['coverage_at_target']:.2f}% | "
               f"{t['auc']:.4f} |" for t in table]
        (out / "decodings.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return 0
    rows, read_problems, seconds = predict_photos(engine, items, cfg)
    problems += read_problems
    if not rows:
        raise SystemExit(f"no photo could be read ({len(problems)} skipped); nothing written")
    evaluation.write_predictions(rows, out / "predictions.jsonl")

    # Scored exactly as evaluation.py scores a model; on validation the 98% threshold is chosen here.
    rep = metrics.report(rows)
    save_json(rep, out / "report.json")
    title = f"Baseline {system} on {name}"
    (out / "report.md").write_text(metrics.to_markdown(rep, title=title))
    from transcribe import report
    report.write_plots(rows, rep, out, title)
    meta = {"system": system, "engine": cfg.engine, "engine_version": engine.version,
            "model": str(engine.model_path) if engine.model_path else None, "config": dataclasses.asdict(cfg),
            "split": args.split, "photos": len(rows), "skipped": len(problems), "problems": problems[:100],
            "seconds": round(seconds, 3), "images_per_second": round(len(rows) / seconds, 2) if seconds else None,
            "speed_measured": "crop + recognize per photo, PNG decoding excluded; "
                              f"{cfg.threads} engine thread(s) on a {os.cpu_count()}-core machine"}
    save_json(meta, out / "meta.json")
    best = rep["best_at_target"]
    print(f"{len(rows)} photos read, {len(problems)} skipped. sequence accuracy {rep['sequence_accuracy']:.4f}, "
          f"character accuracy {rep['character_accuracy']:.4f}, coverage at {rep['target']:.0%} "
          f"{best['coverage']:.4f} (threshold chosen on these photos), {meta['images_per_second']} images/s; "
          f"wrote {out}/predictions.jsonl, report.json, report.md, meta.json, plots", file=sys.stderr)
    if problems:
        from transcribe import svhn
        print(svhn.summarize([svhn.Problem(p["file"], p["problem"], p["skipped"]) for p in problems]),
              file=sys.stderr)
    return 0
