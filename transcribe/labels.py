"""Reviewed photos back to training: `transcribe labels export` and `transcribe labels threshold`.

export: every photo a person read (digits, 1-5 of them) becomes `N.png` in a format-1 folder
with its `digitStruct.mat`, so `transcribe train --train DIR` and `--mix DIR` read it as they
read SVHN. The person typed the number, not one box per digit, so the number's box is split
into equal digit boxes; their union is the number's box again, which is all the cache builder
uses (crops.number_box). A photo sent without a box was read whole, so its number box is the
photo shrunk by the widening factor: widened again in training, the crop is the one served.

threshold: the refusal threshold re-chosen on reviewed photos. Referred photos are all
reviewed, accepted ones only through the audit sample, so each audit stands for 1/share
accepted photos (an importance weight); unweighted, the accepted region would be
under-represented.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from transcribe import crops, reviews, svhn
from transcribe.config import WIDEN

MAX_DIGITS = svhn.MAX_DIGITS


def digit_boxes(number_box, n: int) -> tuple[tuple[float, float, float, float], ...]:
    """n equal side-by-side boxes filling the number's box (left, top, width, height)."""
    left, top, width, height = (float(v) for v in number_box)
    return tuple((left + i * width / n, top, width / n, height) for i in range(n))


def number_box(row: reviews.Photo, widen: float) -> tuple[float, float, float, float]:
    if row.box is not None:
        return tuple(float(v) for v in row.box)
    return crops.widen((0.0, 0.0, float(row.width), float(row.height)), 1 / widen)


def export(db_url: str, out: str | Path, widen: float = WIDEN) -> dict:
    """Write the reviewed, numbered photos as a format-1 folder at `out` (which must not exist);
    returns counts. Built in a temp folder beside `out` and renamed into place."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; give a new folder (an export is never merged into one)")
    db = reviews.open_db(db_url, must_exist=True)
    rows = reviews.reviewed(db)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
    records, manifest, skipped = [], [], {"unreadable": 0, "no number": 0, "too long": 0}
    try:
        for row in rows:
            if row.unreadable:
                skipped["unreadable"] += 1
                continue
            if not row.review_text:
                skipped["no number"] += 1   # format 1 has no empty labels
                continue
            if len(row.review_text) > MAX_DIGITS:
                skipped["too long"] += 1
                continue
            name = f"{len(records) + 1}.png"
            with Image.open(io.BytesIO(row.image)) as im:
                Image.fromarray(np.asarray(im.convert("RGB"))).save(tmp / name)
            digits = tuple(int(c) for c in row.review_text)
            records.append(svhn.Record(name, digits, digit_boxes(number_box(row, widen), len(digits))))
            manifest.append({"file": name, "photo_id": row.id, "label": row.review_text, "model": row.text,
                             "log_prob": row.log_prob, "decision": row.status, "audit": row.audit,
                             "reviewer": row.reviewer, "model_version": row.model_version})
        svhn.write_digitstruct(tmp / svhn.MAT_NAME, records)
        (tmp / "labels.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"photos": len(records), "reviewed": len(rows), "skipped": skipped, "out": str(out)}


def weighted_threshold(conf, correct, weights, target: float) -> float | None:
    """The lowest threshold whose accepted set (confidence >= t) has weighted accuracy >= target;
    ties accepted together; None if no threshold reaches it (as metrics.threshold_for_accuracy)."""
    conf, correct, weights = (np.asarray(a, dtype=float) for a in (conf, correct, weights))
    if len(conf) == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    conf, good, w = conf[order], (correct * weights)[order], weights[order]
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]       # accept whole groups of equal confidence
    acc = np.cumsum(good)[last_of_tie] / np.cumsum(w)[last_of_tie]
    ok = np.flatnonzero(acc >= target - 1e-12)
    return None if len(ok) == 0 else float(conf[last_of_tie][ok[-1]])


def rechoose_threshold(db_url: str, target: float, audit_share: float) -> dict:
    rows = [r for r in reviews.reviewed(reviews.open_db(db_url, must_exist=True)) if r.log_prob is not None]
    if not rows:
        raise ValueError(f"{db_url}: no reviewed photo with a model answer yet")
    correct = [(not r.unreadable) and r.review_text == r.text for r in rows]
    weights = [1 / audit_share if r.audit else 1.0 for r in rows]
    th = weighted_threshold([r.log_prob for r in rows], correct, weights, target)
    return {"threshold": th, "target": target, "photos": len(rows), "audits": sum(r.audit for r in rows),
            "audit_share": audit_share}


def add_labels_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (("export", "write reviewed photos as a format-1 folder (PNGs + digitStruct.mat)"),
                        ("threshold", "re-choose the refusal threshold on reviewed photos")):
        p = sub.add_parser(name, help=help_, description=help_)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--run", type=Path, help="the served run: its database RUN/reviews.sqlite")
        where.add_argument("--db", help="database URL or SQLite file (as given to `transcribe serve --db`)")
        if name == "export":
            p.add_argument("--out", type=Path, required=True, help="new folder to write")
            p.add_argument("--crop-widen", type=float, default=WIDEN,
                           help=f"the training run's box widening, for photos sent without a box "
                                f"(default: {WIDEN})")
        else:
            p.add_argument("--target", type=float, default=0.98, help="accuracy to reach (default: 0.98)")
            p.add_argument("--audit", type=float, default=reviews.AUDIT_SHARE,
                           help=f"the audit share the service ran with (default: {reviews.AUDIT_SHARE})")


def run_labels(args) -> int:
    url = reviews.db_url(args.db, args.run)
    if args.action == "export":
        result = export(url, args.out, args.crop_widen)
        skipped = ", ".join(f"{v} {k}" for k, v in result["skipped"].items() if v) or "none"
        print(f"wrote {result['photos']} photos to {result['out']} ({result['reviewed']} reviewed; skipped: {skipped})")
        print(f"train on them: transcribe train --train {result['out']} ...  (or --mix {result['out']})")
        return 0
    if not 0 < args.audit <= 1:
        raise ValueError(f"--audit must be in (0, 1], got {args.audit}")
    result = rechoose_threshold(url, args.target, args.audit)
    th = result["threshold"]
    print(f"{result['photos']} reviewed photos ({result['audits']} audits weighted 1/{args.audit:g}): "
          + (f"threshold {th:.4f} for {100 * args.target:g}% accuracy" if th is not None else
             f"no threshold reaches {100 * args.target:g}%: refer every photo"))
    if th is not None:
        print(f"serve with it: transcribe serve RUN --threshold {th:.4f}")
    return 0
