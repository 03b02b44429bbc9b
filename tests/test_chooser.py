"""The learned choice among candidate boxes: its features, its fit, and where it is used."""

import json

import numpy as np
import pytest

from transcribe import chooser, localize


def _photo(rng, partial_wins: bool):
    """Candidates of one photo: the full number "123" at a box like the true one, a crop of part
    of it ("12") read more surely, and loose boxes reading noise."""
    truth_box = [40.0, 20.0, 30.0, 20.0]
    cands = [{"box": truth_box, "source": "merge", "pred": "123", "confidence": -0.6},
             {"box": [40.0, 20.0, 18.0, 20.0], "source": "detection", "pred": "12",
              "confidence": -0.2 if partial_wins else -2.0}]
    for _ in range(4):
        cands.append({"box": [float(v) for v in rng.uniform(0, 60, 4) + [0, 0, 10, 10]], "source": "prior",
                      "pred": str(rng.integers(0, 99)), "confidence": float(rng.uniform(-9, -3))})
    return cands, truth_box


def test_features_say_when_a_reading_is_part_of_a_surer_longer_one():
    rng = np.random.default_rng(0)
    cands, _ = _photo(rng, partial_wins=True)
    f = chooser.features(cands, [c["box"] for c in cands], [c["source"] for c in cands], (80, 120))
    col = {name: k for k, name in enumerate(chooser.FEATURES)}
    assert f.shape == (len(cands), len(chooser.FEATURES))
    assert f[1, col["contained_in_surer"]] == 1 and f[0, col["contained_in_surer"]] == 0
    assert f[0, col["contains_surer"]] == 1
    assert f[1, col["logp_gap"]] == 0 and f[0, col["logp_gap"]] == pytest.approx(-0.4)
    assert f[0, col["source_merge"]] == 1 and f[0, col["length"]] == 3


def test_fitted_chooser_learns_what_the_summed_probability_misses(tmp_path):
    """The summed-probability rule takes the surer partial reading; a chooser fitted on such photos
    takes the whole number, and the fit is saved, reloaded and refused when the format differs."""
    rng = np.random.default_rng(1)
    photos = [_photo(rng, partial_wins=bool(i % 2)) for i in range(60)]
    data = []
    for cands, truth_box in photos:
        f = chooser.features(cands, [c["box"] for c in cands], [c["source"] for c in cands], (80, 120))
        data.append((f, np.array([c["pred"] == "123" and localize.iou(c["box"], truth_box) >= 0.5 for c in cands])))
    spec = chooser.fit(data)
    path = tmp_path / chooser.CHOOSER_FILE
    path.write_text(json.dumps(spec))
    ch = chooser.Chooser.load(path)
    test, truth_box = _photo(np.random.default_rng(7), partial_wins=True)
    boxes, sources = [c["box"] for c in test], [c["source"] for c in test]
    assert test[localize.choose(test)]["pred"] == "12"                 # the old rule: the surer part
    assert ch.choose(test, boxes, sources, (80, 120)) == 0              # learned: the whole number
    assert chooser.log_likelihood(spec, data) > np.mean([np.log(1 / len(c)) for c, _ in photos])
    path.write_text(json.dumps({**spec, "features": ["logp"]}))
    with pytest.raises(ValueError, match=f"{path}: a chooser of another format"):
        chooser.Chooser.load(path)
    with pytest.raises(ValueError, match="nothing to learn from"):
        chooser.fit([(f, np.zeros(len(f), bool)) for f, _ in data])


class _Fixed:
    def __init__(self, k):
        self.k = k

    def choose(self, results, boxes, sources, shape):
        assert len(results) == len(boxes) == len(sources) and shape == (100, 120)
        return self.k


class _OneBox:
    def __call__(self, image):
        return np.array([[40, 20, 30, 30]], float), np.array([0.9])


def test_locate_takes_the_choosers_candidate_and_keeps_every_reading():
    def read(images):
        return [{"pred": str(k), "confidence": -1.0 - k} for k in range(len(images))]
    image = np.zeros((100, 120, 3), np.uint8)
    loc = localize.locate(image, _OneBox(), read, widen=1.3, chooser=_Fixed(2))
    assert loc.read["pred"] == "2" and loc.box == loc.boxes[2] and loc.source == loc.sources[2]
    assert len(loc.readings) == len(loc.boxes) == loc.candidates
    assert localize.locate(image, _OneBox(), read, widen=1.3).read["pred"] == "0"   # no chooser: the old rule
