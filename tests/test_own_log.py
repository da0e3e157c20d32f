"""The README's "Your own log" path, as a user walks it: a log with no truth beside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def issuer_seq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "issuer_seq.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_users_log_validates_trains_and_evaluates(tmp_path: Path) -> None:
    """Export is left out: it reads the run and its log's rows, never a truth or a world's
    metadata, and conftest's `tiny_bundle` exports through the same command."""
    world = tmp_path / "world"
    done = issuer_seq(
        "simulate",
        f"data_dir={world}",
        "n_cards=300",
        "n_issuers=15",
        "n_merchants=60",
        "days=20",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mine = tmp_path / "data" / "mine"
    mine.mkdir(parents=True)
    log = tmp_path / "my_log.parquet"
    shutil.copy(world / "transactions.parquet", log)

    done = issuer_seq("validate", f"path={log}")
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copy(log, mine / "transactions.parquet")  # only the log: no truth, no meta

    run = tmp_path / "runs" / "mine"
    steps = (
        [
            "train",
            f"data_dir={mine}",
            f"run_dir={run}",
            "model=tiny",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.enable_progress_bar=false",
        ],
        [
            "evaluate",
            f"data_dir={mine}",
            f"run_dir={run}",
            "baselines.models=[lightgbm]",
            "baselines.trials=1",
            "baselines.retry_model=false",
        ],
    )
    for step in steps:
        done = issuer_seq(*step)
        assert done.returncode == 0, f"{step[0]}: {done.stderr[-3000:]}"

    evaluation = json.loads((run / "evaluation.json").read_text())
    assert "oracle" not in evaluation["approval"]  # nothing to compare with on a real log
    assert {"transformer", "lightgbm"} <= set(evaluation["approval"])
    assert "truth" in evaluation["retry"]["note"]
