"""Evaluation: metrics against scikit-learn, rule-safe retry policies, evaluation.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from issuer_seq.baselines.dataset import approval_frame, split_of
from issuer_seq.baselines.protocol import LABEL
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.cli import conf_dir
from issuer_seq.commands.train import train
from issuer_seq.data.store import TEST, TRAIN, VAL
from issuer_seq.delays import grid_seconds
from issuer_seq.evaluate.ceiling import fit_to_truth
from issuer_seq.evaluate.metrics import approval_metrics, calibration_by_route, ece, oracle_share
from issuer_seq.evaluate.retry import compare_policies
from issuer_seq.evaluate.run import logged_3ds_retries, rule_view
from issuer_seq.routing.policies import as_seconds
from issuer_seq.schema import load_log
from issuer_seq.train.module import approval_metrics as torch_metrics
from tests.conftest import ROOT, make_sim

GRID = ["5m", "30m", "2h", "6h", "1d", "2d", "4d", "7d"]


def _fixed_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 5000)
    y = (rng.uniform(size=5000) < p**1.3).astype(np.int64)
    return p, y


def test_metrics_match_scikit_learn_and_the_training_metrics() -> None:
    p, y = _fixed_inputs()
    m = approval_metrics(p, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["ap_decline"] == pytest.approx(average_precision_score(1 - y, 1 - p), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    # Hand-computed ECE on a tiny case: two bins, |0.1-0| * 1/2 + |0.9-1| * 1/2.
    assert ece(np.array([0.1, 0.9]), np.array([0, 1])) == pytest.approx(0.1)
    # The training loop's torchmetrics agree with the evaluation's.
    tm = torch_metrics("", sync=False)
    tm.update(torch.from_numpy(p).float(), torch.from_numpy(y))
    got = {k: float(v) for k, v in tm.compute().items()}
    for key in ("auroc", "ap_decline", "logloss", "brier", "ece"):
        assert got[key] == pytest.approx(m[key], abs=2e-4), key
    assert oracle_share(0.35, 0.40, 0.30) == pytest.approx(0.5)


def test_calibration_by_route_is_each_routes_own_ece() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 400)
    y = (rng.uniform(size=400) < p).astype(float)
    route = np.array(["a", "b", None, "b"] * 100, dtype=object)
    shifted = np.where(route == "b", p * 0.5, p)  # miscalibrated on route b alone
    out = calibration_by_route({"good": p, "bad": shifted}, y, route)
    assert set(out["good"]) == {"a", "b"}  # a row without a route counts for none
    for name, values in (("good", p), ("bad", shifted)):
        for r in ("a", "b"):
            m = route == r
            assert out[name][r]["n"] == int(m.sum()) == 100 * (1 + (r == "b"))
            assert out[name][r]["ece"] == pytest.approx(ece(values[m], y[m]))
            assert out[name][r]["observed"] == pytest.approx(y[m].mean())
    assert out["bad"]["a"] == out["good"]["a"]
    assert out["bad"]["b"]["ece"] > out["good"]["b"]["ece"] + 0.1
    with pytest.raises(ValueError, match="probabilities"):
        calibration_by_route({"short": p[:10]}, y, route)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_no_policy_ever_breaks_the_rules(data: st.DataObject) -> None:
    """Whatever the curves and the rules allow, every policy stays inside `allowed`."""
    n, g = data.draw(st.integers(1, 30)), len(GRID)
    floats = st.floats(0, 1, allow_nan=False)
    curve = np.array(data.draw(st.lists(floats, min_size=n * g, max_size=n * g))).reshape(n, g)
    truth = np.array(data.draw(st.lists(floats, min_size=n * g, max_size=n * g))).reshape(n, g)
    allowed = np.array(data.draw(st.lists(st.booleans(), min_size=n * g, max_size=n * g)))
    allowed = allowed.reshape(n, g)
    code = np.array(
        data.draw(
            st.lists(st.sampled_from(["05", "51", "91", "41", "54", "1A"]), min_size=n, max_size=n)
        )
    )
    network = np.array(["visa"] * n)
    from issuer_seq.rules import causes

    amount = np.array(data.draw(st.lists(st.floats(1, 3000), min_size=n, max_size=n)))
    # an immediate 3-D Secure retry, possible on some rows, with its own model and true p
    possible = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    p3 = {
        name: np.where(possible, data.draw(st.lists(floats, min_size=n, max_size=n)), np.nan)
        for name in ("model", "oracle")
    }
    results = compare_policies(
        {"model": curve},
        truth,
        allowed,
        amount,
        code,
        network,
        causes(code, network),
        GRID,
        grid_seconds(GRID),
        p_now_3ds=p3,
        three_ds_possible=possible,
    )
    for name, r in results.items():
        assert r["violations"] == 0, name
        hard = r["by_cause"].get("hard")
        assert hard is None or hard["retries"] == 0, name
    assert results["oracle"]["value"] >= max(r["value"] for r in results.values()) - 1e-6


def test_the_logged_3ds_retries_are_found() -> None:
    import pandas as pd

    def row(pay: str, attempt: int, s: int, code: str, tds: bool, **over: object) -> dict:
        base = {
            "payment_id": pay, "attempt": attempt, "card_id": pay, "merchant_id": 1,
            "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=s),
            "network": "visa", "initiator": "CIT", "amount": 20.0, "three_ds": tds,
            "response_code": code, "advice_code": None,
        }  # fmt: skip
        return {**base, **over}

    frame = pd.DataFrame(
        [
            row("a", 1, 0, "1A", False),
            row("a", 2, 30, "00", True),  # a's decline retried at once with 3-D Secure
            row("b", 1, 0, "1A", False),
            row("b", 2, 3600, "00", True),  # an hour later: not "at once"
            row("c", 1, 0, "1A", False, initiator="MIT"),  # merchant-initiated
            row("c", 2, 30, "00", True, initiator="MIT"),
            row("d", 1, 0, "1A", True),  # sent with 3-D Secure already
            row("d", 2, 30, "00", True),
            row("e", 1, 0, "05", False),  # not an SCA decline
            row("e", 2, 30, "00", True),
            row("f", 1, 0, "65", False, network="mastercard"),  # Mastercard SCA
            row("f", 2, 20, "05", True, network="mastercard"),
            row("g", 1, 0, "1A", False),  # retried without 3-D Secure
            row("g", 2, 30, "1A", False),
        ]
    )
    declines = np.array([0, 2, 4, 6, 8, 10, 12])
    retries = logged_3ds_retries(frame, rule_view(frame), declines)
    assert retries.tolist() == [1, -1, -1, -1, -1, 11, -1]


def test_evaluate_writes_every_model_and_policy(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = make_sim(tmp_path_factory.mktemp("sim"), seed=21, n_cards=300, days=20)
    run = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            [
                f"data_dir={data}",
                f"run_dir={run}",
                "model=tiny",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=3",
                "trainer.enable_progress_bar=false",
            ],
        )
    train(cfg)
    bench = {"scorers": {"arms": {"onnx_fp32": {"single_request": {"p99_ms": 1.25}}}}}
    (run / "bench.json").write_text(json.dumps(bench))  # LightGBM's arm not measured
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "issuer_seq.cli",
            "evaluate",
            f"data_dir={data}",
            f"run_dir={run}",
            "baselines.models=[lightgbm,logistic]",
            "baselines.trials=1",
            "latency_budget_ms=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((run / "evaluation.json").read_text())
    approval = result["approval"]
    assert {"transformer", "base_rate", "oracle", "lightgbm", "logistic"} <= set(approval)
    for m in approval.values():
        assert {"auroc", "ap_decline", "logloss", "brier", "ece", "oracle_share"} <= set(m)
    assert approval["oracle"]["oracle_share"] == pytest.approx(1.0)
    # the stacked arm: the two models' test probabilities through the stack fitted on
    # validation; reported, never a deployment candidate
    stack = approval["stacked"]["stack"]
    assert stack["models"] == ["transformer", "lightgbm"] and len(stack["weights"]) == 2
    assert stack["rows"] == int((split_of(load_log(data).frame) == VAL).sum())
    assert "stacked: the transformer on " in out.stdout
    # recalibrated to recent outcomes: both models, their change from the fixed calibration
    recal = result["recalibration"]
    assert recal["settings"]["window_h"] == 24 and recal["outcomes_before"] > 0
    for name in ("transformer", "lightgbm"):
        r = recal[name]
        for key in ("logloss", "ece"):
            fixed = r[key] - r[f"{key}_change"]
            assert fixed == pytest.approx(approval[name][key], abs=2e-5), (name, key)
        assert 0 <= r["corrected_share"] <= 1
    assert "recalibrated to the last 24 h of outcomes" in out.stdout
    # the recommendation: among the transformer, LightGBM and the base rate, on their test
    # log losses, citing the bench's latencies and saying when the transformer is worse
    rec = result["recommendation"]
    assert set(rec["logloss"]) == {"transformer", "lightgbm", "base_rate"}
    for name, loss in rec["logloss"].items():
        assert loss == pytest.approx(approval[name]["logloss"], abs=1e-5)
    assert rec["best_logloss_model"] == min(rec["logloss"], key=rec["logloss"].get)
    assert rec["model"] in rec["logloss"]
    assert rec["latency_p99_ms"] == {"base_rate": None, "transformer": 1.25, "lightgbm": None}
    assert "transformer 1.250 ms" in rec["text"] and "lightgbm not measured" in rec["text"]
    # the budget of 1 ms: the transformer's 1.25 ms leaves it out, LightGBM's is unchecked
    assert rec["latency_budget_ms"] == 1.0 and rec["over_budget"] == ["transformer"]
    assert rec["latency_unchecked"] == ["lightgbm"] and rec["model"] != "transformer"
    worse = approval["transformer"]["logloss"] >= approval["base_rate"]["logloss"]
    assert rec["transformer_worse_than_base_rate"] is worse
    assert ("worse than the issuer x MCC base rate" in rec["text"]) is worse
    assert f"recommendation: deploy {rec['model']}" in out.stdout
    # calibration per logged route: every approval model, the routes' rows adding up
    by_route = result["calibration_by_route"]
    assert {"transformer", "lightgbm", "logistic", "oracle"} <= set(by_route)
    routes = set(load_log(data).frame["route"].unique())
    for per_route in by_route.values():
        assert set(per_route) == routes
        assert sum(r["n"] for r in per_route.values()) == result["split"]["test_examples"]
        assert all(0 <= r["ece"] <= 1 for r in per_route.values())
    policies = result["retry"]["policies"]
    assert {"transformer", "oracle", "fixed_5m", "fixed_1d", "fixed_4d", "code_rules"} <= set(
        policies
    )
    assert all(p["violations"] == 0 for p in policies.values())
    # SCA declines at checkout retried at once with 3-D Secure, where the log holds the retry
    assert result["retry"]["now_with_3ds_declines"] > 0
    assert (
        policies["code_rules"]["chosen_delays"]["now_with_3ds"]
        == (result["retry"]["now_with_3ds_declines"])
    )
    assert policies["fixed_1d"]["chosen_delays"]["now_with_3ds"] == 0
    # routing: static, success-rate, an expected-value policy per model that scores each
    # route (the transformer, the LightGBM model evaluate saved), each also recalibrated per
    # issuer x route (conf/evaluate.yaml route_recalibration), and the oracle
    routing = result["routing"]
    assert routing["applicable"] and routing["n_attempts"] == result["split"]["test_examples"]
    models = ["transformer", "transformer_recalibrated", "lightgbm", "lightgbm_recalibrated"]
    policies = ["static", "success_rate", *models, "oracle"]
    assert list(routing["policies"]) == policies
    # its replay warmed up on the outcomes of the 24 h before the test split
    frame = load_log(data).frame
    ts = as_seconds(frame["ts"])
    start = ts[split_of(frame) == TEST].min()
    warm = int(((ts < start) & (ts >= start - 24 * 3600)).sum())
    assert warm > 0
    assert routing["route_recalibration"] == {
        "window_h": 24,
        "step_h": 1,
        "prior_sd": 0.2,
        "min_evidence": 0,
        "max_outcomes": 200_000,
        "warmup_outcomes": warm,
    }
    assert routing["policies"]["oracle"]["share_of_oracle_uplift"]["value"] == pytest.approx(1.0)
    for model in models:  # never above the oracle's value
        value = routing["policies"][model]["share_of_oracle_uplift"]["value"]
        assert value <= 1.0 + 1e-9
    assert routing["dr_covers"]["checks"] == len(policies) * 2
    assert "lightgbm per route: " in out.stdout  # on the SQL features the baselines read
    assert "routing policy" in out.stdout
    assert "transformer_recalibrated: " in out.stdout and "route_recalibration" in out.stdout
    assert "model" in out.stdout and "retry policy" in out.stdout
    # every stage logs its time; each search trial its result
    for stage in (
        "log and run: ",
        "point-in-time store: ",
        "transformer: scoring",
        "SQL features (DuckDB): ",
        "lightgbm: trial 1/1 ",
        "logistic: search and scoring: ",
        "lightgbm retry model: search and curves: ",
        "retry policies: network rules",
        "routing policies on ",
        "recalibration to recent outcomes: ",
    ):
        assert stage in out.stdout, stage
    # the LightGBM model the search chose is saved (bench serves it) and scores as evaluated
    saved = run / "baselines" / "lightgbm"
    assert json.loads((saved / "evaluate_fit.json").read_text())["source"].startswith("issuer-seq")
    frame = load_log(data).frame
    rows = approval_frame(frame, sql_features(frame, threads=1))[split_of(frame) == TEST]
    p = LightGBMModel.load(saved).predict_proba(rows)
    assert approval_metrics(p, rows[LABEL].to_numpy())["logloss"] == pytest.approx(
        approval["lightgbm"]["logloss"], abs=1e-12
    )
    # scripts/segments.py: the same two models, split into segments that add up
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "segments.py"),
            str(data),
            str(run),
            "--bootstrap",
            "30",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seg = json.loads(done.stdout[done.stdout.index("{") :])
    whole = seg["all"]
    assert whole["transformer_logloss"] == pytest.approx(
        approval["transformer"]["logloss"], abs=1e-4
    )
    assert whole["lightgbm_logloss"] == pytest.approx(approval["lightgbm"]["logloss"], abs=1e-4)
    assert whole["gap_contribution"] == pytest.approx(
        whole["transformer_logloss"] - whole["lightgbm_logloss"], abs=2e-4
    )
    parts = [seg["first attempts"], seg["retries"]]
    assert sum(s["rows"] for s in parts) == whole["rows"] == seg["CIT"]["rows"] + seg["MIT"]["rows"]
    assert sum(s["gap_contribution"] for s in parts) == pytest.approx(
        whole["gap_contribution"], abs=2e-5
    )
    after = [s for name, s in seg.items() if name.startswith("retries after")]
    assert after and sum(s["rows"] for s in after) == seg["retries"]["rows"]
    # the whole split's differences, inside their paired-bootstrap intervals
    diff = seg["difference"]
    assert diff["auroc"]["transformer"] == pytest.approx(approval["transformer"]["auroc"], abs=1e-5)
    assert diff["auroc"]["lightgbm"] == pytest.approx(approval["lightgbm"]["auroc"], abs=1e-5)
    for name, d in diff.items():
        assert d["difference"] == pytest.approx(d["transformer"] - d["lightgbm"], abs=2e-5)
        lo, hi = d["ci95"]
        assert lo <= d["difference"] <= hi, name
    assert diff["logloss"]["difference"] == pytest.approx(whole["gap_contribution"], abs=2e-5)
    # scripts/route_recalibration.py: evaluate's routing per setting, the predictions once;
    # at evaluate's own settings it reproduces evaluation.json's recalibrated routing
    out_json = run / "route_recalibration.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "route_recalibration.py"),
            str(data),
            str(run),
            "--min-evidence",
            "0",
            "10.83",
            "--bootstrap",
            "20",
            "--out",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    plain, gated = json.loads(out_json.read_text())
    assert [plain["settings"]["min_evidence"], gated["settings"]["min_evidence"]] == [0, 10.83]
    for model in ("transformer", "lightgbm"):
        name = f"{model}_recalibrated"
        assert plain["share_of_oracle_uplift"][name]["value"] == pytest.approx(
            routing["policies"][name]["share_of_oracle_uplift"]["value"], abs=1e-12
        )
        # the models' own routing does not depend on the setting
        assert gated["share_of_oracle_uplift"][model] == plain["share_of_oracle_uplift"][model]
    for row in (plain, gated):
        assert sum(c["part"] for c in row["by_condition"].values()) == pytest.approx(1.0)


def test_side_runs_of_another_log_or_unusable_are_skipped(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    data, tiny_run, _ = tiny_bundle

    from issuer_seq.evaluate.run import side_runs, trained_on
    from issuer_seq.train.trained_run import TrainedRun

    run = TrainedRun.load(tiny_run)
    assert trained_on(run, Path(run.data_dir) / ".." / Path(run.data_dir).name)
    assert not trained_on(run, tmp_path / "other")
    stale = tmp_path / "stale"
    shutil.copytree(tiny_run, stale, ignore=shutil.ignore_patterns("checkpoints"))
    (stale / "metrics.json").unlink()
    vlog = load_log(data)
    with caplog.at_level("WARNING"):
        out = side_runs(vlog, tmp_path / "other", np.arange(3), {"a": tiny_run, "b": stale})
    assert out == {}
    assert set(side_runs(vlog, data, np.arange(3), {"a": tiny_run, "b": stale})) == {"a"}
    assert "trained on another log" in caplog.text and "not a finished training run" in caplog.text


def test_the_truth_fit_recovers_the_truth_better_than_a_fit_on_outcomes() -> None:
    """evaluate/ceiling.py on a tiny frame: soft labels carry less noise than outcomes, so
    the fit to the truth lands closer to E[p_approve | features]."""
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.normal(size=n)
    p_true = 1 / (1 + np.exp(-(1.0 + 1.5 * x)))
    y = (rng.random(n) < p_true).astype(float)
    data = pd.DataFrame({"x": x, "noise": rng.normal(size=n), LABEL: y})
    split = np.repeat([TRAIN, VAL, TEST], [2400, 800, 800])
    test = split == TEST
    on_truth = fit_to_truth(data, p_true, split, threads=1).predict_proba(data)[test]
    parts = {k: data[split == code] for k, code in (("train", TRAIN), ("val", VAL))}
    on_outcomes = LightGBMModel(n_jobs=1).fit(parts["train"], parts["val"]).predict_proba(data)
    err_truth = np.abs(on_truth - p_true[test]).mean()
    assert err_truth < 0.015
    assert err_truth < 0.3 * np.abs(on_outcomes[test] - p_true[test]).mean()
    with pytest.raises(ValueError, match="same attempts"):
        fit_to_truth(data, p_true[:-1], split)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        fit_to_truth(data, np.where(test, np.nan, p_true), split)


def test_ceiling_script_fits_outcomes_and_truth(sim_dir: Path, tmp_path: Path) -> None:
    """scripts/ceiling.py: the trees on outcomes, on the truth and on the truth with latent
    state, and the transformer on the truth, scored on the test outcomes against the base
    rate and the oracle."""
    run = tmp_path / "truth_run"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "ceiling.py"),
            str(sim_dir),
            "--threads=1",
            "--latents",
            f"--transformer={run}",
            "model=tiny",
            "trainer.limit_train_batches=5",
            "trainer.enable_progress_bar=false",
            "versus_trees.enabled=false",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert set(result) == {
        "base_rate",
        "oracle",
        "lightgbm_outcomes",
        "lightgbm_truth",
        "lightgbm_truth_with_funds_hazard",
        "lightgbm_truth_with_outage_and_regime",
        "lightgbm_truth_with_all_latents",
        "transformer_truth",
    }
    assert result["base_rate"]["oracle_share"] == 0.0
    assert result["oracle"]["oracle_share"] == 1.0
    # soft labels carry less noise than outcomes: on a small log the truth fit wins clearly
    assert result["lightgbm_truth"]["logloss"] < result["lightgbm_outcomes"]["logloss"]
    # the hidden state the log lacks: given it, the same trees come closer to the oracle
    latent = result["lightgbm_truth_with_all_latents"]
    assert latent["logloss"] < result["lightgbm_truth"]["logloss"]
    assert latent["oracle_share"] > result["lightgbm_truth"]["oracle_share"]
    assert (run / "metrics.json").exists()
    trained = json.loads((run / "metrics.json").read_text())["approval"]["test"]["logloss"]
    assert result["transformer_truth"]["logloss"] == round(trained, 4)


def test_tree_ablation_script_drops_each_group(sim_dir: Path) -> None:
    """scripts/ablate_trees.py: every named feature group matches columns, each fit is
    scored, and the reach of the card's history is counted."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ablate_trees.py"), str(sim_dir), "--threads=1"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout[done.stdout.index("{") :])
    fits = result["dropped_group"]
    assert fits["none"]["columns_dropped"] == 0
    assert len(fits) == 5 and all(f["columns_dropped"] > 0 for n, f in fits.items() if n != "none")
    assert all(0.5 < f["auroc"] < 1 for f in fits.values())
    assert 0 < result["same_merchant_beyond_32_events"] < result["same_merchant_before"] < 1
