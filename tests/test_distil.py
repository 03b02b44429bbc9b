"""distil.py: the distillation loss equals its hand computation, the teacher's labels are
renormalised and round-trip through their cache, and a tiny teacher teaches a tiny student end to end."""

import json
import math

import pytest
from conftest import fixture_folder
import torch

from transcribe import ctc, distil
from transcribe.sequence import distillation_loss, loss


def _logsoftmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def test_distillation_loss_equals_hand_computation():
    # 1 image, the paper's head: 7 length classes (0..5, >5), 5 positions of 10 digits
    ll = [0.3, 1.2, 2.0, -0.5, 0.0, 0.1, -1.0]
    dl = [[math.sin(k + p) for k in range(10)] for p in range(5)]
    L, D = _logsoftmax(ll), [_logsoftmax(r) for r in dl]
    # true label "42"; teacher: "42" with q = 0.7, "4" with q = 0.2, "47" with q = 0.1
    true = L[2] + D[0][4] + D[1][2]
    cands = [(0.7, L[2] + D[0][4] + D[1][2]), (0.2, L[1] + D[0][4]), (0.1, L[2] + D[0][4] + D[1][7])]
    alpha = 0.3
    want = alpha * -true + (1 - alpha) * sum(q * -lp for q, lp in cands)
    soft_lengths = torch.tensor([[2, 1, 2]])
    soft_digits = torch.tensor([[[4, 2, -1, -1, -1], [4, -1, -1, -1, -1], [4, 7, -1, -1, -1]]])
    soft_q = torch.tensor([[0.7, 0.2, 0.1]])
    args = (torch.tensor([ll]), torch.tensor([dl]), torch.tensor([2]), torch.tensor([[4, 2, -1, -1, -1]]))
    got = distillation_loss(*args, soft_lengths, soft_digits, soft_q, alpha)
    assert got.item() == pytest.approx(want, abs=1e-5)
    # alpha = 1 is plain training on the true labels
    assert distillation_loss(*args, soft_lengths, soft_digits, soft_q, 1.0).item() == pytest.approx(loss(*args).item())


def test_soft_targets_renormalise_over_the_k_and_pad():
    readings = [[("42", math.log(0.6)), ("4", math.log(0.2))], [], [("123456", -0.1), ("12", math.log(0.1))]]
    lengths, digits, q = distil.soft_targets(readings, 3)
    assert q[0].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert lengths[0].tolist() == [2, 1, 0] and digits[0, 0].tolist() == [4, 2, -1, -1, -1]
    assert q[1].tolist() == [0.0, 0.0, 0.0]          # no reading: no soft term
    assert q[2].tolist() == pytest.approx([1.0, 0.0, 0.0]) and lengths[2, 0] == 2  # > 5 digits dropped


def test_label_cache_round_trips(tmp_path):
    key = {"version": 1, "teacher_sha256": "ab", "top_k": 2, "photos_sha256": "cd", "photos": 2}
    readings = [[("19", -0.01), ("1", -4.6)], [("", -2.0)]]
    path = tmp_path / "labels.json"
    distil.save_labels(path, key, ["/a/1.png", "/a/2.png"], readings)
    assert distil.load_labels(path, key) == readings
    assert distil.load_labels(path, {**key, "top_k": 3}) is None     # other settings: recomputed
    path.write_text("{ damaged")
    assert distil.load_labels(path, key) is None
    assert distil.load_labels(tmp_path / "absent.json", key) is None


def test_top_k_is_sorted_exact_and_starts_with_the_decoded_reading():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 8, 11) * 2, -1)
    for readings, best in zip(ctc.decode_top_k(log_probs, 4), ctc.decode(log_probs)):
        assert readings[0] == best and 1 <= len(readings) <= 4
        assert [r.logp for r in readings] == sorted((r.logp for r in readings), reverse=True)
    for i, readings in enumerate(ctc.decode_top_k(log_probs, 4)):  # each log P(S|X) is the forward algorithm's
        exact = ctc.log_likelihood(log_probs[[i] * len(readings)], [r.text for r in readings])
        assert exact.tolist() == pytest.approx([r.logp for r in readings], abs=1e-5)


@pytest.mark.slow
def test_tiny_teacher_teaches_a_tiny_student(svhn_fixtures, tmp_path):
    pytest.importorskip("onnx2torch", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    pytest.importorskip("rapidocr", reason="optional extra: pip install 'transcribe-svhn[transfer]'")
    from transcribe import cli
    folder = tmp_path / "train"
    fixture_folder(svhn_fixtures, folder, 20)
    teacher = tmp_path / "teacher"
    assert cli.main(["transfer", "--train", str(folder), "--folds", "0", "--views", "1", "--epochs", "1",
                     "--val-fraction", "0.2", "--out", str(teacher), "--threads", "1",
                     "--cache-dir", str(tmp_path / "features")]) == 0
    val = [json.loads(line)["file"] for line in (teacher / "eval" / "val" / "predictions.jsonl").read_text().splitlines()]
    from transcribe import dataset
    from transcribe.config import DataConfig
    _, held = dataset.load_splits(DataConfig(train=(str(folder),), val_fraction=0.2, cache_dir=str(tmp_path / "cache")),
                                  progress=False)
    assert sorted(val) == sorted(str(f) for f in held.files)  # what `transcribe train --val-fraction 0.2` holds out
    student = ["--teacher", str(teacher), "--top-k", "3", "--alpha", "0.5", "--preset", "tiny", "--train", str(folder),
               "--val-fraction", "0.2", "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--threads", "1",
               "--cache-dir", str(tmp_path / "cache"), "--amp", "off", "--no-progress"]
    assert cli.main(["distil", *student, "--out", str(tmp_path / "s1")]) == 0
    labels = list((tmp_path / "cache" / "distil").glob("*.json"))
    assert len(labels) == 1
    stored = json.loads(labels[0].read_text())
    assert len(stored["labels"]) == 16 and not {r["image"].rsplit("/", 1)[1] for r in stored["labels"]} & set(val)
    assert json.loads((tmp_path / "s1" / "distil.json").read_text())["alpha"] == 0.5
    mtime = labels[0].stat().st_mtime_ns
    assert cli.main(["distil", *student, "--out", str(tmp_path / "s2")]) == 0   # labels read back, not recomputed
    assert labels[0].stat().st_mtime_ns == mtime
    assert cli.main(["evaluate", str(tmp_path / "s1"), "--split", "val"]) == 0   # an ordinary training run
    assert (tmp_path / "s1" / "eval" / "val" / "predictions.jsonl").is_file()
