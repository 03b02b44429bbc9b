"""localize.py: photos in any form, the detector's boxes, the candidates, the reader's choice."""

import numpy as np
import pytest
from PIL import Image

from transcribe import crops, localize, svhn
from transcribe.config import WIDEN
from conftest import OneBox

pytest.importorskip("onnxruntime", reason="the 'whole' extra is not installed")


@pytest.fixture(scope="module")
def detector():
    try:
        localize.detector_path()
    except localize.PhotoError as err:
        pytest.skip(str(err))
    return localize.Detector(threads=1)


# ---------------------------------------------------------------- the detector on real photos

def test_detector_finds_19_in_train_1(svhn_fixtures, detector):
    """train/1.png reads "19"; its digit boxes (246, 77, 81, 219) and (323, 81, 96, 219)."""
    image = localize.load_photo(svhn_fixtures / "train" / "1.png")
    boxes, scores = detector(image)
    truth = crops.number_box([(246, 77, 81, 219), (323, 81, 96, 219)])
    assert len(boxes) >= 1 and scores[0] >= localize.DET_BOX_THRESH
    assert localize.iou(boxes[0], truth) >= 0.5


def test_some_candidate_overlaps_the_true_box(svhn_fixtures, detector):
    """On the six fixture photos every true box has a candidate with IoU >= 0.5, but test/3.png:
    a lone small "6" at the right edge of a 101 x 31 photo, which the detector misses and the prior
    (centred) does not reach -- a known miss, kept here so that a change that finds it shows."""
    best = {}
    for split in ("train", "test"):
        for record in svhn.read_split(svhn_fixtures / split).records[:3]:
            image = localize.load_photo(svhn_fixtures / split / record.file)
            boxes, _ = detector(image)
            cands = localize.candidates(boxes, image.shape[:2], WIDEN)
            best[f"{split}/{record.file}"] = max(localize.iou(b, crops.number_box(record.boxes)) for b, _ in cands)
    assert {k for k, v in best.items() if v < 0.5} == {"test/3.png"}, best


def test_second_pass_adds_its_own_boxes(svhn_fixtures, detector):
    """test/2.png (48 x 182): the 160 px pass finds a tighter box than the 96 px one; its boxes join
    the candidates once each, after the first pass's; a photo already 160 px high has one pass."""
    image = localize.load_photo(svhn_fixtures / "test" / "2.png")
    passes = detector.passes(image)
    assert len(passes) == 2
    truth = crops.number_box(svhn.read_split(svhn_fixtures / "test").records[1].boxes)
    first = localize.candidates(passes[0], image.shape[:2], WIDEN)
    both = localize.candidates(passes, image.shape[:2], WIDEN)
    assert both[:len(first)] == first and len(both) > len(first)
    assert len({tuple(round(v, 1) for v in b) for b, _ in both}) == len(both)
    assert max(localize.iou(b, truth) for b, _ in both) > max(localize.iou(b, truth) for b, _ in first)
    assert len(detector.passes(localize.load_photo(svhn_fixtures / "train" / "1.png"))) == 1   # 350 px high


def test_detector_finds_nothing_in_a_blank_photo(detector):
    boxes, scores = detector(np.full((60, 120, 3), 128, np.uint8))
    assert boxes.shape == (0, 4) and len(scores) == 0


# ---------------------------------------------------------------- post-processing

def test_components_are_8_connected():
    mask = np.zeros((6, 8), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True      # a diagonal: one component
    mask[0, 5:8] = True                               # a bar
    mask[4:6, 3:5] = True                             # a square
    got = sorted(localize.components(mask))
    assert got == [(0, 0, 3, 3), (0, 5, 1, 8), (4, 3, 6, 5)]
    assert localize.components(np.zeros((4, 4), bool)) == []


def test_boxes_from_map_grows_boxes_and_drops_faint_ones():
    prob = np.zeros((40, 80), np.float32)
    prob[10:20, 10:40] = 0.9     # text: 30 x 10 map pixels
    prob[30:34, 60:66] = 0.35    # faint: mean under DET_BOX_THRESH after dilation
    boxes, scores = localize.boxes_from_map(prob, unclip=1.5)
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9 * 300 / (31 * 11))  # mean over the dilated box
    # dilation adds a pixel on the bottom and right; unclip adds d = area * 1.5 / perimeter on each side
    w, h = 31, 11
    d = w * h * 1.5 / (2 * (w + h))
    assert boxes[0] == pytest.approx([10 - d, 10 - d, w + 2 * d, h + 2 * d])


def test_candidates_join_neighbours_and_include_the_photo():
    dets = np.array([[10, 10, 8, 20], [20, 11, 9, 19], [60, 40, 5, 5]], float)
    cands = localize.candidates(dets, (80, 100), widen=1.3)
    sources = [s for _, s in cands]
    boxes = [b for b, _ in cands]
    assert sources.count("photo") == 1 and sources.count("prior") == len(localize.PRIOR_SCALES)
    assert any(b == pytest.approx((10, 10, 19, 20)) for b in boxes)          # "1" and "9" joined
    assert not any(b[0] == pytest.approx(10) and b[2] > 50 for b in boxes)   # the far blob is not joined
    photo = boxes[sources.index("photo")]
    assert crops.widen(photo, 1.3) == pytest.approx((0, 0, 100, 80))        # widened: the whole photo


