"""`issuer-seq demo` end to end on a tiny world (the README's main job, scaled down)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from issuer_seq.cli import conf_dir
from issuer_seq.commands.demo import _mapping_overrides, _stage


def test_the_demo_passes_exactly_its_variants() -> None:
    """Its overrides replace the stage's `variants` mapping (a plain `variants={...}` merges)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for name in ("evaluate", "bench", "report"):
            only = compose(name, _mapping_overrides("variants", {"tiny": "/x-1/run_tiny"}))
            assert dict(only.variants) == {"tiny": "/x-1/run_tiny"}
            assert dict(compose(name, _mapping_overrides("variants", {})).variants) == {}


def test_the_demo_trains_the_default_recipe() -> None:
    """`make demo` trains what `issuer-seq train` with no overrides trains (#21)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        demo = compose("demo")
        train = _stage("train", demo, list(demo.train_overrides))
        assert train == compose("train")
        assert train.trainer.max_epochs == 5 and train.early_stopping.patience == 2


def test_demo_runs_every_stage(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "issuer_seq.cli",
            "demo",
            f"data_dir={tmp_path / 'data'}",
            f"run_dir={tmp_path / 'run'}",
            f"artifact_dir={tmp_path / 'bundle'}",
            f"out_dir={tmp_path / 'report'}",
            "export_overrides=['parity.rows=2000','fp16.enabled=false']",
            "evaluate_overrides=['baselines.models=[]']",
            "bench_overrides=['requests=150','warmup=10','batch_sizes=[1]',"
            "'throughput_seconds=0.1','pipeline.train_steps=2','lightgbm.threads=1',"
            "'http.seconds=1','http.warmup=2','http.overhead_requests=100']",
            # a size variant costs a second export (minutes): the stages' own tests cover
            # variants (test_evaluate's side runs, test_bench's arm, test_report's row)
            "variants=[]",
            "simulate_overrides=['n_cards=400','n_issuers=20','n_merchants=100','days=20']",
            "train_overrides=['experiment=demo','model=tiny','trainer.max_epochs=1',"
            "'trainer.limit_train_batches=3','trainer.enable_progress_bar=false']",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    names = ("simulate", "validate", "dataset", "train", "evaluate", "export", "bench", "report")
    stages = [f"[{i}/8] {name}" for i, name in enumerate(names, start=1)]
    for stage in stages:
        assert stage in out.stdout
    assert (tmp_path / "data" / "truth.parquet").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 3
    assert (tmp_path / "bundle" / "manifest.json").exists()
    assert (tmp_path / "run" / "evaluation.json").exists()
    assert (tmp_path / "report" / "report.html").exists()
    assert "the report:" in out.stdout
    assert "size variant" not in out.stdout and not (tmp_path / "run_tiny").exists()
