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


# ---------------------------------------------------------------- a transfer run as the reader

@pytest.fixture(scope="module")
def tiny_transfer_run(tmp_path_factory):
    """A transfer run folder holding the off-the-shelf recognizer (the CTC digits head at step 0,
    as `transcribe transfer` would ship it untrained), over 6 photos made of the 3 real fixtures."""
    import torch
    pytest.importorskip("onnx2torch", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    pytest.importorskip("rapidocr", reason="optional extra: pip install 'transcribe-svhn[whole]'")
    from conftest import _shared, fixture_folder
    from transcribe import transfer
    from transcribe.config import TransferConfig, to_dict
    fixtures = _shared("svhn-fixtures")
    root = tmp_path_factory.mktemp("transferrun")
    folder, run = root / "photos", root / "run"
    run.mkdir()
    records = fixture_folder(fixtures, folder, 6)
    cfg = TransferConfig()
    model = transfer.use_head(transfer.rec.LineRecognizer(cfg.recognizer, cfg.tune_stages), cfg)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("stem.")}
    torch.save({"kind": "transfer", "config": to_dict(cfg), "model": weights,
                "source": {"name": cfg.recognizer, "sha256": model.source_sha256}}, run / transfer.CHECKPOINT)
    (run / "config.json").write_text(json.dumps({"train": str(folder), "transfer": to_dict(cfg)}))
    (run / "threshold.json").write_text(json.dumps({"threshold": -0.5, "target": 0.98, "chosen_on": "out-of-fold predictions"}))
    return run, folder, records


def test_evaluate_without_boxes_reads_with_a_transfer_run(tiny_transfer_run, tmp_path, monkeypatch, capsys):
    """The line recognizer reads every candidate as it reads a known box (a strip, widened by its own
    factor); the same reader at the given boxes is written beside, for the with-box figures."""
    run, folder, records = tiny_transfer_run
    monkeypatch.chdir(tmp_path)                       # the split's cache goes to ./data/cache
    assert main(["evaluate", str(run), "--split", str(folder), "--no-boxes", "--limit", "2", "--cards", "2"]) == 0
    said = capsys.readouterr().out
    assert "the same reader, boxes given" in said and "with the run's threshold" in said
    out = run / "eval" / "photos-noboxes"
    rows, given = read_predictions(out / "predictions.jsonl"), read_predictions(out / "with-boxes.jsonl")
    assert [r["file"] for r in rows] == [r["file"] for r in given] == ["1.png", "2.png"]
    truth = crops.number_box(records[0].boxes)         # widen 1.0: the strip is the number's box
    assert given[0]["box"] == pytest.approx(list(truth), abs=0.01) == rows[0]["true_box"]
    assert rows[0]["iou"] == pytest.approx(localize.iou(rows[0]["box"], truth), abs=1e-3)
    assert all(r["candidates"] > 1 and r["confidence"] <= 0 for r in rows)
    loc = json.loads((out / "report.json").read_text())["localization"]
    assert loc["reader"] == "transfer" and loc["with_boxes"]["photos"] == 2


