"""`issuer-seq bench` on a tiny bundle: every arm measured on the same requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_writes_latency_throughput_and_pipeline_ratios(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, run, bundle = tiny_bundle
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "issuer_seq.cli",
            "bench",
            f"artifact_dir={bundle}",
            f"run_dir={run}",
            f"out_dir={tmp_path}",
            "requests=300",
            "warmup=50",
            "batch_sizes=[1,32]",
            "throughput_seconds=0.2",
            "pipeline.train_steps=3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    arms = bench["scorers"]["arms"]
    assert {"onnx_fp32", "pytorch_eager"} <= set(arms)
    for arm in arms.values():
        s = arm["single_request"]
        assert s["n"] == 250 and 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
        assert set(arm["batch_scores_per_s"]) == {"1", "32"}
    assert arms["onnx_fp32"]["p99_vs_onnx_fp32"] == 1.0
    seq = bench["pipeline"]["sequences"]
    assert seq["identical"] is True and seq["speedup"] > 0
    assert bench["pipeline"]["training_input"]["ratio"] > 0
    assert bench["machine"]["threads"] == 1
    assert "p50 ms" in out.stdout
