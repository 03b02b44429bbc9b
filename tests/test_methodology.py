"""Learning-curve fit, diagnosis rules, learning-rate sweep (DL book 11.3, 11.4.1, 11.5)."""

import json
import math

import numpy as np
import pytest

from transcribe import runs
from transcribe.studies import methodology as M

SIZES = np.array([125, 250, 500, 1000, 2000], dtype=float)


def test_fit_power_law_recovers_known_law_with_offset():
    err = 3.0 * SIZES ** -0.5 + 0.01
    fit = M.fit_power_law(SIZES, err)
    assert fit.with_offset
    assert fit.a == pytest.approx(3.0, rel=1e-3)
    assert fit.b == pytest.approx(0.5, rel=1e-3)
    assert fit.c == pytest.approx(0.01, abs=1e-4)
    # examples_needed inverts the law: 3 n^-0.5 + 0.01 = 0.02  <=>  n = (3 / 0.01)^2 = 90,000
    assert M.examples_needed(fit, 0.02) == pytest.approx(90_000, rel=1e-2)
    assert fit(M.examples_needed(fit, 0.05)) == pytest.approx(0.05, rel=1e-9)
    assert M.examples_needed(fit, 0.005) == math.inf  # below the irreducible error c
    # a nearly flat curve needs more photos than a float can count: inf, not an OverflowError
    assert M.examples_needed(M.PowerLaw(a=1.0, b=1e-4, c=0.0, rmse_log=0, n_points=3, with_offset=False), 0.02) == math.inf


def test_fit_power_law_noisy_points_and_pure_law_with_three_sizes():
    rng = np.random.default_rng(0)
    err = 2.0 * SIZES ** -0.7 * np.exp(rng.normal(0, 0.02, len(SIZES)))
    fit = M.fit_power_law(SIZES, err, with_offset=False)
    assert fit.c == 0.0 and fit.a == pytest.approx(2.0, rel=0.3) and fit.b == pytest.approx(0.7, abs=0.05)
    # three sizes: three parameters would interpolate, so the pure law is fitted
    fit3 = M.fit_power_law(SIZES[:3], 2.0 * SIZES[:3] ** -0.7)
    assert not fit3.with_offset and fit3.b == pytest.approx(0.7, rel=1e-6)
    with pytest.raises(ValueError, match="distinct"):
        M.fit_power_law([100, 100], [0.5, 0.4])


def test_bootstrap_interval_brackets_the_point_estimate():
    err = 3.0 * SIZES ** -0.5 + 0.005
    fit = M.fit_power_law(SIZES, err)
    point = M.examples_needed(fit, 0.05)
    ci = M.bootstrap_examples_needed(SIZES, err, 0.05, n_eval=2000, reps=100, seed=1)
    assert ci["lo"] < point < ci["hi"]
    assert 0 <= ci["unreachable"] < 0.1
    # the interval narrows as the validation set that measures each point grows
    ci_big = M.bootstrap_examples_needed(SIZES, err, 0.05, n_eval=200_000, reps=100, seed=1)
    assert ci_big["hi"] - ci_big["lo"] < ci["hi"] - ci["lo"]


@pytest.mark.parametrize("train,val,test,regime", [
    (0.30, 0.35, None, "underfitting"),     # training error far above the 2% target
    (0.01, 0.20, None, "overfitting"),      # training fine, validation much worse
    (0.96, 0.985, None, "defect"),          # both near chance: nothing learned
    (0.40, 0.05, None, "defect"),           # validation far better than training
    (float("nan"), 0.10, None, "defect"),   # diverged
    (0.010, 0.015, None, "ok"),             # both within tolerance of 2%
    (0.010, 0.015, 0.30, "defect"),         # test far worse than validation: evaluation mismatch
    (0.010, 0.015, 0.08, "overfitting"),    # the test error decides once given
    (0.60, 0.60, 0.05, "defect"),           # test far better than validation: leak or scoring bug
])
def test_diagnose_names_the_regime(train, val, test, regime):
    d = M.diagnose(train, val, test, target_err=0.02)
    assert d.regime == regime, d.reasons
    assert d.reasons and d.next_steps


