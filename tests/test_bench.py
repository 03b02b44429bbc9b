"""`transcribe bench` runs end to end on a tiny preset and reports rates and ratios.

Speed itself is never asserted (that belongs to `make bench`); this checks the report's shape.
"""

import json

from transcribe import cli


def test_bench_reports_rates_and_ratios_for_a_tiny_preset(tmp_path):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--presets", "tiny", "--batch-sizes", "8", "--seconds", "0.05",
                     "--warmup", "1", "--threads", "1", "--folder", str(tmp_path / "none"),
                     "--workers", "0", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["preset"] == "tiny" and row["batch"] == 8
    for key in ("train_img_s", "infer_img_s", "ours_e2e_img_s", "obvious_e2e_img_s", "train_flop_s"):
        assert row[key] > 0, key
    assert row["ours_over_obvious"] == row["ours_e2e_img_s"] / row["obvious_e2e_img_s"]
    assert result["data"]["ours_img_s"] > 0 and result["data"]["obvious_img_s"] > 0
    assert "| tiny |" in result["markdown"]
