"""Routing policies valued with the truth, and the reaction to issuer-by-route episodes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import RetryEconomics
from issuer_seq.routing.compare import ope_against_truth
from issuer_seq.routing.policies import (
    SuccessRateConfig,
    choose_route,
    sample_routes,
    static_policy,
    success_rate_policy,
)
from issuer_seq.routing.reaction import (
    NEVER,
    NO_HISTORY,
    NOT_EXPOSED,
    REACTED,
    episode_reactions,
    median_reaction_hours,
)
from issuer_seq.routing.routes import NOT_HELD
from issuer_seq.routing.value import (
    attempt_conditions,
    truth_matrix,
    uplift_by_condition,
    value_policies,
    with_references,
)

ECON = RetryEconomics(margin=0.1)


def test_value_policies_by_hand() -> None:
    # two attempts; the first merchant holds routes 0 and 1, the second 1 and 2
    prio = np.array([[0, 1, NOT_HELD], [NOT_HELD, 0, 1]])
    p_true = np.array([[0.5, 0.9, np.nan], [np.nan, 0.6, 0.8]])
    amount = np.array([100.0, 10.0])
    fees = np.array([0.0, 1.0, 0.0])
    # values: attempt 0 -> 5.0 / 8.0; attempt 1 -> 5.0 / 8.0 ... per route:
    # a0: r0 0.5*100*0.1 - 0 = 5, r1 0.9*10 - 1 = 8; a1: r1 0.6 - 1 = -0.4, r2 0.8 - 0 = 0.8
    half = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    table = value_policies({"half": half}, p_true, prio, amount, fees, ECON)
    assert list(table["policy"]) == ["static", "half", "oracle"]
    rows = table.set_index("policy")
    assert rows.loc["static", "approvals"] == pytest.approx(0.5 + 0.6)
    assert rows.loc["static", "value"] == pytest.approx(5.0 - 0.4)
    assert rows.loc["oracle", "approvals"] == pytest.approx(0.9 + 0.8)
    assert rows.loc["oracle", "value"] == pytest.approx(8.0 + 0.8)
    assert rows.loc["half", "approvals"] == pytest.approx(0.7 + 0.7)
    assert rows.loc["half", "value"] == pytest.approx(6.5 + 0.2)
    assert rows.loc["half", "uplift_value"] == pytest.approx(6.7 - 4.6)
    assert rows.loc["half", "share_of_oracle_uplift"] == pytest.approx(2.1 / 4.2)
    assert rows.loc["half", "share_of_oracle_approval_uplift"] == pytest.approx(0.3 / 0.6)
    assert rows.loc["static", "share_of_oracle_uplift"] == 0.0
    assert rows.loc["oracle", "share_of_oracle_uplift"] == 1.0
    assert rows.loc["half", "approval_rate"] == pytest.approx(0.7)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_no_policy_beats_the_oracle(n: int, n_routes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prio = np.argsort(rng.random((n, n_routes)), axis=1).astype(np.int64)
    prio[rng.random((n, n_routes)) < 0.4] = NOT_HELD
    prio[np.arange(n), rng.integers(0, n_routes, n)] = n_routes  # every merchant holds one
    cand = prio != NOT_HELD
    p_true = np.where(cand, rng.random((n, n_routes)), np.nan)
    random_policy = np.where(cand, rng.random((n, n_routes)), 0.0)
    random_policy /= random_policy.sum(axis=1, keepdims=True)
    amount, fees = rng.uniform(1, 300, n), rng.uniform(0, 2, n_routes)
    model = choose_route(np.where(cand, rng.random((n, n_routes)), np.nan), prio, amount, fees)
    table = value_policies(
        {"random": random_policy, "model": model.probs}, p_true, prio, amount, fees
    ).set_index("policy")
    assert (table["value"] <= table.loc["oracle", "value"] + 1e-9).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"p_true": np.array([[0.5, np.nan]])}, "NaN for a route the merchant holds"),
        ({"prio": np.array([[0, NOT_HELD]])}, "lacks"),
        ({"policies": {"oracle": np.array([[1.0, 0.0]])}}, "reserved"),
        ({"policies": {"x": np.array([[0.5, 0.6]])}}, "sum to 1"),
        (
            {
                "policies": {"x": np.array([[0.0, 1.0]])},
                "prio": np.array([[0, NOT_HELD]]),
                "p_true": np.array([[0.5, np.nan]]),
            },
            "lacks",
        ),
    ],
)
def test_value_policies_rejects_bad_input(change: dict, match: str) -> None:
    args = {
        "policies": {},
        "p_true": np.array([[0.5, 0.7]]),
        "prio": np.array([[0, 1]]),
    } | change
    with pytest.raises(IssuerSeqError, match=match):
        value_policies(args["policies"], args["p_true"], args["prio"], np.ones(1), np.zeros(2))


# --- reaction to episodes ------------------------------------------------------------------

ROUTES = ["r0", "r1"]
H = 3600.0


def one_issuer(shares_before: list[float], shares_during: list[float]) -> dict:
    """Hourly attempts of issuer A, all at merchants with r0 first and r1 second; the episode
    on r0 starts at the first `during` attempt and lasts a week."""
    share = np.array(shares_before + shares_during)
    n = len(share)
    start = len(shares_before) * H
    return {
        "episodes": pd.DataFrame(
            {"issuer_id": ["A"], "route": ["r0"], "start": [start], "end": [start + 168 * H]}
        ),
        "issuer_ids": np.array(["A"] * n),
        "ts": np.arange(n) * H,
        "probs": np.stack([share, 1 - share], axis=1),
        "priority": np.tile([0, 1], (n, 1)),
        "route_names": ROUTES,
    }


def test_reaction_is_the_first_hour_from_which_the_policy_stays_off() -> None:
    # on r0 before; after start: 5 more attempts on it, a 3-attempt blip away, back, then gone
    during = [1.0] * 5 + [0.0] * 3 + [1.0] + [0.0] * 30
    got = episode_reactions(**one_issuer([1.0] * 60, during), n_pre=50, n_hold=10)
    row = got.iloc[0]
    assert row["status"] == REACTED and row["pre_share"] == 1.0
    assert row["reaction_hours"] == 9.0  # the blip (hours 5-7) is shorter than n_hold
    assert row["n_during"] == len(during) and row["episode_hours"] == 168.0
    short_hold = episode_reactions(**one_issuer([1.0] * 60, during), n_hold=3)
    assert short_hold["reaction_hours"].iloc[0] == 5.0


def test_reaction_uses_the_share_not_a_draw_and_half_the_pre_share() -> None:
    before = [0.9] * 50  # an exploring policy: 0.9 on r0
    moved = episode_reactions(**one_issuer(before, [0.9] * 4 + [0.05] * 20), n_hold=10)
    assert moved["status"].iloc[0] == REACTED and moved["reaction_hours"].iloc[0] == 4.0
    halfway = episode_reactions(**one_issuer(before, [0.5] * 40), n_hold=10)
    assert halfway["status"].iloc[0] == NEVER and np.isnan(halfway["reaction_hours"].iloc[0])


def test_reaction_statuses_and_the_median() -> None:
    assert episode_reactions(**one_issuer([0.0] * 20, [0.0] * 20))["status"].iloc[0] == NOT_EXPOSED
    assert episode_reactions(**one_issuer([], [1.0] * 20))["status"].iloc[0] == NO_HISTORY
    # an episode that ends before the policy has stayed off n_hold attempts is censored
    args = one_issuer([1.0] * 20, [1.0] * 5 + [0.0] * 30)
    args["episodes"]["end"] = args["episodes"]["start"] + 12 * H
    assert episode_reactions(**args, n_hold=10)["status"].iloc[0] == NEVER
    table = pd.DataFrame(
        {
            "status": [REACTED, REACTED, NEVER, NOT_EXPOSED, REACTED],
            "reaction_hours": [2.0, 6.0, np.nan, np.nan, 4.0],
        }
    )
    assert median_reaction_hours(table) == 5.0  # 2, 4, 6, inf
    table.loc[0, "status"] = NEVER
    assert median_reaction_hours(table) == np.inf  # 4, 6, inf, inf
    assert np.isnan(median_reaction_hours(table[table["status"] == NOT_EXPOSED]))


def test_reaction_counts_only_the_issuers_attempts_at_merchants_sending_there() -> None:
    args = one_issuer([1.0] * 30, [1.0] * 30)
    n = len(args["ts"])
    # all off r0: another issuer's attempts, A's at merchants without r0, and A's at merchants
    # with r0 second (which count only in the "held" scope)
    extra_ts = np.arange(n) * H + 0.5 * H
    issuer = np.concatenate([args["issuer_ids"], ["B"] * n, ["A"] * n, ["A"] * n])
    ts = np.concatenate([args["ts"], extra_ts, extra_ts + 0.1 * H, extra_ts + 0.2 * H])
    probs = np.concatenate([args["probs"], np.tile([0.0, 1.0], (3 * n, 1))])
    prio = np.concatenate(
        [
            args["priority"],
            np.tile([0, 1], (n, 1)),
            np.tile([NOT_HELD, 0], (n, 1)),
            np.tile([1, 0], (n, 1)),
        ]
    )
    order = np.argsort(ts, kind="stable")
    args.update(issuer_ids=issuer[order], ts=ts[order], probs=probs[order], priority=prio[order])
    first = episode_reactions(**args).iloc[0]
    assert first["status"] == NEVER and first["pre_share"] == 1.0 and first["n_during"] == 30
    held = episode_reactions(**args, scope="held").iloc[0]
    assert held["pre_share"] == pytest.approx(0.5) and held["n_during"] == 60
    # held: every other eligible attempt is off r0, never n_hold in a row
    assert held["status"] == NEVER


def test_the_static_policy_never_reacts_whatever_the_merchant_mix() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    prio = np.where(rng.random(n) < 0.3, 0, 1)[:, None] * np.array([[1, -1]]) + np.array([[0, 1]])
    ts = np.arange(n) * 600.0
    episodes = pd.DataFrame(
        {"issuer_id": ["A"], "route": ["r0"], "start": [ts[1000]], "end": [ts[-1]]}
    )
    common = {"issuer_ids": ["A"] * n, "ts": ts, "priority": prio, "route_names": ROUTES}
    static = static_policy(prio)
    assert episode_reactions(episodes, probs=static, **common)["status"].iloc[0] == NEVER
    # with every holding merchant counted, runs of merchants that prefer r1 look like a move
    held = episode_reactions(episodes, probs=static, **common, scope="held").iloc[0]
    assert held["status"] == REACTED


def test_reaction_rejects_bad_input() -> None:
    args = one_issuer([1.0] * 5, [1.0] * 5)
    with pytest.raises(IssuerSeqError, match="unknown routes"):
        episode_reactions(**(args | {"episodes": args["episodes"].assign(route="r9")}))
    with pytest.raises(IssuerSeqError, match="lack columns"):
        episode_reactions(**(args | {"episodes": args["episodes"].drop(columns="end")}))
    with pytest.raises(IssuerSeqError, match="time order"):
        episode_reactions(**(args | {"ts": args["ts"][::-1]}))


def test_the_oracle_reacts_at_once_and_success_rate_routing_within_its_window() -> None:
    """An issuer approves 90% through r0 (its merchants' first priority) and 80% through r1;
    for two days r0 drops to 20%. The log explores (80% static, 20% uniform)."""
    rng = np.random.default_rng(0)
    n = 12 * 24 * 12  # one attempt every 5 minutes for 12 days
    ts = np.arange(n) * 300.0
    start, end = 5 * 86_400.0, 7 * 86_400.0
    episode = (ts >= start) & (ts < end)
    p_true = np.stack([np.where(episode, 0.2, 0.9), np.full(n, 0.8)], axis=1)
    prio = np.tile([0, 1], (n, 1))
    logging = 0.8 * static_policy(prio) + 0.1
    route, _ = sample_routes(logging, rng)
    approved = rng.random(n) < p_true[np.arange(n), route]
    oracle = choose_route(p_true, prio, np.full(n, 100.0), np.zeros(2)).probs
    sr = success_rate_policy(
        np.zeros(n), ts, route, approved, prio, SuccessRateConfig(window=30, min_volume=10)
    ).probs
    episodes = pd.DataFrame({"issuer_id": ["0.0"], "route": ["r0"], "start": [start], "end": [end]})
    common = {"issuer_ids": np.zeros(n), "ts": ts, "priority": prio, "route_names": ROUTES}
    fast = episode_reactions(episodes, probs=oracle, **common).iloc[0]
    slow = episode_reactions(episodes, probs=sr, **common).iloc[0]
    assert fast["status"] == REACTED and fast["reaction_hours"] == 0.0
    assert slow["status"] == REACTED
    # r0's window of 30 logged outcomes needs ~35 attempts (80% of traffic on r0) to turn over
    assert 0.25 < slow["reaction_hours"] < 6.0, slow["reaction_hours"]


# --- off-policy estimates against the truth ------------------------------------------------


def test_ope_against_truth_on_a_logged_world() -> None:
    """A routed world whose logging policy explores (80% static, 20% uniform over the
    merchant's routes): every estimate covers the truth of every policy, for both rewards."""
    rng = np.random.default_rng(21)
    n, n_routes = 30_000, 4
    prio = np.argsort(rng.random((50, n_routes)), axis=1).astype(np.int64)
    prio[:, 3] = np.where(rng.random(50) < 0.5, NOT_HELD, 3)  # half the merchants lack r3
    prio = prio[rng.integers(0, 50, n)]
    cand = prio != NOT_HELD
    # route effects shared by attempts: r1 better on average, r0 worse for half the issuers
    issuer = rng.integers(0, 2, n)
    base = rng.uniform(0.55, 0.9, n)[:, None] + np.array([0.0, 0.05, -0.03, 0.02])
    base[:, 0] -= 0.2 * issuer
    p_true = np.where(cand, np.clip(base, 0.01, 0.99), np.nan)
    amount, fees = rng.uniform(5, 300, n), np.array([0.02, 0.05, 0.01, 0.03])
    logging = 0.8 * static_policy(prio) + 0.2 * cand / cand.sum(axis=1, keepdims=True)
    route, propensity = sample_routes(logging, rng)
    approved = rng.random(n) < p_true[np.arange(n), route]
    model = np.clip(p_true + rng.normal(0, 0.05, p_true.shape), 0, 1)  # a decent model
    policies = {"model": choose_route(model, prio, amount, fees).probs}
    table = ope_against_truth(
        policies,
        p_true,
        prio,
        amount,
        fees,
        route,
        propensity,
        approved,
        model,
        groups=np.arange(n) // 2,
        n_bootstrap=300,
    )
    assert set(table["policy"]) == {"static", "model", "oracle"}
    assert set(table["estimator"]) == {"ips", "snips", "dr"} and set(table["reward"]) == {
        "approval",
        "value",
    }
    assert len(table) == 3 * 2 * 3
    assert table["covers"].all(), table[~table["covers"]]
    np.testing.assert_allclose(table["error"], table["estimate"] - table["truth"])
    truth = value_policies(policies, p_true, prio, amount, fees).set_index("policy")
    got = table[table["reward"] == "value"].groupby("policy")["truth"].first()
    np.testing.assert_allclose(got.loc[truth.index], truth["value"] / n)
    # and the estimates tell the policies apart: the oracle's approvals exceed static's
    dr = table[(table["estimator"] == "dr") & (table["reward"] == "approval")].set_index("policy")
    assert dr.loc["oracle", "low"] > dr.loc["static", "high"]


def test_truth_matrix_reads_the_per_route_columns_in_table_order() -> None:
    truth = pd.DataFrame({"p_approve_route_b": [0.5, np.nan], "p_approve_route_a": [0.7, 0.8]})
    np.testing.assert_array_equal(truth_matrix(truth, ["a", "b"]), [[0.7, 0.5], [0.8, np.nan]])
    with pytest.raises(IssuerSeqError, match="p_approve_route_c"):
        truth_matrix(truth, ["a", "c"])


def _intervals(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def test_attempt_conditions_outage_then_episode_then_steady() -> None:
    ts = pd.to_datetime(
        [
            "2026-01-01T00:05",
            "2026-01-01T00:05",
            "2026-01-01T02:00",
            "2026-01-01T02:00",
            "2026-01-01T05:00",
        ],
        utc=True,
    )
    issuers = np.array([7, 8, 7, 8, 7])
    # attempts 0-3 at merchants holding routes a and b; attempt 4 at one holding c alone
    held = np.array([[1, 1, 0]] * 4 + [[0, 0, 1]], dtype=bool)
    names = ("a", "b", "c")
    outages = _intervals(
        [
            ("b", "2026-01-01T00:00Z", "2026-01-01T00:10Z"),
            ("c", "2026-01-01T04:00Z", "2026-01-01T04:30Z"),
        ],
        ["route", "start", "end"],
    )
    episodes = _intervals(
        [
            (7, "a", "2026-01-01T00:00Z", "2026-01-01T03:00Z"),  # issuer 7 through a
            (
                8,
                "c",
                "2026-01-01T01:00Z",
                "2026-01-01T06:00Z",
            ),  # through a route 8's merchants lack
        ],
        ["issuer_id", "route", "start", "end"],
    )
    got = attempt_conditions(ts, issuers, held, names, outages, episodes)
    # 0: route b down (the outage wins over issuer 7's episode); 1: b down; 2: issuer 7's
    # episode through a; 3: issuer 8's episode is through c, which its merchant lacks;
    # 4: c's outage ended at 04:30
    assert list(got) == ["route_outage", "route_outage", "issuer_episode", "steady", "steady"]
    empty = _intervals([], ["issuer_id", "route", "start", "end"])
    none = attempt_conditions(ts, issuers, held, names, outages.iloc[:0], empty)
    assert list(none) == ["steady"] * 5
    with pytest.raises(IssuerSeqError, match="unknown routes"):
        attempt_conditions(ts, issuers, held[:, :2], ("a", "b"), outages, episodes)
    with pytest.raises(IssuerSeqError, match="issuer_ids"):
        attempt_conditions(ts, issuers[:3], held, names, outages, episodes)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.integers(2, 4), st.integers(0, 2**32 - 1))
def test_the_conditions_parts_add_up_to_the_whole_uplift(n: int, n_routes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prio = np.argsort(rng.random((n, n_routes)), axis=1).astype(np.int64)
    prio[rng.random((n, n_routes)) < 0.3] = NOT_HELD
    prio[np.arange(n), rng.integers(0, n_routes, n)] = n_routes
    cand = prio != NOT_HELD
    p_true = np.where(cand, rng.random((n, n_routes)), np.nan)
    amount, fees = rng.uniform(1, 300, n), rng.uniform(0, 2, n_routes)
    model = choose_route(np.where(cand, rng.random((n, n_routes)), np.nan), prio, amount, fees)
    policies = with_references({"model": model.probs}, p_true, prio, amount, fees)
    condition = rng.choice(["route_outage", "issuer_episode", "steady"], n)
    by = uplift_by_condition(policies, p_true, amount, fees, condition)
    whole = value_policies({"model": model.probs}, p_true, prio, amount, fees).set_index("policy")
    assert sum(c["attempts"] for c in by.values()) == n
    if whole.loc["oracle", "uplift_value"] <= 0:
        return
    assert sum(c["oracle_uplift_share"] for c in by.values()) == pytest.approx(1.0)
    # where the oracle gains in every condition, the model's whole share is its shares per
    # condition weighted by the conditions' parts
    if all(c["share_of_oracle_uplift"]["oracle"] is not None for c in by.values()):
        parts = sum(
            c["oracle_uplift_share"] * c["share_of_oracle_uplift"]["model"] for c in by.values()
        )
        assert parts == pytest.approx(whole.loc["model", "share_of_oracle_uplift"], rel=1e-6)
    for c in by.values():
        shares = c["share_of_oracle_uplift"]
        if shares["oracle"] is not None:
            assert shares["static"] == 0.0 and shares["oracle"] == pytest.approx(1.0)
