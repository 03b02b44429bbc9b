"""`transcribe search`: a declared space, shared SQLite study over worker processes, best.json."""

import csv
import json

import pytest

from transcribe.studies import search
from transcribe.dataset import DataConfig
from transcribe.model import PRESETS
from transcribe.training import TrainConfig


def test_apply_params_scales_capacity_and_sets_fields():
    m, d, t = search.apply_params({"width": 2.0, "dropout": 0.3, "widen": 1.5, "lr": 0.02, "batch_size": 32,
                                   "weight_decay": 1e-5}, PRESETS["tiny"], DataConfig(), TrainConfig())
    assert m.widths == (16, 32, 32) and m.fc == (64,) and m.dropout == 0.3
    assert d.widen == 1.5 and (t.lr, t.batch_size, t.weight_decay) == (0.02, 32, 1e-5)
    # untouched parameters keep the base configuration's values
    m2, d2, t2 = search.apply_params({"lr": 0.5}, PRESETS["tiny"], DataConfig(), TrainConfig())
    assert m2 == PRESETS["tiny"] and d2 == DataConfig() and t2.lr == 0.5


def test_random_sampler_draws_lr_log_uniformly():
    import numpy as np
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=search.make_sampler("random", ["lr"], seed=0))
    study.optimize(lambda t: search.suggest(t, ["lr"])["lr"], n_trials=400)
    logs = np.log10([t.params["lr"] for t in study.trials])
    assert logs.min() >= -5 and logs.max() <= -1
    # eq. 11.2: log10(lr) ~ u(-5, -1): each of the four decades gets about a quarter of the draws
    counts = np.histogram(logs, bins=[-5, -4, -3, -2, -1])[0]
    assert all(abs(c / 400 - 1 / 4) < 0.07 for c in counts)


def test_two_workers_share_one_sqlite_study_and_best_config_trains(tiny_cache, tmp_path, capsys):
    from transcribe.cli import main
    out = tmp_path / "search"
    assert main(["search", "--preset", "tiny", "--train", str(tiny_cache), "--val-fraction", "0.25",
                 "--params", "lr", "width", "dropout", "weight_decay", "--trials", "3", "--workers", "2",
                 "--steps", "4", "--evals", "2", "--batch-size", "16", "--sampler-seed", "0", "--out", str(out)]) == 0
    import optuna
    study = optuna.load_study(study_name="transcribe", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    # every trial reported each evaluation (steps 0, 2, 4) to the pruner
    assert all(sorted(t.intermediate_values) == [0, 2, 4] for t in study.trials)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 and {"param_lr", "param_width", "val_seq_acc"} <= set(rows[0])
    assert "| trial | state |" in (out / "results.md").read_text()
    best = json.loads((out / "best.json").read_text())
    assert set(best) == {"model", "data", "train"}
    assert best["train"]["lr"] == pytest.approx(study.best_trial.params["lr"])
    # a second invocation joins the same study (load_if_exists) instead of starting over
    assert main(["search", "--preset", "tiny", "--train", str(tiny_cache), "--val-fraction", "0.25",
                 "--params", "lr", "--trials", "1", "--steps", "2", "--evals", "1", "--batch-size", "16",
                 "--out", str(out)]) == 0
    assert len(optuna.load_study(study_name="transcribe", storage=f"sqlite:///{out / 'study.db'}").trials) == 4
    # `transcribe train --config best.json` accepts the file and trains
    run = tmp_path / "best-run"
    assert main(["train", "--config", str(out / "best.json"), "--steps", "2", "--eval-every", "2",
                 "--out", str(run), "--threads", "1"]) == 0
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [0, 2]
    assert json.loads((run / "config.json").read_text())["model"]["widths"] == best["model"]["widths"]


def test_a_stale_trial_folder_from_another_study_is_replaced(tiny_cache, tmp_path):
    from transcribe.cli import main
    out = tmp_path / "search"
    stale = out / "trials" / "transcribe" / "0000"
    stale.mkdir(parents=True)
    (stale / "ckpt-last.pt").write_bytes(b"left by a study whose database was deleted")
    assert main(["search", "--preset", "tiny", "--train", str(tiny_cache), "--val-fraction", "0.25",
                 "--params", "lr", "--trials", "1", "--steps", "2", "--evals", "1", "--batch-size", "16",
                 "--out", str(out)]) == 0
    import optuna
    (trial,) = optuna.load_study(study_name="transcribe", storage=f"sqlite:///{out / 'study.db'}").trials
    assert trial.state.name == "COMPLETE" and (stale / "metrics.jsonl").exists()


class FakeTraining:
    """Stands in for the `transcribe train` subprocess: writes its metrics rows at once, with a
    validation accuracy set by the trial's learning rate; a good run has finished (exit 0), a bad
    one is still "running" and must be terminated by the pruner."""
    terminated: list = []

    def __init__(self, cmd, stdout=None, stderr=None, env=None, preexec_fn=None):
        from pathlib import Path
        cfg = json.loads(Path(cmd[-1]).read_text())
        self.run = Path(cfg["train"]["out"])
        good = cfg["train"]["lr"] >= 1e-2
        acc = 0.5 if good else 0.05
        rows = [dict(step=s, val_seq_acc=acc * (1 + s / 10)) for s in (0, 5, 10)]
        (self.run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.returncode = 0 if good else None

    def poll(self):
        return self.returncode

    def terminate(self):
        FakeTraining.terminated.append(self.run.name)
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode


def test_pruner_stops_a_hopeless_trial(tmp_path, monkeypatch):
    import optuna
    from transcribe import config as C
    monkeypatch.setattr(search.subprocess, "Popen", FakeTraining)
    FakeTraining.terminated = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=search.make_pruner("median", startup=1))
    study.enqueue_trial({"lr": 0.05})
    study.enqueue_trial({"lr": 0.0002})
    base = {"model": C.to_dict(PRESETS["tiny"]), "data": C.to_dict(DataConfig()), "train": C.to_dict(TrainConfig())}
    study.optimize(lambda trial: search.run_trial(trial, ["lr"], base, tmp_path), n_trials=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert study.trials[0].value == pytest.approx(1.0)          # best of 0.5, 0.75, 1.0
    assert study.trials[1].intermediate_values == {0: 0.05}    # stopped at its first report
    assert FakeTraining.terminated == ["0001"]                 # and its training process was ended
