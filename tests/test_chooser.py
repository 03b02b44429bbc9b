"""The learned choice among candidate boxes: its features, its fit, and where it is used."""

import json

import numpy as np
import pytest

from transcribe import chooser, localize


def _photo(rng):
    """Candidates of one photo: "123" read most surely at a loose prior box, as surely at a box like
    the true one, a crop of part of it ("12"), and noise; the rule's box is the loose one."""
    truth_box = [40.0, 20.0, 30.0, 20.0]
    tight = [v + float(rng.uniform(-1, 1)) for v in truth_box]
    cands = [{"box": [25.0, 5.0, 60.0, 50.0], "source": "prior", "pred": "123", "confidence": -0.05},
             {"box": tight, "source": "detection", "pred": "123", "confidence": -0.3},
             {"box": [40.0, 20.0, 18.0, 20.0], "source": "detection", "pred": "12", "confidence": -2.0}]
    for _ in range(4):
        cands.append({"box": [float(v) for v in rng.uniform(0, 60, 4) + [0, 0, 10, 10]], "source": "prior",
                      "pred": str(rng.integers(0, 99)), "confidence": float(rng.uniform(-9, -3))})
    return cands, truth_box


def _fields(cands):
    return [c["box"] for c in cands], [c["source"] for c in cands]


def test_the_box_is_chosen_among_the_candidates_reading_the_rules_transcription():
    cands, _ = _photo(np.random.default_rng(0))
    chosen, f = chooser.features(cands, *_fields(cands), (80, 120))
    col = {name: k for k, name in enumerate(chooser.FEATURES)}
    assert chosen == [0, 1]                              # the rule's candidate first, then the other "123"
    assert f.shape == (2, len(chooser.FEATURES))
    assert f[1, col["area_vs_smallest"]] == 0 and f[0, col["area_vs_smallest"]] > 1
    assert f[0, col["logp_gap"]] == 0 and f[1, col["logp_gap"]] == pytest.approx(-0.25)
    assert f[0, col["source_prior"]] == 1 and f[1, col["source_detection"]] == 1 and f[0, col["set_size"]] == 2


def test_fitted_chooser_takes_the_box_like_the_true_one(tmp_path):
    """The rule takes the surest box, here a loose one; a chooser fitted on such photos takes the box
    that overlaps the number, and the fit is saved, reloaded and refused when the format differs."""
    rng = np.random.default_rng(1)
    data = []
    for _ in range(60):
        cands, truth_box = _photo(rng)
        chosen, f = chooser.features(cands, *_fields(cands), (80, 120))
        data.append((f, np.array([localize.iou(cands[j]["box"], truth_box) >= 0.5 for j in chosen])))
    spec = chooser.fit(data)
    path = tmp_path / chooser.CHOOSER_FILE
    path.write_text(json.dumps(spec))
    ch = chooser.Chooser.load(path)
    test, truth_box = _photo(np.random.default_rng(7))
    assert localize.choose(test) == 0                                   # the rule: the surest, loose box
    assert ch.choose(test, *_fields(test), (80, 120)) == 1               # learned: the one like the truth
    assert chooser.log_likelihood(spec, data) > np.log(0.5)
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


def test_locate_takes_the_choosers_candidate_and_keeps_every_reading():
    from conftest import OneBox, numbered_reader as read
    image = np.zeros((100, 120, 3), np.uint8)
    loc = localize.locate(image, OneBox(), read, widen=1.3, chooser=_Fixed(2))
    assert loc.read["pred"] == "2" and loc.box == loc.boxes[2] and loc.source == loc.sources[2]
    assert len(loc.readings) == len(loc.boxes) == loc.candidates
    assert localize.locate(image, OneBox(), read, widen=1.3).read["pred"] == "0"   # no chooser: the old rule
