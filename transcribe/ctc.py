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
# the search itself is numpy only, shared with the torch-free runtime (runtime.py)
from .ctcsearch import BLANK, NEG_INF, PRUNE, best_path, prefix_beam_search  # noqa: F401

BEAM = CTC_BEAM


@dataclass(frozen=True)
class Reading:
    text: str            # digits, "" when nothing is read
    logp: float          # exact log P(S = text | X)


def log_likelihood(log_probs: torch.Tensor, texts: list[str], input_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """log P(S = text | X) for each item. log_probs: (B, T, C), class k+1 = digit k. -> (B,)"""
    B, T, _ = log_probs.shape
    dev = log_probs.device  # targets on the same device (long targets: the native, not cuDNN, kernel)
    targets = [torch.tensor([int(c) + 1 for c in t], dtype=torch.long, device=dev) for t in texts]
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=dev)
    flat = (torch.cat(targets) if targets and target_lengths.sum() > 0
            else torch.zeros(0, dtype=torch.long, device=dev))
    if input_lengths is None:
        input_lengths = torch.full((B,), T, dtype=torch.long, device=dev)
    nll = F.ctc_loss(log_probs.float().transpose(0, 1), flat, input_lengths, target_lengths,
                     blank=BLANK, reduction="none", zero_infinity=False)
    return -nll


def decode(log_probs: torch.Tensor, beam: int = BEAM, max_len: int = MAX_DIGITS) -> list[Reading]:
    """The most probable labelling of each item and its exact log P(S|X). log_probs: (B, T, C).
    beam=1 is the best path (cut to max_len digits), scored exactly."""
    return [readings[0] for readings in decode_top_k(log_probs, 1, beam, max_len)]


def decode_top_k(log_probs: torch.Tensor, k: int, beam: int = BEAM, max_len: int = MAX_DIGITS) -> list[list[Reading]]:
    """The k most probable labellings of each item among the search's candidates, most probable
    first, each with its exact log P(S|X). log_probs: (B, T, C).

    The candidates are the prefix beam search's survivors (beam max(beam, k)) and the best path;
    every one is rescored with the forward algorithm, so the order is exact among them. A
    labelling the search dropped cannot appear (tests/test_ctc.py measures this against brute
    force); with k <= beam the first reading is decode()'s."""
    lp = log_probs.detach().float()
    arrays = lp.cpu().numpy()
    width = max(beam, k) if beam > 1 else beam
    candidates = []
    for a in arrays:
        if width <= 1:
            candidates.append([best_path(a)[:max_len]])
        else:
            cands = prefix_beam_search(a, width, max_len)
            greedy = best_path(a)
            if len(greedy) <= max_len and greedy not in cands:
                cands.append(greedy)
            candidates.append(cands)
    # Rescore every candidate exactly (one ctc_loss call for all of them).
    owner = [i for i, cands in enumerate(candidates) for _ in cands]
    texts = [t for cands in candidates for t in cands]
    scores = log_likelihood(lp[owner], texts).numpy()
    per_item: list[list[Reading]] = [[] for _ in candidates]
    for i, text, s in zip(owner, texts, scores):
        per_item[i].append(Reading(text, float(s)))
    # sorted() is stable: among equal scores the search's order decides, as decode() always did.
    # A candidate no frame path can produce (log P = -inf, e.g. "11" in two frames) is no alternative.
    ranked = [sorted(readings, key=lambda r: -r.logp) for readings in per_item]
    return [([r for r in rs if np.isfinite(r.logp)] or rs)[:k] for rs in ranked]
