"""`issuer-seq report` on a tiny run: a self-contained HTML page, report.json, PNG figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from issuer_seq.report.report import latency_chart, model_table, pareto, serving_notes


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.0, 0.40), (2.0, 0.35), (3.0, 0.36), (0.5, 0.50), (2.5, 0.35)]
    assert pareto(points) == [3, 0, 1]


def _arm(model: str, p99: float) -> dict[str, object]:
    return {
        "model": model,
        "single_request": {"p50_ms": p99 / 2, "p99_ms": p99},
        "batch_scores_per_s": {"64": 1000.0},
    }


def test_lightgbm_latency_joins_its_accuracy_row(tmp_path: Path) -> None:
    metrics = {"auroc": 0.7, "ap_decline": 0.4, "logloss": 0.33, "brier": 0.1, "ece": 0.01}
    evaluation = {"approval": {"transformer": metrics, "lightgbm": metrics | {"logloss": 0.32}}}
    bench = {
        "scorers": {
            "arms": {"onnx_fp32": _arm("transformer", 1.0), "lightgbm": _arm("lightgbm", 0.2)},
            "vs_lightgbm": {"transformer_p99_over_lightgbm_p99": {"onnx_fp32": 5.0}},
        },
        "targets": {
            "scorer_p99_vs_lightgbm": {
                "measured": 5.0,
                "at_most": 1.0,
                "met": False,
                "ceiling": 1.5,
                "within_ceiling": False,
            }
        },
    }
    rows = {r["model"]: r for r in model_table(evaluation, bench)}
    assert set(rows) == {"transformer (onnx_fp32)", "lightgbm"}  # not "transformer (lightgbm)"
    assert rows["lightgbm"]["p99_ms"] == 0.2 and rows["lightgbm"]["logloss"] == 0.32
    assert latency_chart(list(rows.values()), tmp_path / "chart.png") is not None
    assert "at most 1x is not met (above the ceiling of 1.5x)" in serving_notes(bench)[0]


def test_the_http_overhead_is_told_against_its_target() -> None:
    overhead = {
        "http": {"p50_ms": 1.9, "p99_ms": 3.4},
        "in_process": {"p50_ms": 0.8, "p99_ms": 1.5},
        "p50_over_in_process_ms": 1.1,
        "p99_over_in_process_ms": 1.9,
    }
    target = {"measured": 1.9, "at_most": 1.0, "met": False}
    bench = {"http": {"overhead": overhead}, "targets": {"http_p99_over_inprocess_ms": target}}
    (note,) = serving_notes(bench)
    assert "HTTP p50 1.90 ms and p99 3.40 ms against 0.80 ms and 1.50 ms in process" in note
    assert "adds 1.90 ms at p99; the design target of at most 1 ms is not met" in note


def test_size_variants_get_their_own_row_and_point(tmp_path: Path) -> None:
    metrics = {"auroc": 0.7, "ap_decline": 0.4, "logloss": 0.33, "brier": 0.1, "ece": 0.01}
    evaluation = {
        "approval": {
            "transformer": metrics | {"params": 218_000},
            "transformer_tiny": metrics | {"logloss": 0.34, "params": 43_000},
            "lightgbm": metrics | {"logloss": 0.32},
        }
    }
    arms = {
        "onnx_fp32": _arm("transformer", 1.0),
        "transformer_tiny": _arm("transformer_tiny", 0.8),
        "lightgbm": _arm("lightgbm", 0.2),
    }
    rows = {r["model"]: r for r in model_table(evaluation, {"scorers": {"arms": arms}})}
    assert set(rows) == {"transformer (onnx_fp32)", "transformer_tiny", "lightgbm"}
    tiny = rows["transformer_tiny"]
    assert tiny["p99_ms"] == 0.8 and tiny["logloss"] == 0.34 and tiny["params"] == 43_000
    assert rows["transformer (onnx_fp32)"]["params"] == 218_000
    assert latency_chart(list(rows.values()), tmp_path / "chart.png") is not None


def test_report_runs_what_is_missing_and_writes_everything(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, run, bundle = tiny_bundle
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "issuer_seq.cli",
            "report",
            f"run_dir={run}",
            f"out_dir={tmp_path}",
            f"artifact_dir={bundle}",
            f"data_dir={data}",
            "requests=200",
            "warmup=20",
            "batch_sizes=[1,64]",
            "throughput_seconds=0.2",
            "pipeline.train_steps=2",
            "lightgbm.threads=1",
            "http.rate_per_s=20",
            "http.seconds=1",
            "http.warmup=2",
            # the run stands in for a size variant of itself: evaluated and benchmarked beside
            f"evaluate_overrides=['baselines.models=[]','variants.tiny={run}']",
            f"variants.tiny={bundle}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name in (
        "report.html",
        "report.json",
        "bench.json",
        "latency_vs_accuracy.png",
        "calibration.png",
        "precision_recall.png",
        "retry_policies.png",
        "routing_ope.png",  # the tiny world is routed
    ):
        assert (tmp_path / name).exists(), name
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    summary = json.loads((tmp_path / "report.json").read_text())
    # every figure drawn is embedded: the four above, the routing estimates, and the episode
    # reactions where the oracle reacted to an episode of this short log
    drawn = [name for name, png in summary["figures"].items() if png is not None]
    assert len(drawn) >= 5 and page.count("data:image/png;base64,") == len(drawn)
    assert "<h2>Routing</h2>" in page and {r["policy"] for r in summary["routing_policies"]} >= {
        "static",
        "success_rate",
        "oracle",
    }
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing loaded from elsewhere
    models = {row["model"]: row for row in summary["models"]}
    assert {
        "transformer (onnx_fp32)",
        "transformer (pytorch_eager)",
        "base_rate",
        "oracle",
        "lightgbm",  # benchmarked, though not evaluated here: its latency, no accuracy
    } <= set(models)
    assert models["lightgbm"]["p99_ms"] > 0 and models["lightgbm"]["logloss"] is None
    # the variant's row: its latency from the bench, its accuracy from the evaluation
    evaluation = json.loads((run / "evaluation.json").read_text())["approval"]
    assert models["transformer_tiny"]["p99_ms"] > 0
    assert models["transformer_tiny"]["logloss"] == pytest.approx(
        evaluation["transformer_tiny"]["logloss"]
    )
    # recalibrated to recent outcomes: the transformer's row, as evaluate reported it
    (recal,) = summary["recalibration"]  # baselines.models=[]: the transformer alone
    reported = json.loads((run / "evaluation.json").read_text())["recalibration"]["transformer"]
    assert recal["model"] == "transformer" and recal["ece"] == reported["ece"]
    assert recal["logloss_fixed"] == pytest.approx(evaluation["transformer"]["logloss"], abs=2e-5)
    assert "<h3>Recalibrated to recent outcomes</h3>" in page
    assert any("LightGBM scorer's p99" in n for n in summary["serving"])
    assert any("Over HTTP on loopback" in n for n in summary["serving"])
    assert any("One request at a time over keep-alive" in n for n in summary["serving"])
    assert {p["policy"] for p in summary["retry_policies"]} >= {
        "transformer",
        "oracle",
        "code_rules",
    }
