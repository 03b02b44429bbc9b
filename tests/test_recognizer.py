"""The pretrained recognizer as a torch module: equal to onnxruntime, every weight trains,
the digits head at step 0 reads as the off-the-shelf engine does."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnx2torch", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
pytest.importorskip("rapidocr", reason="optional extra: pip install 'transcribe-svhn[transfer]'")

from transcribe import crops, ctc, recognizer, svhn  # noqa: E402
from transcribe.studies import baseline  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return recognizer.LineRecognizer("ppocr-v6-small").eval()


@pytest.fixture(scope="module")
def engine():
    return baseline.RapidOCR(threads=1, engine="rapidocr-v6")


def _crops(svhn_fixtures):
    out = []
    for split in ("train", "test", "extra"):
        for rec in svhn.read_split(svhn_fixtures / split).records:
            image = svhn.load_image(svhn_fixtures / split / rec.file)
            out.append((rec.text, crops.strip(image, baseline.crop_box(rec.boxes, 1.0))))
    return out


def test_converted_module_equals_onnxruntime_on_real_crops(model, engine, svhn_fixtures):
    for _, crop in _crops(svhn_fixtures):
        x = engine.preprocess(crop)                                    # (1, 3, 48, W), RapidOCR's input
        probs = engine.session.run(None, {engine.input_name: x})[0][0]  # (T, 18710) softmax
        q = np.stack([probs[:, 0]] + [probs[:, c].sum(1) for c in engine.columns], 1)
        expected = np.log(q / q.sum(1, keepdims=True))                  # restricted to blank + digits
        with torch.no_grad():
            ours = model(torch.from_numpy(x))[0].numpy()
        assert np.abs(ours - expected).max() < 1e-3
        # step 0 of the digits head reads exactly what the engine's digits decoding reads
        assert ctc.best_path(ours) == baseline.decode_digits(probs, engine.columns).text


def test_fixture_photos_are_read(model, svhn_fixtures):
    crops = _crops(svhn_fixtures)
    batch, _ = recognizer.collate([recognizer.to_input(c, 1.5) for _, c in crops])
    with torch.no_grad():
        readings = ctc.decode(model(batch))
    assert readings[0].text == "19"  # train/1.png
    assert sum(r.text == t for r, (t, _) in zip(readings, crops)) >= 7  # of 9
    assert all(r.logp <= 0 for r in readings)


def test_stem_in_onnxruntime_equals_the_torch_stem(model):
    x = torch.randn(2, 3, 48, 320)
    with torch.no_grad():
        a = model.stem(x)
    b = recognizer.StemSession(model, threads=1)(x)
    assert a.shape == b.shape == (2, 384, 1, 40)
    assert (a - b).abs().max() < 1e-3


@pytest.mark.parametrize("stages", [1, 2])
def test_a_backbone_cut_before_its_last_stages_reads_as_the_whole(model, stages):
    cut = recognizer.LineRecognizer("ppocr-v6-small", tune_stages=stages).eval()
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        feats = recognizer.StemSession(cut, threads=1)(x)        # what transfer.py caches
        assert feats.shape[2] > 1                                  # a stage's input, not the pooled output
        assert (cut.from_stem(feats) - model(x)).abs().max() < 1e-3
    groups = cut.parameter_groups()
    assert sum(p.numel() for p in groups["tail"]) > 1_000_000      # the last stage alone holds 1.5M weights
    assert sum(p.numel() for ps in groups.values() for p in ps) == sum(p.numel() for p in cut.parameters())
    with pytest.raises(ValueError, match="tune_stages must be 0..3"):
        recognizer.LineRecognizer("ppocr-v6-small", tune_stages=9)


def test_every_weight_trains():
    model = recognizer.LineRecognizer("ppocr-v6-small").train()
    groups = model.parameter_groups()
    assert sum(p.numel() for ps in groups.values() for p in ps) == sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 2_900_000  # 5.27M minus the 2.24M character classifier
    log_probs = model(torch.randn(2, 3, 48, 96))
    (-ctc.log_likelihood(log_probs, ["12", "3"]).mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_missing_extra_is_one_clear_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapidocr" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'transcribe-svhn\[transfer\]'"):
        recognizer.onnx_file("ppocr-v6-small")
