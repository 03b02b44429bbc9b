"""Several systems side by side: one accuracy-vs-coverage plot, one table, the photos they disagree on.

Every system (our models, an OCR baseline) writes the same predictions.jsonl, so comparing
them is a pure function of those files (inference writes predictions once; every metric,
curve and gallery is computed from that file). The refusal threshold of each system
is chosen on *its own validation predictions* (`--val-preds`) and applied unchanged, as
evaluation.py does; without them the table gives the best coverage any threshold could reach on
these very photos, and says so ("best achievable (no val threshold)"): an optimistic number.

Speed comes from a sidecar `meta.json` beside a predictions file (key `images_per_second`,
written by `transcribe baseline`), shown when present.

Writes OUT/compare.json, OUT/compare.md, OUT/accuracy_coverage.png and OUT/disagreements.html
(self-contained: base64 thumbnails; every string html-escaped).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from transcribe import metrics
from transcribe.config import TARGET

GALLERY_N = 100  # disagreements shown, most confident wrong reading first
NO_VAL = "best achievable (no val threshold)"
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass
class System:
    name: str
    path: Path  # predictions.jsonl
    rows: list[dict]
    val_rows: list[dict] | None
    meta: dict[str, Any]


def predictions_path(arg: str | Path) -> Path:
    """A predictions.jsonl file, or a folder holding one."""
    p = Path(arg)
    return p / "predictions.jsonl" if p.is_dir() else p


def read_meta(pred_path: Path) -> dict[str, Any]:
    meta = pred_path.parent / "meta.json"
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: not JSON ({e.msg})") from None


def load_systems(preds: Sequence[str], names: Sequence[str] | None = None,
                 val_preds: Sequence[str] | None = None) -> list[System]:
    from transcribe.predictions import read_predictions
    if names and len(names) != len(preds):
        raise ValueError(f"--names gives {len(names)} names for {len(preds)} predictions files")
    if val_preds and len(val_preds) != len(preds):
        raise ValueError(f"--val-preds gives {len(val_preds)} files for {len(preds)} predictions files "
                         "(use '-' for a system without validation predictions)")
    systems = []
    for i, arg in enumerate(preds):
        path = predictions_path(arg)
        meta = read_meta(path)
        val = val_preds[i] if val_preds else "-"
        name = names[i] if names else (meta.get("system") or path.parent.name or path.stem)
        systems.append(System(name, path, read_predictions(path),
                              None if val in ("-", "") else read_predictions(predictions_path(val)), meta))
    seen: dict[str, int] = {}
    for s in systems:  # distinct names: the table and the plot key on them
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name} ({seen[s.name]})"
    return systems


def summarize(system: System, target: float = TARGET) -> dict[str, Any]:
    """One row of the table: accuracies, coverage at `target` with the validation threshold, speed."""
    scored = metrics.labelled(system.rows)
    truth = [str(r["truth"]) for r in scored]
    pred = [str(r.get("pred", "")) for r in scored]
    conf, correct = metrics.confidences(scored), metrics.correctness(scored)
    if system.val_rows is not None:
        val = metrics.labelled(system.val_rows)
        threshold = metrics.threshold_for_accuracy(metrics.confidences(val), metrics.correctness(val), target)
        source = "validation"
    else:
        threshold = metrics.threshold_for_accuracy(conf, correct, target)
        source = NO_VAL
    coverage, accuracy = metrics.apply_threshold(conf, correct, threshold)
    return {"name": system.name, "predictions": str(system.path), "n": len(system.rows), "n_scored": len(scored),
            "sequence_accuracy": metrics.sequence_accuracy(truth, pred),
            "character_accuracy": metrics.character_accuracy(truth, pred),
            "auc": metrics.area_under_curve(conf, correct),
            "threshold": threshold, "threshold_source": source,
            "coverage_at_target": coverage, "accuracy_of_accepted": accuracy,
            "images_per_second": system.meta.get("images_per_second"),
            "speed_measured": system.meta.get("speed_measured")}


def _key(row: dict) -> str:
    return str(row.get("image") or row.get("file"))


def disagreements(systems: Sequence[System]) -> tuple[list[dict], dict[str, int]]:
    """Photos (matched by image path) read by every system where the readings differ.

    Each item: {"image", "truth", "box", "readings": [{"pred", "confidence", "right"} per system]},
    most confident wrong reading first. Also the counts: photos in common, disagreements."""
    maps = [{_key(r): r for r in s.rows} for s in systems]
    common = [k for k in maps[0] if all(k in m for m in maps[1:])]
    items = []
    for k in common:
        rows = [m[k] for m in maps]
        if len({str(r.get("pred", "")) for r in rows}) < 2:
            continue
        truth = next((r.get("truth") for r in rows if r.get("truth") is not None), None)
        readings = [{"pred": str(r.get("pred", "")), "confidence": r.get("confidence"), "box": r.get("box"),
                     "right": truth is not None and str(r.get("pred", "")) == str(truth)} for r in rows]
        wrong = [x["confidence"] for x in readings if not x["right"] and x["confidence"] is not None]
        items.append({"image": rows[0].get("image"), "file": rows[0].get("file"), "truth": truth,
                      "readings": readings, "_order": -max(wrong) if wrong else math.inf})
    items.sort(key=lambda x: x["_order"])
    for x in items:
        del x["_order"]
    return items, {"photos_in_common": len(common), "disagreements": len(items)}


def pairwise(systems: Sequence[System]) -> list[list[int | None]]:
    """right_only[i][j] = photos in common that system i reads right and system j reads wrong."""
    maps = [{_key(r): r for r in s.rows if r.get("truth") is not None} for s in systems]
    common = [k for k in maps[0] if all(k in m for m in maps[1:])]
    right = [[str(m[k].get("pred", "")) == str(m[k]["truth"]) for k in common] for m in maps]
    return [[None if i == j else sum(a and not b for a, b in zip(right[i], right[j])) for j in range(len(maps))]
            for i in range(len(maps))]


# ---------------------------------------------------------------- outputs

def to_markdown(table: list[dict], counts: dict[str, int], right_only: list[list[int | None]],
                target: float) -> str:
    lines = ["# Comparison", "",
             f"| system | photos | sequence accuracy | character accuracy | coverage at {target:.0%} | "
             "threshold from | accuracy of accepted | images/s |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for t in table:
        ips = "–" if t["images_per_second"] is None else f"{t['images_per_second']:g}"
        lines.append(f"| {t['name']} | {t['n_scored']} | {metrics.pct(t['sequence_accuracy'])} | "
                     f"{metrics.pct(t['character_accuracy'])} | {metrics.pct(t['coverage_at_target'])} | {t['threshold_source']} | "
                     f"{metrics.pct(t['accuracy_of_accepted'])} | {ips} |")
    lines += ["", f"{counts['photos_in_common']} photos read by every system; the readings differ on "
                  f"{counts['disagreements']} (disagreements.html)."]
    if len(table) > 1:
        lines += ["", "Photos in common read right by the row's system and wrong by the column's:", "",
                  "| right \\ wrong | " + " | ".join(t["name"] for t in table) + " |",
                  "| --- |" + " ---: |" * len(table)]
        for t, counts_row in zip(table, right_only):
            lines.append(f"| {t['name']} | " + " | ".join("–" if c is None else str(c) for c in counts_row) + " |")
    speeds = {t["speed_measured"] for t in table if t["speed_measured"]}
    if speeds:
        lines += ["", "images/s: " + "; ".join(sorted(speeds)) + "."]
    return "\n".join(lines) + "\n"


def plot(systems: Sequence[System], table: list[dict], path: Path, target: float) -> Path:
    from transcribe.runs import save_figure
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    low = target
    for i, (s, t) in enumerate(zip(systems, table)):
        scored = metrics.labelled(s.rows)
        curve = metrics.accuracy_coverage_curve(metrics.confidences(scored), metrics.correctness(scored))
        color = COLORS[i % len(COLORS)]
        ax.plot(curve["coverage"], curve["accuracy"], color=color, lw=1.8,
                label=f"{s.name}: {metrics.pct(t['sequence_accuracy'])} all, {metrics.pct(t['coverage_at_target'])} at target")
        if t["accuracy_of_accepted"] is not None:
            ax.plot([t["coverage_at_target"]], [t["accuracy_of_accepted"]], "o" if s.val_rows else "s",
                    color=color, ms=6, mfc=color if s.val_rows else "none")
        if curve["accuracy"]:
            low = min(low, min(curve["accuracy"][len(curve["accuracy"]) // 20:] or curve["accuracy"]))
    ax.axhline(target, color="0.4", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xlabel("coverage (fraction of photos transcribed)")
    ax.set_ylabel("accuracy of the transcribed photos")
    ax.set_xlim(0, 1)
    ax.set_ylim(max(0.0, low - 0.02), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("accuracy vs coverage (filled dot: threshold from validation; open square: best achievable)",
                 fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _thumbnail(item: dict, boxes: Sequence[tuple[str, Any]]) -> str | None:
    """The photo with every system's crop box drawn in its colour, as a data URI; None if unreadable."""
    from transcribe import report
    photo = report.Photos().get(str(item.get("image") or ""))
    return None if photo is None else report.data_uri(report.draw_boxes(photo, boxes), "JPEG")


