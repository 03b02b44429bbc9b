"""runtime.py: the torch-free reader gives the torch path's answers, imports no torch, and answers
every kind of photo in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from transcribe import runtime
from transcribe.cli import main

pytest.importorskip("onnxruntime", reason="the 'whole' extra is not installed")


@pytest.mark.parametrize("head", ["sequence", "blank"])
def test_decode_equals_sequence_decode(head):
    import torch
    from transcribe import sequence
    g = torch.Generator().manual_seed(0)
    c = 10 if head == "sequence" else 11
    length_logits, digit_logits = torch.randn(64, 7, generator=g) * 3, torch.randn(64, 5, c, generator=g) * 3
    length_logits[0, 6] = 50.0                      # '>5' wins: refused
    if head == "blank":
        digit_logits[1, 0, 10] = 50.0               # blank first: no number
    want = sequence.decode(length_logits, digit_logits, head=head)
    got = runtime.decode(torch.log_softmax(length_logits, -1).numpy(), torch.log_softmax(digit_logits, -1).numpy(), head)
    assert [g["pred"] for g in got] == want.texts()
    assert np.allclose([g["confidence"] for g in got], want.logp.numpy(), atol=1e-5)
    assert np.allclose([g["adhoc_confidence"] for g in got], want.adhoc_logp.numpy(), atol=1e-5)
    if head == "sequence":
        assert got[0]["pred"] == ">5"
    else:
        assert got[1]["pred"] == ""


def test_prepare_equals_prepare_batch():
    from transcribe import dataset
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    want = dataset.prepare_batch(images, crop=54, train=False).contiguous().numpy()
    assert np.allclose(runtime.prepare(images, 54, 255.0), want, atol=1e-6)


def test_runtime_reads_whole_photos_as_the_torch_path_does(tiny_whole_run):
    from transcribe.predict import predict
    run, out, photos, records = tiny_whole_run
    paths = [photos / r.file for r in records[:4]]
    want, _ = predict(paths, run)                       # torch, no box: localize, then read
    got, problems = runtime.predict(paths, out / "model.onnx")
    assert problems == []
    for g, w in zip(got, want):
        assert (g["pred"], g["decision"], g["box"], g["source"]) == (w["pred"], w["decision"], w["box"], w["source"])
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-4)


def test_predict_with_the_model_imports_no_torch(tiny_whole_run):
    """In a fresh interpreter where torch cannot be imported at all, as after
    `pip install transcribe-svhn[runtime]`."""
    run, out, photos, records = tiny_whole_run
    code = ("import sys; sys.modules['torch'] = None\n"       # any `import torch` now raises ImportError
            "from transcribe.cli import main\n"
            f"rc = main(['predict', '--model', {str(out / 'model.onnx')!r}, {str(photos / records[0].file)!r}])\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m]), 'torch'\n"
            "print('rc', rc)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "rc 0"
    assert done.stdout.splitlines()[1].startswith(str(photos / records[0].file) + ",")


def _bad_inputs(folder, photos, records):
    """One photo of each kind the issue lists; -> {name: what the answer must say (None: a reading)}."""
    folder.mkdir()
    a = np.asarray(Image.open(photos / records[0].file).convert("RGB"))
    b = np.asarray(Image.open(photos / records[1].file).convert("RGB").resize((a.shape[1], a.shape[0])))
    Image.fromarray(np.full((60, 120, 3), 128, np.uint8)).save(folder / "no_number.png")
    Image.fromarray(np.concatenate([a, b], 1)).save(folder / "several.png")
    Image.fromarray(a[:6, :6]).save(folder / "tiny.png")
    Image.fromarray(np.zeros((1000, 800, 3), np.uint8)).save(folder / "huge.png")   # > MAX_PIXELS set below
    Image.fromarray(a).convert("L").save(folder / "grey.png")
    Image.fromarray(a).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray((np.asarray(Image.fromarray(a).convert("L"), np.uint16) * 257)).save(folder / "grey16.png")
    Image.fromarray(a).save(folder / "photo.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored sideways, to be rotated 90 degrees counter-clockwise for viewing
    Image.fromarray(np.rot90(a, -1).copy()).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"no_number.png": None, "several.png": None, "grey.png": None, "rgba.png": None, "grey16.png": None,
            "photo.jpg": None, "rotated.jpg": None,
            "tiny.png": "too small", "huge.png": "too large", "broken.png": "not a readable image"}


def test_every_kind_of_photo_gets_one_clear_answer(tiny_whole_run, tmp_path, capsys, monkeypatch):
    from transcribe import localize
    run, out, photos, records = tiny_whole_run
    kinds = _bad_inputs(tmp_path / "kinds", photos, records)
    monkeypatch.setattr(localize, "MAX_PIXELS", 600_000)  # a 0.6 MP limit: huge.png is 0.8 MP
    paths = [str(tmp_path / "kinds" / name) for name in kinds]
    assert main(["predict", "--model", str(out), *paths, "--format", "jsonl"]) == 1   # 1: some were unreadable
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert "Traceback" not in captured.err and len(records) == len(kinds)
    for path, rec in zip(paths, records):
        name = os.path.basename(path)
        assert rec["file"] == path
        if kinds[name] is None:   # a reading: a number, no number (''), or '>5', accepted or referred
            assert rec["decision"] in ("accepted", "referred") and rec["log_p"] <= 1e-6
            assert rec["transcription"] in ("", ">5") or rec["transcription"].isdigit()
        else:
            assert rec["decision"] == "unreadable" and kinds[name] in rec["reason"]
            assert any(e.startswith(f"unreadable: {path}: ") and kinds[name] in e for e in captured.err.splitlines())


def test_rotated_photo_reads_as_upright(tiny_whole_run, tmp_path):
    """A photo stored sideways with an EXIF rotation tag is read exactly as the upright photo."""
    from transcribe import localize
    run, out, photos, records = tiny_whole_run
    upright = np.asarray(Image.open(photos / records[0].file).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated clockwise; to be turned 90 degrees counter-clockwise for viewing
    Image.fromarray(np.rot90(upright, -1).copy()).save(tmp_path / "rotated.png", exif=exif.tobytes())
    assert (localize.load_photo(tmp_path / "rotated.png") == upright).all()
    got, _ = runtime.predict([photos / records[0].file, tmp_path / "rotated.png"], out)
    assert got[0]["box"] == got[1]["box"] and got[0]["pred"] == got[1]["pred"]


def test_runtime_says_what_is_missing(tmp_path, capsys):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", "--model", str(tmp_path / "model.onnx"), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "model.onnx: no such model file" in err and "transcribe export" in err and "Traceback" not in err
    # a missing photo is reported as missing before the model is looked for
    assert main(["predict", "--model", str(tmp_path / "model.onnx"), str(tmp_path / "y.png")]) == 1
    err = capsys.readouterr().err
    assert f"unreadable: {tmp_path / 'y.png'}: no such file" in err and "model.onnx" not in err


def test_runtime_says_when_the_model_is_not_onnx(tiny_whole_run, tmp_path, capsys):
    import shutil
    run, out, photos, records = tiny_whole_run
    shutil.copy(out / "model.json", tmp_path / "model.json")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    assert main(["predict", "--model", str(tmp_path / "model.onnx"), str(photos / records[0].file)]) == 1
    err = capsys.readouterr().err
    assert "model.onnx: not a readable ONNX model" in err and "Traceback" not in err
