"""The routing section of `evaluate` and of the report, on a small routed simulated world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.routing import (
    RouteWarmup,
    evaluate_routing,
    recalibration_verdicts,
    value_with_intervals,
    warmed_success_rate,
)
from issuer_seq.recalibration import RouteRecalibrationSettings, recalibrated_routes
from issuer_seq.report.report import routing_rows
from issuer_seq.routing import (
    NOT_HELD,
    RouteTable,
    choose_route,
    estimate_all,
    success_rate_policy,
    truth_matrix,
    value_policies,
)
from issuer_seq.routing.policies import as_seconds
from issuer_seq.routing.value import with_references
from issuer_seq.schema import load_log
from tests.conftest import report_with_routing

N_BOOT = 200


class World:
    """The log split by time: `history` (first 70%) and `test`, the truth of the test rows,
    meta.json, and a stand-in model: the truth plus noise."""

    def __init__(self, data: Path) -> None:
        frame = load_log(data).frame
        self.meta: dict[str, Any] = json.loads((data / "meta.json").read_text())
        truth = pd.read_parquet(data / "truth.parquet").set_index("txn_id")
        cut = frame["ts"].quantile(0.7)
        test = (frame["ts"] >= cut).to_numpy()
        self.frame = frame
        self.history = frame[~test].reset_index(drop=True)
        self.test = frame[test].reset_index(drop=True)
        self.truth = truth.loc[self.test["txn_id"]].reset_index()
        self.truth_by_txn = truth
        self.table = RouteTable.from_meta(self.meta)
        self.p_true = truth_matrix(self.truth, self.table.names)
        rng = np.random.default_rng(3)
        self.noisy = np.clip(self.p_true + rng.normal(0.0, 0.05, self.p_true.shape), 0.0, 1.0)

    def run(self, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "predictors": {"noisy": self.noisy},
            "history": self.history,
            "n_bootstrap": N_BOOT,
        }
        args.update(kw)
        return evaluate_routing(self.test, self.truth, self.meta, **args)


@pytest.fixture(scope="module")
def world(sim_dir: Path) -> World:
    return World(sim_dir)


@pytest.fixture(scope="module")
def section(world: World) -> dict[str, Any]:
    return world.run()


def test_policies_are_valued_with_the_truth(world: World, section: dict[str, Any]) -> None:
    assert section["applicable"] and section["attempts"] == "all"
    assert section["n_attempts"] == len(world.test)
    pol = section["policies"]
    assert list(pol) == ["static", "success_rate", "noisy", "oracle"]
    assert [p["kind"] for p in pol.values()] == [
        "static",
        "success_rate",
        "expected_value",
        "oracle",
    ]
    # the oracle's share of its own uplift is 1 and static's 0, in every resample
    for key in ("share_of_oracle_uplift", "share_of_oracle_approval_uplift"):
        assert pol["oracle"][key] == {"value": 1.0, "low": 1.0, "high": 1.0}
        assert pol["static"][key] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert pol["static"]["uplift_value"]["value"] == 0.0
    # the points are routing/value.py's, the intervals hold them
    prio = world.table.priority(world.test["merchant_id"])
    amount = world.test["amount"].to_numpy()
    sr = warmed_success_rate(world.history, world.test, world.table)
    ev = choose_route(world.noisy, prio, amount, world.table.fees).probs
    table = value_policies(
        {"success_rate": sr, "noisy": ev}, world.p_true, prio, amount, world.table.fees
    ).set_index("policy")
    for name, p in pol.items():
        assert p["value"]["value"] == pytest.approx(table.loc[name, "value"], rel=1e-9)
        assert p["approvals"]["value"] == pytest.approx(table.loc[name, "approvals"], rel=1e-9)
        assert p["approval_rate"] == pytest.approx(table.loc[name, "approval_rate"], rel=1e-9)
        for key in ("approvals", "value", "uplift_value", "share_of_oracle_uplift"):
            assert p[key]["low"] <= p[key]["value"] <= p[key]["high"], (name, key)
        # no policy is worth more than the oracle, and a model near the truth gains
        assert p["value"]["value"] <= pol["oracle"]["value"]["value"] + 1e-9
    assert pol["noisy"]["uplift_value"]["low"] > 0
    json.dumps(section, allow_nan=False)  # evaluation.json holds no NaN or infinity


def test_the_truth_as_a_predictor_is_the_oracle(world: World) -> None:
    out = world.run(predictors={"exact": world.p_true}, n_bootstrap=20)
    assert out["policies"]["exact"]["share_of_oracle_uplift"]["value"] == pytest.approx(1.0)
    assert out["policies"]["exact"]["value"] == out["policies"]["oracle"]["value"]


def test_off_policy_estimates_sit_beside_the_truth(world: World, section: dict[str, Any]) -> None:
    ope = pd.DataFrame(section["ope"])
    assert len(ope) == 4 * 2 * 3  # policies x rewards x estimators
    assert set(ope["estimator"]) == {"ips", "snips", "dr"}
    dr = ope[ope["estimator"] == "dr"].set_index(["policy", "reward"])
    # DR's reward model: the predictor's own matrix, else the logged issuer x route rate
    assert (dr.loc["noisy", "reward_model"] == "noisy").all()
    assert (dr.loc["static", "reward_model"] == "issuer_route_rate").all()
    assert ope["reward_model"][ope["estimator"] != "dr"].isna().all()
    # the truth is the policies' valuation per attempt
    per_attempt = {
        n: p["value"]["value"] / section["n_attempts"] for n, p in section["policies"].items()
    }
    for (policy, reward), row in dr.iterrows():
        if reward == "value":
            assert row["truth"] == pytest.approx(per_attempt[policy], rel=1e-9)
        assert row["low"] <= row["estimate"] <= row["high"]
        assert row["covers"] == (row["low"] <= row["truth"] <= row["high"])
        assert isinstance(row.get("why"), str) != bool(row["covers"])
    # the estimates are routing/ope.py's (all intervals share one set of payment resamples)
    prio = world.table.priority(world.test["merchant_id"])
    amount = world.test["amount"].to_numpy()
    ev = choose_route(world.noisy, prio, amount, world.table.fees).probs
    ok = (world.test["response_code"] == "00").to_numpy(float)
    ref = estimate_all(
        ev,
        world.table.index(world.test["route"].to_numpy()),
        world.test["route_propensity"].to_numpy(),
        ok,
        world.noisy,
        groups=world.test["payment_id"],
        n_bootstrap=N_BOOT,
    )
    mine = ope[(ope["policy"] == "noisy") & (ope["reward"] == "approval")].set_index("estimator")
    for name, est in ref.items():
        assert mine.loc[name, "estimate"] == pytest.approx(est.value, rel=1e-9)
        width = est.high - est.low
        assert mine.loc[name, "high"] - mine.loc[name, "low"] == pytest.approx(width, rel=0.3)
    assert section["dr_covers"]["checks"] == len(dr)
    assert section["dr_covers"]["covered"] == int(dr["covers"].sum())
    # on this world the logged routes and propensities recover most policies' values
    assert dr["covers"].mean() >= 0.75


def test_success_rate_routing_warms_up_on_the_history(world: World) -> None:
    whole = pd.concat([world.history, world.test], ignore_index=True)
    full = success_rate_policy(
        whole["issuer_id"],
        whole["ts"],
        world.table.index(whole["route"].to_numpy()),
        (whole["response_code"] == "00").to_numpy(),
        world.table.priority(whole["merchant_id"].to_numpy()),
    ).probs[len(world.history) :]
    assert np.array_equal(warmed_success_rate(world.history, world.test, world.table), full)
    cold = warmed_success_rate(world.history.iloc[:0], world.test, world.table)
    assert not np.array_equal(cold, full)


def test_the_test_rows_order_does_not_matter(world: World, section: dict[str, Any]) -> None:
    perm = np.random.default_rng(0).permutation(len(world.test))
    out = evaluate_routing(
        world.test.iloc[perm].reset_index(drop=True),
        world.truth.iloc[perm].reset_index(drop=True),
        world.meta,
        {"noisy": world.noisy[perm]},
        history=world.history,
        n_bootstrap=N_BOOT,
    )
    for name, p in section["policies"].items():
        assert out["policies"][name]["value"]["value"] == pytest.approx(
            p["value"]["value"], rel=1e-9
        )


def test_reaction_is_compared_on_the_episodes_the_oracle_reacts_to(
    section: dict[str, Any],
) -> None:
    react = section["reaction"]
    assert react["episodes_in_test"] > 0
    k = react["compared_on"]
    assert k == react["oracle_status"].get("reacted", 0) == len(react["episodes"])
    pol = react["policies"]
    assert pol["oracle"]["reacted"] == k and pol["oracle"]["never"] == 0
    for p in pol.values():
        assert len(p["hours"]) == k and p["reacted"] + p["never"] == k
    if k:
        # a static router never moves off its first route
        assert pol["static"]["reacted"] == 0 and pol["static"]["median_is_never"]
        assert pol["static"]["median_hours"] is None
        assert pol["oracle"]["median_hours"] is not None


def test_the_uplift_is_split_by_the_attempts_condition(
    world: World, section: dict[str, Any]
) -> None:
    by = section["by_condition"]
    assert set(by) <= {"route_outage", "issuer_episode", "steady"} and "steady" in by
    assert sum(c["attempts"] for c in by.values()) == section["n_attempts"]
    assert sum(c["oracle_uplift_share"] for c in by.values()) == pytest.approx(1.0)
    # the episodes of meta.json that overlap the test split mark their issuer's attempts
    assert by.get("issuer_episode", {}).get("attempts", 0) > 0
    pol = section["policies"]
    for c in by.values():
        shares = c["share_of_oracle_uplift"]
        assert list(shares) == list(pol)
        if shares["oracle"] is not None:
            assert shares["static"] == 0.0 and shares["oracle"] == pytest.approx(1.0)
    # weighted by the conditions' parts, the shares are the policy's whole share
    if all(c["share_of_oracle_uplift"]["oracle"] is not None for c in by.values()):
        for name in pol:
            whole = sum(
                c["oracle_uplift_share"] * c["share_of_oracle_uplift"][name] for c in by.values()
            )
            assert whole == pytest.approx(pol[name]["share_of_oracle_uplift"]["value"], rel=1e-6)


def replay_by_hand(
    world: World, frame: pd.DataFrame, p: np.ndarray, chosen: RouteRecalibrationSettings
) -> np.ndarray:
    """`recalibrated_routes` over `frame`'s attempts in time order, every outcome recorded
    through its logged route; rows back in `frame`'s order."""
    order = np.argsort(as_seconds(frame["ts"]), kind="stable")
    ordered = frame.iloc[order].reset_index(drop=True)
    replayed = recalibrated_routes(
        p[order],
        ordered["issuer_id"].to_numpy(object),
        world.table.index(ordered["route"].to_numpy()),
        (ordered["response_code"] == "00").to_numpy(),
        as_seconds(ordered["ts"]).astype(float),
        world.table.names,
        chosen,
    )
    manual = np.empty_like(replayed)
    manual[order] = replayed
    return manual


