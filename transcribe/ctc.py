"""CTC: the probability of a transcription, and the most probable one (Graves et al. 2006).

A line recognizer (recognizer.py) gives, for each of T frames, log-probabilities over
{blank, 0, ..., 9}. A labelling s (a digit string) is produced by every frame path that reads s
after merging repeats and dropping blanks, and

    log P(S = s | X) = log sum over those paths of prod_t p_t(path_t)

which the forward algorithm computes exactly: it is minus `torch.nn.functional.ctc_loss`
with reduction="none". Training maximizes it (the same principled objective as the sequence
head's log P(L=n|X) + sum log P(S_i|X)), and it is the confidence the system thresholds.

Decoding: the most probable labelling. The best path (argmax per frame, then merge) is cheap
but is not always the most probable labelling (several paths add up). Prefix beam search
keeps the `beam` most probable prefixes frame by frame; its survivors are then rescored
exactly with the forward algorithm and the best kept, so the confidence is always the exact
log P(S|X) of the returned labelling. How often it misses the true optimum is measured in
tests/test_ctc.py against brute force over every labelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import CTC_BEAM, MAX_DIGITS

BLANK = 0
BEAM = CTC_BEAM
PRUNE = -9.0  # a class under this log-probability at a frame (~1e-4) starts no new prefix there
NEG_INF = -np.inf


@dataclass(frozen=True)
class Reading:
    text: str            # digits, "" when nothing is read
    logp: float          # exact log P(S = text | X)


def log_likelihood(log_probs: torch.Tensor, texts: list[str], input_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """log P(S = text | X) for each item. log_probs: (B, T, C), class k+1 = digit k. -> (B,)"""
    B, T, _ = log_probs.shape
    targets = [torch.tensor([int(c) + 1 for c in t], dtype=torch.long) for t in texts]
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.cat(targets) if targets and target_lengths.sum() > 0 else torch.zeros(0, dtype=torch.long)
    if input_lengths is None:
        input_lengths = torch.full((B,), T, dtype=torch.long)
    nll = F.ctc_loss(log_probs.float().transpose(0, 1), flat, input_lengths, target_lengths,
                     blank=BLANK, reduction="none", zero_infinity=False)
    return -nll


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


def decode(log_probs: torch.Tensor, beam: int = BEAM, max_len: int = MAX_DIGITS) -> list[Reading]:
    """The most probable labelling of each item and its exact log P(S|X). log_probs: (B, T, C).
    beam=1 is the best path (cut to max_len digits), scored exactly."""
    return [readings[0] for readings in top_k(log_probs, 1, beam, max_len)]


def top_k(log_probs: torch.Tensor, k: int, beam: int = BEAM, max_len: int = MAX_DIGITS) -> list[list[Reading]]:
    """The k most probable labellings of each item that the search finds, most probable first,
    each with its exact log P(S|X) (fewer than k when fewer survive). log_probs: (B, T, C)."""
    lp = log_probs.detach().float()
    arrays = lp.cpu().numpy()
    candidates = []
    for a in arrays:
        if beam <= 1:
            candidates.append([best_path(a)[:max_len]])
        else:
            cands = prefix_beam_search(a, beam, max_len)
            greedy = best_path(a)
            if len(greedy) <= max_len and greedy not in cands:
                cands.append(greedy)
            candidates.append(cands)
    # Rescore every candidate exactly (one ctc_loss call for all of them).
    owner = [i for i, cands in enumerate(candidates) for _ in cands]
    texts = [t for cands in candidates for t in cands]
    scores = log_likelihood(lp[owner], texts).numpy()
    found: list[list[Reading]] = [[] for _ in candidates]
    for i, text, s in zip(owner, texts, scores):
        found[i].append(Reading(text, float(s)))
    return [sorted(readings, key=lambda r: -r.logp)[:k] for readings in found]
