"""scripts/rehearsal.py at a tiny scale: every step runs, the report has its figures (not their values)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_rehearsal_at_a_tiny_scale_writes_its_report(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(REPO / "scripts/rehearsal.py"), "--scale", "0.0006",
                           "--root", str(tmp_path / "data"), "--out", str(out), "--train-seconds", "2",
                           "--steps", "4", "--preset", "tiny", "--batch-size", "8", "--eval-limit", "16",
                           "--threads", "1", "--delete-photos", "--no-full-digitstruct"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["photos"] == {"train": 20, "extra": 121}
    for split, n in report["photos"].items():
        row = report["splits"][split]
        assert row["digitstruct"]["records"] == n
        assert row["cache"]["bytes"] > n * 64 * 64 * 3 // 10  # compressed or not, the crops are in it
        assert row["cache"]["peak_rss_process_mb"] > 0
    assert report["train"]["train_img_s"] > 0
    assert report["train"]["precision"] != "as configured"   # read from training's "device" line
    assert report["projection"]["this_machine_seconds"] > 0
    assert report["projection"]["gpu"].startswith("not measured")
    assert not list((tmp_path / "data" / "train").glob("*.png"))  # --delete-photos
    assert "| training img/s |" in (out / "report.md").read_text()
    assert "\r" not in proc.stdout  # the steps' progress is plain lines in a pipe
