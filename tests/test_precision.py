"""`--amp auto` (precision.py): the choice between float32 and bf16, with a fake timer.

No timed assertions: the timer is scripted, so the test says which precision "was faster".
"""

import json

import pytest
import torch

from transcribe import precision
from transcribe.model import PRESETS

CPU = torch.device("cpu")


class FakeTimer:
    """Each timed call lasts the next of `durations` seconds."""

    def __init__(self, durations):
        self.durations, self.now, self.reads = list(durations), 0.0, 0

    def __call__(self):
        self.reads += 1
        if self.reads % 2 == 0:  # the read after a call: the call took the next duration
            self.now += self.durations.pop(0)
        return self.now


def no_timer():
    raise AssertionError("measured although the choice was known")


def scripted(off: float, bf16: float) -> FakeTimer:
    return FakeTimer([off, bf16] * precision.TIMED_CALLS)  # the calls take turns: float32, bf16, ...


def test_pick_wants_bf16_clearly_faster():
    assert precision.pick({"off": 1.0, "bf16": 0.5}) == "bf16"
    assert precision.pick({"off": 1.0, "bf16": 0.95}) == "off"   # within the noise margin
    assert precision.pick({"off": 1.0, "bf16": 2.0}) == "off"


def test_time_calls_takes_turns_and_the_median():
    calls = []
    timer = FakeTimer([3.0, 10.0, 1.0, 30.0, 2.0, 20.0])
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    assert precision.time_calls(fns, timer, warmup=2, calls=3) == {"a": 2.0, "b": 20.0}
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3


@pytest.mark.parametrize("off,bf16,want", [(0.2, 0.1, "bf16"), (0.1, 0.2, "off")])
def test_auto_measures_once_then_reads_the_cache(tmp_path, monkeypatch, one_thread, off, bf16, want):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    cfg = PRESETS["tiny"]
    logged = []
    assert precision.choose("train", cfg, 4, 54, CPU, timer=scripted(off, bf16), cache_dir=tmp_path,
                            log=logged.append) == want
    assert "cached in" in logged[0]
    stored = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    (entry,) = stored.values()
    assert entry["amp"] == want and entry["seconds"] == pytest.approx({"off": off, "bf16": bf16})
    # the same machine, model and batch: no measurement
    assert precision.choose("train", cfg, 4, 54, CPU, timer=no_timer, cache_dir=tmp_path) == want
    # another batch size or kind is another question
    assert precision.choose("infer", cfg, 4, 54, CPU, timer=scripted(0.1, 0.3), cache_dir=tmp_path) == "off"
    assert len(json.loads((tmp_path / precision.CACHE_FILE).read_text())) == 2


def test_cpu_without_bf16_instructions_stays_float32_unmeasured(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.choose("train", PRESETS["tiny"], 4, 54, CPU, timer=no_timer, cache_dir=tmp_path) == "off"
    assert not (tmp_path / precision.CACHE_FILE).exists()


def test_explicit_and_deterministic_choices_are_not_measured(monkeypatch):
    monkeypatch.setattr(precision, "choose", lambda *a, **k: no_timer())
    assert precision.resolve("bf16", "train", PRESETS["tiny"], 4, 54, CPU) == "bf16"
    assert precision.resolve("off", "train", PRESETS["tiny"], 4, 54, CPU) == "off"
    assert precision.resolve("auto", "train", PRESETS["tiny"], 4, 54, CPU, deterministic=True) == "off"


def test_flags_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(precision, "_cpuinfo", lambda: "model name\t: Some CPU\nflags\t\t: fpu sse2 avx512f\n")
    assert precision.cpu_has_bf16() is False and precision.cpu_name() == "Some CPU"
    monkeypatch.setattr(precision, "_cpuinfo", lambda: "flags\t\t: fpu amx_bf16 amx_tile\n")
    assert precision.cpu_has_bf16() is True
    monkeypatch.setattr(precision, "_cpuinfo", lambda: "")
    assert precision.cpu_has_bf16() is None


def test_bf16_autocast_context():
    with precision.autocast_for("bf16", "cpu")():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with precision.autocast_for("off", "cpu")():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
