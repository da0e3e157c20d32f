"""`issuer-seq demo`: the main job end to end on the embedded default.

Each stage runs the same code as its own command, with that command's configuration composed
from conf/ (plus demo.yaml's paths, seed and per-stage overrides).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig

from issuer_seq.commands import bench as bench_command
from issuer_seq.commands import evaluate as evaluate_command
from issuer_seq.commands import export as export_command
from issuer_seq.commands import report as report_command
from issuer_seq.commands.simulate import sim_config
from issuer_seq.data.store import build_store, summarize_store
from issuer_seq.schema import load_log, summarize
from issuer_seq.simulate import simulate
from issuer_seq.train.run import store_config, train

log = logging.getLogger(__name__)


def _stage(name: str, cfg: DictConfig, extra: list[str]) -> DictConfig:
    common = [f"{k}={cfg[k]}" for k in ("data_dir", "run_dir", "artifact_dir", "out_dir", "seed")]
    return compose(config_name=name, overrides=[*common, *extra])


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    data_dir = Path(cfg.data_dir)
    steps = 8

    log.info("[1/%d] simulate: the default synthetic world -> %s", steps, data_dir)
    simulate(sim_config(_stage("simulate", cfg, list(cfg.simulate_overrides))), data_dir)

    log.info("[2/%d] validate: check the log against the contract", steps)
    vlog = load_log(data_dir)
    log.info(json.dumps(summarize(vlog), indent=2))

    train_cfg = _stage("train", cfg, list(cfg.train_overrides))
    log.info("[3/%d] dataset: point-in-time examples", steps)
    store = build_store(vlog, store_config(train_cfg.data))
    dataset = summarize_store(store)
    log.info(json.dumps(dataset, indent=2))

    log.info("[4/%d] train: %s -> %s", steps, " ".join(cfg.train_overrides), cfg.run_dir)
    val_logloss = train(train_cfg, store)

    log.info("[5/%d] evaluate: models and retry policies on the test split", steps)
    evaluate_command.run(_stage("evaluate", cfg, list(cfg.evaluate_overrides)))

    log.info("[6/%d] export: ONNX bundle -> %s", steps, cfg.artifact_dir)
    export_cfg = _stage("export", cfg, list(cfg.export_overrides))
    export_command.run(export_cfg)

    log.info("[7/%d] bench: latency, throughput, pipeline ratios -> %s", steps, cfg.out_dir)
    bench_command.run(_stage("bench", cfg, list(cfg.bench_overrides)))

    log.info("[8/%d] report", steps)
    report_command.run(_stage("report", cfg, list(cfg.bench_overrides)))

    log.info(
        "demo finished in %.0f s: data in %s, run in %s, serving bundle in %s\nthe report: %s",
        time.perf_counter() - started,
        data_dir,
        cfg.run_dir,
        cfg.artifact_dir,
        Path(cfg.out_dir) / "report.html",
    )
    return {"val_logloss": val_logloss, "dataset": dataset}
