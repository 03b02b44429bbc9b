"""alternatives.py, sequence.top_k, ctc.decode_top_k: the k most probable transcriptions, against brute force."""

import itertools

import numpy as np
import pytest
import torch

from transcribe import alternatives, ctc, runtime, sequence


def _brute_force(lp_len, lp_dig, head):
    """Every transcription the head can give, with its log P(S|X), by enumeration."""
    n_pos, c = lp_dig.shape
    digits = c if head == "sequence" else c - 1
    out = {}
    for n in range(n_pos + 1):
        for s in itertools.product(range(digits), repeat=n):
            body = sum(lp_dig[i, d] for i, d in enumerate(s))
            if head == "sequence":
                out["".join(map(str, s))] = lp_len[n] + body
            else:
                out["".join(map(str, s))] = body + (lp_dig[n, c - 1] if n < n_pos else 0.0)
    if head == "sequence":
        out[f">{n_pos}"] = lp_len[n_pos + 1]
    return sorted(out.items(), key=lambda kv: -kv[1])


def _random(rng, n_pos, c, scale):
    lp_len = torch.log_softmax(torch.from_numpy(rng.normal(0, scale, n_pos + 2)), -1).numpy()
    lp_dig = torch.log_softmax(torch.from_numpy(rng.normal(0, scale, (n_pos, c))), -1).numpy()
    return lp_len, lp_dig


@pytest.mark.parametrize("head, c", [("sequence", 10), ("sequence", 4), ("blank", 5)])
def test_top_k_is_exactly_the_k_most_probable(head, c):
    rng = np.random.default_rng(0)
    for case in range(40):
        n_pos = int(rng.integers(1, 4))
        lp_len, lp_dig = _random(rng, n_pos, c, scale=[0.5, 2.0, 4.0][case % 3])
        want = _brute_force(lp_len, lp_dig, head)
        k = int(rng.integers(1, 12))
        got = alternatives.top_k(lp_len, lp_dig, k, head)
        assert len(got) == min(k, len(want))
        assert [s for _, s in got] == pytest.approx([s for _, s in want[:k]], abs=1e-9)
        # the same texts, up to the order of exact ties (none with random floats)
        assert [t for t, _ in got] == [t for t, _ in want[:k]]
        # every score is the exact log-probability of its text
        scores = dict(want)
        assert all(s == pytest.approx(scores[t], abs=1e-9) for t, s in got)


def test_top_k_of_all_sequences_sums_to_one():
    rng = np.random.default_rng(1)
    lp_len, lp_dig = _random(rng, 2, 10, 1.0)
    got = alternatives.top_k(lp_len, lp_dig, 10 ** 4, "sequence")
    assert len(got) == 1 + 10 + 100 + 1 and len({t for t, _ in got}) == len(got)   # '', 10, 100, '>2'
    assert np.exp([s for _, s in got]).sum() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("head", ["sequence", "blank"])
def test_first_alternative_is_the_decoded_transcription(head):
    g = torch.Generator().manual_seed(0)
    c = 10 if head == "sequence" else 11
    length_logits, digit_logits = torch.randn(16, 7, generator=g) * 3, torch.randn(16, 5, c, generator=g) * 3
    dec = sequence.decode(length_logits, digit_logits, head)
    tops = sequence.top_k(length_logits, digit_logits, 4, head)
    if head == "sequence":  # exact decoding: the best alternative is the transcription
        assert [t[0][0] for t in tops] == dec.texts()
        assert [t[0][1] for t in tops] == pytest.approx(dec.logp.tolist(), abs=1e-5)
    else:  # the blank head decodes greedily (argmax per position): never better than the best alternative
        assert all(t[0][1] >= lp - 1e-5 for t, lp in zip(tops, dec.logp.tolist()))
        assert any(t[0][1] > lp + 1e-3 for t, lp in zip(tops, dec.logp.tolist()))
    assert all(a[1] >= b[1] for t in tops for a, b in zip(t, t[1:]))
    # the torch-free runtime gives the same alternatives
    got = runtime.decode(torch.log_softmax(length_logits, -1).numpy(), torch.log_softmax(digit_logits, -1).numpy(),
                         head, top_k=4)
    for g_row, t in zip(got, tops):
        assert [a[0] for a in g_row["alternatives"]] == [x[0] for x in t]
        assert [a[1] for a in g_row["alternatives"]] == pytest.approx([x[1] for x in t], abs=1e-4)


def test_ctc_top_k_equals_brute_force_when_the_beam_holds_every_prefix():
    """With a beam wider than the number of labellings, the search drops nothing: its survivors,
    rescored exactly, are the k most probable labellings."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        T, max_len = int(rng.integers(2, 5)), 3
        lp = torch.log_softmax(torch.from_numpy(rng.normal(0, 1, (1, T, 3))), -1).float()  # blank, '0', '1'
        labels = [""] + ["".join(s) for n in range(1, max_len + 1) for s in itertools.product("01", repeat=n)]
        scores = ctc.log_likelihood(lp.expand(len(labels), -1, -1), labels).numpy()
        finite = [(t, s) for t, s in zip(labels, scores) if np.isfinite(s)]
        want = sorted(finite, key=lambda ts: -ts[1])[:5]
        got = ctc.decode_top_k(lp, 5, beam=64, max_len=max_len)[0]
        assert [r.logp for r in got] == pytest.approx([s for _, s in want], abs=1e-5)
        assert [r.text for r in got] == [t for t, _ in want]


def test_ctc_decode_is_the_first_of_decode_top_k():
    rng = np.random.default_rng(3)
    lp = torch.log_softmax(torch.from_numpy(rng.normal(0, 2, (6, 12, 11))), -1).float()
    best = ctc.decode(lp)
    tops = ctc.decode_top_k(lp, 3)
    assert [t[0] for t in tops] == best
    assert all(len(t) <= 3 and all(a.logp >= b.logp for a, b in zip(t, t[1:])) for t in tops)


def test_ctc_top_k_lists_no_impossible_labelling():
    """In 2 frames "00" and "11" need 3 (a blank between the repeats): they are no alternatives."""
    p = np.array([[0.5, 0.2, 0.3], [0.1, 0.3, 0.6]])
    lp = torch.log(torch.from_numpy(p)).float()[None]
    got = ctc.decode_top_k(lp, 20, beam=64, max_len=3)[0]
    assert sorted(r.text for r in got) == ["", "0", "01", "1", "10"]
    assert all(np.isfinite(r.logp) for r in got)
    assert np.exp([r.logp for r in got]).sum() == pytest.approx(1.0, abs=1e-6)
