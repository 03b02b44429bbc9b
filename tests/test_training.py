"""training.py: the run folder, exact resume after SIGKILL, schedules, early stopping, init,
and torchrun with two processes. Tiny preset, 64 tiny seven-segment photos, CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from transcribe import config as configlib
from transcribe import cli, dataset, runs, svhn, training
from transcribe.model import PRESETS, build_model
from transcribe.training import TrainConfig, get_lr

REPO = Path(__file__).resolve().parents[1]

# Seven-segment digits: segments a b c d e f g (top, top-right, bottom-right, bottom,
# bottom-left, top-left, middle) -- distinct shapes a tiny net can learn.
SEGMENTS = {0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc",
            7: "abc", 8: "abcdefg", 9: "abcdfg"}


def _digit(d: int, w: int = 12, h: int = 22, t: int = 3) -> np.ndarray:
    m = np.zeros((h, w), bool)
    half = h // 2
    bars = {"a": (slice(0, t), slice(0, w)), "d": (slice(h - t, h), slice(0, w)),
            "g": (slice(half - t // 2, half - t // 2 + t), slice(0, w)),
            "f": (slice(0, half), slice(0, t)), "b": (slice(0, half), slice(w - t, w)),
            "e": (slice(half, h), slice(0, t)), "c": (slice(half, h), slice(w - t, w))}
    for s in SEGMENTS[d]:
        m[bars[s]] = True
    return m


def make_folder(folder: Path, n: int, seed: int) -> None:
    """A format-1 folder of n photos with 1-3 seven-segment digits each."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    records = []
    for i in range(1, n + 1):
        digits = tuple(int(d) for d in rng.integers(0, 10, rng.integers(1, 4)))
        photo = np.full((40, 20 + 16 * len(digits), 3), rng.integers(0, 90, 3), np.uint8)
        fg = rng.integers(160, 256, 3).astype(np.uint8)
        boxes = []
        for j, d in enumerate(digits):
            left, top = 10 + 16 * j, 9
            photo[top:top + 22, left:left + 12][_digit(d)] = fg
            boxes.append((float(left), float(top), 12.0, 22.0))
        Image.fromarray(photo).save(folder / f"{i}.png")
        records.append(svhn.Record(file=f"{i}.png", digits=digits, boxes=tuple(boxes)))
    svhn.write_digitstruct(folder / "digitStruct.mat", records)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_folder(root / "train", 64, seed=0)
    return dataset.build_cache(root / "train", out_dir=root / "cache", progress=False)


def configs(cache: Path, out: Path, **train):
    model_cfg = PRESETS["tiny"]
    data_cfg = dataset.DataConfig(train=(str(cache),), val_size=16, seed=0)
    base = dict(out=str(out), preset="tiny", steps=6, batch_size=16, eval_every=3, eval_limit=16,
                lr=0.05, schedule="linear", lr_floor=0.005, hist_every=3, deterministic=True,
                progress=False, seed=1)
    return model_cfg, data_cfg, TrainConfig(**{**base, **train})


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------