def test_route_recalibration_is_an_arm_of_each_predictor(world: World, tmp_path: Path) -> None:
    """`noisy_recalibrated` is the expected-value policy on the noisy matrix replayed through
    `recalibrated_routes` in time order, every test attempt's outcome recorded (retries too,
    with first attempts only valued)."""
    chosen = RouteRecalibrationSettings(window_h=12, prior_sd=0.3)
    manual = replay_by_hand(world, world.test, world.noisy, chosen)
    for attempts in ("all", "first"):
        out = world.run(recalibration=chosen, attempts=attempts, n_bootstrap=20)
        by_hand = world.run(
            predictors={"noisy": world.noisy, "by_hand": manual}, attempts=attempts, n_bootstrap=20
        )
        arm_name = "noisy_recalibrated"
        arm = out["policies"][arm_name]
        assert arm["kind"] == "expected_value_recalibrated"
        assert arm["value"] == by_hand["policies"]["by_hand"]["value"]
        assert out["policies"]["noisy"]["value"] == by_hand["policies"]["noisy"]["value"]
        assert out["route_recalibration"]["prior_sd"] == 0.3
        # its change over the model's own policy, paired: the same resamples
        versus = arm["versus"]
        assert versus["policy"] == "noisy" and "versus" not in out["policies"]["noisy"]
        change = versus["share_of_oracle_uplift_change"]
        shares = [
            out["policies"][k]["share_of_oracle_uplift"]["value"] for k in ("noisy", arm_name)
        ]
        assert change["value"] == pytest.approx(shares[1] - shares[0], abs=1e-12)
        assert change["low"] <= change["value"] <= change["high"]
    # the report shows the arm and says whether to serve it
    summary = report_with_routing(out, tmp_path)
    assert "noisy_recalibrated" in [r["policy"] for r in summary["routing_policies"]]
    page = (tmp_path / "report.html").read_text()
    assert "Recalibrated per issuer x route" in page
    assert "noisy_recalibrated: " in page and "route_recalibration" in page
    assert world.run(n_bootstrap=20)["route_recalibration"] is None
    assert "noisy_recalibrated" not in world.run(n_bootstrap=20)["policies"]


