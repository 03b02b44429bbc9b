"""metrics.py on hand-made predictions with hand-computed curve points."""

import math
import random

import pytest

from transcribe import metrics
from transcribe.predictions import read_predictions, write_predictions

# Ten validation photos, most confident first; P(S|X) kept off the 0.1 bin edges.
#   k:        1    2    3    4    5    6    7    8    9    10
#   P:       .95  .92  .85  .83  .75  .65  .55  .45  .35  .25
#   correct:  1    1    1    0    1    1    1    0    1    0
#   acc@k:    1    1    1   3/4  4/5  5/6  6/7  6/8  7/9  7/10
P_VAL = [0.95, 0.92, 0.85, 0.83, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25]
OK_VAL = [1, 1, 1, 0, 1, 1, 1, 0, 1, 0]


def rows_from(probs, oks, adhoc=None, truth="12"):
    rows = []
    for i, (p, ok) in enumerate(zip(probs, oks)):
        rows.append({"image": f"/x/{i}.png", "file": f"{i}.png", "truth": truth, "pred": truth if ok else "7",
                     "confidence": math.log(p), "adhoc_confidence": None if adhoc is None else math.log(adhoc[i]),
                     "length_probs": None, "digit_probs": None, "box": [0, 0, 10, 10]})
    return rows


def shuffled(rows, seed=3):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def test_threshold_and_coverage_at_80_and_90_percent():
    rows = shuffled(rows_from(P_VAL, OK_VAL))
    conf, ok = metrics.confidences(rows), metrics.correctness(rows)
    # 90%: only the top 3 (acc 1) qualify; k=4 falls to 3/4.
    assert metrics.threshold_for_accuracy(conf, ok, 0.9) == pytest.approx(math.log(0.85))
    assert metrics.apply_threshold(conf, ok, math.log(0.85)) == (pytest.approx(0.3), pytest.approx(1.0))
    # 80%: k=4 fails (0.75) but k=5..7 pass again (0.8, 0.833, 0.857): the largest coverage is 0.7.
    t80 = metrics.threshold_for_accuracy(conf, ok, 0.8)
    assert t80 == pytest.approx(math.log(0.55))
    cov, acc = metrics.apply_threshold(conf, ok, t80)
    assert cov == pytest.approx(0.7) and acc == pytest.approx(6 / 7)
    # Nothing reaches 100% beyond the top three; nothing at all reaches a target above 1.
    assert metrics.best_at_target(conf, ok, 1.0)["coverage"] == pytest.approx(0.3)
    assert metrics.threshold_for_accuracy(conf, ok, 1.01) is None
    assert metrics.apply_threshold(conf, ok, None) == (0.0, None)


def test_curve_auc_ece_and_accuracy_at_coverage():
    conf = [math.log(p) for p in P_VAL]
    curve = metrics.accuracy_coverage_curve(conf, OK_VAL)
    assert curve["coverage"] == pytest.approx([k / 10 for k in range(1, 11)])
    assert curve["accuracy"] == pytest.approx([1, 1, 1, 3 / 4, 4 / 5, 5 / 6, 6 / 7, 6 / 8, 7 / 9, 7 / 10])
    auc = (1 + 1 + 1 + 3 / 4 + 4 / 5 + 5 / 6 + 6 / 7 + 6 / 8 + 7 / 9 + 7 / 10) / 10  # = 0.846825...
    assert metrics.area_under_curve(conf, OK_VAL) == pytest.approx(auc)
    # ECE by hand: bins 0.9 {.95 .92 right}: |1-.935|*.2; 0.8 {.85 right, .83 wrong}: |.5-.84|*.2;
    # then single photos: .75 r, .65 r, .55 r, .45 w, .35 r, .25 w.
    ece = (0.065 * 0.2 + 0.34 * 0.2 + (0.25 + 0.35 + 0.45 + 0.45 + 0.65 + 0.25) * 0.1)
    assert ece == pytest.approx(0.321)
    assert metrics.expected_calibration_error(conf, OK_VAL) == pytest.approx(ece)
    bins = metrics.reliability_bins(conf, OK_VAL)
    assert [b["count"] for b in bins] == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    assert bins[8]["accuracy"] == 0.5 and bins[8]["mean_confidence"] == pytest.approx(0.84)
    # 95% coverage of 10 photos = the top 10.
    assert metrics.accuracy_at_coverage(conf, OK_VAL, 0.95) == pytest.approx(0.7)
    assert metrics.accuracy_at_coverage(conf, OK_VAL, 0.5) == pytest.approx(0.8)


def test_ties_are_accepted_together_and_auc_ignores_their_order():
    # Two photos share the top confidence, one right one wrong.
    conf = [-0.1, -0.1, -0.5]
    ok = [True, False, True]
    assert metrics.accuracy_coverage_curve(conf, ok) == {
        "threshold": [-0.1, -0.5], "coverage": [pytest.approx(2 / 3), 1.0], "accuracy": [0.5, pytest.approx(2 / 3)]}
    assert metrics.threshold_for_accuracy(conf, ok, 0.6) == -0.5
    assert metrics.threshold_for_accuracy(conf, ok, 0.9) is None  # the top photo alone is not separable
    # Per item at the tie's mean (.5, .5, 1): accuracies .5, .5, 2/3.
    expected = (0.5 + 0.5 + 2 / 3) / 3
    assert metrics.area_under_curve(conf, ok) == pytest.approx(expected)
    assert metrics.area_under_curve(conf, [False, True, True]) == pytest.approx(expected)