def test_predict_without_box_with_a_transfer_run(tiny_transfer_run, tmp_path, capsys):
    """`transcribe predict photo --run TRANSFER_RUN` searches the photo; a photo that cannot be read
    gets one line saying why."""
    run, folder, records = tiny_transfer_run
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["predict", str(folder / "1.png"), str(tmp_path / "broken.png"), "--run", str(run)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[1].startswith(str(folder / "1.png") + ",") and ",localized (" in lines[1]
    assert lines[2].startswith(f"{tmp_path / 'broken.png'},unreadable,")
    assert "not a readable image" in captured.err and "Traceback" not in captured.err


def test_transfer_export_equals_torch_and_reads_without_torch(tiny_transfer_run, tmp_path, monkeypatch):
    """`transcribe export` of a transfer run: checked against the torch path before it is kept, and
    `predict --model` reads whole photos with it in an interpreter where torch cannot be imported."""
    import os
    import subprocess
    import sys
    from transcribe import export
    run, folder, records = tiny_transfer_run
    monkeypatch.chdir(tmp_path)                       # the split's cache goes to ./data/cache
    spec = export.export_run(run, tmp_path / "export", say=lambda *a: None)
    assert spec["kind"] == "transfer" and spec["check"]["crops"] == 1          # 10% of 6 photos
    assert spec["check"]["differing_transcriptions"] == 0 and spec["check"]["max_abs_logp_diff"] < export.CHECK_TOLERANCE
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"stem.onnx", "model.onnx", "detector.onnx", "model.json"}
    code = ("import sys; sys.modules['torch'] = None\n"
            "from transcribe.cli import main\n"
            f"rc = main(['predict', '--model', {str(tmp_path / 'export')!r}, {str(folder / '1.png')!r}])\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m]), 'torch'\n"
            "print('rc', rc)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith(str(folder / "1.png") + ",") and done.stdout.splitlines()[-1] == "rc 0"


def test_runtime_decodes_as_ctc_decode():
    """ctcsearch.decode (numpy, the runtime's) = ctc.decode (torch): same text, same exact log P."""
    import torch
    from transcribe import ctc, ctcsearch
    rng = np.random.default_rng(0)
    for T in (1, 3, 12, 40):
        lp = torch.log_softmax(torch.from_numpy(rng.normal(0, 2, (1, T, 11))), -1).float()
        got, want = ctcsearch.decode(lp[0].numpy(), 8, 5), ctc.decode(lp, 8, 5)[0]
        assert got[0] == want.text and got[1] == pytest.approx(want.logp, abs=1e-4)
        for text in ("", "7", "11", "2024"):
            a, b = float(ctc.log_likelihood(lp, [text])[0]), ctcsearch.log_likelihood(lp[0].numpy(), text)
            assert a == b == -np.inf or a == pytest.approx(b, abs=1e-4)


def test_a_runs_chooser_picks_the_candidate_in_evaluate_predict_and_the_runtime(tiny_transfer_run, tmp_path,
                                                                                monkeypatch, capsys):
    """RUN/chooser.json (transcribe fit-chooser) chooses the box wherever a whole photo is searched,
    the same box in each path; here a hand-made chooser that takes the largest box reading the
    rule's transcription."""
    import shutil
    from transcribe import chooser, export, runtime
    run, folder, records = tiny_transfer_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine, ignore=shutil.ignore_patterns("eval", "export"))
    f = len(chooser.FEATURES)
    spec = {"format": chooser.FORMAT, "features": list(chooser.FEATURES), "mean": [0.0] * f, "std": [1.0] * f,
            "weights": [10.0 if name == "area_vs_smallest" else 0.0 for name in chooser.FEATURES], "photos": 1}
    (mine / chooser.CHOOSER_FILE).write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(mine), "--split", str(folder), "--no-boxes", "--limit", "1", "--cards", "2"]) == 0
    said = capsys.readouterr().out
    assert "choice among candidates   learned" in said and "chosen by summed probability instead" in said
    row = read_predictions(mine / "eval" / "photos-noboxes" / "predictions.jsonl")[0]
    assert main(["predict", str(folder / "1.png"), "--run", str(mine), "--format", "jsonl"]) == 0
    told = json.loads(capsys.readouterr().out.splitlines()[0])
    assert told["box"] == pytest.approx(row["box"], abs=0.01) and told["box_source"] == f"localized ({row['source']})"
    export.export_run(mine, tmp_path / "export", say=lambda *a: None)
    assert json.loads((tmp_path / "export" / "model.json").read_text())["localize"]["chooser"] == chooser.CHOOSER_FILE
    got, _ = runtime.predict([folder / "1.png"], tmp_path / "export")
    assert got[0]["box"] == pytest.approx(row["box"], abs=0.01)
    image = localize.load_photo(folder / "1.png")                 # the largest box of the rule's reading
    loc = localize.locate(image, localize.Detector(), widen=1.0, read_boxes=_reader(mine), chooser=chooser.Chooser(spec))
    same = chooser.same_reading(loc.readings)
    largest = max(same, key=lambda j: loc.boxes[j][2] * loc.boxes[j][3])
    assert loc.box == loc.boxes[largest] and list(loc.box) == pytest.approx(row["box"], abs=0.01)


