"""`issuer-seq report`: the latency-vs-accuracy comparison report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from issuer_seq.commands import bench as bench_command
from issuer_seq.commands import evaluate as evaluate_command
from issuer_seq.commands.bench import _data_dir
from issuer_seq.report.report import write_report

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    run_dir, out_dir = Path(cfg.run_dir), Path(cfg.out_dir)
    data_dir = _data_dir(cfg, run_dir)
    evaluation_path = run_dir / "evaluation.json"
    if not evaluation_path.exists():
        log.info("no %s: evaluating first", evaluation_path)
        paths = [f"{k}={cfg[k]}" for k in ("run_dir", "artifact_dir", "out_dir", "seed")]
        overrides = [*paths, f"data_dir={data_dir}", *cfg.evaluate_overrides]
        evaluate_command.run(compose(config_name="evaluate", overrides=overrides))
    evaluation = json.loads(evaluation_path.read_text())
    bench_path = out_dir / "bench.json"
    if not bench_path.exists() and (Path(cfg.artifact_dir) / "manifest.json").exists():
        log.info("no %s: benchmarking first", bench_path)
        bench_command.run(cfg)
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else None
    context: dict[str, Any] = {"data_dir": str(data_dir), "run_dir": str(run_dir)}
    meta = data_dir / "meta.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        context["data"] = {
            k: m.get(k) for k in ("rows", "approval_rate", "mit_share", "retry_share")
        }
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        context["training"] = m.get("training")
        context["dataset"] = {
            k: m["dataset"].get(k) for k in ("examples", "k_card", "k_issuer", "k_card_merchant")
        }
    config = run_dir / "config.yaml"
    if config.exists():
        c = OmegaConf.load(config)
        context["model"] = OmegaConf.to_container(c.model)
        context["trainer"] = {
            k: c.trainer.get(k) for k in ("max_epochs", "precision", "accelerator")
        }
    if bench:
        context["machine"] = bench.get("machine")
        context["pipeline"] = bench.get("pipeline")
    write_report(evaluation, bench, out_dir, context)
    log.info("report: %s (and report.json, PNG figures)", out_dir / "report.html")
    return {"report": str(out_dir / "report.html")}
