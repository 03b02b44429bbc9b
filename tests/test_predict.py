"""predict.py: the records (CSV, JSON lines), --boxes from a CSV or a digitStruct.mat, top-k, errors."""

import csv
import json
import shutil

import pytest

from transcribe import crops
from transcribe.cli import main
from transcribe.predict import read_boxes

pytest.importorskip("onnxruntime", reason="the 'whole' extra is not installed")


@pytest.fixture
def referring_run(tiny_whole_run, tmp_path):
    """A copy of the tiny run whose threshold is 0: log P(S|X) < 0 for every photo, so all are referred."""
    run, out, photos, records = tiny_whole_run
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run / "ckpt-best.pt", copy / "ckpt-best.pt")
    saved = json.loads((run / "threshold.json").read_text())
    (copy / "threshold.json").write_text(json.dumps({**saved, "threshold": 0.0}))
    return copy, photos, records


def test_jsonl_holds_the_best_guess_of_referred_photos(referring_run, tmp_path, capsys):
    run, photos, records = referring_run
    paths = [str(photos / r.file) for r in records[:3]]
    out = tmp_path / "answers.jsonl"
    assert main(["predict", *paths, "--run", str(run), "--boxes", str(photos / "digitStruct.mat"),
                 "--format", "jsonl", "--out", str(out), "--top-k", "3"]) == 0
    assert capsys.readouterr().out == ""                     # --out: nothing on stdout
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["file"] for g in got] == paths
    for g, rec in zip(got, records):
        assert g["decision"] == "referred" and g["reason"].startswith("confidence below threshold")
        # the best guess, not an empty field: the most probable transcription and its log P(S|X)
        assert g["transcription"] is not None and g["transcription"] == g["alternatives"][0]["transcription"]
        assert g["log_p"] == g["alternatives"][0]["log_p"] and g["p"] == pytest.approx(2.718281828 ** g["log_p"], abs=1e-6)
        assert len(g["alternatives"]) == 3 and len({a["transcription"] for a in g["alternatives"]}) == 3
        assert [a["log_p"] for a in g["alternatives"]] == sorted((a["log_p"] for a in g["alternatives"]), reverse=True)
        assert g["box_source"] == "boxes file"
        assert g["box"] == pytest.approx(list(crops.widen(crops.number_box(rec.boxes), 1.3)), abs=0.01)


