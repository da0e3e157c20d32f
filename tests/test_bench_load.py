"""scripts/load_test.py: locust against `issuer-seq serve` replicas on loopback, a couple of
seconds per step on the tiny bundle; and how a step's figures and the rate held are read."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "load_test.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_test_reports_each_step_and_the_rate_held(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, _, bundle = tiny_bundle
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(bundle),
            str(data),
            "--processes",
            "1",
            "2",
            "--users",
            "2",
            "--seconds",
            "1.5",
            "--warmup-seconds",
            "0.5",
            "--requests",
            "200",
            "--p99-ms",
            "1000",  # what a step must hold here: the suite shares 2 cores
            "--out",
            str(tmp_path),
            "--serve",
            "deadline_ms=500",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "load_test.json").read_text())
    steps = result["steps"]
    assert [(s["processes"], s["users"]) for s in steps] == [(1, 2), (2, 2)]
    for s in steps:
        assert s["requests"] > 0 and s["rate_per_s"] > 0 and s["failures"] == 0
        assert 0 < s["p50_ms"] <= s["p99_ms"]
    for processes in ("1", "2"):
        best = result["held"][processes]
        assert best is not None and best["p99_ms"] < 1000 and best["fallbacks"] == 0
    assert result["settings"]["serve"][-1] == "deadline_ms=500"
    assert result["settings"]["warm_state_events"] > 0
    table = (tmp_path / "load_test.md").read_text()
    assert table in done.stdout  # printed as written
    assert "| 2 | 2 |" in table and "requests/s held at p99 < 1000 ms" in table
    # both replicas served: each was started, warmed and answered
    assert (tmp_path / "serve_2_1.log").exists() and not (tmp_path / "bodies.jsonl").exists()


def test_a_step_is_read_after_its_warm_up_and_held_only_clean() -> None:
    load = _script()
    # (start s, time ms, status, fallback): one request in the warm-up, then 4 in 1 s
    records = [
        (100.0, 50.0, 200, False),
        (101.0, 2.0, 200, False),
        (101.5, 4.0, 200, False),
        (101.8, 3.0, 500, False),
        (101.996, 4.0, 200, True),
    ]
    stats = load.step_stats(records, warmup_s=1.0)
    assert stats["requests"] == 4 and stats["rate_per_s"] == pytest.approx(4.0)
    assert stats["failures"] == 1 and stats["fallbacks"] == 1
    assert stats["p50_ms"] == pytest.approx(3.5) and stats["p99_ms"] < 4.0 + 1e-9
    assert load.step_stats([], 1.0)["requests"] == 0
    rows = [
        {"rate_per_s": 300.0, "p99_ms": 4.0, "failures": 0, "fallbacks": 0},
        {"rate_per_s": 500.0, "p99_ms": 9.0, "failures": 0, "fallbacks": 0},
        {"rate_per_s": 700.0, "p99_ms": 12.0, "failures": 0, "fallbacks": 0},  # too slow
        {"rate_per_s": 650.0, "p99_ms": 8.0, "failures": 1, "fallbacks": 0},  # a failure
        {"rate_per_s": 600.0, "p99_ms": 8.0, "failures": 0, "fallbacks": 2},  # the rules
    ]
    assert load.held(rows, 10.0) == rows[1]
    assert load.held(rows[2:3], 10.0) is None