def test_locate_keeps_the_most_probable_reading():
    """The reader, not the detector, chooses; a crop read as nothing or '>5' loses to any number."""
    calls = []

    def read(images):
        calls.append(len(images))
        n = len(images)
        out = [{"pred": "7", "confidence": -5.0 - k} for k in range(n)]
        out[n - 1] = {"pred": "12", "confidence": -0.5}   # the last candidate: the most probable number
        out[0] = {"pred": "", "confidence": -0.01}        # more probable still, but says no number
        return out
    image = np.zeros((100, 120, 3), np.uint8)
    loc = localize.locate(image, OneBox(), read, widen=1.3)
    cands = localize.candidates(OneBox()(image)[0], image.shape[:2], 1.3)
    assert calls == [len(cands)] and loc.candidates == len(cands) and loc.detections == 1
    assert loc.read["pred"] == "12" and loc.box == cands[-1][0] and loc.source == cands[-1][1]
    assert loc.crop_box == pytest.approx(crops.widen(loc.box, 1.3))


def test_locate_sums_probability_over_the_candidates():
    """Many crops reading "7" at P = 0.37 outweigh one reading "12" at P = 0.61; the "7" box kept is
    the one most sure of it."""
    def read(images):
        out = [{"pred": "7", "confidence": -1.0} for _ in range(len(images))]
        out[1] = {"pred": "7", "confidence": -0.9}
        out[-1] = {"pred": "12", "confidence": -0.5}
        return out
    image = np.zeros((100, 120, 3), np.uint8)
    loc = localize.locate(image, OneBox(), read, widen=1.3)
    assert loc.read == {"pred": "7", "confidence": -0.9}
    assert loc.box == localize.candidates(OneBox()(image)[0], image.shape[:2], 1.3)[1][0]


def test_iou():
    assert localize.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert localize.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert localize.iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0


# ---------------------------------------------------------------- photos of every kind

def _rgb(h=30, w=50):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 0] = np.arange(w, dtype=np.uint8)[None, :] * 5
    a[:, :, 1] = 200
    return a


def test_load_photo_reads_grey_rgba_palette_16bit_and_jpeg(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "rgb.png")
    assert (localize.load_photo(tmp_path / "rgb.png") == _rgb()).all()
    Image.fromarray(_rgb()[:, :, 0]).save(tmp_path / "grey.png")
    grey = localize.load_photo(tmp_path / "grey.png")
    assert grey.shape == (30, 50, 3) and (grey[:, :, 1] == _rgb()[:, :, 0]).all()
    rgba = np.dstack([_rgb(), np.full((30, 50), 255, np.uint8)])
    rgba[:10, :, 3] = 0                                            # top third transparent: shown as white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = localize.load_photo(tmp_path / "rgba.png")
    assert (got[:10] == 255).all() and (got[10:] == _rgb()[10:]).all()
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "palette.gif")
    assert localize.load_photo(tmp_path / "palette.gif").shape == (30, 50, 3)
    deep = (np.arange(50, dtype=np.uint16)[None, :] * 1300).repeat(30, 0)   # 0 .. 63,700 of 65,535
    Image.fromarray(deep).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    got16 = localize.load_photo(tmp_path / "grey16.png")
    assert got16[0, -1, 0] == round(63700 * 255 / 65535) and got16[0, 0, 0] == 0   # scaled, not clipped
    Image.fromarray(_rgb()).save(tmp_path / "photo.jpg", quality=95)
    assert np.abs(localize.load_photo(tmp_path / "photo.jpg").astype(int) - _rgb()).mean() < 8


def test_load_photo_applies_the_exif_rotation(tmp_path):
    image = Image.fromarray(_rgb(30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    got = localize.load_photo(tmp_path / "rotated.jpg")
    assert got.shape == (50, 30, 3)
    assert got[0, :, 0].mean() < got[-1, :, 0].mean()  # the left-to-right ramp now runs top to bottom


@pytest.mark.parametrize("kind, expected", [
    ("missing", "no such file"), ("folder", "not a file"), ("text", "not a readable image"),
    ("truncated", "not a readable image"), ("tiny", "too small"), ("huge", "too large")])
def test_load_photo_says_why_in_one_line(tmp_path, monkeypatch, kind, expected):
    path = tmp_path / f"{kind}.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a photo")
    elif kind == "truncated":
        Image.fromarray(_rgb()).save(path)
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "tiny":
        Image.fromarray(_rgb(5, 40)).save(path)
    elif kind == "huge":
        monkeypatch.setattr(localize, "MAX_PIXELS", 1000)
        Image.fromarray(_rgb()).save(path)
    with pytest.raises(localize.PhotoError) as err:
        localize.load_photo(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
