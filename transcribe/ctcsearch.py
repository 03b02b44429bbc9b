"""CTC decoding in numpy: the best path, prefix beam search, and the exact log P(S|X) of a labelling
by the forward algorithm (Graves et al. 2006). ctc.py (torch: the likelihood that training
maximizes, batched decoding) uses the search from here; the torch-free runtime (runtime.py) uses
all of it, so an exported transfer reader decodes exactly as the torch one does.
"""

from __future__ import annotations

import numpy as np

from .config import CTC_BEAM as BEAM, MAX_DIGITS

BLANK = 0
PRUNE = -9.0  # a class under this log-probability at a frame (~1e-4) starts no new prefix there
NEG_INF = -np.inf


def best_path(log_probs: np.ndarray) -> str:
    """Argmax per frame, repeats merged, blanks dropped. log_probs: (T, C)."""
    best = log_probs.argmax(axis=1)
    keep = best != BLANK
    keep[1:] &= best[1:] != best[:-1]
    return "".join(str(int(k) - 1) for k in best[keep])


def prefix_beam_search(log_probs: np.ndarray, beam: int = BEAM, max_len: int = MAX_DIGITS) -> list[str]:
    """Candidate labellings of at most `max_len` digits, most probable prefixes first.
    log_probs: (T, C) with C = 1 + number of symbols."""
    T, C = log_probs.shape
    # prefix -> [log P(prefix, path ends in blank), log P(prefix, path ends in its last symbol)]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG_INF]}
    for t in range(T):
        lp = log_probs[t]
        symbols = [c for c in range(1, C) if lp[c] > PRUNE]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
            entry[0] = np.logaddexp(entry[0], total + lp[BLANK])
            last = prefix[-1] if prefix else None
            if last is not None:  # the last symbol repeated in the next frame: same prefix
                entry[1] = np.logaddexp(entry[1], pnb + lp[last])
            if len(prefix) >= max_len:
                continue
            for c in symbols:
                new = nxt.setdefault(prefix + (c,), [NEG_INF, NEG_INF])
                # a repeated symbol needs a blank between the two: only paths ending in blank extend
                new[1] = np.logaddexp(new[1], (pb if c == last else total) + lp[c])
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))
        beams = dict(ranked[:beam])
    return ["".join(str(c - 1) for c in prefix) for prefix in beams]


def log_likelihood(log_probs: np.ndarray, text: str) -> float:
    """log P(S = text | X) by the forward algorithm over the blank-extended labelling.
    log_probs: (T, C), class k+1 = digit k. Equals -ctc_loss(reduction='none') (ctc.log_likelihood)."""
    T = log_probs.shape[0]
    ext = [BLANK]
    for c in text:
        ext += [int(c) + 1, BLANK]
    S = len(ext)
    lp = log_probs.astype(np.float64)
    alpha = np.full(S, NEG_INF)
    alpha[0] = lp[0, BLANK]
    if S > 1:
        alpha[1] = lp[0, ext[1]]
    for t in range(1, T):
        prev = alpha
        alpha = np.full(S, NEG_INF)
        for s in range(S):
            a = prev[s]
            if s >= 1:
                a = np.logaddexp(a, prev[s - 1])
            if s >= 2 and ext[s] != BLANK and ext[s] != ext[s - 2]:
                a = np.logaddexp(a, prev[s - 2])
            alpha[s] = a + lp[t, ext[s]]
    return float(np.logaddexp(alpha[-1], alpha[-2]) if S > 1 else alpha[-1])


def decode(log_probs: np.ndarray, beam: int, max_len: int) -> tuple[str, float]:
    """ctc.decode for one item in numpy: the beam's survivors and the best path, each rescored
    exactly; -> (the most probable of them, its log P(S|X)). log_probs: (T, C)."""
    if beam <= 1:
        cands = [best_path(log_probs)[:max_len]]
    else:
        cands = prefix_beam_search(log_probs, beam, max_len)
        greedy = best_path(log_probs)
        if len(greedy) <= max_len and greedy not in cands:
            cands.append(greedy)
    scored = [(text, log_likelihood(log_probs, text)) for text in cands]
    return max(scored, key=lambda ts: ts[1])
