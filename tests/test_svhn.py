"""svhn.py: the real digitStruct.mat files decode to known values; the writer round-trips;
bad input fails with the file named; downloads resume and extraction is safe."""

from __future__ import annotations


import numpy as np
import pytest

from transcribe import svhn
from transcribe.svhn import DataError, Record


# ---------------------------------------------------------------------------- real files

def test_real_train_fixture_known_values(svhn_fixtures):
    records = svhn.read_digitstruct(svhn_fixtures / "train" / "digitStruct.mat")
    assert len(records) == 39
    first = records[0]
    assert first.file == "1.png" and first.text == "19" and first.digits == (1, 9)
    assert first.boxes == ((246, 77, 81, 219), (323, 81, 96, 219))
    assert records[1].file == "2.png" and records[1].text == "23"
    assert [r.file for r in records] == [f"{i}.png" for i in range(1, 40)]


def test_real_test_and_extra_fixtures_parse(svhn_fixtures):
    test = svhn.read_digitstruct(svhn_fixtures / "test" / "digitStruct.mat")
    extra = svhn.read_digitstruct(svhn_fixtures / "extra" / "digitStruct.mat")
    assert len(test) == 40 and len(extra) == 40
    # test 1.png is a one-digit number: its bbox fields are (1, 1) doubles, not references
    assert test[0].text == "5" and test[0].boxes == ((43, 7, 19, 30),)
    assert test[1].text == "210"  # label 10 decodes to the digit 0
    assert extra[0].text == "478"
    for r in test + extra:
        assert 1 <= len(r.digits) and len(r.boxes) == len(r.digits)
        assert all(0 <= d <= 9 for d in r.digits)


def test_real_sample_parses(svhn_sample):
    split = svhn.read_split(svhn_sample)
    assert len(split.records) == 2000 and split.problems == []
    assert split.records[0].text == "19"
    assert split.records[0].boxes[0] == (246, 77, 81, 219)
    assert {len(r.digits) for r in split.records} <= set(range(1, svhn.MAX_DIGITS + 1))


def test_fixture_missing_images_are_counted_and_named(svhn_fixtures):
    for split_name, n_entries in (("train", 39), ("test", 40), ("extra", 40)):
        split = svhn.read_split(svhn_fixtures / split_name)
        assert [r.file for r in split.records] == ["1.png", "2.png", "3.png"]
        assert len(split.problems) == n_entries - 3
        assert all(p.skipped and p.problem == "image file missing" for p in split.problems)
        assert [p.file for p in split.problems] == [f"{i}.png" for i in range(4, n_entries + 1)]
    text = svhn.summarize(split.problems)
    assert "37" in text and "image file missing" in text and "4.png" in text


def test_strict_mode_raises_on_first_problem(svhn_fixtures):
    with pytest.raises(DataError, match=r"4\.png: image file missing"):
        svhn.read_split(svhn_fixtures / "train", strict=True)


# ---------------------------------------------------------------------------- writer

def _records():
    return [
        Record("1.png", (1, 9), ((246.0, 77.0, 81.0, 219.0), (323.0, 81.0, 96.0, 219.0))),
        Record("2.png", (7,), ((5.0, 6.0, 7.0, 8.0),)),  # one digit: scalar bbox fields
        Record("3.png", (0,), ((1.5, 2.0, 3.0, 4.0),)),  # digit 0 is stored as label 10
        Record("10.png", (1, 0, 0, 4, 2), tuple((float(i), 1.0, 2.0, 3.0) for i in range(5))),
    ]


def test_write_read_round_trip(tmp_path):
    import h5py

    path = tmp_path / "digitStruct.mat"
    svhn.write_digitstruct(path, _records())
    assert svhn.read_digitstruct(path) == _records()
    assert path.read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(path, "r") as f:  # the layout of the real files
        assert f.userblock_size == 512
        assert f["digitStruct/name"].shape == (4, 1)
        g = f[f["digitStruct/bbox"][2, 0]]
        assert g["label"].shape == (1, 1) and g["label"][0, 0] == 10.0
        assert f[f["digitStruct/name"][0, 0]].attrs["MATLAB_class"] == b"char"
        assert g["left"].attrs["MATLAB_class"] == b"double"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    with pytest.raises(ValueError, match="cannot write record '9.png'"):
        svhn.write_digitstruct(path, [Record("9.png", (1, 2), ((1.0, 2.0, 3.0, 4.0),))])
    assert svhn.read_digitstruct(path) == _records()  # the failed write left the old file intact


