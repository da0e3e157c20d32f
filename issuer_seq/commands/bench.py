"""`issuer-seq bench`: latency, throughput and data-pipeline ratios -> <out_dir>/bench.json."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from issuer_seq.errors import IssuerSeqError
from issuer_seq.report.bench import bench_scorers, machine
from issuer_seq.report.http_bench import bench_http
from issuer_seq.report.lightgbm_model import bench_lightgbm_model
from issuer_seq.report.pipeline import bench_pipeline
from issuer_seq.report.sequences import bench_sequences
from issuer_seq.schema import load_log
from issuer_seq.serve.inputs import history_lengths

log = logging.getLogger(__name__)


def _data_dir(cfg: DictConfig, run_dir: Path) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    config = run_dir / "config.yaml"
    if not config.exists():
        raise IssuerSeqError(f"{run_dir}: no config.yaml; pass data_dir=")
    return Path(OmegaConf.load(config).data_dir)


def variant_bundles(cfg: DictConfig) -> dict[str, Path]:
    """The model-size variants' bundles named in the config that exist (name -> bundle)."""
    named = {str(k): Path(v) for k, v in (cfg.get("variants") or {}).items()}
    found = {name: path for name, path in named.items() if (path / "manifest.json").exists()}
    if found:
        log.info("size variants: %s", ", ".join(f"{k} ({v})" for k, v in found.items()))
    return found


def run(cfg: DictConfig) -> dict[str, Any]:
    from issuer_seq.train.trained_run import TrainedRun

    started = time.perf_counter()
    run_dir, bundle, out_dir = Path(cfg.run_dir), Path(cfg.artifact_dir), Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vlog = load_log(_data_dir(cfg, run_dir))
    records = vlog.frame.to_dict("records")
    lgb_cfg = cfg.lightgbm
    lightgbm = None
    lightgbm_info: dict[str, Any] = {"note": "not measured (lightgbm.enabled=false)"}
    if lgb_cfg.enabled:
        params = OmegaConf.to_container(lgb_cfg.params) if lgb_cfg.params else {}
        assert isinstance(params, dict)
        lightgbm, lightgbm_info = bench_lightgbm_model(
            vlog.frame,
            run_dir,
            out_dir,
            params={str(k): v for k, v in params.items()},
            max_train_rows=lgb_cfg.max_train_rows,
            threads=lgb_cfg.threads,
        )
    log.info("scorers: %d requests replayed through every arm", cfg.requests)
    scorers = bench_scorers(
        bundle,
        run_dir,
        records,
        n_requests=int(cfg.requests),
        warmup=int(cfg.warmup),
        batch_sizes=[int(b) for b in cfg.batch_sizes],
        throughput_seconds=float(cfg.throughput_seconds),
        lightgbm=lightgbm,
        target_ratio=float(lgb_cfg.target_ratio),
        variants=variant_bundles(cfg),
    )
    http: dict[str, Any] = {"note": "not measured (http.enabled=false)"}
    if cfg.http.enabled:
        log.info(
            "HTTP: issuer-seq serve on loopback, %s req/s for %s s",
            cfg.http.rate_per_s,
            cfg.http.seconds,
        )
        n = min(int(cfg.requests), len(records))
        manifest = json.loads((bundle / "manifest.json").read_text())
        http = bench_http(
            bundle,
            records[-n:],
            records[: len(records) - n],
            history_lengths(manifest["history"]),
            out_dir / "bench_serve.log",
            rate_per_s=float(cfg.http.rate_per_s),
            seconds=float(cfg.http.seconds),
            warmup=int(cfg.http.warmup),
            overrides=[str(o) for o in cfg.http.serve_overrides],
        )
    log.info("data pipeline: point-in-time sequences vs pandas; training input pipeline")
    trained = TrainedRun.load(run_dir)
    spec = trained.spec
    sequences = bench_sequences(
        vlog.frame,
        int(spec["store"]["k_card"]),
        int(spec["store"]["k_issuer"]),
        cfg.pipeline.sequence_rows,
    )
    net = {k: v for k, v in spec["net"].items() if k != "n_delays"}
    training = bench_pipeline(trained.build_store(vlog), net, steps=int(cfg.pipeline.train_steps))
    result = {
        "machine": machine(),
        "scorers": scorers,
        "http": http,
        "lightgbm": lightgbm_info,
        "pipeline": {"sequences": sequences, "training_input": training},
        "targets": {
            "sequence_build_speedup_at_least_20": sequences["speedup"] >= 20,
            "training_input_ratio_at_least_0.9": training["ratio"] >= 0.9,
            "transformer_p99_at_most_2x_lightgbm": scorers.get("vs_lightgbm", {}).get("target_met"),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    lines = [f"{'arm':<16} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  batch scores/s"]
    for name, arm in scorers["arms"].items():
        s = arm["single_request"]
        lines.append(
            f"{name:<16} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} {s['p99_ms']:>8.3f}  "
            + ", ".join(f"{b}: {v:.0f}" for b, v in arm["batch_scores_per_s"].items())
        )
    if "vs_lightgbm" in scorers:
        vs = scorers["vs_lightgbm"]
        lines.append(
            "transformer p99 / LightGBM p99: "
            + ", ".join(f"{k} {v:.2f}" for k, v in vs["transformer_p99_over_lightgbm_p99"].items())
            + f" (target at most {vs['target']:g}: {'met' if vs['target_met'] else 'missed'})"
        )
    if "p99_ms" in http:
        lines.append(
            f"HTTP at {http['rate_per_s']:g} req/s for {http['seconds']:g} s: p50 "
            f"{http['p50_ms']:.2f} ms, p95 {http['p95_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms, "
            f"error rate {http['error_rate']:.3f} ({http['fallbacks']} fallback answers)"
        )
    lines.append(
        f"sequence build {sequences['speedup']:.1f}x pandas; training input pipeline "
        f"{training['ratio']:.2f} of pre-built tensors"
    )
    log.info("\n".join(lines))
    log.info("wrote %s", out_dir / "bench.json")
    return result
