"""Progress of a run (progress.py) and the schedule that follows the same fraction (training.get_lr).

No timed assertions: elapsed seconds are passed in, never read from a clock.
"""

import io

import pytest
from test_training import configs

from transcribe import progress, training
from transcribe.config import TrainConfig
from transcribe.progress import Progress, run_fraction
from transcribe.training import get_lr


def test_run_fraction_is_whichever_budget_is_spent_more():
    assert run_fraction(30, 0.0, 100, 0.0) == 0.3           # no time budget: steps only
    assert run_fraction(30, 50.0, 100, 100.0) == 0.5        # time ends the run first
    assert run_fraction(80, 50.0, 100, 100.0) == 0.8
    assert run_fraction(10, 500.0, 100, 100.0) == 1.0


def test_time_budget_decays_the_rate_to_its_floor():
    c = TrainConfig(steps=101, lr=0.1, lr_floor=0.001, schedule="linear", max_seconds=600)
    assert get_lr(0, c, elapsed=0.0) == pytest.approx(0.1)
    # stopped by the clock at 42% of its steps: the rate has decayed as at 50% / 100% of them
    assert get_lr(42, c, elapsed=300.0) == pytest.approx(get_lr(50, TrainConfig(**{**c.__dict__, "max_seconds": 0})))
    assert get_lr(42, c, elapsed=600.0) == pytest.approx(0.001)
    assert get_lr(42, c, elapsed=900.0) == pytest.approx(0.001)
    assert get_lr(90, c, elapsed=60.0) == get_lr(90, c)      # steps ahead of the clock: steps decide
    e = TrainConfig(steps=101, lr=0.1, lr_floor=0.001, schedule="exp", max_seconds=10)
    assert get_lr(5, e, elapsed=5.0) == pytest.approx(0.01)
    steps_only = TrainConfig(steps=101, lr=0.1, lr_floor=0.001, schedule="linear")
    assert get_lr(42, steps_only, elapsed=1e9) == get_lr(42, steps_only)  # no budget: the clock is ignored


def test_not_a_terminal_prints_plain_lines_every_n_steps_or_seconds():
    out = io.StringIO()  # not a tty
    p = Progress(steps=1000, max_seconds=60.0, batch_size=32, stream=out, every_steps=50, every_seconds=10.0)
    for step in range(1, 61):
        p.update(step, elapsed=step * 0.1, loss=2.0 if step % 20 == 0 else None)  # 6 s: steps decide
    p.update(61, elapsed=18.0)                                                    # 13 s later: time decides
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2
    assert lines[0].startswith("  step 50/1000, loss 2.0000, 320 img/s | 8% |")  # 50 x 32 images in 5 s; 5/60 s
    assert "ETA 55 s (time budget)" in lines[0]    # 950 steps at 10 steps/s > 55 s left of the budget
    assert lines[1].startswith("  step 61/1000") and "| 30% | 18 s" in lines[1]


def test_eta_follows_steps_when_they_end_first():
    p = Progress(steps=100, max_seconds=1000.0, batch_size=10, stream=io.StringIO(), every_steps=10)
    p.update(10, elapsed=10.0)
    assert p.eta(10, 10.0) == (pytest.approx(90.0), "steps")


def test_training_without_a_terminal_prints_progress_lines(tiny_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_STEPS", 2)
    model_cfg, data_cfg, cfg = configs(tiny_cache, tmp_path / "run", progress=True)
    training.train(model_cfg, data_cfg, cfg)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("  step ")]
    assert [line.split()[1] for line in lines] == ["2/6,", "4/6,", "6/6,"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_a_bar_to_whichever_budget_ends_first():
    out = Terminal()
    p = Progress(steps=100, max_seconds=50.0, batch_size=8, stream=out)
    for step in range(1, 41):
        p.update(step, elapsed=step * 1.0, loss=1.5 if step % 20 == 0 else None)
    p.write("an evaluation line")
    p.close()
    text = out.getvalue()
    assert p.bar.n == 800                      # 40 s of a 50 s budget: 80%, though only 40% of the steps
    assert "step 40/100, loss 1.5000, 8 img/s" in text


# ---------------------------------------------------------------- bar(): every other long command

def test_bar_in_a_log_prints_plain_lines_and_a_last_one():
    out = io.StringIO()
    items = list(progress.bar(range(7), desc="reading", unit="photo", stream=out))  # every 30 s: only the end
    assert items == list(range(7))
    assert out.getvalue() == out.getvalue().replace("\r", "")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("  reading: 7/7 photo (100%) | ")
    out = io.StringIO()
    with progress.bar(total=4, desc="caching", unit="img", stream=out, every_seconds=0) as b:  # a line per update
        for _ in range(4):
            b.update(1)
        b.set_postfix_str("best 40.0%")
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    sizes = io.StringIO()
    b = progress.bar(total=4_000_000, initial=1_000_000, desc="train.tar.gz", unit="B", unit_scale=True, stream=sizes)
    b.update(3_000_000)
    b.close()
    assert sizes.getvalue().startswith("  train.tar.gz: 4.00M/4.00MB (100%)")


def test_bar_on_a_terminal_is_tqdm_and_disabled_prints_nothing():
    out = Terminal()
    b = progress.bar(total=3, desc="x", stream=out)
    assert type(b).__name__ == "tqdm"
    b.close()
    quiet = io.StringIO()
    for _ in progress.bar(range(3), stream=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""


def test_data_synth_and_cache_in_a_log_print_plain_lines(tmp_path, capsys):
    from transcribe.cli import main
    assert main(["data", "synth", "--photos", "6", "--out", str(tmp_path / "s"), "--synth-seed", "3"]) == 0
    assert main(["data", str(tmp_path / "s"), "--cache-dir", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert any(line.startswith(f"  synth {tmp_path / 's'}: 6/6 img (100%) | ") for line in lines), lines
    assert any(line.startswith("  caching s: 6/6 img (100%) | ") for line in lines), lines
