"""The suite of worlds: deterministic draws in documented ranges, the ledger generator's
contract, the held-back rule, and the reduced suite end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from issuer_seq.baselines.dataset import approval_frame
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.cli import conf_dir
from issuer_seq.commands import suite as suite_command
from issuer_seq.data.store import build_store
from issuer_seq.delays import DEFAULT_GRID, truth_column
from issuer_seq.errors import IssuerSeqError
from issuer_seq.rules import AttemptColumns, check_retries
from issuer_seq.schema import load_log
from issuer_seq.simulate import SimConfig, WorldParams, simulate
from issuer_seq.suite.ledger import LedgerParams, generate
from issuer_seq.suite.report import ROUTING, markdown, world_metrics, world_routing
from issuer_seq.suite.worlds import RANGES, SIZES, WorldSpec, draw_suite, draw_world
from tests.conftest import ROOT


def _suite_definition(name: str) -> dict[str, Any]:
    out = OmegaConf.to_container(OmegaConf.load(conf_dir() / "suite" / f"{name}.yaml"))
    assert isinstance(out, dict)
    return out


def test_the_full_suite_draws_the_same_worlds_every_time_within_the_documented_ranges() -> None:
    full = _suite_definition("full")
    worlds = draw_suite(full["worlds"], full["draw_seed"])
    assert worlds == draw_suite(full["worlds"], full["draw_seed"])
    assert len(worlds) >= 12
    assert sum(w.held_back for w in worlds) == len(worlds) // 3  # a third held back
    for part in (True, False):  # each part has worlds of both generators
        assert {w.generator for w in worlds if w.held_back is part} == {"simulate", "ledger"}
    assert len({w.seed for w in worlds}) == len(worlds)
    for w in worlds:
        assert set(w.params) == set(RANGES[w.generator]), w.name
        for key, value in w.params.items():
            assert RANGES[w.generator][key].holds(value), (w.name, key, value)
    assert SIZES["n_cards"].low == 3_000 and SIZES["n_cards"].high == 30_000
    assert SIZES["days"].low == 30 and SIZES["days"].high == 90
    # The ranges are wide: the drawn worlds spread over them, not around one point.
    cards = [w.params["n_cards"] for w in worlds]
    assert max(cards) / min(cards) > 2.5
    # A world's draw depends on its seed and position only, not on the worlds after it.
    assert draw_suite(full["worlds"][:3], full["draw_seed"]) == worlds[:3]
    assert draw_world("x", "simulate", 0, 1, False) != draw_world("x", "simulate", 0, 2, False)


def test_reduced_sizes_replace_the_drawn_ones_and_bad_input_is_named() -> None:
    w = draw_world("w", "ledger", 0, 5, False, {"n_cards": 200, "days": 30})
    assert w.params["n_cards"] == 200 and w.params["days"] == 30
    with pytest.raises(Exception, match="unknown generator"):
        draw_world("w", "nope", 0, 5, False)
    with pytest.raises(Exception, match="unknown key 'cards'"):
        draw_world("w", "simulate", 0, 5, False, {"cards": 10})
    with pytest.raises(Exception, match="duplicate names"):
        draw_suite([{"name": "a", "generator": "ledger"}] * 2, 1)


def test_new_simulator_knobs_move_their_phenomena(tmp_path: Path) -> None:
    base = {"n_cards": 800, "n_issuers": 30, "n_merchants": 200, "days": 30}

    def code_share(name: str, code: str, **world: float) -> float:
        simulate(SimConfig(WorldParams(**base, **world), seed=3), tmp_path / name, progress=False)
        tx = pd.read_parquet(tmp_path / name / "transactions.parquet", columns=["response_code"])
        return float((tx["response_code"] == code).mean())

    funds = code_share("a", "51")
    assert code_share("b", "51", funds_tightness_shift=1.0) > 1.5 * funds
    sca = code_share("c", "1A")
    assert code_share("d", "1A", sca_strictness_scale=2.0) > 1.3 * sca


@pytest.fixture(scope="module")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ledger")
    generate(LedgerParams(n_cards=1500, n_issuers=40, n_merchants=400, days=40, seed=3), out)
    return out


def test_the_ledger_log_meets_the_contract_with_plausible_marginals(ledger_dir: Path) -> None:
    vlog = load_log(ledger_dir)  # raises on any contract violation
    tx = vlog.frame
    meta = json.loads((ledger_dir / "meta.json").read_text())
    assert meta["rows"] == len(tx) and meta["generator"] == "issuer_seq.suite.ledger"
    assert 0.80 <= meta["approval_rate"] <= 0.93
    assert 0.05 <= meta["mit_share"] <= 0.35 and meta["retry_share"] > 0.01
    mix = meta["decline_code_mix"]
    assert mix["51"] + mix["05"] > 0.5  # funds and do-not-honor dominate declines
    assert {"91", "96", "1A", "61", "54"} <= set(mix)
    # MACs only on Mastercard, with the codes the domain allows for them
    mac = tx["advice_code"].dropna()
    assert (tx.loc[mac.index, "network"] == "mastercard").all()
    assert set(mac) <= {"01", "02", "03", "21", "24", "25", "26", "27", "28", "29", "30"}
    prop = tx.loc[tx["attempt"] > 1, "policy_propensity"]
    assert prop.notna().all() and ((prop > 0) & (prop <= 1)).all()


def test_the_ledger_truth_is_the_probability_its_outcomes_were_drawn_with(
    ledger_dir: Path,
) -> None:
    tx = pd.read_parquet(ledger_dir / "transactions.parquet")
    truth = pd.read_parquet(ledger_dir / "truth.parquet")
    assert (truth["txn_id"].to_numpy() == tx["txn_id"].to_numpy()).all()
    p = truth["p_approve"].to_numpy()
    y = (tx["response_code"] == "00").to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    # Calibrated: outcomes match the truth overall and within deciles of it.
    assert abs(p.mean() - y.mean()) < 0.01
    bins = np.quantile(p, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 9)
    for b in range(10):
        rows = which == b
        assert abs(p[rows].mean() - y[rows].mean()) < 0.03, b
    declined = ~y
    for g in DEFAULT_GRID:
        col = truth[truth_column(g)].to_numpy()
        assert np.isfinite(col[declined]).all() and np.isnan(col[~declined]).all()
    # A funds decline is more likely cured after a week than after 5 minutes.
    funds = (tx["response_code"] == "51").to_numpy()
    assert truth.loc[funds, "p_retry_7d"].mean() > truth.loc[funds, "p_retry_5m"].mean() + 0.1
    for col in ("latent_outage", "latent_risk_regime", "latent_funds_hazard"):
        assert (truth[col] > 0).any(), col


def test_every_ledger_retry_obeys_the_network_rules(ledger_dir: Path) -> None:
    tx = pd.read_parquet(ledger_dir / "transactions.parquet")
    ts = (tx["ts"].astype("int64") // 1_000_000).to_numpy()
    hist = AttemptColumns(
        card_id=tx["card_id"].to_numpy(),
        ts=ts,
        network=tx["network"].to_numpy(str),
        merchant_id=tx["merchant_id"].to_numpy(),
        amount=tx["amount"].to_numpy(),
        response_code=tx["response_code"].to_numpy(str),
        advice_code=tx["advice_code"].fillna("").to_numpy(str),
        attempt=tx["attempt"].to_numpy(),
    )
    prev = tx.groupby("payment_id").cumcount()
    retries = np.flatnonzero(tx["attempt"].to_numpy() > 1)
    assert len(retries) > 100
    # each retry's parent: the payment's previous attempt (rows are time-sorted)
    row_of = {(pid, k): i for i, (pid, k) in enumerate(zip(tx["payment_id"], prev, strict=True))}
    parent = np.array([row_of[(tx["payment_id"][r], prev[r] - 1)] for r in retries])
    assert (tx["attempt"].to_numpy()[parent] == tx["attempt"].to_numpy()[retries] - 1).all()
    allowed, rule = check_retries(
        hist.take(parent),
        ts[retries],
        hist,
        self_rows=parent,
        three_ds=tx["three_ds"].to_numpy()[retries],
    )
    assert allowed.all(), pd.Series(rule[~allowed]).value_counts().to_dict()


def test_the_ledger_is_seeded_and_shares_no_code_with_the_simulator(tmp_path: Path) -> None:
    params = LedgerParams(n_cards=200, n_issuers=10, n_merchants=80, days=30, seed=9)
    generate(params, tmp_path / "a")
    generate(params, tmp_path / "b")
    for name in ("transactions.parquet", "truth.parquet"):
        a, b = pd.read_parquet(tmp_path / "a" / name), pd.read_parquet(tmp_path / "b" / name)
        pd.testing.assert_frame_equal(a, b)
    code = (
        "import sys, issuer_seq.suite.ledger\n"
        "bad = [m for m in sys.modules if m.startswith('issuer_seq.simulate')]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def _fake_world(cfg: Any, spec: WorldSpec) -> dict[str, Any]:
    metric = {"logloss": 0.3, "auroc": 0.8, "ece": 0.005, "oracle_share": 0.5}
    diff = {"transformer": 0.3, "lightgbm": 0.31, "difference": -0.01, "ci95": [-0.02, -0.001]}
    return {
        "generator": spec.generator,
        "held_back": spec.held_back,
        "params": spec.params,
        "data": {"rows": 10, "approval_rate": 0.85},
        "metrics": {m: dict(metric) for m in ("transformer", "lightgbm", "oracle", "base_rate")},
        "ceiling": {"logloss": 0.29, "auroc": 0.81, "oracle_share": 0.6, "seconds": 5.0},
        "transformer_minus_lightgbm": {"logloss": diff, "auroc": diff},
        "seconds": {"generate": 1.0, "train": 2.0, "evaluate": 3.0, "bootstrap": 4.0},
    }


@pytest.mark.parametrize("include", [False, True])
def test_held_back_worlds_run_only_when_asked_and_are_reported_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, include: bool
) -> None:
    ran: list[str] = []

    def fake(cfg: Any, spec: WorldSpec) -> dict[str, Any]:
        ran.append(spec.name)
        return _fake_world(cfg, spec)

    monkeypatch.setattr(suite_command, "run_world", fake)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("suite", [f"out_dir={tmp_path}", f"include_held_back={str(include).lower()}"])
    result = suite_command.run(cfg)
    full = _suite_definition("full")
    held = [w["name"] for w in full["worlds"] if w["held_back"]]
    assert held and result["held_back_names"] == held
    assert set(result["held_back_worlds"]) == (set(held) if include else set())
    assert not set(result["worlds"]) & set(held)
    assert set(ran) - set(held) == set(result["worlds"]) and len(result["worlds"]) >= 8
    assert (set(ran) & set(held)) == (set(held) if include else set())
    md = (tmp_path / "suite.md").read_text()
    assert ("## Held-back worlds" in md) is include
    written = json.loads((tmp_path / "suite.json").read_text())
    assert written["include_held_back"] is include
    worlds = json.loads((tmp_path / "worlds.json").read_text())
    assert [w["name"] for w in worlds] == [w["name"] for w in full["worlds"]]


def test_only_runs_the_named_worlds_at_their_own_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`only` runs the named worlds alone, each with the parameters it has in the whole
    suite; a name the suite lacks, or a held-back world without include_held_back, is an
    error naming it."""
    ran: list[WorldSpec] = []

    def fake(cfg: Any, spec: WorldSpec) -> dict[str, Any]:
        ran.append(spec)
        return _fake_world(cfg, spec)

    monkeypatch.setattr(suite_command, "run_world", fake)

    def run(*overrides: str) -> dict[str, Any]:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return suite_command.run(compose("suite", [f"out_dir={tmp_path}", *overrides]))

    result = run("only=[ledger_b,sim_a]")
    assert [w.name for w in ran] == ["sim_a", "ledger_b"]  # in the suite's order
    assert set(result["worlds"]) == {"sim_a", "ledger_b"}
    assert result["only"] == ["ledger_b", "sim_a"]
    whole = {w.name: w for w in draw_suite(_suite_definition("full")["worlds"], 2026)}
    assert all(w == whole[w.name] for w in ran)
    with pytest.raises(IssuerSeqError, match="sim_z"):
        run("only=[sim_a,sim_z]")
    with pytest.raises(IssuerSeqError, match="held_sim_a"):
        run("only=[held_sim_a]")
    ran.clear()
    run("only=held_sim_a", "include_held_back=true")  # one name needs no brackets
    assert [w.name for w in ran] == ["held_sim_a"]


