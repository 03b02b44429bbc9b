"""Sequence likelihood, exact decoding and confidence (Goodfellow et al. 2014, sec. 3).

The model outputs a length softmax P(L | X) over {0, ..., N, >N} and N digit softmaxes
P(S_i | X). With the `sequence` head the probability of a transcription s of length n is

    log P(S = s | X) = log P(L = n | X) + sum_{i <= n} log P(S_i = s_i | X)      (sec. 3)

Training maximizes it; positions past the length do not enter (they get exactly zero gradient).
The most probable transcription is exact and O(N): for each length n the best digits are the
per-position argmaxes, so score(n) = log P(L = n) + cumsum_i max log P(S_i); keep the best n.
Its log-probability `logp` is the principled confidence the system thresholds to refer photos
to a person.

Length class N + 1 ('>N') competes like any other length, but N positions cannot spell it out:
when it wins, the photo is *refused* (`Decoded.refused`, length N + 1, no digits, text ">5"),
with confidence log P(L > N | X). Such a photo counts as an error unless it is referred.

The ad-hoc `blank` head (the baseline the paper describes first; e.g. potterhsu's
SVHNClassifier) has N softmaxes over 11 classes, 10 = "no digit here":
- loss: each position is an independent classification with target blank past the length,
  plus cross-entropy on the length softmax (trained too, as in SVHNClassifier, so every
  parameter gets a gradient and `length_probs` means something; decoding ignores it);
- decode: argmax per position, the text is the digits before the first blank;
- logp: log P(text | X) under that model = sum_{i < n} log P(S_i = s_i) + log P(S_n = blank)
  (no blank term when n = N), i.e. positions after the first blank are marginalized out;
  `log_likelihood(head="blank")` computes the same quantity for a given label.

`adhoc_logp` is the log of the product of the maxima of every softmax (the length softmax and
all N digit softmaxes for `sequence`, the N digit softmaxes for `blank`): the ad-hoc confidence
the chapter contrasts with log P(S|X).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from transcribe import alternatives
from transcribe.config import BLANK, MAX_DIGITS

REFUSED_TEXT = f">{MAX_DIGITS}"  # text of a refused photo: the model says more than MAX_DIGITS digits


def _check_head(head: str) -> None:
    if head not in ("sequence", "blank"):
        raise ValueError(f"head must be 'sequence' or 'blank', got {head!r}")


def _upcast(x):
    """bf16/fp16 logits (autocast) -> float32 before log_softmax; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _digit_terms(digit_logits, lengths, digits):
    """log P(S_i = s_i) per position, exactly 0 (and no gradient) past the length. -> (B, N)"""
    lp = torch.log_softmax(digit_logits, dim=-1)                       # (B, N, C)
    n = digit_logits.shape[1]
    mask = torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]   # (B, N)
    target = digits.clamp(min=0)                                       # -1 padding -> any valid index
    picked = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)           # (B, N)
    return torch.where(mask, picked, torch.zeros_like(picked)), lp, mask


def log_likelihood(length_logits, digit_logits, lengths, digits, head: str = "sequence"):
    """log P(S = s | X) for the given labels. lengths (B,) in 0..N, digits (B, N) with -1 past the length.

    sequence: log P(L = n) + sum_{i < n} log P(S_i = s_i)             -> (B,)
    blank:    sum_{i < n} log P(S_i = s_i) + [n < N] log P(S_n = blank)
    """
    _check_head(head)
    terms, lp, mask = _digit_terms(_upcast(digit_logits), lengths, digits)
    if head == "sequence":
        lp_len = torch.log_softmax(_upcast(length_logits), dim=-1)    # (B, N + 2)
        return lp_len.gather(1, lengths[:, None]).squeeze(1) + terms.sum(1)
    n = digit_logits.shape[1]
    first_blank = torch.arange(n, device=lengths.device)[None, :] == lengths[:, None]   # (B, N); none if n = N
    blank_term = torch.where(first_blank, lp[..., BLANK], torch.zeros_like(terms)).sum(1)
    return terms.sum(1) + blank_term


def loss(length_logits, digit_logits, lengths, digits, head: str = "sequence"):
    """Scalar training loss, averaged over the batch.

    sequence: mean of -log P(S|X) (sec. 3).
    blank: sum over positions of cross-entropy with target blank past the length, plus the
    length cross-entropy (the ad-hoc baseline; see the module docstring).
    """
    _check_head(head)
    if head == "sequence":
        return -log_likelihood(length_logits, digit_logits, lengths, digits, head).mean()
    n = digit_logits.shape[1]
    past = torch.arange(n, device=lengths.device)[None, :] >= lengths[:, None]
    target = torch.where(past, torch.full_like(digits, BLANK), digits)  # (B, N), blank past the length
    digit_ce = F.cross_entropy(_upcast(digit_logits).flatten(0, 1), target.flatten(), reduction="none")
    length_ce = F.cross_entropy(_upcast(length_logits), lengths, reduction="none")
    return (digit_ce.view(-1, n).sum(1) + length_ce).mean()


