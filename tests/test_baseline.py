"""baseline.py: digit-restricted CTC decoding, crops for a line recognizer, the engines on real photos."""

import json
import math
import shutil

import numpy as np
import pytest
from conftest import fixture_folder

from transcribe import crops, recognizer
from transcribe.studies import baseline

# A toy recognizer alphabet: column 0 is the CTC blank, characters[i] is column i + 1.
CHARS = ["1", "9", "l", "I", "１", "a"] + list("02345678")
BLANK, ONE, NINE, ELL, EYE, FW_ONE, A = range(7)


def frames(*rows):
    """(T, 15) per-frame probabilities from {column: p} dicts; the rest of each frame's mass goes to 'a'."""
    out = np.zeros((len(rows), len(CHARS) + 1))
    for t, row in enumerate(rows):
        for col, p in row.items():
            out[t, col] = p
        out[t, A] += 1.0 - out[t].sum()
    return out


def test_digit_columns_fold_typographic_variants():
    cols = recognizer.digit_columns(CHARS)
    assert cols[1] == [ONE, FW_ONE] and cols[9] == [NINE] and cols[0] == [CHARS.index("0") + 1]
    with pytest.raises(ValueError, match="no column for digit"):
        recognizer.digit_columns(CHARS[:6])  # only 1 and 9 present


COLS = recognizer.digit_columns(CHARS)


def test_restricted_decoding_reads_digits_where_full_argmax_reads_letters():
    # Frame 0: 'l' wins over the full set, '1' is the best digit; frame 2 'I' vs '1' likewise.
    probs = frames({ELL: 0.5, ONE: 0.3, BLANK: 0.1}, {BLANK: 0.9}, {NINE: 0.8, BLANK: 0.1})
    assert baseline.decode_filter(probs, CHARS).text == "9"  # the engine says 'l9'; 'l' deleted
    reading = baseline.decode_digits(probs, COLS, "mean")
    assert reading.text == "19"
    assert reading.confidence == pytest.approx(math.log((0.3 + 0.8) / 2))
    probs = frames({EYE: 0.6, ONE: 0.35}, {NINE: 0.7})
    assert baseline.decode_digits(probs, COLS).text == "19"


def test_repeats_collapse_and_blanks_separate_double_digits():
    one, blank = {ONE: 0.9}, {BLANK: 0.9}
    assert baseline.decode_digits(frames(one, one, one), COLS).text == "1"
    assert baseline.decode_digits(frames(one, one, blank, one, blank), COLS).text == "11"
    assert baseline.decode_digits(frames(blank, blank), COLS).text == ""
    assert baseline.decode_digits(frames(blank, blank), COLS, "mean").confidence == baseline.LOG_FLOOR


def test_fullwidth_digit_mass_is_added_to_its_digit():
    # '1' 0.3 + '１' 0.3 = 0.6 beats 'l' 0.4 (which beats each alone).
    probs = frames({ONE: 0.3, FW_ONE: 0.3, ELL: 0.4})
    reading = baseline.decode_digits(probs, COLS, "path")
    assert reading.text == "1" and reading.confidence == pytest.approx(math.log(0.6))


def test_scores_match_their_hand_computation():
    probs = frames({NINE: 0.8, BLANK: 0.1}, {BLANK: 0.7, ELL: 0.2}, {ONE: 0.6, ELL: 0.3})
    # Chosen: 9 (0.8), blank (0.7), 1 (0.6); per-frame 11-class totals 0.9, 0.7, 0.6.
    expect = {"path": math.log(0.8 * 0.7 * 0.6),
              "renorm": math.log(0.8 / 0.9 * 1.0 * 1.0),
              "mean": math.log(0.7),
              "chars": math.log(0.8 * 0.6)}
    for score, value in expect.items():
        reading = baseline.decode_digits(probs, COLS, score)
        assert reading.text == "91"
        assert reading.confidence == pytest.approx(value), score


def test_cut_keeps_aspect_and_clamps_to_the_photo():
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert crops.strip(image, (2, 3, 8, 4)).shape == (4, 8, 3)
    strip = crops.strip(image, (-5, -5, 10, 30))  # leaves the photo: clamped, not padded
    assert strip.shape == (10, 5, 3) and (strip == image[:, :5]).all()
    with pytest.raises(ValueError, match="outside"):
        crops.strip(image, (25, 0, 5, 5))


def test_tesseract_tsv_parsing():
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    tsv = "\n".join([header, "1\t1\t0\t0\t0\t0\t0\t0\t100\t48\t-1\t",
                     "5\t1\t1\t1\t1\t1\t2\t3\t40\t40\t90.5\t12",
                     "5\t1\t1\t1\t1\t2\t50\t3\t20\t40\t70.5\t3"])
    reading = baseline.parse_tesseract_tsv(tsv)
    assert reading.text == "123" and reading.confidence == pytest.approx(math.log(0.805))
    assert baseline.parse_tesseract_tsv(header).confidence == baseline.LOG_FLOOR


# ------------------------------------------------------------------ the real engines

