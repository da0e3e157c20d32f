"""Shared fixtures: small simulated logs (made once per session) and a hand-made messy log."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from issuer_seq.report.report import write_report
from issuer_seq.simulate import SimConfig, WorldParams, simulate
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent  # the repository


def make_sim(path: Path, seed: int = 1, n_cards: int = 1500, days: int = 30) -> Path:
    cfg = SimConfig(
        world=WorldParams(n_cards=n_cards, n_issuers=40, n_merchants=300, days=days),
        seed=seed,
        chunk_cards=1000,
    )
    simulate(cfg, path, progress=False)
    return path


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic log: ~30k attempts over 30 days."""
    return make_sim(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="session")
def big_sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger log (~130k attempts) for statistical checks."""
    return make_sim(tmp_path_factory.mktemp("bigsim"), seed=7, n_cards=5000, days=40)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for one test module."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


def handmade_rows() -> pd.DataFrame:
    """Six attempts written by hand, as a user's export might look (ids as strings)."""
    base = {
        "network": "visa",
        "card_type": "debit",
        "issuer_country": "DE",
        "merchant_id": "m1",
        "mcc": "5411",
        "merchant_country": "DE",
        "currency": "EUR",
        "initiator": "CIT",
        "is_recurring": False,
        "three_ds": True,
        "advice_code": None,
    }
    rows = [
        ("t1", "p1", 1, "2026-03-01T10:00:00Z", "c1", "i1", 20.0, "00"),
        ("t2", "p2", 1, "2026-03-01T10:05:00Z", "c1", "i1", 35.5, "51"),
        ("t3", "p2", 2, "2026-03-02T10:05:00Z", "c1", "i1", 35.5, "00"),
        ("t4", "p3", 1, "2026-03-01T09:00:00Z", "c2", "i1", 12.0, "05"),
        ("t5", "p4", 1, "2026-03-01T11:00:00Z", "c2", "i2", 99.99, "Z9"),
        ("t6", "p5", 1, "2026-03-01T11:00:00Z", "c3", "i2", 0.0, "00"),
    ]
    cols = [
        "txn_id",
        "payment_id",
        "attempt",
        "ts",
        "card_id",
        "issuer_id",
        "amount",
        "response_code",
    ]
    df = pd.DataFrame([dict(zip(cols, r, strict=True)) | base for r in rows])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["advice_code"] = df["advice_code"].astype(object)
    return df


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data_dir, run_dir, bundle): a tiny model trained for 3 steps and exported through the
    command line, once per session (an export takes minutes on 2 cores). The command's output
    is in `bundle.parent / "export.log"`. Tests that change the run or the bundle copy them."""
    from hydra import compose, initialize_config_dir

    from issuer_seq.cli import conf_dir
    from issuer_seq.commands.train import train

    data = make_sim(tmp_path_factory.mktemp("tiny_sim"), seed=5, n_cards=250, days=15)
    run = tmp_path_factory.mktemp("tiny_run")
    overrides = [
        f"data_dir={data}",
        f"run_dir={run}",
        "model=tiny",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false",
        "data.max_eval_examples=2000",
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        train(compose("train", overrides))
    bundle = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "issuer_seq.cli",
            "export",
            f"run_dir={run}",
            f"artifact_dir={bundle}",
            "parity.rows=2000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (bundle.parent / "export.log").write_text(done.stdout + done.stderr)
    return data, run, bundle


def report_with_routing(section: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The report of an evaluation holding one plain transformer row and `section` as its
    routing: write_report's summary, the files in `out_dir`."""
    metrics = {"auroc": 0.7, "ap_decline": 0.4, "logloss": 0.33, "brier": 0.1, "ece": 0.01}
    curve = {"mean_predicted": [0.2, 0.8], "observed": [0.25, 0.75]}
    evaluation = {
        "approval": {"transformer": metrics | {"calibration_curve": curve}},
        "routing": section,
    }
    return write_report(evaluation, None, out_dir, {"data_dir": "x"})