def gallery_html(systems: Sequence[System], items: list[dict], counts: dict[str, int], n: int = GALLERY_N) -> str:
    esc = html.escape
    names = [s.name for s in systems]
    legend = " ".join(f'<span style="color:{COLORS[i % len(COLORS)]}">■ {esc(name)}</span>'
                      for i, name in enumerate(names))
    cards = []
    for item in items[:n]:
        boxes = [(COLORS[i % len(COLORS)], r["box"]) for i, r in enumerate(item["readings"])]
        uri = _thumbnail(item, boxes)
        pic = (f'<img src="{uri}" alt="{esc(str(item["file"]))}" title="{esc(str(item["image"]))}">' if uri else
               f'<div class="missing">photo not available<br><small>{esc(str(item["image"]))}</small></div>')
        lines = []
        for i, (name, r) in enumerate(zip(names, item["readings"])):
            conf = r["confidence"]
            p = "–" if conf is None else f"{100 * math.exp(min(float(conf), 0.0)):.1f}%"
            cls = "right" if r["right"] else "wrong"
            lines.append(f'<tr class="{cls}"><td style="color:{COLORS[i % len(COLORS)]}">{esc(name)}</td>'
                         f'<td><b>{esc(r["pred"]) or "(nothing)"}</b></td><td>{esc(p)}</td></tr>')
        truth = "?" if item["truth"] is None else str(item["truth"])
        cards.append(f'<div class="card">{pic}<div>truth <b>{esc(truth)}</b> · {esc(str(item["file"]))}</div>'
                     f'<table>{"".join(lines)}</table></div>')
    css = ("body{font:14px system-ui,sans-serif;margin:20px;background:#f4f5f7}"
           ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}"
           ".card{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 3px rgba(0,0,0,.12)}"
           ".card img{height:120px;max-width:320px;object-fit:contain;background:#222}"
           ".missing{height:120px;background:#eee;color:#777}td{padding:1px 8px}"
           "tr.right b{color:#1b7f45}tr.wrong b{color:#c62828}")
    shown = min(n, len(items))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>disagreements</title>"
            f"<style>{css}</style></head><body><h1>Where the systems disagree</h1>"
            f"<p>{counts['photos_in_common']} photos read by every system (matched by image path); readings differ "
            f"on {counts['disagreements']}; {shown} shown, most confident wrong reading first. Boxes: {legend}</p>"
            f'<div class="grid">{"".join(cards)}</div></body></html>\n')


