"""`issuer-seq bench` on a tiny bundle: every arm measured on the same requests, HTTP too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from issuer_seq.baselines.saved_lightgbm import load_or_fit_lightgbm
from issuer_seq.schema import load_log


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
            "lightgbm.threads=1",
            "http.rate_per_s=40",
            "http.seconds=1.5",
            "http.warmup=5",
            f"variants={{tiny:'{bundle}'}}",  # the same bundle, standing in for a size variant
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    arms = bench["scorers"]["arms"]
    assert {"onnx_fp32", "pytorch_eager", "lightgbm", "transformer_tiny"} <= set(arms)
    assert arms["transformer_tiny"]["model"] == "transformer_tiny"  # evaluation.json's row
    for arm in arms.values():
        s = arm["single_request"]
        # 250 after the warm-up, less the first 5 of each block of 100 (3 blocks)
        assert s["n"] == 235 and 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
        assert set(arm["batch_scores_per_s"]) == {"1", "32"}
        assert all(v > 0 for v in arm["batch_scores_per_s"].values())
    assert arms["onnx_fp32"]["p99_vs_onnx_fp32"] == 1.0
    assert arms["lightgbm"]["model"] == "lightgbm" and arms["onnx_fp32"]["model"] == "transformer"
    # the LightGBM baseline: fitted once, saved, and the target's ratio measured
    assert bench["lightgbm"]["trees"] > 0 and (tmp_path / "lightgbm" / "model.txt").exists()
    vs = bench["scorers"]["vs_lightgbm"]
    p99 = (
        arms["onnx_fp32"]["single_request"]["p99_ms"] / arms["lightgbm"]["single_request"]["p99_ms"]
    )
    assert vs["transformer_p99_over_lightgbm_p99"]["onnx_fp32"] == round(p99, 3)
    assert set(vs["transformer_p99_over_lightgbm_p99"]) >= {"onnx_fp32", "transformer_tiny"}
    assert vs["target"] == 2.0 and vs["target_met"] == (vs["best"] <= 2.0)
    assert bench["targets"]["transformer_p99_at_most_2x_lightgbm"] == vs["target_met"]
    # where the time goes, per stage
    stages = bench["scorers"]["stages"]
    assert set(stages["onnx_fp32"]) == {"history_lookup", "features", "onnx_run", "decision"}
    assert abs(sum(v["share_of_mean"] for v in stages["lightgbm"].values()) - 1) < 0.01
    assert bench["scorers"]["profile_onnx_fp32"]
    # HTTP on loopback: a healthy server answers every request
    http = bench["http"]
    assert http["rate_per_s"] == 40 and http["sent"] == 60 and http["errors"] == 0
    assert http["error_rate"] == 0 and http["warm_state_events"] > 0
    assert 0 < http["p50_ms"] <= http["p95_ms"] <= http["p99_ms"]
    # the client's heap was frozen for the run; its collections are reported
    client_gc = http["client_gc"]
    assert client_gc["heap_objects_frozen"] > 1000 and client_gc["collections"] >= 0
    assert 0 <= client_gc["pause_ms_max"] <= client_gc["pause_ms_total"] + 1e-9
    seq = bench["pipeline"]["sequences"]
    assert seq["identical"] is True and seq["speedup"] > 0
    assert bench["pipeline"]["training_input"]["ratio"] > 0
    assert bench["machine"]["threads"] == 1
    assert "p50 ms" in out.stdout and "transformer p99 / LightGBM p99" in out.stdout


def test_bench_fits_the_lightgbm_model_once_then_reuses_it(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, run, _ = tiny_bundle
    frame = load_log(data).frame
    model, info = load_or_fit_lightgbm(frame, run, tmp_path, threads=1)
    assert info["source"].startswith("fitted") and info["train_rows"] > 0 and info["trees"] > 0
    again, reused = load_or_fit_lightgbm(frame, run, tmp_path, threads=1)
    assert reused["reused"] is True and reused["trees"] == info["trees"]
    assert again.columns == model.columns