def test_route_recalibration_warms_up_on_the_attempts_before_the_split(world: World) -> None:
    """With a warm-up, the replay records the outcomes of the attempts before the split
    first (each through its logged route, with the predictor's p there), as a service that
    ran before would have: the arm equals the replay of warm-up and test attempts by hand,
    sliced to the test's; the warm-up moves the test's first decisions."""
    chosen = RouteRecalibrationSettings(window_h=12, prior_sd=0.3)
    hist = world.history
    start = as_seconds(world.test["ts"]).min()
    warm = hist[as_seconds(hist["ts"]) >= start - 12 * 3600].reset_index(drop=True)
    rng = np.random.default_rng(5)
    p_true = truth_matrix(world.truth_by_txn.loc[warm["txn_id"]].reset_index(), world.table.names)
    warm_p = np.clip(p_true + rng.normal(0.0, 0.05, p_true.shape), 0.0, 1.0)
    warmup = RouteWarmup(warm, {"noisy": warm_p})

    both = pd.concat([warm, world.test], ignore_index=True)
    manual = replay_by_hand(world, both, np.concatenate([warm_p, world.noisy]), chosen)
    manual = manual[len(warm) :]  # the test's rows (the warm-up's all come first in time)
    out = world.run(recalibration=chosen, warmup=warmup, n_bootstrap=20)
    by_hand = world.run(predictors={"noisy": world.noisy, "by_hand": manual}, n_bootstrap=20)
    assert out["policies"]["noisy_recalibrated"]["value"] == by_hand["policies"]["by_hand"]["value"]
    assert out["route_recalibration"]["warmup_outcomes"] == len(warm) > 0
    cold = world.run(recalibration=chosen, n_bootstrap=20)
    assert cold["route_recalibration"]["warmup_outcomes"] == 0
    assert (
        out["policies"]["noisy_recalibrated"]["value"]
        != cold["policies"]["noisy_recalibrated"]["value"]
    )
    # an attempt through a route the table lacks is left out; bad warm-ups are named
    odd = warm.copy()
    odd.loc[0, "route"] = "not_a_route"
    left = world.run(
        recalibration=chosen, warmup=RouteWarmup(odd, {"noisy": warm_p}), n_bootstrap=20
    )
    assert left["route_recalibration"]["warmup_outcomes"] == len(warm) - 1
    with pytest.raises(IssuerSeqError, match="warm-up has no p of predictor 'noisy'"):
        world.run(recalibration=chosen, warmup=RouteWarmup(warm, {"other": warm_p}))
    with pytest.raises(IssuerSeqError, match="warm-up predictor 'noisy' has shape"):
        world.run(recalibration=chosen, warmup=RouteWarmup(warm, {"noisy": warm_p[1:]}))
    with pytest.raises(IssuerSeqError, match="must precede the test split"):
        world.run(recalibration=chosen, warmup=RouteWarmup(world.test, {"noisy": world.noisy}))
    with pytest.raises(IssuerSeqError, match=r"lack columns \['route'\]"):
        world.run(recalibration=chosen, warmup=RouteWarmup(warm.drop(columns="route"), {}))