def test_schedules_give_known_lr():
    c = TrainConfig(steps=101, lr=0.1, lr_floor=0.001, schedule="linear")
    assert get_lr(0, c) == pytest.approx(0.1)
    assert get_lr(50, c) == pytest.approx((0.1 + 0.001) / 2)
    assert get_lr(100, c) == pytest.approx(0.001)
    e = TrainConfig(steps=101, lr=0.1, lr_floor=0.001, schedule="exp")
    assert get_lr(50, e) == pytest.approx(0.01)      # geometric mean of 0.1 and 0.001
    assert get_lr(100, e) == pytest.approx(0.001)
    w = TrainConfig(steps=110, lr=0.1, lr_floor=0.001, schedule="linear", warmup=10)
    assert [get_lr(s, w) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert get_lr(10, w) == pytest.approx(0.1) and get_lr(109, w) == pytest.approx(0.001)
    assert get_lr(77, TrainConfig(schedule="const", lr=0.3)) == 0.3
    p = TrainConfig(schedule="plateau", lr=0.2, plateau_patience=2)
    state = {"scale": 1.0, "best": -1.0, "bad": 0}
    for score in (0.5, 0.4, 0.5):  # better, then 2 evaluations without improvement -> halve
        state = training.plateau_update(state, score, p)
    assert state == {"scale": 0.5, "best": 0.5, "bad": 0}
    assert get_lr(3, p, state["scale"]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="eval_every=0"):
        TrainConfig(eval_every=0)


def test_run_folder_metrics_checkpoints_and_instruments(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    model_cfg, data_cfg, cfg = configs(tiny_cache, out)
    assert training.train(model_cfg, data_cfg, cfg) == out
    # the banner before the first evaluation, the summary after the last
    printed = capsys.readouterr().out
    start, first_eval, end = printed.index(f"run {out}: new"), printed.index("step      0/6"), printed.index("stopped at step 6")
    assert start < first_eval < end
    head = printed[start:first_eval]
    n_params = sum(p.numel() for p in training.modellib.build_model(model_cfg).parameters())
    for part in ("machine", "cpu, 1 thread, float32 (--amp auto)", f"preset tiny, head sequence, {n_params:,} parameters",
                 "48 training, 16 validation (all scored", "6 steps of 16 (2.0 epochs); sgd, lr 0.05 linear to 0.005",
                 "evaluation every 3 steps"):
        assert part in head, (part, head)
    tail = printed[end:]
    assert "all 6 steps done" in tail and str(out / "ckpt-best.pt") in tail
    assert f"transcribe evaluate {out} --split val" in tail
    best_row = max(rows(out), key=lambda x: x["val_seq_acc"])  # the first of the best, as the checkpoint
    assert f"{100 * best_row['val_seq_acc']:.2f}% at step {best_row['step']}" in tail
    for name in ("config.json", "metrics.jsonl", "ckpt-last.pt", "ckpt-best.pt", "commit.txt"):
        assert (out / name).is_file(), name
    stored = json.loads((out / "config.json").read_text())
    assert configlib.from_dict(TrainConfig, stored["train"]) == cfg
    assert stored["model"]["widths"] == list(model_cfg.widths)
    assert (out / "commit.txt").read_text().strip()
    r = rows(out)
    assert [x["step"] for x in r] == [0, 3, 6]
    for key in ("step", "epoch", "lr", "train_loss", "train_seq_acc", "train_char_acc", "val_loss",
                "val_seq_acc", "val_char_acc", "seconds", "update_ratio"):
        assert key in r[-1], key
    # 48 training images / 16 per batch = 3 steps per epoch
    assert [x["epoch"] for x in r] == [0, 1, 2]
    assert r[1]["lr"] == pytest.approx(get_lr(2, cfg))
    assert r[0]["batch_loss"] is None and r[-1]["batch_loss"] > 0
    ratios = r[-1]["update_ratio"]
    assert ratios and all(0 < v < 1 for v in ratios.values())
    assert "features.0.conv.weight" in ratios
    # untrained softmaxes are near uniform: loss ~ log 7 + E[n] log 10 for 1-3 digits
    assert r[0]["val_loss"] == pytest.approx(np.log(7) + 2 * np.log(10), rel=0.15)

    # the checkpoint is self-describing and loads with weights_only=True
    ckpt = torch.load(out / "ckpt-last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["train_config"]["steps"] == 6
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"} and "optimizer" in ckpt
    best = torch.load(out / "ckpt-best.pt", map_location="cpu", weights_only=True)
    assert best["metrics"]["val_seq_acc"] == max(x["val_seq_acc"] for x in r)

    # round trip: the reloaded model reproduces the validation numbers measured in training
    model, ckpt = runs.load_checkpoint(out / "ckpt-last.pt")
    _, val = dataset.load_splits(data_cfg, progress=False)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    again = training.loss_and_accuracy(model, t(val.images), t(val.lengths), t(val.digits), data_cfg.crop,
                              model_cfg.head, training.contextlib.nullcontext, False)
    assert again["loss"] == pytest.approx(r[-1]["val_loss"], rel=1e-5)
    assert again["seq_acc"] == r[-1]["val_seq_acc"] and again["char_acc"] == r[-1]["val_char_acc"]

    # TensorBoard: scalars, histograms of activations and gradients, update ratios
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out / "tb"), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    scalars, hists = ea.Tags()["scalars"], ea.Tags()["histograms"]
    for tag in ("lr", "val/seq_acc", "train/loss", "batch/loss", "update_ratio/features.0.conv.weight",
                "off_fraction/features.1"):
        assert tag in scalars, (tag, scalars)
    assert "grad/features.0.conv.weight" in hists and "activation/pre/features.0.conv" in hists
    # the frozen config as text; the worst validation mistakes as images (and their table) at each evaluation
    ea = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "tensors": 0}).Reload()
    texts = {e.step: e for e in ea.Tensors("config/text_summary")}
    assert json.loads(texts[0].tensor_proto.string_val[0].decode().replace("\n    ", "\n"))["train"]["steps"] == 6
    wrong = [x for x in rows(out) if x["val_seq_acc"] < 1]
    assert [e.step for e in ea.Images("val/worst_mistakes")] == [x["step"] for x in wrong]
    assert "| # | truth | read | model's confidence |" in \
        ea.Tensors("val/worst_mistakes/text_summary")[0].tensor_proto.string_val[0].decode()
    # hparams: the settings with the final metrics, in the run's own tb/ folder
    from tensorboard.plugins.hparams import plugin_data_pb2
    ea = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    hp = ea.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["train.lr"].number_value == 0.05 and session.hparams["model.head"].string_value == "sequence"
    best = [e.value for e in ea.Scalars("hparam/best_val_seq_acc")]
    assert best == [pytest.approx(max(x["val_seq_acc"] for x in rows(out)))]