def test_the_reduced_suite_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "issuer_seq.cli",
        "suite",
        "suite=ci",
        f"out_dir={out}",
        f"data_root={tmp_path / 'data'}",
        f"run_root={tmp_path / 'runs'}",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "suite.json").read_text())
    assert result["suite"] == "ci"
    assert set(result["worlds"]) == {"ci_sim", "ci_ledger"} and result["held_back_worlds"] == {}
    for name, w in result["worlds"].items():
        assert w["data"]["rows"] > 1000, name
        for model in ("transformer", "lightgbm", "stacked", "oracle"):
            m = w["metrics"][model]
            assert 0 < m["logloss"] < 1 and 0 <= m["auroc"] <= 1 and 0 <= m["ece"] < 1
        assert w["metrics"]["oracle"]["auroc"] > 0.7
        assert w["metrics"]["oracle"]["oracle_share"] == pytest.approx(1.0)
        for metric in ("logloss", "auroc"):
            d = w["transformer_minus_lightgbm"][metric]
            assert d["ci95"][0] <= d["ci95"][1]
            assert d["difference"] == pytest.approx(d["transformer"] - d["lightgbm"], abs=1e-4)
        assert w["seconds"]["train"] > 0 and w["seconds"]["evaluate"] > 0
        # recalibrated to recent outcomes: evaluate's figures, kept per model
        for model in ("transformer", "lightgbm"):
            r = w["recalibrated"][model]
            assert 0 < r["logloss"] < 1 and 0 <= r["ece"] < 1
        # routing: each policy's share of the oracle's uplift; none for the ledger (no routes)
        routing = w["routing"]
        assert set(routing) == set(ROUTING)
        if name == "ci_sim":
            assert all(share is not None and share <= 1 + 1e-9 for share in routing.values())
        else:
            assert all(share is None for share in routing.values())
        # the ceiling: LightGBM fitted to the truth, its share by evaluate's definition
        c, m = w["ceiling"], w["metrics"]
        assert 0 < c["logloss"] < m["base_rate"]["logloss"] and 0.5 < c["auroc"] <= 1
        assert 0 < c["oracle_share"] <= 1.05, name
        base, oracle = m["base_rate"]["logloss"], m["oracle"]["logloss"]
        assert c["oracle_share"] == pytest.approx((base - c["logloss"]) / (base - oracle))
        assert c["rounds"] > 0 and w["seconds"]["ceiling"] == c["seconds"] >= 0
        for model in ("transformer", "lightgbm"):
            share = m[model]["oracle_share"] / c["oracle_share"]
            assert c["share_of_ceiling"][model] == pytest.approx(share)
    assert result["ceiling"] is True
    md = (out / "suite.md").read_text()
    assert "| ci_sim | simulate |" in md and "| ci_ledger | ledger |" in md
    assert "ceiling oracle share" in md and "recalibrated ECE: transformer / LightGBM" in md
    ledger = result["worlds"]["ci_ledger"]["ceiling"]
    assert f"| {100 * ledger['oracle_share']:.1f}% |" in md
    assert "ci_held" in md and "## Held-back worlds" not in md


