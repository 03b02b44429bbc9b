"""evaluation.py and predict.py end to end on a tiny run trained here on real SVHN photos."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from transcribe import crops, metrics, svhn
from transcribe.cli import main
from transcribe.evaluation import evaluate, predict_rows, split_cache
from transcribe.predict import predict
from transcribe.predictions import read_predictions
from transcribe.runs import read_threshold

N_TRAIN, N_TEST = 60, 12


def _format1(src: Path, records, dest: Path) -> None:
    dest.mkdir(parents=True)
    for r in records:
        shutil.copy(src / r.file, dest / r.file)
    svhn.write_digitstruct(dest / "digitStruct.mat", records)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """data/svhn/{train,test} in format 1 (72 real photos) and a tiny model trained for 20 steps."""
    import torch
    from transcribe import dataset, model, training
    sample = SHARED_DATA / "svhn-sample" / "train"
    if not sample.exists():
        pytest.skip(f"real SVHN data not found at {sample}")
    root = tmp_path_factory.mktemp("evalrun")
    records = svhn.read_split(sample).records[: N_TRAIN + N_TEST]
    _format1(sample, records[:N_TRAIN], root / "svhn" / "train")
    _format1(sample, records[N_TRAIN:], root / "svhn" / "test")
    data_cfg = dataset.DataConfig(train=(str(root / "svhn" / "train"),), val_size=12, seed=0,
                                  cache_dir=str(root / "cache"))
    train_cfg = training.TrainConfig(out=str(root / "run"), preset="tiny", steps=20, batch_size=16, lr=0.01,
                                     eval_every=10, eval_limit=0, progress=False, hist_every=0, device="cpu")
    threads = torch.get_num_threads()
    try:
        run = training.train(model.PRESETS["tiny"], data_cfg, train_cfg)
    finally:
        torch.set_num_threads(threads)
    return Path(run), root, records


def test_evaluate_val_then_test_reuses_the_validation_threshold(tiny_run, capsys):
    run, root, records = tiny_run
    (run / "threshold.json").unlink(missing_ok=True)
    # test first: there is no threshold yet, so validation is evaluated first and chooses it.
    result = evaluate(run, "test", target=0.98, gallery_n=5)
    out = capsys.readouterr().out
    assert "evaluating the validation split first" in out
    assert "coverage at 98.00% (validation threshold)" in out and "best achievable" in out
    saved = read_threshold(run)
    assert saved["chosen_on"] == "val" and saved["checkpoint"] == "best" and saved["target"] == 0.98
    val_rows = read_predictions(run / "eval" / "val" / "predictions.jsonl")
    assert len(val_rows) == 12
    assert saved["threshold"] == metrics.threshold_for_accuracy(metrics.confidences(val_rows),
                                                                metrics.correctness(val_rows), 0.98)
    # The test split: the 12 photos of the sibling test folder, scored with the validation threshold.
    rows = read_predictions(run / "eval" / "test" / "predictions.jsonl")
    assert [r["file"] for r in rows] == [r.file for r in records[N_TRAIN:]]
    assert [r["truth"] for r in rows] == [r.text for r in records[N_TRAIN:]]
    rep = json.loads((run / "eval" / "test" / "report.json").read_text())
    assert rep["threshold"]["value"] == saved["threshold"] and rep["threshold"]["source"] == "chosen on validation"
    expected = metrics.report(rows, threshold=saved["threshold"], threshold_source="chosen on validation")
    assert rep["threshold"]["coverage"] == expected["threshold"]["coverage"]
    assert rep["sequence_accuracy"] == pytest.approx(expected["sequence_accuracy"])
    # Every row follows the predictions.jsonl contract.
    for r in rows:
        assert Path(r["image"]).is_absolute() and Path(r["image"]).exists()
        assert r["pred"] == "" or r["pred"] == ">5" or r["pred"].isdigit()
        assert r["confidence"] <= 1e-6 and r["adhoc_confidence"] <= 1e-6
        assert len(r["length_probs"]) == 7 and sum(r["length_probs"]) == pytest.approx(1, abs=1e-3)
        assert np.array(r["digit_probs"]).shape == (5, 10)
        assert len(r["box"]) == 4
    for name in ("report.md", "gallery.html", "mistakes.png", "accuracy_coverage.png", "reliability.png",
                 "principled_vs_adhoc.png", "confidence_hist.png"):
        assert (run / "eval" / "test" / name).exists() or (name == "mistakes.png" and rep["mistakes"] == 0), name
    assert list((run / "eval" / "test" / "tb").glob("events.*"))
    assert result["gallery"] == run / "eval" / "test" / "gallery.html"
    meta = json.loads((run / "eval" / "test" / "meta.json").read_text())  # compare reads the speed from here
    assert meta["images_per_second"] > 0 and meta["step"] == rep["checkpoint"]["step"]
    # The model card: rewritten by each evaluation, from the run's files
    card = (run / "MODEL_CARD.md").read_text()
    facts = json.loads((run / "eval" / "val" / "meta.json").read_text())["data"]
    assert facts["train_photos"] == N_TRAIN - 12 and facts["val_photos"] == 12
    assert sum(facts["train_lengths"].values()) == N_TRAIN - 12
    for section in ("## Intended use", "## Model", "## Data", "## Refusal threshold", "## Metrics",
                    "## Accuracy by length", "## Known limits"):
        assert section in card, section
    assert f"{N_TRAIN - 12} training photos, 12 validation photos" in card
    assert f"**{saved['threshold']:.4f}**" in card if saved["threshold"] is not None else "none" in card
    assert "| val | 12 |" in card and f"| test | {N_TEST} |" in card and "chosen on validation" in card
    assert f"Trained on {N_TRAIN - 12} photos" in card and "preset: `tiny`" in card
    assert not list(run.glob(".MODEL_CARD.md.*"))   # written atomically: no temporary file left


def test_evaluate_train_is_the_training_part_only(tiny_run, capsys):
    """--split train: the 48 photos the run trained on, none of its 12 validation photos (make gallery)."""
    run, root, records = tiny_run
    if read_threshold(run) is None:
        evaluate(run, "val", gallery_n=2)
    assert main(["evaluate", str(run), "--split", "train"]) == 0
    capsys.readouterr()
    train = {r["file"] for r in read_predictions(run / "eval" / "train" / "predictions.jsonl")}
    val = {r["file"] for r in read_predictions(run / "eval" / "val" / "predictions.jsonl")}
    assert len(train) == N_TRAIN - 12 and not train & val and train | val == {r.file for r in records[:N_TRAIN]}
    rep = json.loads((run / "eval" / "train" / "report.json").read_text())
    assert rep["threshold"]["source"] == "chosen on validation"
    # report.md links its plots and the gallery, which marks the validation threshold
    md = (run / "eval" / "train" / "report.md").read_text()
    assert "](gallery.html)" in md and "](reliability.png)" in md and "](accuracy_coverage.png)" in md
    page = (run / "eval" / "train" / "gallery.html").read_text()
    assert "chosen on validation" in page and 'data-decision="' in page


def test_predict_rows_match_the_cache_and_predict_on_the_full_photo(tiny_run):
    """A full photo + its number box through `predict` gives exactly the cache row's prediction."""
    from transcribe.runs import load_run
    run, root, records = tiny_run
    if read_threshold(run) is None:
        evaluate(run, "val", gallery_n=2)
    model, ckpt, data_cfg = load_run(run)
    cache = split_cache("test", data_cfg)
    rows = predict_rows(model, cache, indices=[0, 3], batch_size=1)
    rec = records[N_TRAIN + 3]
    assert rows[1]["file"] == rec.file and rows[1]["truth"] == rec.text
    assert rows[1]["box"] == pytest.approx(list(crops.widen(crops.number_box(rec.boxes), data_cfg.widen)), abs=0.01)
    photo = root / "svhn" / "test" / rec.file
    got, problems = predict([photo], run, box=crops.number_box(rec.boxes))
    assert problems == [] and got[0]["pred"] == rows[1]["pred"]
    assert got[0]["confidence"] == pytest.approx(rows[1]["confidence"], abs=1e-5)


