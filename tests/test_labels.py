"""labels.py: reviewed photos exported as a format-1 folder that the data path reads like SVHN;
the threshold re-chosen on reviewed photos with audits weighted."""

import io

import numpy as np
import pytest
from PIL import Image

from transcribe import crops, dataset, reviews, svhn
from transcribe.config import WIDEN
from transcribe.cli import main
from transcribe.labels import digit_boxes, weighted_threshold


def photo(seed: int, w: int = 40, h: int = 24) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG" if seed % 2 else "PNG", quality=95)
    return buf.getvalue(), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def reviewed_db(path, reviews_):
    """A database whose photos were answered '12' and then reviewed as given: (text, unreadable, box)."""
    db = reviews.open_db(reviews.sqlite_url(path))
    pixels = []
    for i, (text, unreadable, box) in enumerate(reviews_):
        data, rgb = photo(i)
        pixels.append(rgb)
        row, _ = reviews.add_pending(db, f"k{i}", data, "image/png", rgb.shape[1], rgb.shape[0], box)
        reviews.record_answer(db, row.id, "12", -1.0 - i, False, (0, 0, 1, 1), "v", 0.0)
        assert reviews.take_next(db, "ann").id == row.id
        reviews.submit(db, row.id, "ann", text, unreadable=unreadable)
    return pixels


def test_export_writes_a_format1_folder_the_data_path_reads(tmp_path, capsys):
    pixels = reviewed_db(tmp_path / "r.sqlite", [("123", False, (4.0, 3.0, 30.0, 15.0)), (None, True, None),
                                                 ("7", False, None), ("", False, None), ("45", False, (0, 0, 8, 8))])
    assert main(["labels", "export", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 photos" in out and "5 reviewed; skipped: 1 unreadable, 1 no number" in out
    split = svhn.read_split(tmp_path / "out", strict=True)
    assert [(r.file, r.text) for r in split.records] == [("1.png", "123"), ("2.png", "7"), ("3.png", "45")]
    # the digit boxes tile the number's box; a photo sent whole gets the box that widens back to the photo
    assert crops.number_box(split.records[0].boxes) == pytest.approx((4.0, 3.0, 30.0, 15.0))
    assert len(split.records[0].boxes) == 3
    assert crops.widen(crops.number_box(split.records[1].boxes), WIDEN) == pytest.approx((0, 0, 40, 24))
    for record, index in zip(split.records, (0, 2, 4)):   # lossless PNGs of what was uploaded
        assert np.array_equal(svhn.load_image(tmp_path / "out" / record.file), pixels[index])
    cache = dataset.build_cache(tmp_path / "out", out_dir=tmp_path / "cache", progress=False)
    assert len(dataset.load_cache(cache)) == 3
    assert (tmp_path / "out" / "labels.jsonl").read_text().count("\n") == 3
    # an export never overwrites
    assert main(["labels", "export", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_digit_boxes_split_the_number_box_evenly():
    assert digit_boxes((10, 5, 30, 12), 3) == ((10, 5, 10, 12), (20, 5, 10, 12), (30, 5, 10, 12))


def test_weighted_threshold_counts_each_audit_for_its_share():
    conf = [-0.1, -0.2, -0.3, -0.4]
    correct = [True, False, True, True]
    # unweighted, accepting all four gives 3/4; with the top two weighing 10 each (audits of a 10%
    # sample) the wrong one drags every set past the first below 60%: 12/22 for all four
    assert weighted_threshold(conf, correct, [1, 1, 1, 1], 0.6) == -0.4
    assert weighted_threshold(conf, correct, [10, 10, 1, 1], 0.6) == -0.1
    assert weighted_threshold(conf, correct, [1, 1, 1, 1], 1.0) == -0.1
    assert weighted_threshold([-1.0, -1.0], [True, False], [1, 1], 0.9) is None   # ties go together
    assert weighted_threshold([], [], [], 0.9) is None


def test_threshold_command_on_reviewed_photos(tmp_path, capsys):
    reviewed_db(tmp_path / "r.sqlite", [("12", False, None), ("12", False, None), ("99", False, None)])
    assert main(["labels", "threshold", "--db", str(tmp_path / "r.sqlite"), "--target", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "3 reviewed photos" in out and "threshold -2.0000 for 90% accuracy" in out