def test_world_data_is_generated_once_per_parameters(tmp_path: Path) -> None:
    spec = draw_world("w", "ledger", 0, 3, False, {"n_cards": 150, "days": 30, "n_issuers": 8})
    meta, generated = suite_command.ensure_data(spec, tmp_path, "2026-01-05")
    assert generated and meta["rows"] > 0
    stamp = (tmp_path / "transactions.parquet").stat().st_mtime_ns
    assert suite_command.ensure_data(spec, tmp_path, "2026-01-05") == (meta, False)
    assert (tmp_path / "transactions.parquet").stat().st_mtime_ns == stamp
    other = draw_world("w", "ledger", 0, 4, False, {"n_cards": 150, "days": 30, "n_issuers": 8})
    _, generated = suite_command.ensure_data(other, tmp_path, "2026-01-05")
    assert generated
    assert json.loads((tmp_path / suite_command.WORLD_FILE).read_text())["key"] == other.key()


def test_a_world_without_truth_gets_no_ceiling_and_the_table_says_so(
    ledger_dir: Path, tmp_path: Path
) -> None:
    vlog = load_log(ledger_dir)
    store = build_store(vlog)
    frame = vlog.frame.reset_index(drop=True)
    data = approval_frame(frame, sql_features(frame, threads=1))
    # the ledger writes the truth the fit needs
    ceiling = suite_command.world_ceiling(ledger_dir, store, data, threads=1)
    assert 0 < ceiling["oracle_share"] <= 1.05 and np.isfinite(ceiling["logloss"])
    no_truth = tmp_path / "no_truth"
    no_truth.mkdir()
    shutil.copy(ledger_dir / "transactions.parquet", no_truth)
    ceiling = suite_command.world_ceiling(no_truth, store, data, threads=1)
    assert ceiling == {"skipped": "no truth"}
    world = _fake_world(None, draw_world("w", "ledger", 0, 3, False)) | {"ceiling": ceiling}
    del world["metrics"]["oracle"]  # evaluate writes no oracle without truth
    world["metrics"] = world_metrics({"approval": world["metrics"]})
    assert world["metrics"]["oracle"]["logloss"] is None
    result = {
        "suite": "x",
        "train_overrides": [],
        "evaluate_overrides": [],
        "bootstrap_resamples": 1,
        "worlds": {"w": world},
        "held_back_worlds": {},
        "held_back_names": [],
        "seconds": 1.0,
    }
    row = next(line for line in markdown(result).splitlines() if line.startswith("| w |"))
    assert [cell.strip() for cell in row.split("|")].count("no truth") == 4


def test_the_suite_keeps_each_routing_policys_share_where_routing_was_valued() -> None:
    share = {"value": 0.7, "low": 0.6, "high": 0.8}
    valued = {"mode": "truth", "policies": {"transformer": {"share_of_oracle_uplift": share}}}
    kept = world_routing({"routing": valued})
    assert kept["transformer"] == 0.7 and kept["transformer_recalibrated"] is None
    # estimated off-policy only (no truth), not applicable, or not run: nothing to keep
    for routing in (
        {"mode": "off_policy_only", "policies": valued["policies"]},
        {"applicable": False, "note": "one route"},
        None,
    ):
        assert set(world_routing({"routing": routing}).values()) == {None}
