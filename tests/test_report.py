"""report.py: plots, the self-contained gallery (escaped, images embedded) and its browser check."""

import html
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from transcribe import crops, metrics, report, svhn
from transcribe.cli import main
from transcribe.predictions import write_predictions

HOSTILE = "<img src=x onerror=alert(1)>.png"


def fixture_rows(folder: Path, tmp_path: Path) -> list[dict]:
    """Predictions for the 9 real fixture photos: some right, some wrong, one hostile name, one missing photo."""
    rows = []
    for split in ("train", "test", "extra"):
        for rec in svhn.read_split(folder / split).records[:3]:
            box = list(crops.widen(crops.number_box(rec.boxes), 1.3))
            rows.append({"image": str(folder / split / rec.file), "file": f"{split}/{rec.file}", "truth": rec.text,
                         "pred": rec.text, "confidence": -0.01 * (len(rows) + 1), "adhoc_confidence": -0.5,
                         "length_probs": [0.0, 0.05, 0.9, 0.03, 0.01, 0.005, 0.005],
                         "digit_probs": [[0.1] * 10 for _ in range(5)], "box": box})
    rows[1]["pred"] = "7"                     # a confident mistake
    rows[4]["pred"] = rows[4]["truth"] + "1"  # a less confident one
    # A hostile file name (a copy of a real photo) and a hostile truth.
    hostile = tmp_path / HOSTILE
    shutil.copy(rows[0]["image"], hostile)
    rows.append({**rows[0], "image": str(hostile), "file": HOSTILE, "truth": "<script>alert(2)</script>",
                 "pred": "1\"><b>", "confidence": -0.001, "length_probs": None, "digit_probs": None})
    rows.append({**rows[2], "image": str(tmp_path / "gone.png"), "file": "gone.png", "pred": "0", "confidence": -3.0})
    return rows


def test_sections_order_most_confident_mistakes_first():
    rows = [{"file": f"{i}", "truth": "1", "pred": p, "confidence": c, "image": None, "box": None}
            for i, (p, c) in enumerate([("1", -0.1), ("2", -0.2), ("3", -0.05), ("1", -2.0), ("1", -1.0)])]
    rows.append({"file": "u", "truth": None, "pred": "9", "confidence": 0.0, "image": None, "box": None})
    sec = report.select_sections(rows, n=10, seed=0)
    assert [r["file"] for r in sec["mistakes"]] == ["2", "1"]          # -0.05 before -0.2; unlabelled excluded
    assert [r["file"] for r in sec["least_confident_right"]] == ["3", "4", "0"]
    assert sorted(r["file"] for r in sec["sample"]) == sorted(r["file"] for r in rows)
    assert len(report.select_sections(rows, n=2)["sample"]) == 2


def test_gallery_escapes_hostile_names_and_embeds_images(svhn_fixtures, tmp_path):
    rows = fixture_rows(svhn_fixtures, tmp_path)
    result = report.write_gallery(rows, tmp_path / "g", n=50)
    page = result["gallery"].read_text()
    # Nothing from the rows reaches the page unescaped.
    assert HOSTILE not in page and "<script>alert" not in page and '1"><b>' not in page
    assert html.escape(HOSTILE) in page and html.escape("<script>alert(2)</script>") in page
    # Every <img> is an embedded data URI (the page works when moved), none points at a file.
    srcs = re.findall(r'<img [^>]*?src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    # 11 rows: 10 photos readable (photo + crop each) -> 2 mistakes + 11 sampled + 8 right, minus the missing one.
    assert result["counts"] == {"mistakes": 4, "sample": 11, "least_confident_right": 7}
    assert list(result["unreadable_photos"]) == [str(tmp_path / "gone.png")]
    assert "photo not available" in page
    # Most confident mistake first: the hostile row (-0.001), then the -0.02 mistake.
    first = page.index('id="mistakes"')
    assert page.index(html.escape(HOSTILE), first) < page.index("train/2.png", first)
    # Per-position probabilities only where the row has them (OCR baselines write null).
    assert page.count('class="probs"') == sum(1 for s in ("mistakes", "sample", "least_confident_right")
                                              for r in report.select_sections(rows, 50)[s] if r["length_probs"])
    assert result["contact_sheet"].stat().st_size > 1000


def test_plots_and_pr_curve(tmp_path):
    rows = [{"file": str(i), "truth": "12", "pred": "12" if i % 4 else "13", "confidence": math.log(0.3 + 0.06 * i),
             "adhoc_confidence": math.log(0.9 - 0.05 * i), "box": None, "image": None} for i in range(12)]
    rep = metrics.report(rows, target=0.9)
    paths = report.write_plots(rows, rep, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["accuracy_coverage.png", "confidence_hist.png",
                                             "principled_vs_adhoc.png", "reliability.png"]
    assert all(p.stat().st_size > 5000 for p in paths)
    report.write_pr_curve(rows, tmp_path / "tb")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_gallery_command(svhn_fixtures, tmp_path, capsys):
    path = write_predictions(fixture_rows(svhn_fixtures, tmp_path), tmp_path / "predictions.jsonl")
    assert main(["gallery", str(path), "--out", str(tmp_path / "out"), "--cards", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 mistakes shown" in out and "1 photos could not be read" in out
    assert (tmp_path / "out" / "gallery.html").exists() and (tmp_path / "out" / "mistakes.png").exists()


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")


@pytest.mark.browser
def test_gallery_images_load_in_a_browser(svhn_fixtures, tmp_path):
    """Open the page from disk in headless Chromium; the page's own script counts loaded images."""
    browser = chromium()
    rows = fixture_rows(svhn_fixtures, tmp_path)
    page = report.write_gallery(rows, tmp_path / "moved", n=50)["gallery"]
    # Move it: a self-contained page does not care where it lives.
    moved = shutil.move(str(page), str(tmp_path / "elsewhere.html"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", Path(moved).as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    marker = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert marker, f"page script did not run; DOM starts: {dom[:300]!r}"
    loaded, total = map(int, marker.groups())
    # 20 cards with a readable photo x (photo + crop) = 40 images: none broken, and no injected <img>.
    assert total == loaded == 2 * (4 + 11 + 7 - 2)
