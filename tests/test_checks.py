"""`transcribe check`: the debugging tests of DL book 11.5 pass on the real model and catch defects."""

import json
import math

import numpy as np
import pytest
import torch

from transcribe import sequence
from transcribe.studies import checks
from transcribe.model import PRESETS, build_model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # every check here runs on one thread (conftest.one_thread)
    yield


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 54, 54, generator=g) * 0.25
    lengths = torch.randint(1, 6, (n,), generator=g)
    digits = torch.randint(0, 10, (n, 5), generator=g)
    digits[torch.arange(5)[None, :] >= lengths[:, None]] = -1
    return x, lengths, digits


class WrongBackward(torch.autograd.Function):
    """Identity forward; backward scales the gradient by 0.5 -- a typical hand-written bprop bug."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 0.5 * grad


def _broken_model():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: WrongBackward.apply(out))  # inside the network
    return model


def test_gradient_check_catches_a_wrong_backward():
    x, lengths, digits = _batch(4)
    result = checks.gradient_check(_broken_model(), x, lengths, digits)
    assert result.status == "fail" and result.hard
    # the error is O(1), not rounding: the projections disagree by a large factor
    assert max(p["relative_error"] for p in result.detail["projections"]) > 1e-2


def test_complex_step_agrees_with_autograd_and_catches_a_wrong_likelihood(monkeypatch):
    torch.manual_seed(1)
    L, D = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 5, 10, dtype=torch.float64)
    _, lengths, digits = _batch(4, seed=1)
    good = checks.complex_step_check(L, D, lengths, digits)
    assert all(r.status == "pass" for r in good), checks.format_table(good)
    blank = checks.complex_step_check(L, torch.randn(4, 5, 11, dtype=torch.float64), lengths, digits, head="blank")
    assert all(r.status == "pass" for r in blank), checks.format_table(blank)
    # a likelihood that forgets the length term P(L = n) disagrees with the formula in value and slope
    real = sequence.log_likelihood
    monkeypatch.setattr(sequence, "log_likelihood", lambda l, d, n, s, head="sequence":
                        real(l, d, n, s, head) - torch.log_softmax(l, -1).gather(1, n[:, None]).squeeze(1))
    bad = checks.complex_step_check(L, D, lengths, digits)
    assert [r.status for r in bad] == ["fail", "fail"]


def test_complex_likelihood_is_the_hand_formula():
    # uniform softmaxes: log P = log(1/7) + n log(1/10); blank head: n digits + one blank, 11 classes
    L, D = np.zeros((2, 7)), np.zeros((2, 5, 10))
    lengths, digits = np.array([2, 5]), np.array([[1, 9, -1, -1, -1], [1, 2, 3, 4, 5]])
    ll = checks.log_likelihood_complex(L, D, lengths, digits)
    assert ll == pytest.approx([math.log(1 / 7) + 2 * math.log(0.1), math.log(1 / 7) + 5 * math.log(0.1)])
    llb = checks.log_likelihood_complex(L[:, :7], np.zeros((2, 5, 11)), lengths, digits, head="blank")
    assert llb == pytest.approx([3 * math.log(1 / 11), 5 * math.log(1 / 11)])
    # complex step recovers the derivative exactly: d/dt log softmax(t e_0)_0 at 0 = 1 - 1/7
    z = np.zeros((1, 7), dtype=complex)
    z[0, 0] += 1e-30j
    lp = checks.log_likelihood_complex(z, np.zeros((1, 5, 10)), np.array([0]), np.full((1, 5), -1))
    assert lp[0].imag / 1e-30 == pytest.approx(1 - 1 / 7, rel=1e-12)


def test_tiny_fit_fails_when_nothing_learns():
    torch.manual_seed(0)
    x, lengths, digits = _batch()
    assert checks.fit_tiny_set(build_model(PRESETS["tiny"]), x, lengths, digits, steps=20, lr=0.0).status == "fail"


def test_statistics_rows():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    x, lengths, digits = _batch()
    act = checks.activation_stats(model, x)
    assert set(act.detail["layers"]) and all(0 <= s["dead"] <= 1 for s in act.detail["layers"].values())
    # a layer whose every unit is pushed negative is reported dead
    with torch.no_grad():
        model.fc[0].weight.zero_()
        model.fc[1].bias.fill_(-1.0)
    dead = checks.activation_stats(model, x)
    assert dead.status == "warn" and max(s["dead"] for s in dead.detail["layers"].values()) == 1.0
    # a huge learning rate moves weights by far more than 10% per step
    big = checks.update_ratio_check(build_model(PRESETS["tiny"]), x, lengths, digits,
                               make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=100.0))
    assert big.status == "warn" and big.detail["outside"]


def test_check_command_passes_on_the_real_tiny_model(tmp_path, capsys):
    from transcribe.cli import main
    assert main(["check", "--preset", "tiny", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fit a tiny dataset" in out and "0 hard check(s) failed" in out
    report = json.loads((tmp_path / "check.json").read_text())
    assert {r["status"] for r in report["results"] if r["hard"]} == {"pass"}
    grad = next(r for r in report["results"] if r["name"].startswith("gradient: finite"))
    assert max(p["relative_error"] for p in grad["detail"]["projections"]) < 1e-6
    assert (tmp_path / "check.md").is_file()
    with pytest.raises(SystemExit, match="no such config"):
        main(["check", str(tmp_path / "missing.json")])


def test_gradient_check_on_flat_photos_is_not_fooled_by_max_pool_ties(monkeypatch):
    # real photos have flat regions: equal neighbouring conv outputs tie in the max-pool, where
    # only one-sided derivatives exist; the check breaks ties with tiny noise instead of failing
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 4, (4, 3, 6, 6), generator=g).float() / 4 - 0.5
    x = blocks.repeat_interleave(9, 2).repeat_interleave(9, 3)  # (4, 3, 54, 54), 9x9 flat blocks
    _, lengths, digits = _batch(4)
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    assert checks.gradient_check(model, x, lengths, digits).status == "pass"
    monkeypatch.setattr(checks, "TIE_NOISE", 0.0)
    assert checks.gradient_check(model, x, lengths, digits).status == "fail"