def _set_threshold(run: Path, value):
    saved = read_threshold(run)
    (run / "threshold.json").write_text(json.dumps({**saved, "threshold": value}))


def test_predict_command_accepts_or_refers_and_writes_csv(tiny_run, capsys, tmp_path):
    run, root, records = tiny_run
    if read_threshold(run) is None:
        evaluate(run, "val", gallery_n=2)
    original = read_threshold(run)
    photo = root / "svhn" / "test" / records[N_TRAIN].file
    box = ",".join(f"{v:g}" for v in crops.number_box(records[N_TRAIN].boxes))
    try:
        _set_threshold(run, -1e9)  # accept everything
        assert main(["predict", str(photo), "--box", box, "--run", str(run)]) == 0
        (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
        assert row["file"] == str(photo) and row["decision"] == "accepted" and row["reason"] == ""
        assert row["box_source"] == "given (--box)"
        _set_threshold(run, 0.0)  # log P < 0 always: refer everything
        assert main(["predict", str(photo), "--box", box, "--run", str(run)]) == 0
        (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
        assert row["decision"] == "referred" and row["reason"].startswith("confidence below threshold")
        # A folder: every image, CSV out; an unreadable file is reported, not skipped silently.
        folder = tmp_path / "photos"
        shutil.copytree(root / "svhn" / "test", folder)
        (folder / "broken.png").write_bytes(b"not a png")
        assert main(["predict", str(folder), "--run", str(run), "--boxes", str(folder / "digitStruct.mat"),
                     "--out", str(tmp_path / "out.csv")]) == 1
        err = capsys.readouterr().err
        assert "broken.png" in err and "1 unreadable" in err
        with open(tmp_path / "out.csv") as f:
            table = list(csv.DictReader(f))
        assert len(table) == N_TEST + 1
        assert table[0]["file"].endswith("/" + records[N_TRAIN].file)  # natural order: 61.png before 62.png
        assert {r["decision"] for r in table} == {"referred", "unreadable"}
        referred = [r for r in table if r["decision"] == "referred"]
        assert all(r["transcription"] == "" or r["transcription"].isdigit() for r in referred)
        assert all(0 < float(r["p"]) < 1 and math.isclose(math.log(float(r["p"])), float(r["log_p"]), abs_tol=1e-3)
                   for r in referred)
        # the best guesses are the model's, exactly as evaluate reads the same crops
        by_file = {Path(r["file"]).name: r for r in referred}
        for rec in records[N_TRAIN:N_TRAIN + 3]:
            got, _ = predict([folder / rec.file], run, box=crops.number_box(rec.boxes))
            assert by_file[rec.file]["transcription"] == got[0]["pred"]
    finally:
        (run / "threshold.json").write_text(json.dumps(original))


def test_predict_without_threshold_says_what_to_do(tiny_run, tmp_path, capsys):
    run, root, records = tiny_run
    bare = tmp_path / "run"
    bare.mkdir()
    shutil.copy(run / "ckpt-best.pt", bare / "ckpt-best.pt")
    photo = root / "svhn" / "test" / records[N_TRAIN].file
    assert main(["predict", str(photo), "--run", str(bare)]) == 1
    err = capsys.readouterr().err
    assert "threshold.json: no refusal threshold yet" in err and "--split val" in err


def test_predict_missing_photo_or_run_names_what_is_missing(tiny_run, tmp_path, capsys):
    run, root, records = tiny_run
    # a missing photo and no run: the photo is what is missing (the run is never looked at)
    assert main(["predict", str(tmp_path / "x.png"), "--run", str(tmp_path / "nowhere")]) == 1
    captured = capsys.readouterr()
    assert f"unreadable: {tmp_path / 'x.png'}: no such file" in captured.err and "threshold" not in captured.err
    assert "Traceback" not in captured.err
    photo = root / "svhn" / "test" / records[N_TRAIN].file
    # a missing run folder: which folder, and the command that makes one
    assert main(["predict", str(photo), "--run", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"transcribe predict: {tmp_path / 'nowhere'}: no such run folder; `transcribe train --out "
                   f"{tmp_path / 'nowhere'}` (or `make train RUN={tmp_path / 'nowhere'}`) makes one, or give "
                   f"--run RUN / --model MODEL.onnx")
    # a folder without the checkpoint
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(photo), "--run", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty' / 'ckpt-best.pt'}: missing; `transcribe train --out" in err
    assert len(err.strip().splitlines()) == 1
    # a transfer run without its threshold
    (tmp_path / "empty" / "model.pt").write_bytes(b"")
    assert main(["predict", str(photo), "--run", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty' / 'threshold.json'}: missing; `transcribe transfer --folds 5 --out" in err


def test_ablation_trains_each_widening_on_the_same_photos(tiny_run, tmp_path):
    import importlib.util
    run, root, records = tiny_run
    spec = importlib.util.spec_from_file_location("ablation", Path(__file__).parents[1] / "scripts" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    table = ablation.ablation((str(root / "svhn" / "train"),), tmp_path / "abl", widths=(1.0, 1.3), preset="tiny",
                              steps=4, gallery_n=1, say=lambda *a: None, batch_size=16, eval_every=2, eval_limit=0,
                              progress=False, hist_every=0, device="cpu", val_size=12,
                              cache_dir=str(root / "cache"))
    rows = [line for line in table.splitlines() if line.startswith("| 1")]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "1.3"]
    narrow = read_predictions(tmp_path / "abl" / "widen-1" / "eval" / "test" / "predictions.jsonl")
    wide = read_predictions(tmp_path / "abl" / "widen-1.3" / "eval" / "test" / "predictions.jsonl")
    assert [r["file"] for r in narrow] == [r["file"] for r in wide]
    assert wide[0]["box"][2] == pytest.approx(1.3 * narrow[0]["box"][2], rel=1e-3)
    assert (tmp_path / "abl" / "ablation.md").read_text() == table
    # on the validation split alone (the real sample has no test split): one set of columns
    val_table = ablation.ablation((str(root / "svhn" / "train"),), tmp_path / "abl-val", widths=(1.0, 1.3),
                                  preset="tiny", steps=2, split="val", gallery_n=1, say=lambda *a: None,
                                  batch_size=16, eval_every=2, eval_limit=0, progress=False, hist_every=0,
                                  device="cpu", val_size=12, cache_dir=str(root / "cache"))
    assert "(best achievable)" in val_table and len([r for r in val_table.splitlines() if r.startswith("| 1")]) == 2


def test_evaluate_in_a_log_prints_plain_progress_lines(tiny_run, capsys):
    run, _, _ = tiny_run
    evaluate(run, "val", target=0.98, gallery_n=5)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("  predicting: 12/12 img (100%) | ") for line in err.splitlines()), err
