"""The k most probable transcriptions of one photo, exactly, from the length and digit softmaxes.

Under the sequence head (Goodfellow et al. 2014, sec. 3) a transcription s of length n has

    log P(S = s | X) = log P(L = n | X) + sum_{i < n} log P(S_i = s_i | X)

so for a fixed length the digits are independent choices: the best sequence of that length takes
each position's most probable digit, and every other one is reached from it by moving some
positions down their own sorted list of digits. The k best over all lengths come out of one
heap (Lawler-style enumeration): start with each length's best, pop the most probable, push its
children. A child moves one position j one step down its list, with j at or after the last
position already moved, so every index vector has exactly one parent and is pushed once; a
child is never more probable than its parent, so the pops come out in order and the first k
are exactly the k most probable sequences (tests/test_alternatives.py checks it against brute
force). Cost: O(k * N log(k N)) for N positions, whatever the number of sequences (111,111 for
N = 5).

The '>N' length class is one more candidate with text '>N' (nothing can be spelled); the blank
head's sequences (digits, then a blank at position n, or N digits) enumerate the same way with
log P(S_n = blank) in place of log P(L = n). (That head's own decoding is greedy, argmax per
position, so its transcription can be less probable than the first alternative listed here.)

numpy only: the torch-free runtime (runtime.py) uses this module as it is.
"""

from __future__ import annotations

import heapq

import numpy as np


def top_k(lp_len: np.ndarray, lp_dig: np.ndarray, k: int, head: str = "sequence") -> list[tuple[str, float]]:
    """Up to k (text, log P(S|X)) pairs, most probable first, for one photo.

    lp_len: (N + 2,) log P(L = n | X) for n = 0..N and '>N'; lp_dig: (N, C) log P(S_i | X), C = 10
    digits for the sequence head, 11 (digits, then blank) for the blank head.
    """
    if k < 1:
        return []
    lp_len, lp_dig = np.asarray(lp_len, np.float64), np.asarray(lp_dig, np.float64)
    n_pos = lp_dig.shape[0]
    if head == "sequence":
        digits = lp_dig                                                    # (N, 10)
        base = [float(lp_len[n]) for n in range(n_pos + 1)]                # log P(L = n)
        found = [(float(lp_len[n_pos + 1]), f">{n_pos}")]                  # '>N': a candidate of its own
    elif head == "blank":
        blank = lp_dig.shape[1] - 1
        digits = lp_dig[:, :blank]
        base = [float(lp_dig[n, blank]) if n < n_pos else 0.0 for n in range(n_pos + 1)]  # the first blank
        found = []
    else:
        raise ValueError(f"head must be 'sequence' or 'blank', got {head!r}")
    order = np.argsort(-digits, axis=1, kind="stable")                     # (N, D): digits, best first
    ranked = np.take_along_axis(digits, order, axis=1)                     # (N, D): their log-probs
    depth = ranked.shape[1]
    # heap of (-score, tie-break, length, index vector, last moved position (-1: none))
    heap = []
    for n in range(n_pos + 1):
        heap.append((-(base[n] + float(ranked[:n, 0].sum())), n, n, (0,) * n, -1))
    heapq.heapify(heap)
    tie = n_pos + 1
    out: list[tuple[float, str]] = []
    refused = found[0] if found else None
    while heap and len(out) < k:
        neg, _, n, idx, last = heapq.heappop(heap)
        score = -neg
        if refused is not None and refused[0] > score:   # '>N' ranks before this one
            out.append(refused)
            refused = None
            if len(out) == k:
                break
        out.append((score, "".join(str(int(order[i, j])) for i, j in enumerate(idx))))
        for j in range(max(last, 0), n):
            if idx[j] + 1 < depth:
                child = idx[:j] + (idx[j] + 1,) + idx[j + 1:]
                s = base[n] + float(ranked[np.arange(n), child].sum())   # summed afresh: no drift
                heapq.heappush(heap, (-s, tie, n, child, j))
                tie += 1
    if refused is not None and len(out) < k:
        out.append(refused)
    return [(text, score) for score, text in out]
