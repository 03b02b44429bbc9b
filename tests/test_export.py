"""export.py: the ONNX reader equals the torch model; model.json holds what the runtime needs."""

import json

import numpy as np
import pytest

from transcribe import dataset, export, runtime, sequence
from transcribe.cli import main


def _val_crops(run):
    from transcribe.runs import load_run
    model, _, data_cfg = load_run(run)
    return model, data_cfg, dataset.load_splits(data_cfg, progress=False)[1].images


def test_export_equals_torch_on_fixture_crops(tiny_whole_run):
    import torch
    run, out, photos, records = tiny_whole_run
    spec = json.loads((out / "model.json").read_text())
    assert spec["format"] == runtime.FORMAT and spec["head"] == "sequence" and spec["max_digits"] == 5
    assert spec["input"] == {**spec["input"], "cache_size": 64, "crop": 54, "widen": 1.3, "pixel_scale": 255.0}
    assert spec["threshold"] == -3.0 and spec["alphabet"] == "0123456789"
    assert len(spec["localize"]["detector_sha256"]) == 64 and (out / "detector.onnx").is_file()
    # the check ran on the run's 8 validation crops
    assert spec["check"]["crops"] == 8 and spec["check"]["differing_transcriptions"] == 0
    # and again here, on crops of every fixture photo, through the runtime's own code path
    model, data_cfg, val = _val_crops(run)
    images = np.concatenate([val, val[:, ::-1]])  # 8 crops + their mirror images: other transcriptions
    reader = runtime.Reader(out / "model.onnx")
    got = reader(images)
    with torch.no_grad():
        lengths, digits = model(dataset.prepare_batch(images, crop=54, train=False))
    want = sequence.decode(lengths, digits)
    assert [g["pred"] for g in got] == want.texts()
    assert np.abs(np.array([g["confidence"] for g in got]) - want.logp.numpy()).max() < export.CHECK_TOLERANCE
    # batch size is dynamic: one crop at a time gives the same
    assert [reader(images[i:i + 1])[0]["pred"] for i in range(3)] == want.texts()[:3]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream, still works
def test_torchscript_export_matches(tiny_whole_run):
    import torch
    run, out, _, _ = tiny_whole_run
    model, data_cfg, val = _val_crops(run)
    traced = torch.jit.load(str(out / "model.pt"))
    x = dataset.prepare_batch(val, crop=54, train=False)
    with torch.no_grad():
        a, b = traced(x)
        c, d = model(x)
    assert torch.allclose(a, torch.log_softmax(c, -1), atol=1e-5)
    assert torch.allclose(b, torch.log_softmax(d, -1), atol=1e-5)


def test_export_refuses_a_run_without_threshold(tiny_whole_run, tmp_path, capsys):
    import shutil
    run, _, _, _ = tiny_whole_run
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("threshold.json", "export", "eval"))
    assert main(["export", str(bare), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "no validation threshold" in err and "--split val" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "model.onnx").exists()


def test_compare_reports_a_different_graph(tiny_whole_run, tmp_path):
    """The equality check can fail: a model with other weights differs from the exported graph."""
    import torch
    from transcribe import model as modellib
    run, out, _, _ = tiny_whole_run
    model, data_cfg, val = _val_crops(run)
    other = modellib.build_model(model.cfg).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    result = export.compare(export.LogProbs(other), out / "model.onnx", val, "sequence", 54)
    assert result["max_abs_logp_diff"] > 1e-2
