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
    f32, bf16 = result["rows"]  # float32 and bf16 side by side, each against its own peak
    assert (f32["precision"], bf16["precision"]) == ("float32", "bf16")
    for row in (f32, bf16):
        assert row["preset"] == "tiny" and row["batch"] == 8
        for key in ("train_img_s", "infer_img_s", "train_flop_s"):
            assert row[key] > 0, key
    assert f32["train_flops_per_image"] == bf16["train_flops_per_image"]
    (e2e,) = [r for r in (f32, bf16) if "ours_e2e_img_s" in r]  # on the faster precision only
    assert e2e["train_img_s"] == max(f32["train_img_s"], bf16["train_img_s"])
    assert e2e["ours_over_obvious"] == e2e["ours_e2e_img_s"] / e2e["obvious_e2e_img_s"]
    for precision in ("float32", "bf16"):
        peak = result["peak"][precision]
        assert peak["flop_s"] > 0 and peak["by"].startswith(("matmul", "conv3x3")), peak
    assert result["data"]["ours_img_s"] > 0 and result["data"]["obvious_img_s"] > 0
    assert "| tiny |" in result["markdown"] and "| bf16 |" in result["markdown"]


def test_peak_counts_two_flops_per_multiply_add_like_the_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with FlopCounterMode(display=False) as fc:
        a @ b
    assert fc.get_total_flops() == 2 * 8 * 16 * 4  # the reference's 2 N^3 for an N x N matmul
    x, w = torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.conv2d(x, w, padding=1)
    assert fc.get_total_flops() == 2 * 1 * 2 * 5 * 5 * 3 * 9  # the conv reference's count


def test_bench_data_only_puts_the_two_data_paths_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--data-only", "--batch-sizes", "8", "--seconds", "0.05", "--warmup", "1",
                     "--threads", "1", "--folder", str(tmp_path / "none"), "--workers", "0", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["rows"] == [] and result["peak"] == {}  # no network, no peak
    assert result["data"]["ours_img_s"] > 0 and result["data"]["obvious_img_s"] > 0
    assert "| ratio |" in result["markdown"] and "| preset |" not in result["markdown"]
    assert len(result["load"]) == 2
