"""Screenshots of the operator and status pages for the README, from headless Chromium.

    python scripts/serve_screenshot.py --run runs/demo --split data/synth/test --out docs/figures

Starts `transcribe serve` on RUN with a temp database, posts a few photos with their boxes,
signs in as an operator and saves OUT/serve-review.png and OUT/serve-status.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from transcribe import crops, svhn

TOKEN = "screenshot"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument("--split", type=Path, default=Path("data/synth/test"), help="format-1 folder of photos to post")
    parser.add_argument("--limit", type=int, default=12, help="post the first N photos (default: 12)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"), help="folder for the PNGs")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary")
    args = parser.parse_args()
    import httpx
    from playwright.sync_api import sync_playwright
    from bench_serve import start_server  # scripts/ is on sys.path when this script runs
    db = Path(tempfile.mkdtemp(prefix="serve-shot-")) / "reviews.sqlite"
    proc, url, headers = start_server(args.run, db, TOKEN, "--threshold", "0")
    try:
        for r in svhn.read_split(args.split).records[:args.limit]:
            box = ",".join(f"{v:g}" for v in crops.number_box(r.boxes))
            httpx.post(url + "/v1/transcriptions", headers=headers, data={"box": box},
                       files={"photo": (r.file, (args.split / r.file).read_bytes(), "image/png")}, timeout=60)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 900, "height": 620})
            page.goto(url + "/login")
            page.fill("input[name=operator]", "ann")
            page.fill("input[name=token]", TOKEN)
            page.press("input[name=token]", "Enter")
            page.wait_for_selector("#text")
            page.keyboard.type("1")
            page.keyboard.press("Enter")        # one review, so the status page has something to show
            page.wait_for_selector("#text")
            page.screenshot(path=str(args.out / "serve-review.png"))
            page.goto(url + "/status")
            page.screenshot(path=str(args.out / "serve-status.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"wrote {args.out / 'serve-review.png'} and {args.out / 'serve-status.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