@dataclass
class Decoded:
    lengths: Any        # (B,) int64; N + 1 where refused
    digits: Any         # (B, N) int64, -1 past the length
    logp: Any           # (B,) log P(S|X) of the returned transcription (natural log)
    adhoc_logp: Any     # (B,) log of the product of every softmax's maximum
    length_probs: Any   # (B, N + 2)
    digit_probs: Any    # (B, N, C)
    refused: Any        # (B,) bool: '>N' won, nothing transcribed (sequence head only)

    def texts(self) -> list[str]:
        return to_texts(self.lengths, self.digits)


def decode(length_logits, digit_logits, head: str = "sequence") -> Decoded:
    """The most probable transcription per image and its confidence. Exact for `sequence`."""
    _check_head(head)
    length_logits, digit_logits = _upcast(length_logits.detach()), _upcast(digit_logits.detach())
    lp_len = torch.log_softmax(length_logits, dim=-1)                  # (B, N + 2)
    lp_dig = torch.log_softmax(digit_logits, dim=-1)                   # (B, N, C)
    b, n, _ = lp_dig.shape
    pos = torch.arange(n, device=lp_dig.device)[None, :]               # (1, N)
    if head == "sequence":
        best_lp, best_d = lp_dig.max(-1)                               # (B, N) each
        cum = torch.cat([best_lp.new_zeros(b, 1), best_lp.cumsum(1)], 1)   # (B, N + 1): n = 0..N
        scores = torch.cat([lp_len[:, :n + 1] + cum, lp_len[:, n + 1:]], 1)  # (B, N + 2); '>N' alone
        logp, lengths = scores.max(1)
        refused = lengths == n + 1
        adhoc = lp_len.max(1).values + best_lp.sum(1)
    else:
        best_lp, best_d = lp_dig.max(-1)                               # (B, N)
        not_blank = best_d != BLANK
        lengths = not_blank.long().cumprod(1).sum(1)                   # index of the first blank, N if none
        kept = torch.where(pos < lengths[:, None], best_lp, torch.zeros_like(best_lp)).sum(1)
        blank_lp = torch.where(pos == lengths[:, None], lp_dig[..., BLANK], torch.zeros_like(best_lp)).sum(1)
        logp = kept + blank_lp
        refused = torch.zeros(b, dtype=torch.bool, device=lp_dig.device)
        adhoc = best_lp.sum(1)
    keep = (pos < lengths[:, None]) & ~refused[:, None]               # a refused photo has no digits
    digits = torch.where(keep, best_d, torch.full_like(best_d, -1))
    return Decoded(lengths=lengths, digits=digits, logp=logp, adhoc_logp=adhoc,
                   length_probs=lp_len.exp(), digit_probs=lp_dig.exp(), refused=refused)


def top_k(length_logits, digit_logits, k: int, head: str = "sequence") -> list[list[tuple[str, float]]]:
    """The k most probable transcriptions of each image, exactly, with their log P(S|X), most
    probable first (alternatives.py; the first is decode()'s). -> B lists of (text, logp)."""
    _check_head(head)
    lp_len = torch.log_softmax(_upcast(length_logits.detach()), dim=-1).double().cpu().numpy()
    lp_dig = torch.log_softmax(_upcast(digit_logits.detach()), dim=-1).double().cpu().numpy()
    return [alternatives.top_k(a, b, k, head) for a, b in zip(lp_len, lp_dig)]


def to_text(length, digits: Sequence) -> str:
    """'19' from length 2 and digits [1, 9, -1, -1, -1]; REFUSED_TEXT when length > MAX_DIGITS."""
    length = int(length)
    if length > len(digits) or length > MAX_DIGITS:
        return REFUSED_TEXT
    return "".join(str(int(d)) for d in digits[:length])


def to_texts(lengths, digits) -> list[str]:
    """Batch version of to_text: lengths (B,), digits (B, N) tensors, arrays or lists."""
    lengths = lengths.tolist() if hasattr(lengths, "tolist") else list(lengths)
    digits = digits.tolist() if hasattr(digits, "tolist") else [list(d) for d in digits]
    return [to_text(n, d) for n, d in zip(lengths, digits)]


def distillation_loss(length_logits, digit_logits, lengths, digits, soft_lengths, soft_digits, soft_q,
                      alpha: float):
    """Scalar loss of a student taught by a teacher's distribution over whole transcriptions
    (soft targets at the sequence level: Hinton et al. 2015 on the paper's own quantity, as in
    Kim & Rush 2016), averaged over the batch:

        alpha * -log P(S = y | X) + (1 - alpha) * sum_k q_k * -log P(S = s_k | X)

    y the true label (lengths (B,), digits (B, N)); s_k the teacher's top-K transcriptions
    (soft_lengths (B, K), soft_digits (B, K, N), -1 past the length) with probabilities q_k
    renormalised over the K (soft_q (B, K); padding candidates carry q = 0)."""
    b, k = soft_q.shape
    true_nll = -log_likelihood(length_logits, digit_logits, lengths, digits)                 # (B,)
    per_candidate = log_likelihood(length_logits.repeat_interleave(k, 0), digit_logits.repeat_interleave(k, 0),
                                   soft_lengths.reshape(-1), soft_digits.reshape(b * k, -1)).view(b, k)  # (B, K)
    soft_nll = -(soft_q * per_candidate).sum(1)                                                # (B,)
    return (alpha * true_nll + (1 - alpha) * soft_nll).mean()
