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


# ---------------------------------------------------------------- the decision on the page

def decision_rows(n: int = 130) -> list[dict]:
    """n rows without photos, confidence falling with i: i % 5 == 0 a wrong digit, 1 a missing digit,
    2 an extra digit, else right; true lengths 2..5 in turn."""
    rows = []
    for i in range(n):
        truth = "123456"[:2 + i % 4]
        pred = {0: "9" + truth[1:], 1: truth[:-1], 2: truth + "7"}.get(i % 5, truth)
        rows.append({"file": f"{i}.png", "image": None, "box": None, "truth": truth, "pred": pred,
                     "confidence": -0.01 * i, "adhoc_confidence": -0.3, "length_probs": None, "digit_probs": None})
    return rows


THRESHOLD = {"value": -0.5, "target": 0.98, "source": "chosen on validation"}  # accepts i <= 50


def test_cards_carry_the_decision_and_the_kind_of_error():
    assert [report.error_kind(t, p) for t, p in [("12", "12"), ("12", "13"), ("123", "12"), ("12", "123"),
                                                 (None, "5")]] == \
        ["right", "wrong-digit", "missing-digit", "extra-digit", "unlabelled"]
    assert report.accepted({"confidence": -0.1, "pred": "12"}, -0.5)
    assert not report.accepted({"confidence": -0.6, "pred": "12"}, -0.5)
    assert not report.accepted({"confidence": -0.1, "pred": "12"}, None)     # no threshold: refer all
    assert not report.accepted({"confidence": 0.0, "pred": ">5"}, -0.5)     # more than 5 digits: refer
    page, sections, _ = report.gallery_html(decision_rows(), threshold=THRESHOLD)
    assert "Coverage at 98.00% accuracy" in page and "log P(S|X) = -0.5000" in page
    assert "chosen on validation" in page and "model&#39;s confidence" in page and "per-digit score" in page
    cards = re.findall(r'<div class="card (\w+) (\w+)" data-length="(\d)" data-kind="([\w-]+)"', page)
    assert len(cards) == sum(len(v) for v in sections.values())
    mistakes = cards[:len(sections["mistakes"])]
    assert [d for _, d, _, _ in mistakes] == ["accepted"] * 31 + ["referred"] * 47
    # one line where the threshold falls in each sorted section (the sample is all 130 rows here)
    assert page.count('class="threshold-line"') == 3


def test_gallery_of_a_run_uses_its_threshold(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "eval" / "test").mkdir(parents=True)
    (run / "threshold.json").write_text('{"threshold": -0.25, "target": 0.98, "chosen_on": "val"}')
    path = write_predictions(decision_rows(20), run / "eval" / "test" / "predictions.jsonl")
    assert main(["gallery", str(path)]) == 0
    page = (run / "eval" / "test" / "gallery.html").read_text()
    assert "log P(S|X) = -0.2500" in page and "the run&#39;s, chosen on val" in page
    # elsewhere: the threshold reaching 98% on the photos themselves, and said so
    other = write_predictions(decision_rows(20), tmp_path / "p.jsonl")
    assert main(["gallery", str(other)]) == 0
    assert "chosen on these photos" in (tmp_path / "gallery.html").read_text()


def test_report_markdown_links_plots_and_gallery(tmp_path):
    md = report.markdown_links([tmp_path / "reliability.png"], tmp_path / "gallery.html", tmp_path / "mistakes.png")
    assert "](gallery.html)" in md and "](mistakes.png)" in md and "![reliability (photos per bin on the bars)](reliability.png)" in md


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
def test_gallery_threshold_filters_and_pages_in_a_browser(tmp_path):
    """Headless Chromium: the threshold line and marks, a filter hiding and showing cards, paging, the sticky bar."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    page_file = tmp_path / "gallery.html"
    page_file.write_text(report.gallery_html(decision_rows(), threshold=THRESHOLD, page_size=50)[0])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(page_file.as_uri())
            shown = lambda section: page.locator(f"#{section} .card:visible")  # noqa: E731
            # page 1 of the 78 mistakes: 50 cards, the line after the 31 accepted ones
            assert shown("mistakes").count() == 50
            assert page.inner_text("#mistakes .where") == "cards 1–50 of 78 (page 1 of 2)"
            marks = page.eval_on_selector_all("#mistakes .grid > :not([hidden])",
                                              "els => els.map(e => e.classList.contains('threshold-line') ? '|' "
                                              ": e.dataset.decision[0])")
            assert "".join(marks) == "a" * 31 + "|" + "r" * 19
            assert page.inner_text("#mistakes .card:visible >> nth=0 >> .mark") == "accepted"
            assert page.inner_text("#mistakes .card:visible >> nth=31 >> .mark") == "referred to a person"
            assert "above: accepted, below: referred" in page.inner_text("#mistakes .threshold-line")
            # paging: the next 28, then no further
            page.click("#mistakes .next")
            assert shown("mistakes").count() == 28 and page.is_disabled("#mistakes .next")
            first_on_2 = page.inner_text("#mistakes .card:visible >> nth=0 >> .file")
            assert first_on_2 == sorted((r for r in decision_rows() if r["pred"] != r["truth"]),
                                        key=lambda r: -r["confidence"])[50]["file"]
            # a filter hides cards, and showing all again brings them back
            page.select_option("#filter-kind", "extra-digit")
            kinds = page.eval_on_selector_all("#mistakes .card:not([hidden])", "els => els.map(e => e.dataset.kind)")
            assert kinds == ["extra-digit"] * 26                    # back to page 1; 26 fit on it
            page.select_option("#filter-length", "3")
            lengths = page.eval_on_selector_all("#sample .card:not([hidden])", "els => els.map(e => e.dataset.length)")
            assert lengths and set(lengths) == {"3"}
            assert all(k == "extra-digit" for k in page.eval_on_selector_all(
                "#sample .card:not([hidden])", "els => els.map(e => e.dataset.kind)"))
            page.select_option("#filter-kind", "referred")
            page.select_option("#filter-length", "")
            decisions = page.eval_on_selector_all("#sample .card:not([hidden])", "els => els.map(e => e.dataset.decision)")
            assert decisions == ["referred"] * 50 and page.locator("#sample .threshold-line").count() == 0
            page.select_option("#filter-kind", "")
            assert shown("mistakes").count() == 50 and page.locator("#mistakes .card").count() == 78
            # the bar stays in view at the bottom of the page
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            assert page.eval_on_selector("#bar", "e => getComputedStyle(e).position") == "sticky"
            assert abs(page.eval_on_selector("#bar", "e => e.getBoundingClientRect().top")) < 1
        finally:
            browser.close()
