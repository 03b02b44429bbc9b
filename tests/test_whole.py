"""whole.py: `transcribe evaluate RUN --no-boxes` and `transcribe predict` without --box (torch path)."""

import json

import numpy as np
import pytest

from transcribe import crops, localize
from transcribe.cli import main
from transcribe.predictions import read_predictions

pytest.importorskip("onnxruntime", reason="the 'whole' extra is not installed")


def test_evaluate_without_boxes_writes_the_usual_file_with_both_boxes(tiny_whole_run, capsys):
    run, out, photos, records = tiny_whole_run
    assert main(["evaluate", str(run), "--split", "val", "--no-boxes", "--cards", "3"]) == 0
    said = capsys.readouterr().out
    assert "no boxes given" in said and "localization IoU >= 0.5" in said and "sequence accuracy" in said
    folder = run / "eval" / "val-noboxes"
    rows = read_predictions(folder / "predictions.jsonl")
    assert len(rows) == 8                                   # the run's 8 validation photos
    by_file = {r.file: r for r in records}
    for r in rows:
        truth = crops.number_box(by_file[r["file"]].boxes)
        assert r["truth"] == by_file[r["file"]].text
        assert r["true_box"] == pytest.approx(list(crops.widen(truth, 1.3)), abs=0.01)
        found = crops.widen(r["box"], 1 / 1.3)              # the number box that was chosen
        assert r["iou"] == pytest.approx(localize.iou(found, truth), abs=1e-3)
        assert r["source"] in ("detection", "merge", "photo", "prior") and r["candidates"] > 1
    rep = json.loads((folder / "report.json").read_text())
    loc = rep["localization"]
    assert loc["iou_at_least_0.5"] == pytest.approx(np.mean([r["iou"] >= 0.5 for r in rows]))
    assert loc["some_candidate_iou_at_least_0.5"] >= loc["iou_at_least_0.5"]
    assert rep["n_scored"] == 8 and (folder / "gallery.html").is_file()
    assert "Without boxes" in (folder / "report.md").read_text()


def test_predict_without_box_finds_the_number(tiny_whole_run, capsys):
    """The torch path without --box searches the photo; with --box it reads only the given box."""
    from transcribe.predict import predict
    run, out, photos, records = tiny_whole_run
    found, problems = predict([photos / records[0].file], run)
    given, _ = predict([photos / records[0].file], run, box=crops.number_box(records[0].boxes))
    assert problems == [] and found[0]["source"] in ("detection", "merge", "photo", "prior")
    assert given[0]["box"] == pytest.approx(list(crops.widen(crops.number_box(records[0].boxes), 1.3)), abs=0.01)
    assert main(["predict", str(photos / records[0].file), "--run", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(str(photos / records[0].file) + ",") and ",localized (" in out[1]
