"""sequence.py: the likelihood equals its hand computation, decoding is exact, padding is inert."""

import itertools
import math

import pytest
import torch

from transcribe.sequence import (REFUSED_TEXT, decode, log_likelihood, loss, to_text, to_texts)


def _logsoftmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def _hand_example():
    """2 images, N = 2 positions, 4 length classes (0, 1, 2, >2), 10 digit classes."""
    length_logits = [[0.1, 2.0, -1.0, 0.3], [0.0, 0.5, 1.5, -0.5]]
    digit_logits = [[[0.1 * k for k in range(10)], [1.0 if k == 3 else 0.0 for k in range(10)]],
                    [[(-1) ** k * 0.2 * k for k in range(10)], [math.sin(k) for k in range(10)]]]
    lengths = [1, 2]
    digits = [[7, -1], [4, 9]]
    return length_logits, digit_logits, lengths, digits


def test_log_likelihood_equals_hand_computation():
    ll, dl, lengths, digits = _hand_example()
    # image 0: "7"  -> log P(L=1) + log P(S_1=7); position 2 does not enter
    want0 = _logsoftmax(ll[0])[1] + _logsoftmax(dl[0][0])[7]
    # image 1: "49" -> log P(L=2) + log P(S_1=4) + log P(S_2=9)
    want1 = _logsoftmax(ll[1])[2] + _logsoftmax(dl[1][0])[4] + _logsoftmax(dl[1][1])[9]
    got = log_likelihood(torch.tensor(ll), torch.tensor(dl), torch.tensor(lengths), torch.tensor(digits))
    assert got.tolist() == pytest.approx([want0, want1], abs=1e-5)
    want_loss = -(want0 + want1) / 2
    got_loss = loss(torch.tensor(ll), torch.tensor(dl), torch.tensor(lengths), torch.tensor(digits))
    assert got_loss.item() == pytest.approx(want_loss, abs=1e-5)


def _all_sequences(n_pos, n_classes):
    for n in range(n_pos + 1):
        for seq in itertools.product(range(n_classes), repeat=n):
            yield n, list(seq) + [-1] * (n_pos - n)


def test_decode_is_the_most_probable_sequence():
    # N = 3 positions, 10 classes: 1 + 10 + 100 + 1000 sequences, brute force over all of them.
    g = torch.Generator().manual_seed(0)
    b, n_pos = 6, 3
    ll = torch.randn(b, n_pos + 2, generator=g, dtype=torch.float64) * 2
    ll[:, -1] = -30.0  # '>N' out of the running here; tested separately
    dl = torch.randn(b, n_pos, 10, generator=g, dtype=torch.float64) * 2
    seqs = list(_all_sequences(n_pos, 10))
    lengths = torch.tensor([s[0] for s in seqs])
    digits = torch.tensor([s[1] for s in seqs])
    dec = decode(ll, dl)
    for i in range(b):
        lik = log_likelihood(ll[i].expand(len(seqs), -1), dl[i].expand(len(seqs), -1, -1), lengths, digits)
        best = int(lik.argmax())
        assert int(dec.lengths[i]) == seqs[best][0]
        assert dec.digits[i].tolist() == seqs[best][1]
        assert float(dec.logp[i]) == pytest.approx(float(lik[best]), abs=1e-9)
        # the probabilities of all sequences (plus '>N') sum to one: the model is a distribution
        total = lik.exp().sum() + torch.softmax(ll[i], 0)[-1]
        assert float(total) == pytest.approx(1.0, abs=1e-9)
    # the decoder's logp equals log_likelihood of its own answer
    again = log_likelihood(ll, dl, dec.lengths, dec.digits)
    assert torch.allclose(again, dec.logp)
    assert not dec.refused.any()


def test_decode_adhoc_confidence_and_probs():
    ll, dl, _, _ = _hand_example()
    dec = decode(torch.tensor(ll), torch.tensor(dl))
    for i in range(2):
        want = max(_logsoftmax(ll[i])) + sum(max(_logsoftmax(row)) for row in dl[i])
        assert float(dec.adhoc_logp[i]) == pytest.approx(want, abs=1e-5)
    assert torch.allclose(dec.length_probs.sum(1), torch.ones(2))
    assert torch.allclose(dec.digit_probs.sum(2), torch.ones(2, 2))
    # logp of the best sequence is never below the ad-hoc product of maxima
    assert (dec.logp >= dec.adhoc_logp - 1e-6).all()