def _rapidocr():
    pytest.importorskip("rapidocr_onnxruntime", reason="optional extra: pip install 'transcribe-svhn[baseline]'")
    return baseline.RapidOCR(threads=1)


def test_our_filter_decoding_equals_the_engines_own_text(svhn_fixtures):
    """Our preprocessing + session reproduce RapidOCR's TextRecognizer (a batch of one)."""
    engine = _rapidocr()
    import os
    import rapidocr_onnxruntime
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
    from rapidocr_onnxruntime.utils import read_yaml
    from transcribe import svhn
    root = os.path.dirname(rapidocr_onnxruntime.__file__)
    config = read_yaml(os.path.join(root, "config.yaml"))["Rec"]
    config.update(model_path=os.path.join(root, config["model_path"]), intra_op_num_threads=1)
    theirs = TextRecognizer(config)
    split = svhn.read_split(svhn_fixtures / "train")
    for record in split.records:
        image = svhn.load_image(svhn_fixtures / "train" / record.file)
        strip = crops.strip(image, baseline.crop_box(record.boxes, 1.3))
        (text, score), = theirs([np.ascontiguousarray(strip[:, :, ::-1])])[0]  # the engine reads BGR
        ours = baseline.decode_filter(engine.probs(strip), engine.characters)
        assert ours.text == "".join(c for c in text if c in "0123456789")
        assert ours.confidence == pytest.approx(math.log(score), abs=1e-4)


def test_baseline_command_on_real_photos_is_scored_like_a_model(svhn_fixtures, tmp_path):
    _rapidocr()
    from transcribe import cli, metrics, predictions
    out = tmp_path / "run"
    assert cli.main(["baseline", "--split", str(svhn_fixtures / "train"), "--crop-widen", "1.0",
                     "--out", str(out)]) == 0
    rows = predictions.read_predictions(out / "predictions.jsonl")
    assert [r["file"] for r in rows] == ["1.png", "2.png", "3.png"]  # the trimmed .mat names 36 absent photos
    assert set(rows[0]) == set(predictions.PREDICTION_KEYS)
    one = rows[0]
    assert one["truth"] == "19" and one["pred"] == "19"  # the photo of "19" with its true boxes
    assert one["box"] == [246.0, 77.0, 173.0, 223.0]  # union of (246,77,81,219) and (323,81,96,219)
    assert all(r["confidence"] <= 0 for r in rows)
    rep = metrics.report(rows)  # the evaluator's metrics, unchanged
    assert rep["n_scored"] == 3 and rep["sequence_accuracy"] >= 1 / 3
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == 36 and meta["images_per_second"] > 0
    assert json.loads((out / "report.json").read_text())["n"] == 3
    assert (out / "accuracy_coverage.png").is_file()  # the evaluator's plots, unchanged


def test_validation_photos_are_the_ones_our_models_hold_out(svhn_fixtures, tmp_path, monkeypatch):
    """select_photos('val') = dataset.load_splits' validation rows, with their labels."""
    pytest.importorskip("h5py")
    from transcribe import dataset
    folder = tmp_path / "train"
    fixture_folder(svhn_fixtures, folder, 20)
    monkeypatch.chdir(tmp_path)  # the cache goes to ./data/cache
    name, items, problems = baseline.select_photos("val", data=str(tmp_path))  # a root holding train/
    _, val = dataset.load_splits(dataset.DataConfig(train=(str(folder),), val_fraction=0.1, seed=0),
                                 progress=False)
    assert name == "val" and problems == [] and len(items) == 2
    assert [str(p) for p, _ in items] == [val.path(i) for i in range(len(val))]
    assert [r.text for _, r in items] == [val.text(i) for i in range(len(val))]
    _, rest, _ = baseline.select_photos("train", data=str(folder))  # the other 18: where settings are chosen
    assert len(rest) == 18 and not {p for p, _ in rest} & {p for p, _ in items}


def test_decodings_table_scores_every_variant_from_one_pass(svhn_fixtures, tmp_path):
    engine = _rapidocr()
    from transcribe import svhn
    items = [(svhn_fixtures / "train" / r.file, r) for r in svhn.read_split(svhn_fixtures / "train").records]
    table = baseline.decoding_table(engine, items, widen=1.0)
    assert [(t["decode"], t["score"]) for t in table] == [("filter", "mean")] + [("digits", s) for s in baseline.SCORES]
    digits = [t for t in table if t["decode"] == "digits"]
    assert len({t["sequence_accuracy"] for t in digits}) == 1  # scores rank; they never change the reading
    assert all(t["photos"] == 3 and 0 <= t["coverage_at_target"] <= 1 for t in table)


def test_tesseract_reads_a_real_photo(svhn_fixtures):
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (apt-get install -y tesseract-ocr)")
    from transcribe import svhn
    engine = baseline.Tesseract(threads=1)
    record = svhn.read_split(svhn_fixtures / "train").records[0]
    image = svhn.load_image(svhn_fixtures / "train" / record.file)
    reading = engine.read(crops.strip(image, baseline.crop_box(record.boxes, 1.0)), "digits", "mean")
    assert reading.text == "19" and reading.confidence <= 0  # Tesseract 5.3 reads it (the val split: 38%)