def test_read_split_skips_unusable_entries_with_reasons(tmp_path):
    recs = _records() + [
        Record("11.png", (1, 2, 3, 4, 5, 6), tuple((float(i), 1.0, 2.0, 3.0) for i in range(6))),
        Record("12.png", (), ()),
        Record("13.png", (3,), ((1.0, 1.0, 0.0, 5.0),)),  # zero width
        Record("1.png", (4,), ((1.0, 1.0, 2.0, 5.0),)),  # listed twice
    ]
    svhn.write_digitstruct(tmp_path / "digitStruct.mat", recs)
    for r in recs:
        (tmp_path / r.file).write_bytes(b"")
    split = svhn.read_split(tmp_path)
    assert split.records == _records()
    by_file = {p.file: p for p in split.problems}
    assert len(split.problems) == 4 and all(p.skipped for p in split.problems)
    assert "more than 5 digits" in by_file["11.png"].problem and "6 digits" in by_file["11.png"].problem
    assert by_file["12.png"].kind == "no digits"
    assert by_file["13.png"].kind == "invalid box"
    assert by_file["1.png"].kind == "duplicate entry"
    with pytest.raises(DataError, match=r"11\.png: more than 5 digits"):
        svhn.read_split(tmp_path, strict=True)


def test_label_outside_range_is_a_problem(tmp_path):
    import h5py

    svhn.write_digitstruct(tmp_path / "digitStruct.mat", _records()[:2])
    (tmp_path / "1.png").write_bytes(b"")
    (tmp_path / "2.png").write_bytes(b"")
    with h5py.File(tmp_path / "digitStruct.mat", "r+") as f:
        g = f[f["digitStruct/bbox"][1, 0]]
        g["label"][0, 0] = 11.0
    split = svhn.read_split(tmp_path)
    assert [r.file for r in split.records] == ["1.png"]
    assert split.problems[0].file == "2.png" and split.problems[0].kind == "label outside 1..10"
    with pytest.raises(DataError, match="digitStruct.mat: entry '2.png': label outside"):
        svhn.read_digitstruct(tmp_path / "digitStruct.mat")


# ---------------------------------------------------------------------------- bad files

def test_random_bytes_mat_names_the_file(tmp_path):
    path = tmp_path / "digitStruct.mat"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=rf"^{path}: not a readable MATLAB v7.3"):
        svhn.read_digitstruct(path)


def test_truncated_real_mat_names_the_file(svhn_fixtures, tmp_path):
    data = (svhn_fixtures / "train" / "digitStruct.mat").read_bytes()
    path = tmp_path / "digitStruct.mat"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{path}: "):
        svhn.read_digitstruct(path)


def test_mat_without_digitstruct_names_the_file(tmp_path):
    import h5py

    path = tmp_path / "digitStruct.mat"
    with h5py.File(path, "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(DataError, match=rf"^{path}: no /digitStruct"):
        svhn.read_digitstruct(path)
    with h5py.File(path, "w") as f:  # right names, wrong shapes
        f["digitStruct/name"] = np.zeros((2, 3))
        f["digitStruct/bbox"] = np.zeros((2, 3))
    with pytest.raises(DataError, match=rf"^{path}: /digitStruct/name should be"):
        svhn.read_digitstruct(path)


def test_missing_mat_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"digitStruct.mat: missing"):
        svhn.read_split(tmp_path)


# ---------------------------------------------------------------------------- images

def test_load_image_real_and_corrupt(svhn_fixtures, tmp_path):
    image = svhn.load_image(svhn_fixtures / "train" / "1.png")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    data = (svhn_fixtures / "train" / "2.png").read_bytes()
    cut = tmp_path / "2.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{cut}: unreadable image"):
        svhn.load_image(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=rf"^{junk}: unreadable image"):
        svhn.load_image(junk)
    with pytest.raises(DataError, match="image file missing"):
        svhn.load_image(tmp_path / "absent.png")


def test_box_problem_describes_boxes_outside_the_photo():
    rec = Record("477.png", (1, 2), ((3.0, 10.0, 5.0, 53.0), (8.0, -2.0, 5.0, 10.0)))
    note = svhn.box_problem(rec, width=40, height=57)
    assert note == "box outside the image: digit boxes reach 2 px above, 6 px below the 40x57 photo"
    assert svhn.box_problem(rec, width=40, height=100 ) is not None  # still 2 px above
    inside = Record("1.png", (1,), ((0.0, 0.0, 40.0, 57.0),))
    assert svhn.box_problem(inside, 40, 57) is None
