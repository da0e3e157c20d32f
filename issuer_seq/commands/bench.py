"""`issuer-seq bench`: latency, throughput and data-pipeline ratios -> <out_dir>/bench.json.

Stages, in order: the LightGBM baseline's model (saved or fitted), every scorer arm on the
same requests, the service over HTTP (at a fixed rate, and one request at a time beside the
scorer in process), the data pipeline (sequence building, training input),
then the design targets (conf/bench.yaml `targets`) checked against those measurements.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from issuer_seq.baselines.saved_lightgbm import load_or_fit_lightgbm
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.bench.http import bench_http
from issuer_seq.bench.pipeline import bench_pipeline
from issuer_seq.bench.scorers import bench_scorers, machine
from issuer_seq.bench.sequences import bench_sequences
from issuer_seq.bench.targets import check_targets, describe, validate_targets
from issuer_seq.errors import IssuerSeqError
from issuer_seq.schema import ValidatedLog, load_log
from issuer_seq.serve.bundle import read_manifest
from issuer_seq.serve.inputs import history_lengths
from issuer_seq.train.trained_run import TrainedRun

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


def targets_of(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """conf/bench.yaml `targets` as plain dicts: {target: {bound: value}}."""
    targets = OmegaConf.to_container(cfg.targets)
    assert isinstance(targets, dict)
    return {str(name): {str(k): float(v) for k, v in t.items()} for name, t in targets.items()}


def lightgbm_model(
    cfg: DictConfig, vlog: ValidatedLog, run_dir: Path, out_dir: Path
) -> tuple[LightGBMModel | None, dict[str, Any]]:
    """The LightGBM baseline's model and what it is, or None when its arm is disabled."""
    lgb_cfg = cfg.lightgbm
    if not lgb_cfg.enabled:
        return None, {"note": "not measured (lightgbm.enabled=false)"}
    params = OmegaConf.to_container(lgb_cfg.params) if lgb_cfg.params else {}
    assert isinstance(params, dict)
    return load_or_fit_lightgbm(
        vlog.frame,
        run_dir,
        out_dir,
        params={str(k): v for k, v in params.items()},
        max_train_rows=lgb_cfg.max_train_rows,
        threads=lgb_cfg.threads,
    )


def scorer_arms(
    cfg: DictConfig,
    bundle: Path,
    run_dir: Path,
    records: Sequence[Mapping[str, Any]],
    lightgbm: LightGBMModel | None,
) -> dict[str, Any]:
    """Every scorer arm in process on the same requests (bench/scorers.py); the stacked arm
    when the run's evaluation.json holds a stack (LightGBM evaluated beside the transformer)."""
    log.info("scorers: %d requests replayed through every arm", cfg.requests)
    evaluation = run_dir / "evaluation.json"
    stack = None
    if evaluation.exists():
        stack = json.loads(evaluation.read_text())["approval"].get("stacked", {}).get("stack")
    return bench_scorers(
        bundle,
        run_dir,
        records,
        n_requests=int(cfg.requests),
        warmup=int(cfg.warmup),
        batch_sizes=[int(b) for b in cfg.batch_sizes],
        throughput_seconds=float(cfg.throughput_seconds),
        lightgbm=lightgbm,
        variants=variant_bundles(cfg),
        stack=stack,
    )


def http_latency(
    cfg: DictConfig, bundle: Path, records: Sequence[Mapping[str, Any]], out_dir: Path
) -> dict[str, Any]:
    """The service on loopback, on the scorers' requests (bench/http.py): at a fixed rate, then
    one request at a time beside the same scorer in process."""
    if not cfg.http.enabled:
        return {"note": "not measured (http.enabled=false)"}
    log.info(
        "HTTP: issuer-seq serve on loopback, %s req/s for %s s, then %s requests one at a time",
        cfg.http.rate_per_s,
        cfg.http.seconds,
        cfg.http.overhead_requests,
    )
    n = min(int(cfg.requests), len(records))
    manifest = read_manifest(bundle)
    return bench_http(
        bundle,
        records[-n:],
        records[: len(records) - n],
        history_lengths(manifest["history"]),
        out_dir / "bench_serve.log",
        rate_per_s=float(cfg.http.rate_per_s),
        seconds=float(cfg.http.seconds),
        warmup=int(cfg.http.warmup),
        overhead_requests=int(cfg.http.overhead_requests),
        overrides=[str(o) for o in cfg.http.serve_overrides],
    )


def data_pipeline(cfg: DictConfig, vlog: ValidatedLog, run_dir: Path) -> dict[str, Any]:
    """Point-in-time sequences vs pandas, and the training input pipeline vs pre-built tensors."""
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
    return {"sequences": sequences, "training_input": training}


#: what the bench measures that a target can bound (conf/bench.yaml `targets`)
MEASURED = (
    "scorer_p99_vs_lightgbm",
    "observe_p99_vs_score_p99",
    "route_p99_vs_score_p99",
    "http_p99_over_inprocess_ms",
    "sequence_build_speedup",
    "training_input_ratio",
)