KILLER = textwrap.dedent("""
    # argv: train config JSON, training batch at which to die, cache, model config JSON
    import json, os, signal, sys
    from transcribe import config, dataset, training
    from transcribe.model import ModelConfig
    calls = [0]
    real = dataset.prepare_batch
    def prepare_batch(images, crop=54, train=True, generator=None, index=None):
        if train:
            calls[0] += 1
            if calls[0] == int(sys.argv[2]):  # mid-way, after a checkpoint was written
                os.kill(os.getpid(), signal.SIGKILL)
        return real(images, crop, train, generator, index=index)
    dataset.prepare_batch = prepare_batch
    cfg = config.from_dict(training.TrainConfig, json.loads(sys.argv[1]))
    data = dataset.DataConfig(train=(sys.argv[3],), val_size=16, seed=0)
    training.train(config.from_dict(ModelConfig, json.loads(sys.argv[4])), data, cfg)
""")


def test_sigkill_then_resume_equals_uninterrupted(tiny_cache, tmp_path):
    # momentum SGD + linear decay + dropout, 10 steps, checkpoints at 0, 4, 8, 10
    kw = dict(steps=10, eval_every=4)
    model_cfg, data_cfg, whole = configs(tiny_cache, tmp_path / "whole", **kw)
    model_cfg = dataclass_replace(model_cfg, dropout=0.2)  # masks must repeat after resuming too
    training.train(model_cfg, data_cfg, whole)

    _, _, cut = configs(tiny_cache, tmp_path / "cut", **kw)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(configlib.to_dict(cut)), "7", str(tiny_cache),
                           json.dumps(configlib.to_dict(model_cfg))],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = torch.load(tmp_path / "cut" / "ckpt-last.pt", weights_only=True)
    assert killed["step"] == 4  # steps 5-6 were done and lost
    assert [r["step"] for r in rows(tmp_path / "cut")] == [0, 4]

    training.train(model_cfg, data_cfg, cut)  # resumes from step 4
    assert_same_weights(weights(tmp_path / "cut" / "ckpt-last.pt"), weights(tmp_path / "whole" / "ckpt-last.pt"))
    a, b = rows(tmp_path / "cut"), rows(tmp_path / "whole")
    assert [r["step"] for r in a] == [0, 4, 8, 10]
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]