def test_first_attempts_only(world: World) -> None:
    out = world.run(attempts="first", n_bootstrap=20)
    assert out["attempts"] == "first"
    assert out["n_attempts"] == int((world.test["attempt"] == 1).sum())
    with pytest.raises(IssuerSeqError, match="attempts must be one of"):
        world.run(attempts="retries")


def test_a_log_without_routes_or_propensities_is_not_applicable(world: World) -> None:
    plain = world.test.drop(columns=["route", "route_propensity"])
    out = evaluate_routing(plain, world.truth, world.meta, {})
    assert out["applicable"] is False and "one route" in out["note"]
    # routes without the logging policy's propensities: nothing to weight the estimates by
    out = evaluate_routing(world.test.drop(columns=["route_propensity"]), None, world.meta, {})
    assert out["applicable"] is False and out["note"].startswith("no route_propensity")
    out = evaluate_routing(world.test.iloc[:0], world.truth.iloc[:0], world.meta, {})
    assert out == {"applicable": False, "note": "no test attempts"}


def test_bad_input_is_named(world: World) -> None:
    with pytest.raises(IssuerSeqError, match="predictor 'short' has shape"):
        world.run(predictors={"short": world.noisy[:-1]})
    missing = world.noisy.copy()
    missing[np.isfinite(world.p_true)] = np.nan
    with pytest.raises(IssuerSeqError, match="predictor 'holes'"):
        world.run(predictors={"holes": missing})
    with pytest.raises(IssuerSeqError, match="reserved"):
        world.run(predictors={"oracle": world.noisy})
    with pytest.raises(IssuerSeqError, match=r"history .* lacks \['route'\]"):
        world.run(history=world.history.drop(columns=["route"]))
    with pytest.raises(IssuerSeqError, match="txn_id differs"):
        evaluate_routing(world.test, world.truth.iloc[::-1], world.meta, {})


