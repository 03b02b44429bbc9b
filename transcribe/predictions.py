"""The predictions file: one JSON object per photo, written once by inference and read by
every metric, curve, gallery and comparison afterwards (infer() kept apart from evaluate(),
as in airbench: a report can be redrawn without running the model again).

A row (RUN/eval/<split>/predictions.jsonl; an OCR baseline writes the same rows):
    image             absolute path of the photo
    file              its name in the format-1 folder
    truth             the true number as text ("" when unknown)
    pred              the transcription, REFUSED_TEXT (">5") when the model says it is longer
    confidence        log P(S|X) of the transcription (Goodfellow et al. 2014, sec. 3), or null
    adhoc_confidence  the ad-hoc score of the blank head (for comparison)
    length_probs      P(L = 0..5, >5), rounded to DIGIT_DECIMALS
    digit_probs       P(S_i = 0..9[, blank]) per position, rounded to DIGIT_DECIMALS
    box               the widened crop box in the photo (left, top, width, height), pixels
Only `file`, `pred` and `confidence` are required: that is what every metric and the gallery need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from transcribe.runs import atomic_write

PREDICTION_KEYS = ("image", "file", "truth", "pred", "confidence", "adhoc_confidence",
                   "length_probs", "digit_probs", "box")
REQUIRED_KEYS = ("file", "pred", "confidence")  # what every metric and the gallery need
DIGIT_DECIMALS = 5    # probabilities stored: enough to rank and plot, 5x smaller than full floats
FILE_NAME = "predictions.jsonl"


def round_probs(values, decimals: int = DIGIT_DECIMALS) -> list:
    """Nested lists of probabilities rounded for the file."""
    return [round(float(v), decimals) if not isinstance(v, list) else round_probs(v, decimals) for v in values]


def write_predictions(rows: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line, written atomically (runs.atomic_write)."""
    return atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions.jsonl file; ValueError naming the file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise ValueError(f"{path}: line {number} lacks {', '.join(missing)}")
            if row["confidence"] is not None and not isinstance(row["confidence"], (int, float)):
                raise ValueError(f"{path}: line {number}: confidence {row['confidence']!r} is not a number")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no predictions in the file")
    return rows
