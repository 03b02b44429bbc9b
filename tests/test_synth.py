"""synth.py: what it writes reads back as SVHN format 1, boxes sit on ink, same seed -> same bytes,
labels follow the stored statistics, derive_stats counts what a hand-written CSV holds."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transcribe import svhn, synth


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, list]:
    """Twelve photos, rendered once for the tests below, with the photos' own labels."""
    out = tmp_path_factory.mktemp("synth") / "a"
    stats = synth.load_stats()
    expected = []
    for i in range(1, 13):  # what generate() renders for each index, recomputed independently
        rng = synth.photo_rng(7, i)
        digits = synth.sample_labels(1, rng, stats)[0]
        expected.append(synth.render(digits, rng, stats))
    synth.generate(out, 12, seed=7)
    return out, expected


def test_round_trip_labels_and_sizes(generated):
    out, expected = generated
    records = svhn.read_digitstruct(out / "digitStruct.mat")
    assert [r.file for r in records] == [f"{i}.png" for i in range(1, 13)]
    for rec, photo in zip(records, expected):
        assert rec.digits == photo.digits
        assert rec.boxes == photo.boxes
        assert 1 <= len(rec.digits) <= svhn.MAX_DIGITS
        with Image.open(out / rec.file) as im:
            assert im.mode == "RGB"
            assert im.size == (photo.image.shape[1], photo.image.shape[0])
            assert np.array_equal(np.asarray(im), photo.image)
    # and the split reader accepts the folder without a single problem
    split = svhn.read_split(out)
    assert len(split.records) == 12 and split.problems == []


def test_boxes_lie_on_ink_in_reading_order(generated):
    _, photos = generated
    for photo in photos:
        img = photo.image.astype(np.float32)
        H, W = img.shape[:2]
        lefts = [b[0] for b in photo.boxes]
        assert lefts == sorted(lefts), "digit boxes must be in reading order (left to right)"
        for left, top, w, h in photo.boxes:
            assert left >= 0 and top >= 0 and left + w <= W and top + h <= H, (left, top, w, h, W, H)
            patch = img[int(top):int(top + h), int(left):int(left + w)].reshape(-1, 3)
            # ink differs from its background: the box's pixels are not all one colour
            spread = np.percentile(patch, 95, axis=0) - np.percentile(patch, 5, axis=0)
            assert spread.max() > 15, f"box {left, top, w, h} holds no visible ink (spread {spread})"
    # and the split reader's box check agrees: no digit box reaches outside its photo
    assert all(svhn.box_problem(svhn.Record("x.png", p.digits, p.boxes), p.image.shape[1], p.image.shape[0]) is None
               for p in photos)


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    out, _ = generated
    again = synth.generate(tmp_path / "b", 12, seed=7)
    assert _digests(again) == _digests(out)
    assert svhn.read_digitstruct(again / "digitStruct.mat") == svhn.read_digitstruct(out / "digitStruct.mat")
    other = synth.generate(tmp_path / "c", 3, seed=8)
    assert list(_digests(other).values()) != list(_digests(out).values())[:3]


def test_worker_processes_write_the_same_bytes(generated, tmp_path):
    out, _ = generated
    parallel = synth.generate(tmp_path / "p", 12, seed=7, workers=2)
    assert _digests(parallel) == _digests(out)
    assert svhn.read_digitstruct(parallel / "digitStruct.mat") == svhn.read_digitstruct(out / "digitStruct.mat")


def test_sample_labels_follow_the_length_distribution():
    stats = synth.load_stats()
    labels = synth.sample_labels(2000, np.random.default_rng(0), stats)
    counts = {int(k): v for k, v in stats["length_counts"].items() if int(k) <= svhn.MAX_DIGITS}
    total = sum(counts.values())
    got = Counter(len(d) for d in labels)
    assert max(got) <= svhn.MAX_DIGITS and min(got) >= 1
    for length, count in counts.items():
        p = count / total
        sd = (p * (1 - p) / 2000) ** 0.5
        assert abs(got[length] / 2000 - p) < 4 * sd + 1e-3, (length, got[length], p)
    # house numbers almost never start with 0 (84 of 33,402 in SVHN train)
    assert sum(d[0] == 0 for d in labels) < 20
    assert all(0 <= x <= 9 for d in labels for x in d)


def test_derive_stats_on_hand_written_csv(tmp_path):
    csv = tmp_path / "digitStruct.csv"
    csv.write_text(
        "name;label;top;left;height;width\n"
        "1.png;1;10;5;20;10\n"       # "19": two digits, gap 2 px = 0.1 heights
        "1.png;9;10;17;20;10\n"
        "2.png;10;0;0;30;15\n"       # "0": one digit (label 10 = 0)
        "3.png;3;4;0;20;10\n"        # "345": three digits
        "3.png;4;4;10;20;10\n"
        "3.png;5;4;20;20;10\n"
        "4.png;7;0;0;10;5\n"         # "7"
    )
    stats = synth.derive_stats(csv)
    assert stats["length_counts"] == {"1": 2, "2": 1, "3": 1}
    assert stats["n_images"] == 4 and stats["n_digits"] == 7
    assert stats["first_digit_counts"] == [1, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    assert stats["other_digit_counts"] == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert stats["gap_rel"][0] == pytest.approx(0.0) and stats["gap_rel"][-1] == pytest.approx(0.1)
    assert stats["number_height_px"][0] == 10 and stats["number_height_px"][-1] == 30


def test_derive_stats_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name;label;top;left;height;width\n1.png;x;1;2;3;4\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2"):
        synth.derive_stats(bad)


def test_committed_stats_are_small_and_complete():
    assert synth.STATS_PATH.stat().st_size < 50_000
    stats = synth.load_stats()
    assert "--derive-stats" in stats["source"]
    for key in ("number_height_px", "digit_aspect", "gap_rel", "jitter_rel"):
        assert len(stats[key]) == len(synth.QUANTILES)
        assert stats[key] == sorted(stats[key])


def test_derive_stats_photo_fractions_from_real_image(tmp_path, svhn_fixtures):
    # 1.png of SVHN train is "19" with boxes (left, top, width, height) (246, 77, 81, 219), (323, 81, 96, 219)
    csv = tmp_path / "digitStruct.csv"
    csv.write_text("name;label;top;left;height;width\n1.png;1;77;246;219;81\n1.png;9;81;323;219;96\n"
                   "999.png;5;0;0;10;5\n")  # a photo that is not in the folder: counted in labels only
    with Image.open(svhn_fixtures / "train" / "1.png") as im:
        W, H = im.size
    stats = synth.derive_stats(csv, svhn_fixtures / "train")
    photo = stats["photo"]
    assert photo["n_images"] == 1
    assert photo["box_height_frac"][10] == pytest.approx((81 + 219 - 77) / H, abs=1e-4)
    assert photo["box_width_frac"][10] == pytest.approx((323 + 96 - 246) / W, abs=1e-4)
    assert photo["box_center_x"][10] == pytest.approx((246 + 323 + 96) / 2 / W, abs=1e-4)
    assert photo["aspect"][10] == pytest.approx(W / H, abs=1e-4)
    assert stats["gap_rel"][0] == pytest.approx((323 - (246 + 81)) / 219, abs=1e-4)