def test_the_report_renders_the_routing_section(section: dict[str, Any], tmp_path: Path) -> None:
    summary = report_with_routing(section, tmp_path)
    rows = {r["policy"]: r for r in summary["routing_policies"]}
    assert list(rows) == ["static", "success_rate", "noisy", "oracle"]
    assert rows["oracle"]["share_of_oracle_uplift"] == "100.0%"
    assert "[" in rows["noisy"]["value"]  # the value with its interval
    assert summary["figures"]["routing_ope"] == "routing_ope.png"
    assert (tmp_path / "routing_ope.png").read_bytes()[:4] == b"\x89PNG"
    if section["reaction"]["compared_on"]:
        assert (tmp_path / "routing_reaction.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Routing</h2>" in page and "Off-policy estimates against the truth" in page
    assert "covers the truth in" in page
    assert "Where the oracle's uplift lies" in page and "<td>steady</td>" in page
    # a log without routes: the section says why it is empty
    summary = report_with_routing(
        {"applicable": False, "note": "one route: none"}, tmp_path / "plain"
    )
    assert summary["routing_policies"] == [] and summary["figures"]["routing_ope"] is None
    assert "Not applicable: one route: none" in (tmp_path / "plain" / "report.html").read_text()
    assert routing_rows({"approval": {}}) == []


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), n_routes=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_intervals_hold_routing_values_points(n: int, n_routes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    held = rng.random((n, n_routes)) < 0.6
    held[np.arange(n), rng.integers(0, n_routes, n)] = True  # every merchant holds one
    rank = np.where(held, rng.random((n, n_routes)), np.inf).argsort(axis=1).argsort(axis=1)
    prio = np.where(held, rank, NOT_HELD)
    p_true = np.where(held, rng.random((n, n_routes)), np.nan)
    amount = rng.uniform(1, 500, n)
    fees = rng.uniform(0, 0.2, n_routes)
    other = np.where(held, rng.random((n, n_routes)), 0.0)
    other /= other.sum(axis=1, keepdims=True)
    policies = with_references({"other": other}, p_true, prio, amount, fees)
    groups = rng.integers(0, max(1, n // 2), n).astype(str)
    out = value_with_intervals(policies, p_true, amount, fees, groups, n_bootstrap=50, seed=seed)
    ref = value_policies({"other": other}, p_true, prio, amount, fees).set_index("policy")
    assert list(out) == ["static", "other", "oracle"]
    for name, row in out.items():
        assert row["value"]["value"] == pytest.approx(ref.loc[name, "value"], rel=1e-9, abs=1e-9)
        for key in ("approvals", "value", "uplift_value", "uplift_approvals"):
            assert row[key]["low"] <= row[key]["high"], key
    assert out["static"]["uplift_value"]["value"] == 0.0
    # per attempt the oracle's value is the most any policy reaches, so in every resample of
    # the payments too: its quantiles dominate, and no share passes 1
    assert out["oracle"]["uplift_value"]["low"] >= -1e-9
    assert out["other"]["value"]["low"] <= out["oracle"]["value"]["low"] + 1e-9
    assert out["other"]["value"]["high"] <= out["oracle"]["value"]["high"] + 1e-9
    share = out["other"]["share_of_oracle_uplift"]["high"]
    assert share is None or share <= 1 + 1e-9


def test_evaluate_says_whether_to_serve_the_recalibrated_routing() -> None:
    def routing(low: float, high: float) -> dict[str, Any]:
        change = {"value": (low + high) / 2, "low": low, "high": high}
        versus = {"policy": "transformer", "share_of_oracle_uplift_change": change}
        return {"policies": {"transformer": {}, "transformer_recalibrated": {"versus": versus}}}

    (ahead,) = recalibration_verdicts(routing(0.02, 0.08))
    assert ahead.startswith("transformer_recalibrated: +5.0 points of the oracle's uplift over")
    assert "(95%: +2.0 to +8.0): ahead; serve with route_recalibration.enabled=true" in ahead
    (level,) = recalibration_verdicts(routing(-0.01, 0.05))
    assert level.endswith("not ahead; leave route_recalibration off")
    assert recalibration_verdicts({"policies": {"transformer": {}}}) == []
