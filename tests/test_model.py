"""model.py: shapes, the paper's architecture, gradients (finite differences), init, fitting."""

import dataclasses
import math

import pytest
import torch

from transcribe import sequence
from transcribe.config import from_dict, to_dict
from transcribe.model import PRESETS, ModelConfig, build_model, count_parameters

TINY = PRESETS["tiny"]


def _labels(b, g, max_digits=5):
    lengths = torch.randint(1, max_digits + 1, (b,), generator=g)
    digits = torch.randint(0, 10, (b, max_digits), generator=g)
    digits[torch.arange(max_digits)[None, :] >= lengths[:, None]] = -1
    return lengths, digits


@pytest.mark.parametrize("head,classes", [("sequence", 10), ("blank", 11)])
def test_forward_shapes(head, classes):
    model = build_model(dataclasses.replace(TINY, head=head))
    ll, dl = model(torch.randn(4, 3, 54, 54))
    assert ll.shape == (4, 7) and dl.shape == (4, 5, classes)
    assert count_parameters(model) < 100_000


def test_goodfellow_preset_is_the_paper_network():
    cfg = PRESETS["goodfellow"]
    model = build_model(cfg)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5)] * 8
    # first layer: maxout, 3 pieces per unit (sec. 5.1)
    assert [c.out_channels for c in convs] == [48 * 3, 64, 128, 160, 192, 192, 192, 192]
    fcs = [m for m in model.fc if isinstance(m, torch.nn.Linear)]
    assert [f.out_features for f in fcs] == [3072, 3072]
    assert model.feature_size == 192 * 4 * 4  # 54 -> 27 -> 27 -> 14 -> 14 -> 7 -> 7 -> 4 -> 4
    model.eval()
    with torch.no_grad():
        ll, dl = model(torch.randn(1, 3, 54, 54))
    assert ll.shape == (1, 7) and dl.shape == (1, 5, 10)


def test_config_round_trips_and_rejects_bad_values():
    assert from_dict(ModelConfig, to_dict(PRESETS["cpu"])) == PRESETS["cpu"]
    with pytest.raises(ValueError, match="pool_strides"):
        ModelConfig(widths=(8, 8), pool_strides=(2,))
    with pytest.raises(ValueError, match="head"):
        ModelConfig(head="ctc")


def test_initial_loss_is_near_its_analytic_value():
    # small output layers: every softmax starts ~uniform, so
    # -log P(S|X) = log 7 + n log 10 (sequence);  blank: 5 log 11 + log 7
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(64, 3, 54, 54, generator=g)
    lengths, digits = _labels(64, g)
    want = math.log(7) + lengths.double().mean().item() * math.log(10)
    got = sequence.loss(*build_model(TINY)(x), lengths, digits).item()
    assert got == pytest.approx(want, abs=0.02)
    got = sequence.loss(*build_model(dataclasses.replace(TINY, head="blank"))(x), lengths, digits, "blank").item()
    assert got == pytest.approx(5 * math.log(11) + math.log(7), abs=0.02)


@pytest.mark.parametrize("head", ["sequence", "blank"])
def test_every_parameter_gets_a_finite_gradient(head):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build_model(dataclasses.replace(TINY, head=head, dropout=0.1))
    lengths, digits = _labels(8, g)
    sequence.loss(*model(torch.randn(8, 3, 54, 54, generator=g)), lengths, digits, head).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_matches_finite_differences_through_random_projections():
    # Deep Learning book 11.5: check f(e) = u . g(x + e v) with centred differences, in float64,
    # for the whole tiny model: once along a random direction in parameter space (loss), once
    # along a random input direction with a random projection u of all the logits.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build_model(TINY).double()   # train mode: batch-norm uses the batch, dropout is 0
    x = torch.randn(3, 3, 54, 54, generator=g, dtype=torch.float64)
    lengths, digits = _labels(3, g)
    params = list(model.parameters())
    eps = 1e-6
    for trial in range(2):
        v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        model.zero_grad()
        sequence.loss(*model(x), lengths, digits).backward()
        analytic = sum((p.grad * d).sum() for p, d in zip(params, v)).item()

        def loss_at(e):
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.add_(e * d)
                out = sequence.loss(*model(x), lengths, digits).item()
                for p, d in zip(params, v):
                    p.sub_(e * d)
            return out

        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8), trial

        vx = torch.randn(x.shape, generator=g, dtype=torch.float64)
        u = torch.randn(3 * (7 + 50), generator=g, dtype=torch.float64)

        def f(e):
            ll, dl = model(x + e * vx)
            return u @ torch.cat([ll.flatten(), dl.flatten()])

        e0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
        (analytic,) = torch.autograd.grad(f(e0), e0)
        with torch.no_grad():
            numeric = (f(eps) - f(-eps)) / (2 * eps)
        assert numeric.item() == pytest.approx(analytic.item(), rel=1e-5, abs=1e-8), trial


def test_tiny_model_fits_sixteen_random_images():
    # random images, random labels: fitting them shows the model + loss + decoder can learn
    # (the chapter's "fit a tiny dataset" check).
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 54, 54, generator=g)
    lengths, digits = _labels(16, g)
    model = build_model(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    want = sequence.to_texts(lengths, digits)
    for step in range(1, 301):
        loss = sequence.loss(*model(x), lengths, digits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0:  # evaluate as inference does: eval mode, exact decode
            model.eval()
            with torch.no_grad():
                got = sequence.decode(*model(x)).texts()
            model.train()
            if got == want:
                break
    assert got == want, f"after {step} steps, training loss {loss.item():.3f}"


def test_channels_last_and_bf16_autocast_agree():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    x = torch.randn(4, 3, 54, 54)
    with torch.no_grad():
        ll, dl = model(x)
        ll_cl, dl_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        assert torch.allclose(ll, ll_cl, atol=1e-5) and torch.allclose(dl, dl_cl, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ll_bf, dl_bf = model(x)
    assert ll_bf.dtype == torch.bfloat16
    lengths, digits = _labels(4, torch.Generator().manual_seed(0))
    assert torch.isfinite(sequence.loss(ll_bf, dl_bf, lengths, digits))


def test_traces_without_graph_breaks():
    # fullgraph=True raises on any graph break; the eager backend keeps this test fast.
    torch._dynamo.reset()
    model = build_model(TINY)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    ll, dl = compiled(torch.randn(2, 3, 54, 54))
    assert ll.shape == (2, 7) and dl.shape == (2, 5, 10)
