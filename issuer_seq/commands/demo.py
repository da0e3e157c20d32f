"""`issuer-seq demo`: the main job end to end on the embedded default.

Each stage runs the same code as its own command, with that command's configuration composed
from conf/ (plus demo.yaml's paths, seed and per-stage overrides). The model-size variants of
demo.yaml (`variants`, e.g. `tiny`) are trained beside the run into `<run_dir>_<name>` with a
small budget, exported (fp32 only) to `<artifact_dir>_<name>`, and evaluated and benchmarked
beside it, so that the report's latency-vs-accuracy chart has the model sizes.
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
from issuer_seq.commands.train import train
from issuer_seq.data.store import StoreConfig, build_store, summarize_store
from issuer_seq.schema import load_log, summarize
from issuer_seq.simulate import simulate

log = logging.getLogger(__name__)


def _stage(name: str, cfg: DictConfig, extra: list[str], **paths: str) -> DictConfig:
    keys = ("data_dir", "run_dir", "artifact_dir", "out_dir", "seed")
    common = [f"{k}={paths.get(k, cfg[k])}" for k in keys]
    return compose(config_name=name, overrides=[*common, *extra])


def variant_paths(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """{name: {"run_dir": <run_dir>_<name>, "artifact_dir": <artifact_dir>_<name>}}."""
    return {
        str(name): {
            "run_dir": f"{cfg.run_dir}_{name}",
            "artifact_dir": f"{cfg.artifact_dir}_{name}",
        }
        for name in cfg.variants or []
    }


def _mapping_overrides(key: str, mapping: dict[str, str]) -> list[str]:
    """Replace the stage config's whole mapping `key` (a plain `key={...}` merges into it)."""
    return [f"~{key}", f"+{key}={{" + ",".join(f"{k}:'{v}'" for k, v in mapping.items()) + "}"]


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
    store = build_store(vlog, StoreConfig.from_json(train_cfg.data))
    dataset = summarize_store(store)
    log.info(json.dumps(dataset, indent=2))

    recipe = " ".join(cfg.train_overrides) or "the default recipe"
    log.info("[4/%d] train: %s -> %s", steps, recipe, cfg.run_dir)
    val_logloss = train(train_cfg, store)
    variants = variant_paths(cfg)
    variant_seconds: dict[str, float] = {}
    for name, paths in variants.items():
        overrides = [*cfg.train_overrides, f"model={name}", *cfg.variant_train_overrides]
        variant_cfg = _stage("train", cfg, overrides, run_dir=paths["run_dir"])
        log.info("[4/%d] train: size variant %s -> %s", steps, name, paths["run_dir"])
        t0 = time.perf_counter()
        same_store = StoreConfig.from_json(variant_cfg.data) == store.config
        train(variant_cfg, store if same_store else None)
        variant_seconds[name] = round(time.perf_counter() - t0, 1)
        log.info("size variant %s trained in %.0f s", name, variant_seconds[name])
    # evaluate and bench take exactly the demo's variants (stale sibling dirs stay out)
    runs = _mapping_overrides("variants", {k: v["run_dir"] for k, v in variants.items()})
    bundles = _mapping_overrides("variants", {k: v["artifact_dir"] for k, v in variants.items()})

    log.info("[5/%d] evaluate: models and retry policies on the test split", steps)
    evaluate_cfg = _stage("evaluate", cfg, [*cfg.evaluate_overrides, *runs])
    evaluate_command.run(evaluate_cfg)

    log.info("[6/%d] export: ONNX bundle -> %s", steps, cfg.artifact_dir)
    export_cfg = _stage("export", cfg, list(cfg.export_overrides))
    export_command.run(export_cfg)
    for name, paths in variants.items():
        log.info("[6/%d] export: size variant %s -> %s", steps, name, paths["artifact_dir"])
        overrides = [*cfg.export_overrides, *cfg.variant_export_overrides]
        export_command.run(_stage("export", cfg, overrides, **paths))

    log.info("[7/%d] bench: latency, throughput, pipeline ratios -> %s", steps, cfg.out_dir)
    bench_command.run(_stage("bench", cfg, [*cfg.bench_overrides, *bundles]))
    # evaluate ran before there was a bench: its recommendation weighs this one's latency now
    recommendation = evaluate_command.redecide(
        Path(cfg.run_dir) / "evaluation.json",
        Path(cfg.out_dir) / "bench.json",
        evaluate_command.latency_budget(evaluate_cfg),
    )
    log.info("recommendation with the measured latency: %s", recommendation["text"])

    log.info("[8/%d] report", steps)
    report_command.run(_stage("report", cfg, [*cfg.bench_overrides, *bundles]))

    log.info(
        "demo finished in %.0f s: data in %s, run in %s, serving bundle in %s\nthe report: %s",
        time.perf_counter() - started,
        data_dir,
        cfg.run_dir,
        cfg.artifact_dir,
        Path(cfg.out_dir) / "report.html",
    )
    return {"val_logloss": val_logloss, "dataset": dataset, "variant_seconds": variant_seconds}
