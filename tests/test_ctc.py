"""CTC likelihood and decoding: hand computation, brute force over every labelling."""

import itertools
import math

import numpy as np
import pytest
import torch

from transcribe import ctc


def _log_probs(rng, T, C):
    return torch.log_softmax(torch.from_numpy(rng.normal(0, 2, (1, T, C))), dim=-1).float()


def test_likelihood_equals_a_hand_computed_forward_pass():
    # T = 2 frames, classes {blank, '0', '1'}. "1" is produced by the paths (1,1), (b,1), (1,b).
    p = np.array([[0.5, 0.2, 0.3], [0.1, 0.3, 0.6]])
    lp = torch.log(torch.from_numpy(p)).float()[None]
    expected = 0.3 * 0.6 + 0.5 * 0.6 + 0.3 * 0.1
    assert float(ctc.log_likelihood(lp, ["1"])[0]) == pytest.approx(math.log(expected), abs=1e-6)
    # "11" needs a blank between the two 1s: impossible in 2 frames.
    assert float(ctc.log_likelihood(lp, ["11"])[0]) == -math.inf
    # "" only by (b, b); "01" only by (0, 1)
    assert float(ctc.log_likelihood(lp, [""])[0]) == pytest.approx(math.log(0.05), abs=1e-6)
    assert float(ctc.log_likelihood(lp, ["01"])[0]) == pytest.approx(math.log(0.2 * 0.6), abs=1e-6)


def test_probabilities_of_every_labelling_sum_to_one():
    rng = np.random.default_rng(0)
    lp = _log_probs(rng, 4, 3)   # symbols '0', '1': every labelling of length <= 4
    labels = [""] + ["".join(s) for n in range(1, 5) for s in itertools.product("01", repeat=n)]
    total = torch.logsumexp(ctc.log_likelihood(lp.expand(len(labels), -1, -1), labels), 0)
    assert float(total) == pytest.approx(0.0, abs=1e-5)


def test_decoder_finds_the_most_probable_labelling_by_brute_force():
    """On small random cases the beam decoder returns the labelling of highest P(S|X) among all
    labellings of at most max_len symbols, with its exact log-probability; the best path alone
    misses it in a measurable share of cases."""
    rng = np.random.default_rng(1)
    misses_beam = misses_greedy = 0
    cases = 60
    for _ in range(cases):
        T, C, max_len = int(rng.integers(3, 7)), 4, 3
        lp = _log_probs(rng, T, C) * 0.5  # flatter: several paths matter
        lp = torch.log_softmax(lp, -1)
        labels = [""] + ["".join(s) for n in range(1, max_len + 1) for s in itertools.product("012", repeat=n)]
        scores = ctc.log_likelihood(lp.expand(len(labels), -1, -1), labels)
        best = labels[int(scores.argmax())]
        reading = ctc.decode(lp, beam=8, max_len=max_len)[0]
        assert reading.logp == pytest.approx(float(ctc.log_likelihood(lp, [reading.text])[0]), abs=1e-5)
        misses_beam += reading.text != best and reading.logp < float(scores.max()) - 1e-6
        greedy = ctc.decode(lp, beam=1, max_len=max_len)[0]
        misses_greedy += greedy.logp < float(scores.max()) - 1e-6
    assert misses_beam == 0
    assert misses_greedy > 0  # the best path is not the most probable labelling here


def test_decode_caps_the_length():
    lp = torch.full((1, 12, 11), -20.0)
    for t in range(12):  # frames read 1 b 2 b 3 b 4 b 5 b 6 b: "123456"
        lp[0, t, (t // 2 + 2) if t % 2 == 0 else 0] = 0.0
    lp = torch.log_softmax(lp, -1)
    assert ctc.best_path(lp[0].numpy()) == "123456"
    assert len(ctc.decode(lp, max_len=5)[0].text) <= 5