def compare(systems: Sequence[System], out: Path, target: float = TARGET, n: int = GALLERY_N,
            plots: bool = True) -> dict[str, Any]:
    from transcribe.runs import atomic_write, save_json
    out.mkdir(parents=True, exist_ok=True)
    table = [summarize(s, target) for s in systems]
    items, counts = disagreements(systems)
    right_only = pairwise(systems)
    result = {"target": target, "systems": table, **counts, "right_only": right_only,
              "right_only_meaning": "right_only[i][j] = photos in common system i reads right and system j wrong"}
    save_json(result, out / "compare.json")
    atomic_write(out / "compare.md", to_markdown(table, counts, right_only, target))
    atomic_write(out / "disagreements.html", gallery_html(systems, items, counts, n))
    if plots:
        plot(systems, table, out / "accuracy_coverage.png", target)
    return result


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", nargs="+", help="predictions.jsonl files (or folders holding one), one per system")
    parser.add_argument("--names", nargs="+", default=None,
                        help="one name per system (default: meta.json's system, else the folder name)")
    parser.add_argument("--val-preds", nargs="+", default=None,
                        help="each system's validation predictions, in the same order ('-' for none): "
                             "the refusal threshold is chosen there")
    parser.add_argument("--target", type=float, default=TARGET,
                        help=f"accuracy the threshold must reach (default: {TARGET})")
    parser.add_argument("--cards", type=int, default=GALLERY_N, help=f"disagreements shown (default: {GALLERY_N})")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)")


def run_compare(args: argparse.Namespace) -> int:
    try:
        systems = load_systems(args.predictions, args.names, args.val_preds)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    sets = {frozenset(_key(r) for r in s.rows) for s in systems}
    if len(sets) > 1:
        print("warning: the systems were run on different photos; accuracies are each on its own photos, "
              "the gallery and the pairwise counts on the photos in common", file=sys.stderr)
    result = compare(systems, args.out, args.target, args.cards)
    print(to_markdown(result["systems"], {k: result[k] for k in ("photos_in_common", "disagreements")},
                      result["right_only"], args.target))
    print(f"wrote {args.out}/compare.json, compare.md, accuracy_coverage.png, disagreements.html", file=sys.stderr)
    return 0