def test_threshold_chosen_on_validation_applied_to_test(tmp_path):
    val = rows_from(P_VAL, OK_VAL)
    test = rows_from([0.99, 0.9, 0.86, 0.85, 0.84, 0.5], [1, 0, 1, 1, 0, 1])
    val_rep = metrics.report(val, target=0.9)
    t = val_rep["threshold"]["value"]
    assert t == pytest.approx(math.log(0.85)) and val_rep["threshold"]["source"] == "chosen on this split"
    # Round trip through a predictions file, as `evaluate` does.
    write_predictions(test, tmp_path / "test.jsonl")
    test = read_predictions(tmp_path / "test.jsonl")
    rep = metrics.report(test, threshold=t, target=0.9, threshold_source="chosen on validation")
    # Accept P >= .85 on test: .99 r, .9 w, .86 r, .85 r -> coverage 4/6 at 3/4 accuracy (below target).
    assert rep["threshold"]["coverage"] == pytest.approx(4 / 6)
    assert rep["threshold"]["accuracy"] == pytest.approx(0.75)
    assert rep["threshold"]["source"] == "chosen on validation"
    # The best achievable on test itself, reported separately: only the top photo.
    assert rep["best_at_target"]["coverage"] == pytest.approx(1 / 6)
    assert rep["best_at_target"]["threshold"] == pytest.approx(math.log(0.99))
    # Accept decision as a detector: 3 true positives, 4 accepted, 4 correct in all.
    assert rep["threshold"]["precision"] == pytest.approx(3 / 4)
    assert rep["threshold"]["recall"] == pytest.approx(3 / 4)
    assert rep["threshold"]["f1"] == pytest.approx(3 / 4)


def test_precision_recall_f1_on_validation():
    conf = [math.log(p) for p in P_VAL]
    pr = metrics.accept_precision_recall(conf, OK_VAL, math.log(0.85))
    assert pr["precision"] == 1.0 and pr["recall"] == pytest.approx(3 / 7)
    assert pr["f1"] == pytest.approx(0.6)  # 2 * 1 * 3/7 / (1 + 3/7)


def test_principled_and_adhoc_confidence_rank_differently():
    # Same predictions: log P(S|X) puts the one mistake last, the ad-hoc product puts it first.
    oks = [1, 1, 0, 1]
    rows = rows_from([0.9, 0.8, 0.4, 0.7], oks, adhoc=[0.6, 0.55, 0.95, 0.5])
    rep = metrics.report(rows, target=0.98)
    assert rep["principled"]["best_at_target"]["coverage"] == pytest.approx(0.75)
    assert rep["adhoc"]["best_at_target"]["coverage"] == 0.0
    assert rep["principled"]["auc"] == pytest.approx((1 + 1 + 1 + 0.75) / 4)
    assert rep["adhoc"]["auc"] == pytest.approx((0 + 0.5 + 2 / 3 + 0.75) / 4)
    md = metrics.to_markdown(rep)
    assert "Principled vs ad-hoc" in md and "75.00%" in md
    # Without ad-hoc confidences (an OCR baseline) that part is absent, not zero.
    assert metrics.report(rows_from([0.9], [1]))["adhoc"] is None


def test_sequence_and_character_accuracy():
    truth, pred = ["1849", "23", "5"], ["849", "23", "7"]
    assert metrics.sequence_accuracy(truth, pred) == pytest.approx(1 / 3)
    # Positions over the longer string: "849" vs "1849" scores 0 of 4, "23" 2 of 2, "7" 0 of 1.
    assert metrics.character_accuracy(truth, pred) == pytest.approx(2 / 7)
    assert metrics.character_accuracy(["12"], ["123"]) == pytest.approx(2 / 3)
    assert metrics.accuracy_by_length(truth, pred) == {1: {"n": 1, "accuracy": 0.0}, 2: {"n": 1, "accuracy": 1.0},
                                                       4: {"n": 1, "accuracy": 0.0}}


def test_report_leaves_out_unlabelled_rows_and_is_json_ready(tmp_path):
    import json
    rows = rows_from(P_VAL, OK_VAL)
    rows.append({**rows[0], "truth": None, "file": "unknown.png"})
    rep = metrics.report(rows, target=0.9)
    assert rep["n"] == 11 and rep["n_scored"] == 10 and rep["n_unlabelled"] == 1
    assert rep["sequence_accuracy"] == pytest.approx(0.7) and rep["mistakes"] == 3
    assert rep["threshold"]["coverage"] == pytest.approx(0.3)
    json.loads(json.dumps(rep))  # serialisable
    assert "1 without a truth" in metrics.to_markdown(rep)


def test_read_predictions_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"file": "1.png", "pred": "1", "confidence": -0.1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not JSON"):
        read_predictions(path)
    path.write_text('{"file": "1.png", "confidence": -0.1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 1 lacks pred"):
        read_predictions(path)


def test_report_of_unlabelled_rows_is_empty_not_a_crash():
    import json
    rep = metrics.report([{"file": "a", "truth": None, "pred": "1", "confidence": -0.1}])
    assert rep["n_scored"] == 0 and rep["sequence_accuracy"] is None and rep["threshold"]["value"] is None
    json.dumps(rep, allow_nan=False)  # standard JSON: no NaN
    assert "0 photos scored (1 without a truth left out)" in metrics.to_markdown(rep)