def test_resume_continues_step_count_and_refuses_other_settings(tiny_cache, tmp_path):
    model_cfg, data_cfg, short = configs(tiny_cache, tmp_path / "a", steps=4, eval_every=2, schedule="const")
    training.train(model_cfg, data_cfg, short)
    longer = dataclass_replace(short, steps=8)
    training.train(model_cfg, data_cfg, longer)
    assert [r["step"] for r in rows(tmp_path / "a")] == [0, 2, 4, 6, 8]
    assert torch.load(tmp_path / "a" / "ckpt-last.pt", weights_only=True)["step"] == 8
    training.train(model_cfg, data_cfg, dataclass_replace(longer, out=str(tmp_path / "b")))
    assert_same_weights(weights(tmp_path / "a" / "ckpt-last.pt"), weights(tmp_path / "b" / "ckpt-last.pt"))

    with pytest.raises(ValueError, match=r"train\.lr"):
        training.train(model_cfg, data_cfg, dataclass_replace(longer, steps=10, lr=0.5))


def dataclass_replace(cfg, **changes):
    import dataclasses
    return dataclasses.replace(cfg, **changes)


def test_summary_says_why_the_run_stopped_and_what_to_run_next():
    cfg = TrainConfig(steps=3000, max_seconds=600, eval_limit=1000)
    state = {**training.FRESH_STATE, "best": 0.926, "best_step": 948, "elapsed": 607.7,
             "stopped": "wall-clock budget of 600 s spent"}
    text = training.summary(Path("runs/demo"), cfg, state, 948)
    assert text.startswith("run runs/demo: stopped at step 948 after 607.7 s: wall-clock budget of 600 s spent")
    assert "92.60% at step 948 (the first 1,000 photos)" in text
    assert "transcribe evaluate runs/demo --split val" in text and "tensorboard --logdir runs/demo/tb" in text
    assert "none yet" in training.summary(Path("r"), cfg, training.FRESH_STATE, 0)
    # a validation split smaller than --eval-limit is scored whole: no "first N" qualifier
    assert "(the first" not in training.summary(Path("runs/demo"), cfg, state, 948, n_val=30)
    assert "(the first 1,000 photos)" in training.summary(Path("runs/demo"), cfg, state, 948, n_val=2000)


def test_early_stopping_after_patience_evaluations(tiny_cache, tmp_path, capsys):
    patience = 2
    # lr 0: nothing improves except by chance (batch-norm statistics still move)
    model_cfg, data_cfg, cfg = configs(tiny_cache, tmp_path / "es", steps=40, eval_every=1, lr=0.0,
                                       schedule="const", patience=patience, hist_every=0)
    training.train(model_cfg, data_cfg, cfg)
    r = rows(tmp_path / "es")
    best, bad, stop = -1.0, 0, None
    for row in r:  # the rule, recomputed from the metrics file
        bad = 0 if row["val_seq_acc"] > best else bad + 1
        best = max(best, row["val_seq_acc"])
        if bad >= patience:
            stop = row["step"]
            break
    assert stop is not None and stop < 40
    assert r[-1]["step"] == stop
    ckpt = torch.load(tmp_path / "es" / "ckpt-last.pt", weights_only=True)
    assert ckpt["state"]["stopped"] and ckpt["step"] == stop
    assert f"es: stopped at step {stop} after" in capsys.readouterr().out
    training.train(model_cfg, data_cfg, cfg)  # resuming a stopped run does nothing more
    assert f"no better validation sequence accuracy in {patience} evaluations" in capsys.readouterr().out
    assert rows(tmp_path / "es")[-1]["step"] == stop


def test_init_copies_weights(tiny_cache, tmp_path):
    model_cfg, data_cfg, cfg = configs(tiny_cache, tmp_path / "pre", steps=3, eval_every=3, hist_every=0)
    training.train(model_cfg, data_cfg, cfg)
    fine = dataclass_replace(cfg, out=str(tmp_path / "fine"), steps=0, init=str(tmp_path / "pre" / "ckpt-last.pt"))
    training.train(model_cfg, data_cfg, fine)
    assert_same_weights(weights(tmp_path / "fine" / "ckpt-last.pt"), weights(tmp_path / "pre" / "ckpt-last.pt"))
    assert rows(tmp_path / "fine")[0]["val_loss"] == rows(tmp_path / "pre")[-1]["val_loss"]


