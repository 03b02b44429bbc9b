"""Transfer: folds, out-of-fold thresholds, and the command end to end on real photos."""

import json

import numpy as np
import pytest
from conftest import fixture_folder
import torch

from transcribe import metrics, transfer


def test_folds_are_disjoint_and_cover_every_photo():
    for n, k in ((2000, 5), (13, 5), (7, 2)):
        folds = transfer.folds_of(n, k, seed=0)
        flat = [i for f in folds for i in f]
        assert sorted(flat) == list(range(n))
        assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert transfer.folds_of(100, 5, 0) == transfer.folds_of(100, 5, 0) != transfer.folds_of(100, 5, 1)


def test_split_half_threshold_is_never_chosen_on_the_photos_it_scores():
    # 100 photos; 5 confident mistakes all fall in the second half. Chosen on the first half (no
    # mistakes), the threshold accepts them in the second: accuracy there falls below the target,
    # which a threshold chosen on the second half itself would have avoided.
    first, second = transfer.folds_of(100, 2, seed=0 + 1)
    rows = [{"truth": "1", "pred": "1", "confidence": -i / 100} for i in range(100)]
    for i in second[:5]:
        rows[i] = {"truth": "1", "pred": "2", "confidence": 0.0}
    out = transfer.split_half_scores(rows, seed=0)
    assert out["accuracy"] < 0.98                       # the honest figure sees the mistakes
    oracle = metrics.best_at_target(np.array([rows[i]["confidence"] for i in second]),
                                    metrics.correctness([rows[i] for i in second]))
    assert oracle["coverage"] == 0.0 or oracle["accuracy"] >= 0.98  # in-sample would hide them
    clean = [{"truth": "1", "pred": "1", "confidence": -i * 1e-3} for i in range(100)]
    assert 0.9 <= transfer.split_half_scores(clean, seed=0)["coverage"] <= 1.0


def test_fold_summary_reports_mean_and_spread():
    rng = np.random.default_rng(0)
    rows = [{"truth": "1", "pred": "1" if rng.random() < 0.9 else "2", "confidence": float(-rng.random())}
            for _ in range(100)]
    folds = transfer.folds_of(100, 5, 0)
    s = transfer.fold_summary(rows, folds, 0)
    assert len(s["folds"]) == 5 and all(f["photos"] == 20 for f in s["folds"])
    accs = [f["sequence_accuracy"] for f in s["folds"]]
    assert s["sequence_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert s["sequence_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))