def test_diagnose_next_steps_follow_the_chapter():
    assert "lr-sweep" in " ".join(M.diagnose(0.3, 0.35).next_steps)
    assert "learning-curve" in " ".join(M.diagnose(0.01, 0.2).next_steps)
    assert "transcribe check" in " ".join(M.diagnose(0.97, 0.99).next_steps)
    # a looser target turns the same numbers from underfitting into ok
    assert M.diagnose(0.08, 0.09, target_err=0.10).regime == "ok"


def test_lr_grid_and_best_rate():
    assert M.lr_grid() == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316, 1.0]
    rows = [{"lr": 1e-3, "train_err": 0.6}, {"lr": 1e-2, "train_err": 0.2}, {"lr": 1e-1, "train_err": 1.0}]
    assert M.best_rate(rows)["lr"] == 1e-2


def test_run_errors_reads_best_and_last_rows(tmp_path):
    rows = [dict(step=10, epoch=0, lr=0.1, train_loss=5.0, train_seq_acc=0.1, train_char_acc=0.3,
                 val_loss=5.0, val_seq_acc=0.2, val_char_acc=0.3, seconds=1.0),
            dict(step=20, epoch=1, lr=0.1, train_loss=2.0, train_seq_acc=0.7, train_char_acc=0.8,
                 val_loss=2.5, val_seq_acc=0.6, val_char_acc=0.7, seconds=2.0),
            dict(step=30, epoch=2, lr=0.1, train_loss=1.0, train_seq_acc=0.9, train_char_acc=0.9,
                 val_loss=3.0, val_seq_acc=0.5, val_char_acc=0.6, seconds=3.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    e = M.run_errors(runs.read_metrics(tmp_path))
    assert e["best"]["step"] == 20 and e["best"]["val_err"] == pytest.approx(0.4)
    assert e["last"]["train_err"] == pytest.approx(0.1) and not e["nonfinite"]
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        runs.read_metrics(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------
# The commands, on tiny synthetic photos (seconds)

def test_subset_keeps_the_validation_split_and_nests(tiny_cache):
    from transcribe import dataset
    cfg = dataset.DataConfig(train=(str(tiny_cache),), val_fraction=0.25, seed=3)
    full_train, val = dataset.load_splits(cfg, progress=False)
    sub20 = dataset.load_splits(M.subset_data_config(cfg, 20), progress=False)
    sub40 = dataset.load_splits(M.subset_data_config(cfg, 40), progress=False)
    for t, v in (sub20, sub40):
        assert list(v.files) == list(val.files) and np.array_equal(v.images, val.images)
        assert set(t.files) <= set(full_train.files) and not set(t.files) & set(val.files)
    assert len(sub20[0]) == 20 and len(sub40[0]) == 40 and set(sub20[0].files) <= set(sub40[0].files)


def test_learning_curve_command_on_tiny_data(tiny_cache, tmp_path, one_thread, capsys):
    from transcribe.cli import main
    out = tmp_path / "lc"
    assert main(["learning-curve", "--preset", "tiny", "--train", str(tiny_cache), "--val-fraction", "0.25",
                 "--sizes", "15", "30", "60", "--batch-size", "15", "--min-steps", "6", "--max-steps", "8",
                 "--evals", "2", "--bootstrap", "50", "--out", str(out)]) == 0
    res = json.loads((out / "learning_curve.json").read_text())
    assert [p["n"] for p in res["points"]] == [15, 30, 60]
    assert res["n_val"] == 20 and not res["fit"]["with_offset"]  # 3 sizes: the pure law
    assert all(0 <= p["val_err"] <= 1 for p in res["points"])
    assert (out / "learning_curve.png").stat().st_size > 0 and "| 60 |" in (out / "learning_curve.md").read_text()
    # each size trained on exactly that many photos with the full validation split
    cfg = json.loads((out / "n30-seed0" / "config.json").read_text())
    assert cfg["data"]["train_size"] == 30 and cfg["train"]["eval_limit"] == 0
    assert "Photos needed for 2.0% error" in capsys.readouterr().out


def _fake_train(curve):
    """A stand-in for training.train writing one metrics row whose training error is curve(lr)."""
    def train(model_cfg, data_cfg, cfg):
        from pathlib import Path
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        err = curve(cfg.lr)
        loss = float("nan") if err is None else 5 * err
        row = dict(step=cfg.steps, epoch=1, lr=cfg.lr, train_loss=loss, train_seq_acc=float("nan") if err is None else 1 - err,
                   train_char_acc=0.5, val_loss=loss, val_seq_acc=0.5, val_char_acc=0.5, seconds=0.1)
        (out / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        return out
    return train


def test_lr_sweep_finds_the_bottom_of_the_u_curve(tmp_path, monkeypatch, capsys):
    from transcribe import training
    from transcribe.cli import main
    # U-shaped in log10(lr) with its minimum at 1e-2; above 0.3 the run diverges (NaN)
    monkeypatch.setattr(training, "train", _fake_train(
        lambda lr: None if lr > 0.3 else min(1.0, 0.1 + 0.2 * (math.log10(lr) + 2) ** 2)))
    assert main(["lr-sweep", "--train", "nowhere", "--out", str(tmp_path), "--steps", "5"]) == 0
    res = json.loads((tmp_path / "lr_sweep.json").read_text())
    assert [r["lr"] for r in res["rows"]] == M.lr_grid()
    assert res["best_lr"] == 1e-2
    div = [r for r in res["rows"] if r["diverged"]]
    assert [r["lr"] for r in div] == [0.316, 1.0] and all(r["train_err"] == 1.0 for r in div)
    assert (tmp_path / "lr_sweep.png").stat().st_size > 0


def test_lr_sweep_real_tiny_runs(tiny_cache, tmp_path, one_thread):
    from transcribe.cli import main
    assert main(["lr-sweep", "--preset", "tiny", "--train", str(tiny_cache), "--val-fraction", "0.25",
                 "--batch-size", "16", "--steps", "4", "--lrs", "1e-3", "0.1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "lr_sweep.json").read_text())
    assert len(res["rows"]) == 2 and res["best_lr"] in (1e-3, 0.1)
    assert json.loads((tmp_path / "lr0.1" / "config.json").read_text())["train"]["schedule"] == "const"


def test_diagnose_command_reads_a_run(tmp_path, capsys):
    from transcribe.cli import main
    row = dict(step=100, epoch=3, lr=0.01, train_loss=0.1, train_seq_acc=0.995, train_char_acc=0.999,
               val_loss=1.5, val_seq_acc=0.80, val_char_acc=0.9, seconds=10.0)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["diagnose", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OVERFITTING" in out and "20.00%" in out and "learning-curve" in out
    with pytest.raises(SystemExit, match="metrics.jsonl"):
        main(["diagnose", str(tmp_path / "missing")])


def test_diagnose_names_a_truncated_schedule(tmp_path, capsys):
    from transcribe.cli import main
    train = {"steps": 3000, "lr": 0.05, "schedule": "linear", "max_seconds": 600}
    last = dict(step=1260, lr=0.029, train_loss=0.5, train_seq_acc=0.7, train_char_acc=0.9,
                val_loss=0.6, val_seq_acc=0.68, val_char_acc=0.9, seconds=600.0)
    assert "600 s budget ran out at step 1,260 of 3,000 (42%)" in M.truncated_schedule(train, last)
    assert M.truncated_schedule(train, dict(last, lr=0.0001)) is None        # decayed in time
    assert M.truncated_schedule(train, dict(last, step=3000)) is None        # ran all its steps
    assert M.truncated_schedule(dict(train, schedule="const"), last) is None  # nothing to decay
    (tmp_path / "metrics.jsonl").write_text(json.dumps(last) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"train": train}))
    assert main(["diagnose", str(tmp_path)]) == 0
    assert "truncated schedule" in capsys.readouterr().out