def test_cli_config_file_then_flags(tiny_cache, tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    cli.add_train_arguments(parser)
    conf = tmp_path / "best.json"
    conf.write_text(json.dumps({"model": configlib.to_dict(PRESETS["tiny"]) | {"dropout": 0.3},
                                "data": {"train": [str(tiny_cache)], "val_size": 16},
                                "train": {"lr": 0.02, "steps": 7}}))
    args = parser.parse_args(["--config", str(conf), "--steps", "9", "--split-seed", "5", "--train-seed", "3",
                              "--fc", "24", "--out", str(tmp_path / "x")])
    m, d, t = training.configs_from_args(args)
    assert (t.lr, t.steps, t.seed, t.out) == (0.02, 9, 3, str(tmp_path / "x"))
    assert (m.dropout, m.fc, m.widths) == (0.3, (24,), PRESETS["tiny"].widths)
    assert (d.train, d.val_size, d.seed) == ((str(tiny_cache),), 16, 5)
    args = parser.parse_args(["--config", str(conf), "--preset", "cpu"])
    assert training.configs_from_args(args)[0] == PRESETS["cpu"]
    # resuming: `--out RUN` alone brings back the run's own settings
    model_cfg, data_cfg, cfg = configs(tiny_cache, tmp_path / "run", steps=0)
    training.train(model_cfg, data_cfg, cfg)
    args = parser.parse_args(["--out", str(tmp_path / "run"), "--steps", "5"])
    assert training.configs_from_args(args) == (model_cfg, data_cfg, dataclass_replace(cfg, steps=5))


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this Python")
def test_torchrun_two_processes_match_one(tiny_cache, tmp_path):
    """2 processes x 8 images (gloo) == 1 process x 2 micro-batches of 8 (same global batch).

    Batch norm normalizes over each process's 8 images, so the single process accumulates
    gradients over the same two halves (--accum 2): the same statistics, the same mean
    gradient. Only the parameters are compared: DDP keeps rank 0's batch-norm running
    statistics, the single process updates them with both halves.
    """
    model_cfg, data_cfg, cfg = configs(tiny_cache, tmp_path / "one", steps=4, eval_every=4, accum=2, hist_every=0)
    conf = tmp_path / "config.json"  # the same settings reach torchrun through --config
    runs.save_json({"model": model_cfg, "data": data_cfg, "train": cfg}, conf)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "train.py", "--config", str(conf),
                          "--accum", "1", "--out", str(tmp_path / "two")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    training.train(model_cfg, data_cfg, cfg)
    a, b = weights(tmp_path / "two" / "ckpt-last.pt"), weights(tmp_path / "one" / "ckpt-last.pt")
    params = [n for n, _ in runs.load_checkpoint(tmp_path / "one" / "ckpt-last.pt")[0].named_parameters()]
    # Bit for bit: DDP averages g0/2 + g1/2, the single process accumulates (loss0/2)' + (loss1/2)';
    # halving is exact in floating point and a sum of two is commutative. (With --accum 1, batch
    # norm over all 16 images, the weights differ by ~1e-2 after these 4 steps.)
    for n in params:
        assert torch.equal(a[n], b[n]), n
    torch.manual_seed(1)  # the initial weights (train seeds torch with cfg.seed before building)
    start = build_model(model_cfg).state_dict()
    assert all(not torch.allclose(start[n], a[n]) for n in params if n.endswith("conv.weight"))
    assert [r["step"] for r in rows(tmp_path / "two")] == [0, 4]


def test_unreadable_checkpoint_is_named(tiny_cache, tmp_path):
    model_cfg, data_cfg, cfg = configs(tiny_cache, tmp_path / "bad")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt-last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad/ckpt-last\.pt: not a readable transcribe checkpoint"):
        training.train(model_cfg, data_cfg, cfg)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        runs.load_checkpoint(tmp_path / "nowhere.pt")


def test_model_input_and_data_crop_must_agree(tmp_path):
    from dataclasses import replace
    with pytest.raises(ValueError, match=r"in_size \(40\) differs from the data's crop \(54\)"):
        training.train(replace(PRESETS["tiny"], in_size=40), dataset.DataConfig(), TrainConfig(out=str(tmp_path)))