@pytest.mark.slow
def test_transfer_command_cross_validates_and_ships_a_model(svhn_fixtures, tmp_path, capsys):
    pytest.importorskip("onnx2torch", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    pytest.importorskip("rapidocr", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    from transcribe import cli, predictions
    folder = tmp_path / "train"
    fixture_folder(svhn_fixtures, folder, 12)
    out = tmp_path / "run"
    assert cli.main(["transfer", "--train", str(folder), "--folds", "3", "--views", "1", "--epochs", "1",
                     "--out", str(out), "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--amp", "off",
                     "--keep-folds", "--tune-stages", "1"]) == 0
    said = capsys.readouterr().err  # what it runs on at the start, the next commands at the end
    assert "1 threads, float32" in said and "trainable parameters (the backbone's last 1 stage(s)" in said
    assert f"next: transcribe gallery {out / 'eval' / 'cv' / 'predictions.jsonl'}" in said
    assert said.rstrip().endswith(f"next: transcribe predict PHOTO.png --box L,T,W,H --run {out}")
    rows = predictions.read_predictions(out / "eval" / "cv" / "predictions.jsonl")
    assert sorted(r["file"] for r in rows) == sorted(f"{i + 1}.png" for i in range(12))  # each photo once
    assert {r["fold"] for r in rows} == {0, 1, 2}
    for f in range(3):  # --keep-folds: each fold's model, and the photos it never saw = its out-of-fold rows
        held = json.loads((out / "folds" / str(f) / "config.json").read_text())["held_out"]
        assert sorted(held) == sorted(r["file"] for r in rows if r["fold"] == f)
        assert transfer.load(out / "folds" / str(f))[1].tune_stages == 1
    # fit-chooser: each photo read by the fold model that never saw it, at every candidate box
    assert cli.main(["fit-chooser", str(out), "--limit", "3", "--threads", "1"]) == 0
    readings = (out / "chooser-readings.jsonl").read_text().splitlines()
    assert len(readings) == 3 and all(json.loads(r)["candidates"] for r in readings)
    held = {f: json.loads((out / "folds" / str(f) / "config.json").read_text())["held_out"] for f in range(3)}
    assert all(json.loads(r)["file"] in held[int(json.loads(r)["fold"])] for r in readings)
    written = out / ("chooser.json" if (out / "chooser.json").is_file() else "chooser-rejected.json")
    spec = json.loads(written.read_text())   # kept as chooser.json only where it beats the rule out of sample
    assert spec["cross_validated"]["photos"] == 3 and len(spec["weights"]) == len(spec["features"])
    assert (written.name == "chooser.json") == spec["beats_the_rule"]
    assert cli.main(["fit-chooser", str(out), "--limit", "3", "--threads", "1"]) == 0      # read once: resumed
    assert "0 to read" in capsys.readouterr().out
    first = json.loads(readings[0])                  # a reading by another model (an earlier run): read again
    (out / "chooser-readings.jsonl").write_text("\n".join([json.dumps({**first, "model": "stale"})] + readings[1:]) + "\n")
    assert cli.main(["fit-chooser", str(out), "--limit", "3", "--threads", "1"]) == 0
    assert "2 already read" in capsys.readouterr().out
    again = [json.loads(r) for r in (out / "chooser-readings.jsonl").read_text().splitlines()]
    assert len(again) == 3 and all(r["model"] != "stale" for r in again)
    assert all(r["confidence"] <= 0 for r in rows)
    cv = json.loads((out / "cv.json").read_text())["cv"]
    assert len(cv["fine_tuned"]["folds"]) == 3 and 0 <= cv["step0"]["sequence_accuracy"]["mean"] <= 1
    # the shipped model loads with weights_only=True and reads as the run did
    model, cfg, threshold = transfer.load(out)
    photos, _ = transfer.load_photos(folder)
    from transcribe import ctc, recognizer
    batch, _ = recognizer.collate([transfer.eval_view(p, cfg) for p in photos[:3]], cfg.min_width)
    with torch.no_grad():
        texts = [r.text for r in ctc.decode(model(batch))]
    assert texts[0] == "19"  # 1.png
    # `transcribe predict` reads with the shipped model and its out-of-fold threshold
    jsonl_out = tmp_path / "answers.jsonl"
    assert cli.main(["predict", str(folder / "1.png"), "--box", "246,77,173,223", "--run", str(out),
                     "--format", "jsonl", "--out", str(jsonl_out), "--top-k", "3"]) == 0
    (answer,) = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert answer["log_p"] <= 0 and answer["decision"] in ("accepted", "referred")
    # CTC alternatives: the beam's survivors rescored exactly, the first is the transcription
    assert answer["alternatives"][0] == {"transcription": answer["transcription"], "log_p": answer["log_p"]}
    assert [a["log_p"] for a in answer["alternatives"]] == sorted((a["log_p"] for a in answer["alternatives"]), reverse=True)
    # the model card of the transfer run
    card = (out / "MODEL_CARD.md").read_text()
    assert "# Model card: run" in card and "12 photos" in card and "3-fold cross-validation" in card
    assert "| cv | 12 |" in card and "## Known limits" in card


class _TinyReader(torch.nn.Module):
    """Stands in for the recognizer after its stem: (B, C, H, T) -> (B, T, 11) log-probabilities."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 11)

    def from_stem(self, feats):
        return self.proj(feats.mean(2).transpose(1, 2)).log_softmax(-1)


def test_training_precision_is_measured_only_where_bf16_can_win(monkeypatch):
    from transcribe import precision
    from transcribe.config import TransferConfig
    model = _TinyReader()
    feats = [torch.randn(4, 2, 10, dtype=torch.float16) for _ in range(3)]
    photos = [transfer.Photo(f"{i}.png", "12", np.zeros((4, 4, 3), np.uint8), (0, 0, 4, 4)) for i in range(3)]
    said = []
    assert transfer.training_precision(model, feats, photos, TransferConfig(amp="off")) == "off"
    assert transfer.training_precision(model, feats, photos, TransferConfig(amp="bf16")) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)   # no bf16 instructions: no stopwatch
    monkeypatch.setattr(precision, "time_calls", lambda fns: pytest.fail("measured"))
    assert transfer.training_precision(model, feats, photos, TransferConfig(amp="auto"), log=said.append) == "off"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    for seconds, expected in (({"off": 1.0, "bf16": 0.5}, "bf16"), ({"off": 1.0, "bf16": 0.95}, "off")):
        def timed(fns, seconds=seconds):
            for fn in fns.values():
                fn()                                                     # each step runs: forward, loss, backward
            return seconds
        monkeypatch.setattr(precision, "time_calls", timed)
        assert transfer.training_precision(model, feats, photos, TransferConfig(amp="auto"), log=said.append) == expected
    assert all(p.grad is None for p in model.parameters())             # the measurement leaves no gradient
    assert "takes 1000 ms in float32, 500 ms under bf16 here: bf16" in said[0]


@pytest.mark.slow
def test_transfer_streams_fresh_views_without_a_feature_cache(svhn_fixtures, tmp_path):
    """--stream (full SVHN: cached views would not fit in memory): no cache is written, every photo
    still gets its out-of-fold prediction, and the run loads as any other."""
    pytest.importorskip("onnx2torch", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    pytest.importorskip("rapidocr", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    from transcribe import cli, predictions
    folder = tmp_path / "train"
    fixture_folder(svhn_fixtures, folder, 6)
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert cli.main(["transfer", "--train", str(folder), "--folds", "2", "--stream", "--epochs", "1",
                     "--batch-size", "4", "--out", str(out), "--threads", "1", "--cache-dir", str(cache)]) == 0
    assert not cache.exists()
    rows = predictions.read_predictions(out / "eval" / "cv" / "predictions.jsonl")
    assert sorted(r["file"] for r in rows) == sorted(f"{i + 1}.png" for i in range(6))
    assert json.loads((out / "config.json").read_text())["transfer"]["stream"] is True
    assert transfer.load(out)[1].stream