def test_too_long_is_refused():
    ll = torch.tensor([[0.0, 0.0, 0.0, 5.0]])  # N = 2: P(L > 2) dominates
    dl = torch.zeros(1, 2, 10)
    dec = decode(ll, dl)
    assert dec.refused.tolist() == [True]
    assert dec.lengths.tolist() == [3]
    assert dec.digits.tolist() == [[-1, -1]]
    assert float(dec.logp[0]) == pytest.approx(math.log(math.exp(5) / (3 + math.exp(5))), abs=1e-6)
    assert dec.texts() == [REFUSED_TEXT]


def test_padded_positions_get_zero_gradient():
    g = torch.Generator().manual_seed(1)
    ll = torch.randn(3, 7, generator=g, requires_grad=True)
    dl = torch.randn(3, 5, 10, generator=g, requires_grad=True)
    lengths = torch.tensor([0, 2, 5])
    digits = torch.tensor([[-1] * 5, [3, 1, -1, -1, -1], [1, 2, 3, 4, 5]])
    loss(ll, dl, lengths, digits).backward()
    for i, n in enumerate(lengths.tolist()):
        assert (dl.grad[i, n:] == 0).all()          # exactly zero past the length
        assert (dl.grad[i, :n].abs().sum(-1) > 0).all()
    # changing the padding value changes nothing
    d2 = digits.clone()
    d2[d2 < 0] = 7
    assert torch.equal(log_likelihood(ll, dl, lengths, digits), log_likelihood(ll, dl, lengths, d2))


def test_blank_head_hand_example():
    # N = 3 positions, 11 classes (10 = blank). Label "5": digit 5, then blank at position 2.
    dl = torch.zeros(1, 3, 11)
    dl[0, 0, 5] = 3.0
    dl[0, 1, 10] = 2.0
    dl[0, 2, 7] = 1.0          # after the first blank: ignored by the text, marginalized by logp
    ll = torch.zeros(1, 5)
    lengths, digits = torch.tensor([1]), torch.tensor([[5, -1, -1]])
    dec = decode(ll, dl, head="blank")
    assert dec.texts() == ["5"]
    assert dec.digits.tolist() == [[5, -1, -1]]
    p0, p1 = _logsoftmax(dl[0, 0].tolist()), _logsoftmax(dl[0, 1].tolist())
    p2 = _logsoftmax(dl[0, 2].tolist())
    assert float(dec.logp[0]) == pytest.approx(p0[5] + p1[10], abs=1e-6)
    assert float(dec.adhoc_logp[0]) == pytest.approx(p0[5] + p1[10] + p2[7], abs=1e-6)
    assert float(log_likelihood(ll, dl, lengths, digits, head="blank")[0]) == pytest.approx(p0[5] + p1[10], abs=1e-6)
    # loss: independent 11-way classifications, target blank past the length, + length CE
    want = -(p0[5] + p1[10] + p2[10]) - _logsoftmax([0.0] * 5)[1]
    assert loss(ll, dl, lengths, digits, head="blank").item() == pytest.approx(want, abs=1e-5)
    # all five (here three) positions filled: no blank term
    full = torch.zeros(1, 3, 11)
    full[0, :, 2] = 4.0
    dec = decode(ll, full, head="blank")
    assert dec.texts() == ["222"]
    assert float(dec.logp[0]) == pytest.approx(3 * _logsoftmax(full[0, 0].tolist())[2], abs=1e-6)


def test_to_text():
    assert to_text(2, [1, 9, -1, -1, -1]) == "19"
    assert to_text(0, [-1] * 5) == ""
    assert to_text(6, [-1] * 5) == REFUSED_TEXT
    assert to_texts(torch.tensor([1, 3]), torch.tensor([[4, -1, -1, -1, -1], [1, 0, 7, -1, -1]])) == ["4", "107"]


def test_bad_head_is_a_clear_error():
    with pytest.raises(ValueError, match="head"):
        loss(torch.zeros(1, 7), torch.zeros(1, 5, 10), torch.tensor([1]), torch.tensor([[1, -1, -1, -1, -1]]),
             head="ctc")
