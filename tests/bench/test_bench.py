"""The bench runs end to end (quick sizes) and writes its ratio tables."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.bench import run_bench
from harness.mining import online_miners


def test_quick_bench_writes_ratios(tmp_path: Path) -> None:
    result = run_bench(tmp_path, quick=True, device=torch.device("cpu"))
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md"]
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert stored["device"].startswith("CPU")
    (step,) = stored["steps"]
    assert step["raw_img_per_s"] > 0 and step["harness_img_per_s"] > 0 and step["pml_img_per_s"] > 0
    assert abs(step["ratio"] - step["harness_img_per_s"] / step["raw_img_per_s"]) < 1e-9
    assert 0 < stored["trial"]["loader_stall_fraction"] < 1 and 0 < stored["trial"]["eval_fraction"] < 1
    assert sorted(m["miner"] for m in stored["miners"]) == sorted(online_miners())
    for m in stored["miners"]:
        assert abs(m["speedup"] - m["pml_ms"] / m["ours_ms"]) < 1e-9
    table = next(tmp_path.glob("*.md")).read_text()
    n_rows = len(result["steps"]) + len(result["miners"]) + len(result["partial"]["rows"])
    assert table.count("\n| ") == n_rows + 6  # + 2 header rows each
    assert "loader stall" in table
    for row in stored["partial"]["rows"]:  # the cached top against the peer that recomputes the bottom
        assert abs(row["vs_peer"] - row["eager_img_per_s"] / row["peer_img_per_s"]) < 1e-9


def test_partial_bench_times_a_trial_per_cut() -> None:
    import torch

    from harness.bench import partial_bench

    r = partial_bench(
        torch.device("cpu"), backbone="test_efficientnet", px=64, n=64, peer_images=64, compiled=False
    )
    assert [row["cut"] for row in r["rows"]] == [0, 1, 2]
    assert all(row["eager_img_per_s"] > 0 and row["peer_img_per_s"] > 0 for row in r["rows"])