def test_a_runs_box_fitter_moves_the_box_in_evaluate_predict_and_the_runtime(tiny_transfer_run, tmp_path,
                                                                              monkeypatch, capsys):
    """RUN/boxfit.onnx (transcribe fit-box) moves the chosen box wherever a whole photo is searched, the
    same way in each path; the report says how many found boxes overlapped before it moved them."""
    import shutil
    from transcribe import boxfit, export, runtime
    run, folder, records = tiny_transfer_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine, ignore=shutil.ignore_patterns("eval", "export"))
    monkeypatch.chdir(tmp_path)
    assert main(["fit-box", "--train", str(folder), "--out", str(mine), "--steps", "2", "--threads", "1"]) == 0
    assert main(["evaluate", str(mine), "--split", str(folder), "--no-boxes", "--limit", "1", "--cards", "2"]) == 0
    said = capsys.readouterr().out
    assert "box fitter" in said
    rep = json.loads((mine / "eval" / "photos-noboxes" / "report.json").read_text())
    assert rep["localization"]["box_fitter"]["file"] == str(mine / boxfit.BOXFIT_FILE)
    row = read_predictions(mine / "eval" / "photos-noboxes" / "predictions.jsonl")[0]
    image = localize.load_photo(folder / "1.png")
    loc = localize.locate(image, localize.Detector(), widen=1.0, read_boxes=_reader(mine))
    fitted = boxfit.BoxFitter.beside(mine).fit(image, [loc.box])[0]
    assert list(fitted) == pytest.approx(row["box"], abs=0.01) and list(fitted) != pytest.approx(list(loc.box), abs=1e-6)
    assert main(["predict", str(folder / "1.png"), "--run", str(mine), "--format", "jsonl"]) == 0
    told = json.loads(capsys.readouterr().out.splitlines()[0])
    assert told["box"] == pytest.approx(row["box"], abs=0.01)
    export.export_run(mine, tmp_path / "export", say=lambda *a: None)
    assert json.loads((tmp_path / "export" / "model.json").read_text())["localize"]["box_fitter"] == boxfit.BOXFIT_FILE
    got, _ = runtime.predict([folder / "1.png"], tmp_path / "export")
    assert got[0]["box"] == pytest.approx(row["box"], abs=0.01)


def test_predict_with_a_convnet_run_uses_its_box_fitter(tiny_whole_run, tmp_path, capsys):
    """`predict --run` of a ConvNet run loads the model apart from evaluate's reader; it still finds a
    whole photo's box with the run's fitter, as evaluate --no-boxes does."""
    import shutil
    from transcribe import boxfit
    run, _, photos, records = tiny_whole_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine, ignore=shutil.ignore_patterns("eval", "export"))
    assert main(["fit-box", "--train", str(photos), "--out", str(mine), "--steps", "2", "--threads", "1",
                 "--limit", "10"]) == 0
    photo = photos / records[0].file
    assert main(["predict", str(photo), "--run", str(mine), "--format", "jsonl"]) == 0
    told = json.loads(capsys.readouterr().out.splitlines()[-1])
    image = localize.load_photo(photo)
    found = localize.locate(image, localize.Detector(), widen=1.3, read_boxes=_reader(mine)).box
    fitted = boxfit.BoxFitter.beside(mine).fit(image, [found])[0]
    assert list(fitted) != pytest.approx(list(found), abs=0.05)   # the fitter did move it
    assert told["box"] == pytest.approx(list(crops.widen(fitted, 1.3)), abs=0.01)


def _reader(run):
    from transcribe import whole
    return whole.run_reader(run).read_boxes


def test_evaluate_a_transfer_run_at_the_given_boxes(tiny_transfer_run, tmp_path, monkeypatch, capsys):
    """`transcribe evaluate TRANSFER_RUN --split FOLDER` reads every photo at its given box and scores
    it with the run's own threshold, which evaluating leaves as it was."""
    run, folder, records = tiny_transfer_run
    before = (run / "threshold.json").read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--split", str(folder), "--cards", "2"]) == 0
    said = capsys.readouterr().out
    assert "sequence accuracy" in said and "validation threshold" in said
    rows = read_predictions(run / "eval" / "photos" / "predictions.jsonl")
    assert sorted(r["file"] for r in rows) == sorted(r.file for r in records)
    assert rows[[r["file"] for r in rows].index("1.png")]["pred"] == "19"
    rep = json.loads((run / "eval" / "photos" / "report.json").read_text())
    assert rep["threshold"]["value"] == -0.5 and "out-of-fold" in rep["threshold"]["source"]
    assert (run / "threshold.json").read_text() == before
