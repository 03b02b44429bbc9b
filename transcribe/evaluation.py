"""Inference and evaluation: write predictions once, score them, refer unsure photos to a person.

Inference (`predict_rows`) is kept apart from scoring (metrics.py) and looking (report.py):
`transcribe evaluate` writes RUN/eval/<split>/predictions.jsonl and everything else is a pure
function of that file (airbench's infer()/evaluate() split; STYLE.md item 6).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

PREDICTION_KEYS = ("image", "file", "truth", "pred", "confidence", "adhoc_confidence",
                   "length_probs", "digit_probs", "box")
REQUIRED_KEYS = ("file", "pred", "confidence")  # what every metric and the gallery need


# ---------------------------------------------------------------- predictions.jsonl

def write_predictions(rows: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line, written to a temp file and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


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
