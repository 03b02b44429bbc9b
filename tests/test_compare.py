"""compare.py: the table, thresholds from validation, disagreements, on hand-made predictions files."""

import json

import pytest

from transcribe import cli
from transcribe.studies import compare


def _row(image, truth, pred, conf):
    return {"image": image, "file": image.rsplit("/", 1)[-1], "truth": truth, "pred": pred, "confidence": conf,
            "adhoc_confidence": None, "length_probs": None, "digit_probs": None, "box": [1, 1, 4, 4]}


def _write(path, rows, meta=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))
    return path / "predictions.jsonl"


# System A: right on 1, 2, 3 (most confident), wrong on 4 -> 75%; top 3 are all right: 75% coverage at 98%.
A = [_row("p/1.png", "1", "1", -0.1), _row("p/2.png", "2", "2", -0.2),
     _row("p/3.png", "3", "3", -0.3), _row("p/4.png", "45", "5", -0.4)]
# System B: wrong on 3 with its 2nd highest confidence -> only the top photo can be accepted: 25%.
B = [_row("p/1.png", "1", "1", -0.1), _row("p/2.png", "2", "2", -0.5),
     _row("p/3.png", "3", "9", -0.2), _row("p/4.png", "45", "45", -0.3)]
# A's validation predictions: right down to -0.25, then a mistake -> threshold -0.25.
A_VAL = [_row("v/1.png", "7", "7", -0.05), _row("v/2.png", "8", "8", -0.25), _row("v/3.png", "9", "0", -0.26)]


def test_table_on_hand_made_predictions(tmp_path):
    a = _write(tmp_path / "a", A, {"system": "ocr", "images_per_second": 12.5, "speed_measured": "1 thread"})
    b = _write(tmp_path / "b", B)
    a_val = _write(tmp_path / "a_val", A_VAL)
    systems = compare.load_systems([str(a), str(b.parent)], val_preds=[str(a_val), "-"])
    assert [s.name for s in systems] == ["ocr", "b"]  # meta.json's name, else the folder's
    result = compare.compare(systems, tmp_path / "out", plots=False)
    ta, tb = result["systems"]
    assert ta["sequence_accuracy"] == 0.75 and tb["sequence_accuracy"] == 0.75
    # character accuracy: A matches 1+1+1+0 of max-lengths 1+1+1+2 positions; B 1+1+0+2 of 5.
    assert ta["character_accuracy"] == pytest.approx(3 / 5) and tb["character_accuracy"] == pytest.approx(4 / 5)
    # A: threshold -0.25 from its validation file accepts photos 1, 2 of the test rows: 50%, all right.
    assert ta["threshold"] == -0.25 and ta["threshold_source"] == "validation"
    assert ta["coverage_at_target"] == 0.5 and ta["accuracy_of_accepted"] == 1.0
    # B: no validation file -> the best any threshold reaches here, labelled as such.
    assert tb["threshold_source"] == compare.NO_VAL
    assert tb["coverage_at_target"] == 0.25 and tb["accuracy_of_accepted"] == 1.0
    assert ta["images_per_second"] == 12.5 and tb["images_per_second"] is None
    assert result["photos_in_common"] == 4 and result["disagreements"] == 2
    assert result["right_only"] == [[None, 1], [1, None]]  # A alone right on 3, B alone on 4
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| ocr | 4 | 75.00% | 60.00% | 50.00% | validation | 100.00% | 12.5 |" in md
    assert f"| b | 4 | 75.00% | 80.00% | 25.00% | {compare.NO_VAL} | 100.00% | – |" in md
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["systems"][0]["name"] == "ocr"


def test_disagreements_are_matched_by_image_and_most_confident_wrong_first(tmp_path):
    systems = [compare.System("a", tmp_path, A, None, {}), compare.System("b", tmp_path, B[::-1], None, {})]
    items, counts = compare.disagreements(systems)
    # Photo 3: B wrong at -0.2; photo 4: A wrong at -0.4 -> photo 3 first.
    assert [x["image"] for x in items] == ["p/3.png", "p/4.png"]
    assert [r["pred"] for r in items[0]["readings"]] == ["3", "9"]
    assert [r["right"] for r in items[1]["readings"]] == [False, True]


def test_command_writes_escaped_gallery_and_plot(tmp_path, svhn_fixtures):
    photo = str(svhn_fixtures / "train" / "1.png")
    a = _write(tmp_path / "a", [_row(photo, "19", "19", -0.1), _row("missing/<x>.png", "2", "2", -0.1)])
    b = _write(tmp_path / "b", [_row(photo, "19", "<b>9", -0.2), _row("missing/<x>.png", "2", "7", -0.1)])
    out = tmp_path / "out"
    assert cli.main(["compare", str(a), str(b), "--names", "<script>A", "B&B", "--out", str(out)]) == 0
    page = (out / "disagreements.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;A" in page and "B&amp;B" in page
    assert "&lt;b&gt;9" in page and "missing/&lt;x&gt;.png" in page  # readings and paths escaped
    assert page.count("data:image/jpeg;base64,") == 1  # the real photo embedded; the missing one reported
    assert "photo not available" in page
    assert (out / "accuracy_coverage.png").stat().st_size > 0


def test_mismatched_arguments_are_clear_errors(tmp_path):
    a = _write(tmp_path / "a", A)
    with pytest.raises(SystemExit, match="--names gives 1 names for 2"):
        cli.main(["compare", str(a), str(a), "--names", "x", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no such predictions file"):
        cli.main(["compare", str(tmp_path / "nothing.jsonl"), "--out", str(tmp_path / "o")])
