"""boxfit.py: the windows the box fitter sees, its outputs as boxes, and its place in localize.locate."""

import json

import numpy as np
import pytest

from transcribe import boxfit, localize


def test_targets_and_decode_are_inverse_and_zero_gives_the_box_back():
    rng = np.random.default_rng(0)
    boxes = [tuple(rng.uniform(1, 80, 4)) for _ in range(50)]
    truths = [tuple(rng.uniform(1, 80, 4)) for _ in range(50)]
    got = boxfit.decode(boxes, boxfit.targets(boxes, truths))
    assert np.allclose(got, truths, atol=1e-3)
    assert np.allclose(boxfit.decode(boxes, np.zeros((50, 4))), boxes, atol=1e-9)
    # the box's own sides sit at UNIT and 1 - UNIT of its window
    left, top, w, h = boxfit.window((10, 20, 30, 40))
    assert (left + boxfit.UNIT * w, top + boxfit.UNIT * h) == pytest.approx((10, 20))
    assert (left + (1 - boxfit.UNIT) * w, top + (1 - boxfit.UNIT) * h) == pytest.approx((40, 60))


def test_decoded_sides_never_cross():
    (box,) = boxfit.decode([(10, 10, 20, 20)], np.array([[3.0, 3.0, -3.0, -3.0]]))
    assert box[2] >= 1 and box[3] >= 1


def test_windows_are_cut_round_the_box_standardized_and_black_outside():
    image = np.zeros((60, 80, 3), np.uint8)
    image[20:40, 30:50] = 255                          # a white square, the box exactly
    x = boxfit.inputs(image, [(30, 20, 20, 20), (70, 50, 20, 20)])
    assert x.shape == (2, 3, boxfit.SIZE, boxfit.SIZE) and x.dtype == np.float32
    assert abs(float(x[0].mean())) < 1e-4
    centre, rim = x[0, :, 24:40, 24:40].mean(), x[0, :, :8, :8].mean()
    assert centre > 0 > rim                            # the square fills the window's middle half
    assert np.allclose(x[1][:, :, -8:], x[1][0, -1, -1])  # past the photo's edge: one black value


class _Shift:
    """A fitter that moves every box 5 pixels right."""
    def fit(self, image, boxes):
        return [(b[0] + 5, b[1], b[2], b[3]) for b in boxes]


def test_locate_moves_the_chosen_box_and_keeps_its_reading():
    from conftest import OneBox, numbered_reader as read
    image = np.zeros((100, 120, 3), np.uint8)
    plain = localize.locate(image, OneBox(), read, widen=1.3)
    moved = localize.locate(image, OneBox(), read, widen=1.3, fitter=_Shift())
    assert plain.box == plain.found_box and moved.found_box == plain.box
    assert moved.box == pytest.approx((plain.box[0] + 5, *plain.box[1:]))
    assert moved.read == plain.read and moved.readings == plain.readings
    assert moved.crop_box == pytest.approx((plain.crop_box[0] + 5, *plain.crop_box[1:]))


def test_a_fitter_of_another_format_is_refused_in_one_line(tmp_path):
    (tmp_path / boxfit.BOXFIT_FILE).write_bytes(b"not onnx")
    with pytest.raises(ValueError, match=f"{tmp_path / boxfit.SPEC_FILE}: not a box fitter"):
        boxfit.BoxFitter.beside(tmp_path)
    (tmp_path / boxfit.SPEC_FILE).write_text(json.dumps({"format": boxfit.FORMAT, "context": 3.0, "size": boxfit.SIZE}))
    with pytest.raises(ValueError, match="another format"):
        boxfit.BoxFitter.beside(tmp_path)
    (tmp_path / boxfit.SPEC_FILE).write_text(json.dumps({"format": boxfit.FORMAT, "context": boxfit.CONTEXT,
                                                         "size": boxfit.SIZE}))
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        boxfit.BoxFitter.beside(tmp_path)
    assert boxfit.BoxFitter.beside(tmp_path / "elsewhere") is None


def test_simulated_found_boxes_cover_too_small_and_too_large():
    pytest.importorskip("torch")
    from transcribe import train_boxfit
    rng = np.random.default_rng(0)
    truth = (50.0, 40.0, 30.0, 20.0)
    areas = np.array([b[2] * b[3] / 600 for b in (train_boxfit.jitter(rng, truth) for _ in range(2000))])
    assert areas.min() < 0.35 and areas.max() > 4 and 0.7 < np.median(areas) < 1.6


def test_fit_box_writes_a_fitter_the_runtime_loads(tmp_path, capsys):
    """`transcribe fit-box` on the real fixtures (a few steps): boxfit.onnx checked against torch, and
    boxfit.json; BoxFitter moves boxes with it."""
    pytest.importorskip("onnxruntime")
    from conftest import _shared, fixture_folder
    from transcribe.cli import main
    folder = tmp_path / "photos"
    records = fixture_folder(_shared("svhn-fixtures"), folder, 6)
    assert main(["fit-box", "--train", str(folder), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--threads", "1"]) == 0
    assert "kept apart to score it" in capsys.readouterr().out
    spec = json.loads((tmp_path / "run" / boxfit.SPEC_FILE).read_text())
    assert spec["steps"] == 3 and spec["photos"] + spec["photos_apart"] == 6 and spec["onnx_max_abs_diff"] < 1e-3
    assert not list((tmp_path / "run").glob("*.tmp"))
    fitter = boxfit.BoxFitter.beside(tmp_path / "run")
    image = localize.load_photo(folder / records[0].file)
    boxes = fitter.fit(image, [(246, 77, 177, 219), (10, 10, 50, 50)])
    assert len(boxes) == 2 and all(b[2] >= 1 and b[3] >= 1 for b in boxes)
