"""card.py: RUN/MODEL_CARD.md from the run folder's files (no model needed)."""

import json

from transcribe import card


def _run(tmp_path, threshold=-0.5, test_accuracy=0.97):
    run = tmp_path / "myrun"
    (run / "eval" / "val").mkdir(parents=True)
    (run / "eval" / "test").mkdir()
    (run / "config.json").write_text(json.dumps({
        "data": {"train": ["data/synth/train"], "crop": 54, "widen": 1.3, "seed": 0},
        "model": {"head": "sequence"}, "train": {"preset": "cpu", "optimizer": "sgd", "lr": 0.05}}))
    (run / "threshold.json").write_text(json.dumps({"threshold": threshold, "target": 0.98, "chosen_on": "val",
                                                    "photos": 200, "coverage": 0.9, "accuracy": 0.981,
                                                    "checkpoint": "best", "step": 12}))
    (run / "eval" / "val" / "meta.json").write_text(json.dumps({"data": {
        "folders": ["/abs/data/synth/train"], "train_photos": 1800, "val_photos": 200,
        "train_lengths": {"1": 300, "2": 1000, "3": 490, "4": 10}}}))
    by_length = {"1": {"n": 40, "accuracy": 0.95}, "2": {"n": 120, "accuracy": 0.96}, "3": {"n": 35, "accuracy": 0.8},
                 "4": {"n": 5, "accuracy": 0.4}}
    val = {"n_scored": 200, "sequence_accuracy": 0.93, "character_accuracy": 0.95, "auc": 0.99,
           "threshold": {"source": "chosen on this split", "coverage": 0.9, "accuracy": 0.981, "value": threshold},
           "accuracy_by_length": by_length}
    test = {**val, "threshold": {"source": "chosen on validation", "coverage": 0.88, "accuracy": test_accuracy}}
    (run / "eval" / "val" / "report.json").write_text(json.dumps(val))
    (run / "eval" / "test" / "report.json").write_text(json.dumps(test))
    return run


def test_card_states_data_threshold_metrics_and_limits_from_the_files(tmp_path):
    run = _run(tmp_path)
    path = card.write_card(run, parameters=1234567)
    text = path.read_text()
    assert path == run / "MODEL_CARD.md" and not list(run.glob(".MODEL_CARD.md.*"))
    assert "- training folders: `data/synth/train`" in text and "1,800 training photos, 200 validation" in text
    assert "parameters: 1,234,567" in text and "preset: `cpu`" in text
    assert "accept when log P(S|X) >= **-0.5000**" in text and "chosen on: val (200 photos)" in text
    assert "| val | 200 | 93.00% | 95.00% | 90.00% | 98.10% | chosen here | 0.9900 |" in text
    assert "| test | 200 | 93.00% | 95.00% | 88.00% | 97.00% | chosen on validation | 0.9900 |" in text
    assert "| 3 | 490 | 35 | 80.00% | 35 | 80.00% |" in text          # accuracy by length, training counts
    limits = text.split("## Known limits")[1]
    assert "synthetic" in limits and "Trained on 1,800 photos" in limits
    assert "3-digit numbers are read worse: 80.00% on 35 validation photos" in limits
    assert "4-digit numbers: only 5 validation photos" in limits and "4-digit numbers: only 10 training photos" in limits
    assert "On test the photos accepted with the validation threshold were 97.00% accurate" in limits
    assert "not measured for this run" in limits                      # no --no-boxes evaluation yet
    assert "1-digit" not in limits and "2-digit" not in limits


def test_card_without_a_threshold_says_every_photo_is_referred(tmp_path):
    run = _run(tmp_path, threshold=None, test_accuracy=0.99)
    text = card.write_card(run).read_text()
    assert "accept when log P(S|X) >= **none**" in text and "every photo is referred to a person" in text
    assert "On test" not in text                                       # 99% accepted accuracy: above the target
    # rewriting replaces the card: one card, the latest facts
    (run / "eval" / "val" / "meta.json").write_text(json.dumps({"data": {
        "folders": ["x"], "train_photos": 900, "val_photos": 100, "train_lengths": {"1": 900}}}))
    assert "900 training photos, 100 validation" in card.write_card(run).read_text()