def test_csv_and_jsonl_carry_the_same_records(referring_run, capsys):
    run, photos, records = referring_run
    args = [str(photos / records[0].file), "--run", str(run), "--box",
            ",".join(f"{v:g}" for v in crops.number_box(records[0].boxes)), "--top-k", "2"]
    assert main(["predict", *args]) == 0                      # default: CSV on stdout
    (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
    assert main(["predict", *args, "--format", "jsonl"]) == 0
    (obj,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert list(row) == ["file", "decision", "reason", "transcription", "log_p", "p", "box_left", "box_top",
                         "box_width", "box_height", "box_source", "alternatives"]
    assert row["decision"] == obj["decision"] == "referred" and row["transcription"] == obj["transcription"]
    assert float(row["log_p"]) == obj["log_p"] and float(row["p"]) == obj["p"]
    assert [float(row[f"box_{k}"]) for k in ("left", "top", "width", "height")] == obj["box"]
    assert row["box_source"] == obj["box_source"] == "given (--box)"
    assert row["alternatives"] == " ".join(f"{a['transcription']}:{a['log_p']}" for a in obj["alternatives"])


def test_boxes_from_a_csv_join_digit_rows_and_name_unlisted_photos(referring_run, tmp_path, capsys):
    run, photos, records = referring_run
    table = tmp_path / "boxes.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "left", "top", "width", "height"])
        for b in records[0].boxes:                           # one row per digit: joined into the number's box
            w.writerow([records[0].file, *b])
        w.writerow([str(photos / records[1].file), *crops.number_box(records[1].boxes)])   # a path, one row
    assert read_boxes(table)[records[0].file] == pytest.approx(crops.number_box(records[0].boxes))
    paths = [str(photos / r.file) for r in records[:3]]
    assert main(["predict", *paths, "--run", str(run), "--boxes", str(table), "--format", "jsonl"]) == 1
    captured = capsys.readouterr()
    got = [json.loads(line) for line in captured.out.splitlines()]
    for g, rec in zip(got[:2], records):
        assert g["box"] == pytest.approx(list(crops.widen(crops.number_box(rec.boxes), 1.3)), abs=0.01)
        assert g["decision"] == "referred"
    assert got[2]["decision"] == "unreadable" and got[2]["transcription"] is None
    assert got[2]["reason"] == f"{paths[2]}: not listed in {table}"
    assert f"unreadable: {paths[2]}: not listed in {table}" in captured.err.splitlines()


def test_boxes_from_a_real_digitstruct(tiny_whole_run, svhn_fixtures, capsys):
    run, out, photos, records = tiny_whole_run
    folder = svhn_fixtures / "train"
    assert main(["predict", str(folder / "1.png"), str(folder / "2.png"), "--run", str(run),
                 "--boxes", str(folder / "digitStruct.mat"), "--format", "jsonl"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # 1.png is "19" with digit boxes (246, 77, 81, 219) and (323, 81, 96, 219): number box (246, 77, 173, 223)
    assert read_boxes(folder / "digitStruct.mat")["1.png"] == (246.0, 77.0, 173.0, 223.0)
    assert got[0]["box"] == pytest.approx(list(crops.widen((246, 77, 173, 223), 1.3)), abs=0.01)
    assert all(g["box_source"] == "boxes file" and g["decision"] in ("accepted", "referred") for g in got)


def test_the_onnx_runtime_gives_the_same_records_and_alternatives(tiny_whole_run, capsys):
    run, out, photos, records = tiny_whole_run
    args = [str(photos / r.file) for r in records[:2]] + ["--boxes", str(photos / "digitStruct.mat"),
                                                          "--format", "jsonl", "--top-k", "3"]
    assert main(["predict", *args, "--run", str(run)]) == 0
    torch_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", *args, "--model", str(out / "model.onnx")]) == 0
    onnx_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for t, o in zip(torch_rows, onnx_rows):
        assert (t["decision"], t["transcription"], t["box"]) == (o["decision"], o["transcription"], o["box"])
        assert [a["transcription"] for a in t["alternatives"]] == [a["transcription"] for a in o["alternatives"]]
        assert [a["log_p"] for a in t["alternatives"]] == pytest.approx([a["log_p"] for a in o["alternatives"]], abs=1e-3)


@pytest.mark.parametrize("content, says", [
    ("name,x\n1.png,3\n", "no column file, left, top, width, height"),
    ("file,left,top,width,height\n1.png,a,1,2,3\n", "line 2: left, top, width, height must be numbers"),
])
def test_a_bad_boxes_file_is_one_line_naming_it(tiny_whole_run, tmp_path, capsys, content, says):
    run, out, photos, records = tiny_whole_run
    table = tmp_path / "boxes.csv"
    table.write_text(content)
    assert main(["predict", str(photos / records[0].file), "--run", str(run), "--boxes", str(table)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"transcribe predict: {table}: ") and says in err and len(err.splitlines()) == 1


def test_unusable_box_in_the_boxes_file_makes_that_photo_unreadable(tiny_whole_run, tmp_path, capsys):
    run, out, photos, records = tiny_whole_run
    table = tmp_path / "boxes.csv"
    table.write_text(f"file,left,top,width,height\n{records[0].file},1,1,0,5\n")
    assert main(["predict", str(photos / records[0].file), "--run", str(run), "--boxes", str(table)]) == 1
    (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
    assert row["decision"] == "unreadable" and "is not a box" in row["reason"]


def test_device_cuda_where_it_cannot_be_used_is_one_line(tiny_whole_run, capsys):
    import torch
    run, out, photos, records = tiny_whole_run
    photo = str(photos / records[0].file)
    assert main(["predict", photo, "--model", str(out / "model.onnx"), "--device", "cuda"]) == 1
    assert capsys.readouterr().err.strip() == ("transcribe predict: --device cuda: the ONNX runtime path reads on "
                                               "the CPU (onnxruntime); use --run")
    if not torch.cuda.is_available():
        assert main(["predict", photo, "--run", str(run), "--device", "cuda"]) == 1
        assert capsys.readouterr().err.strip() == "transcribe predict: --device cuda: no CUDA device is available"