def _observe_over_score(scorers: Mapping[str, Any]) -> float | None:
    observe = scorers.get("observe", {}).get("onnx_fp32")
    score = scorers.get("arms", {}).get("onnx_fp32")
    if not observe or not score:
        return None
    return round(observe["p99_ms"] / score["single_request"]["p99_ms"], 3)


def _route_over_score(scorers: Mapping[str, Any], candidates: str = "4") -> float | None:
    arm = scorers.get("route", {}).get("arms", {}).get("onnx_fp32", {})
    if candidates not in arm:
        return None
    return round(arm[candidates]["p99_ms"] / arm["score"]["p99_ms"], 3)


def measurements(
    scorers: Mapping[str, Any], http: Mapping[str, Any], pipeline: Mapping[str, Any]
) -> dict[str, Any]:
    """What the targets bound, by the names of `MEASURED` (None: not measured in this run)."""
    return {
        # the best shipped ONNX runtime (the run's model or a size variant) over LightGBM
        "scorer_p99_vs_lightgbm": scorers.get("vs_lightgbm", {}).get("best"),
        # observe (the event graph, per outcome) over score, both p99, the same arm
        "observe_p99_vs_score_p99": _observe_over_score(scorers),
        # /v1/route in process with 4 candidate routes over a single score, both p99
        "route_p99_vs_score_p99": _route_over_score(scorers),
        # what HTTP adds to the same scorer's p99, one request at a time over keep-alive
        "http_p99_over_inprocess_ms": http.get("overhead", {}).get("p99_over_in_process_ms"),
        "sequence_build_speedup": pipeline["sequences"]["speedup"],
        "training_input_ratio": pipeline["training_input"]["ratio"],
    }


def summary(result: Mapping[str, Any]) -> list[str]:
    """The bench's figures as printed: arms, the LightGBM ratio, HTTP, pipeline, targets."""
    scorers, http = result["scorers"], result["http"]
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
        )
    observe, state = scorers.get("observe", {}), scorers.get("state", {})
    if observe:
        lines.append(
            "observe p50/p99 ms: "
            + ", ".join(f"{k} {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in observe.items())
        )
    for arm, counts in scorers.get("route", {}).get("arms", {}).items():
        lines.append(
            f"route ({arm}) p50/p99 ms by candidates: "
            + ", ".join(f"{n}: {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for n, v in counts.items())
        )
    if "state_bytes" in state:
        lines.append(
            f"cached state: {state['state_bytes']} bytes per event "
            f"({state['redis_member_bytes']:.0f} bytes as a Redis member); recomputed at "
            f"{state['recompute_events_per_s']:,.0f} events/s"
        )
    if "p99_ms" in http:
        lines.append(
            f"HTTP at {http['rate_per_s']:g} req/s for {http['seconds']:g} s: p50 "
            f"{http['p50_ms']:.2f} ms, p95 {http['p95_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms, "
            f"error rate {http['error_rate']:.3f} ({http['fallbacks']} fallback answers)"
        )
    overhead = http.get("overhead", {})
    if "http" in overhead:
        web, inproc = overhead["http"], overhead["in_process"]
        lines.append(
            f"HTTP one request at a time: p50 {web['p50_ms']:.2f} ms, p99 {web['p99_ms']:.2f} ms;"
            f" in process p50 {inproc['p50_ms']:.2f} ms, p99 {inproc['p99_ms']:.2f} ms (HTTP adds"
            f" {overhead['p50_over_in_process_ms']:.2f} ms at p50, "
            f"{overhead['p99_over_in_process_ms']:.2f} ms at p99)"
        )
    sequences, training = result["pipeline"]["sequences"], result["pipeline"]["training_input"]
    lines.append(
        f"sequence build {sequences['speedup']:.1f}x pandas; training input pipeline "
        f"{training['ratio']:.2f} of pre-built tensors"
    )
    lines += [describe(name, check) for name, check in result["targets"].items()]
    return lines


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    run_dir, bundle, out_dir = Path(cfg.run_dir), Path(cfg.artifact_dir), Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = targets_of(cfg)
    validate_targets(targets, MEASURED)  # a typo fails now, not after the benchmarks
    vlog = load_log(_data_dir(cfg, run_dir))
    records = vlog.frame.to_dict("records")
    lightgbm, lightgbm_info = lightgbm_model(cfg, vlog, run_dir, out_dir)
    scorers = scorer_arms(cfg, bundle, run_dir, records, lightgbm)
    http = http_latency(cfg, bundle, records, out_dir)
    pipeline = data_pipeline(cfg, vlog, run_dir)
    result = {
        "machine": machine(),
        "scorers": scorers,
        "http": http,
        "lightgbm": lightgbm_info,
        "pipeline": pipeline,
        "targets": check_targets(targets, measurements(scorers, http, pipeline)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    log.info("\n".join(summary(result)))
    log.info("wrote %s", out_dir / "bench.json")
    return result
