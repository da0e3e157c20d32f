"""Routing policies: the route table, static, success-rate and expected-value routing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import RetryEconomics
from issuer_seq.routing.policies import (
    SuccessRateConfig,
    choose_route,
    route_values,
    sample_routes,
    static_policy,
    success_counts,
    success_rate_policy,
)
from issuer_seq.routing.routes import NOT_HELD, RouteTable

META = {
    "routes": [
        {"name": "eu_local", "region": "EU", "fee": 0.02},
        {"name": "us_local", "region": "US", "fee": 0.01},
        {"name": "global_a", "region": "global", "fee": 0.03},
        {"name": "global_b", "region": "global", "fee": 0.05},
    ],
    "merchant_routes": {"1": ["global_a", "eu_local"], "2": ["us_local", "global_b", "global_a"]},
}


def test_route_table_from_meta_ranks_each_merchants_routes() -> None:
    table = RouteTable.from_meta(META)
    assert table.names == ("eu_local", "us_local", "global_a", "global_b")
    np.testing.assert_allclose(table.fees, [0.02, 0.01, 0.03, 0.05])
    prio = table.priority(np.array([1, 2, 1]))  # int ids find the JSON's text keys
    np.testing.assert_array_equal(prio[0], [1, NOT_HELD, 0, NOT_HELD])
    np.testing.assert_array_equal(prio[1], [NOT_HELD, 0, 2, 1])
    np.testing.assert_array_equal(table.candidates(["2"])[0], [False, True, True, True])
    np.testing.assert_array_equal(table.index(["global_b", "eu_local"]), [3, 0])


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"routes": META["routes"]}, "merchant_routes"),
        ({**META, "merchant_routes": {"1": ["nowhere"]}}, "unknown routes"),
        ({**META, "merchant_routes": {"1": []}}, "holds no route"),
        ({**META, "merchant_routes": {"1": ["eu_local", "eu_local"]}}, "twice"),
        ({**META, "routes": [{"name": "a", "fee": -1.0}], "merchant_routes": {}}, "fee"),
        ({**META, "routes": [{"name": "a"}], "merchant_routes": {}}, "name, region, fee"),
    ],
)
def test_route_table_rejects_bad_meta(meta: dict, match: str) -> None:
    with pytest.raises(IssuerSeqError, match=match):
        RouteTable.from_meta(meta)


def test_route_table_names_unknown_merchants_and_routes() -> None:
    table = RouteTable.from_meta(META)
    with pytest.raises(IssuerSeqError, match="no routes in the route table"):
        table.priority([1, 99])
    with pytest.raises(IssuerSeqError, match="unknown routes"):
        table.index(["eu_local", "mars"])


def test_static_policy_takes_the_first_priority_route() -> None:
    prio = RouteTable.from_meta(META).priority([1, 2])
    np.testing.assert_array_equal(static_policy(prio), [[0, 0, 1, 0], [0, 1, 0, 0]])


# --- expected value -------------------------------------------------------------------------


def test_choose_route_weighs_approval_against_fees() -> None:
    econ = RetryEconomics(margin=0.03)
    prio = np.array([[0, 1], [0, 1]])
    p = np.array([[0.80, 0.85], [0.80, 0.85]])
    fees = np.array([0.01, 0.10])
    # value gap 0.05 * amount * 0.03 against a fee gap of 0.09: the break-even is 60
    choice = choose_route(p, prio, np.array([10.0, 1000.0]), fees, econ)
    np.testing.assert_array_equal(choice.best, [0, 1])
    np.testing.assert_allclose(choice.value, route_values(p, np.array([10.0, 1000.0]), fees, econ))
    np.testing.assert_array_equal(choice.propensity, [1.0, 1.0])
    np.testing.assert_array_equal(choice.route, choice.best)
    np.testing.assert_array_equal(choice.probs, np.eye(2)[choice.best])  # no exploration


def test_choose_route_breaks_ties_by_priority_and_ignores_lacked_routes() -> None:
    prio = np.array([[1, 0, NOT_HELD], [NOT_HELD, 1, 0]])
    p = np.array([[0.9, 0.9, np.nan], [np.nan, 0.5, 0.5]])
    choice = choose_route(p, prio, np.array([100.0, 100.0]), np.zeros(3))
    np.testing.assert_array_equal(choice.best, [1, 2])


def test_choose_route_explores_with_its_propensity() -> None:
    n = 40_000
    prio = np.tile([0, 1, 2, NOT_HELD], (n, 1))
    p = np.tile([0.5, 0.9, 0.6, np.nan], (n, 1))
    choice = choose_route(
        p, prio, np.full(n, 50.0), np.zeros(4), epsilon=0.3, rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(choice.probs[0], [0.1, 0.8, 0.1, 0.0])
    np.testing.assert_allclose(choice.propensity, choice.probs[np.arange(n), choice.route])
    freq = np.bincount(choice.route, minlength=4) / n
    np.testing.assert_allclose(freq, [0.1, 0.8, 0.1, 0.0], atol=0.01)
    with pytest.raises(IssuerSeqError, match="random generator"):
        choose_route(p, prio, np.full(n, 50.0), np.zeros(4), epsilon=0.3)
    with pytest.raises(IssuerSeqError, match="epsilon"):
        choose_route(p, prio, np.full(n, 50.0), np.zeros(4), epsilon=-0.1)


def test_choose_route_rejects_missing_or_invalid_probabilities() -> None:
    prio = np.array([[0, 1]])
    with pytest.raises(IssuerSeqError, match="NaN"):
        choose_route(np.array([[0.5, np.nan]]), prio, np.array([1.0]), np.zeros(2))
    with pytest.raises(IssuerSeqError, match=r"\[0, 1\]"):
        choose_route(np.array([[0.5, 1.5]]), prio, np.array([1.0]), np.zeros(2))
    with pytest.raises(IssuerSeqError, match="no candidate"):
        choose_route(np.array([[0.5, 0.5]]), np.full((1, 2), NOT_HELD), np.ones(1), np.zeros(2))


# --- success-rate routing -----------------------------------------------------------------


def reference_counts(
    issuer: np.ndarray,
    t: np.ndarray,
    route: np.ndarray,
    ok: np.ndarray,
    n_routes: int,
    window: int | None,
    window_s: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward loop: every earlier outcome of the issuer on each route."""
    n = len(t)
    succ, vol = np.zeros((n, n_routes)), np.zeros((n, n_routes))
    for i in range(n):
        for r in range(n_routes):
            seen = [
                ok[j]
                for j in range(n)
                if issuer[j] == issuer[i]
                and route[j] == r
                and t[j] < t[i]
                and (window_s is None or t[j] >= t[i] - window_s)
            ]
            if window is not None:
                seen = seen[len(seen) - window :] if len(seen) > window else seen
            vol[i, r], succ[i, r] = len(seen), sum(seen)
    return succ, vol


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_success_counts_match_the_straightforward_loop(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 40))
    n_routes = data.draw(st.integers(1, 4))
    gaps = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))  # 0: same-time ties
    t = np.cumsum(np.array(gaps, dtype=np.int64)).astype(float)
    issuer = np.array(data.draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)))
    route = np.array(data.draw(st.lists(st.integers(0, n_routes - 1), min_size=n, max_size=n)))
    ok = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    window = data.draw(st.one_of(st.none(), st.integers(1, 6)))
    window_s = data.draw(st.one_of(st.none(), st.sampled_from([1.0, 2.5, 7.0])))
    got = success_counts(issuer, t, route.astype(np.int64), ok, n_routes, window, window_s)
    want = reference_counts(issuer, t, route, ok, n_routes, window, window_s)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def _sr_log(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 86_400 * 3, n)), unit="s"
    )
    return {
        "issuer_ids": rng.integers(0, 3, n),
        "ts": pd.Series(ts),
        "logged_route": rng.integers(0, 3, n).astype(np.int64),
        "approved": rng.random(n) < np.array([0.9, 0.5, 0.7])[rng.integers(0, 3, n)],
        "priority": np.tile([1, 0, 2], (n, 1)),
    }


def test_success_rate_policy_is_point_in_time() -> None:
    log = _sr_log(600, seed=3)
    cfg = SuccessRateConfig(window=30, min_volume=5, epsilon=0.1)
    base = success_rate_policy(**log, config=cfg)
    t = log["ts"].to_numpy()
    for j in (100, 350, 599):
        flipped = {**log, "approved": log["approved"].copy()}
        flipped["approved"][j] = ~flipped["approved"][j]
        moved = success_rate_policy(**flipped, config=cfg)
        upto = t <= t[j]  # the outcome is seen only by attempts strictly after it
        np.testing.assert_array_equal(moved.score[upto], base.score[upto])
        np.testing.assert_array_equal(moved.probs[upto], base.probs[upto])
        later = (t > t[j]) & (log["issuer_ids"] == log["issuer_ids"][j])
        if later.any():  # and by them
            np.testing.assert_array_equal(moved.volume[later], base.volume[later])
            assert not np.allclose(
                np.nan_to_num(moved.score[later]), np.nan_to_num(base.score[later])
            )


def test_success_rate_policy_follows_the_best_route_and_explores() -> None:
    n = 3000
    rng = np.random.default_rng(0)
    route = rng.integers(0, 3, n).astype(np.int64)
    approved = rng.random(n) < np.array([0.6, 0.3, 0.9])[route]  # route 2 is best
    cfg = SuccessRateConfig(window=100, min_volume=20, epsilon=0.15)
    pol = success_rate_policy(
        np.zeros(n), np.arange(n, dtype=float), route, approved, np.tile([0, 1, 2], (n, 1)), cfg
    )
    # before any volume the merchant's priority decides; once warm, the best route
    assert pol.best[0] == 0 and np.isnan(pol.score[0]).all()
    assert (pol.best[500:] == 2).mean() > 0.99
    np.testing.assert_allclose(pol.probs[-1], [0.05, 0.05, 0.90])
    np.testing.assert_allclose(pol.score[-1, 2], approved[route == 2][-100:].mean())


def test_success_rate_policy_default_rate_and_prior() -> None:
    n = 5
    route = np.zeros(n, dtype=np.int64)
    approved = np.array([1, 1, 0, 1, 1], dtype=bool)
    prio = np.tile([0, 1], (n, 1))
    optimistic = SuccessRateConfig(window=None, min_volume=3, default_success_rate=1.0, epsilon=0)
    pol = success_rate_policy(
        np.zeros(n), np.arange(n, dtype=float), route, approved, prio, optimistic
    )
    # route 1, never tried, keeps the optimistic default: it ties route 0 (first priority)
    # while route 0 is short of volume, and outranks its 2/3 and 3/4 after
    np.testing.assert_allclose(pol.score[:, 1], 1.0)
    np.testing.assert_array_equal(pol.best, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(pol.score[3:, 0], [2 / 3, 3 / 4])
    prior = SuccessRateConfig(
        window=None, min_volume=0, prior_strength=2, prior_rate=0.5, epsilon=0
    )
    pol = success_rate_policy(np.zeros(n), np.arange(n, dtype=float), route, approved, prio, prior)
    np.testing.assert_allclose(pol.score[:, 0], [0.5, 2 / 3, 3 / 4, 3 / 5, 4 / 6])


def test_success_rate_policy_rejects_unsorted_or_bad_input() -> None:
    prio = np.tile([0, 1], (3, 1))
    with pytest.raises(IssuerSeqError, match="time order"):
        success_rate_policy(
            [1, 1, 1], [3.0, 1.0, 2.0], np.zeros(3, np.int64), np.ones(3, bool), prio
        )
    with pytest.raises(IssuerSeqError, match="0/1"):
        success_rate_policy(
            [1, 1, 1], [1.0, 2.0, 3.0], np.zeros(3, np.int64), np.array([0.2, 1, 0]), prio
        )
    with pytest.raises(IssuerSeqError, match="index"):
        success_rate_policy([1, 1, 1], [1.0, 2.0, 3.0], np.full(3, 5), np.ones(3, bool), prio)
    with pytest.raises(IssuerSeqError, match="window"):
        SuccessRateConfig(window=0)
    with pytest.raises(IssuerSeqError, match="epsilon"):
        SuccessRateConfig(epsilon=1.5)


# --- the property every policy keeps ------------------------------------------------------


@st.composite
def worlds(draw: st.DrawFn) -> tuple[RouteTable, np.ndarray, np.random.Generator]:
    n_routes = draw(st.integers(1, 5))
    names = [f"r{i}" for i in range(n_routes)]
    merchants = {}
    for m in range(draw(st.integers(1, 4))):
        held = draw(st.lists(st.sampled_from(names), min_size=1, max_size=n_routes, unique=True))
        merchants[str(m)] = held
    fees = draw(st.lists(st.floats(0, 0.5), min_size=n_routes, max_size=n_routes))
    table = RouteTable(tuple(names), np.array(fees), merchants)
    n = draw(st.integers(1, 30))
    merchant = np.array(draw(st.lists(st.sampled_from(sorted(merchants)), min_size=n, max_size=n)))
    return table, merchant, np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=200, deadline=None)
@given(worlds(), st.floats(0, 1))
def test_no_policy_ever_sends_an_attempt_through_a_route_the_merchant_lacks(
    world: tuple[RouteTable, np.ndarray, np.random.Generator], epsilon: float
) -> None:
    table, merchant, rng = world
    n, n_routes = len(merchant), table.n_routes
    prio = table.priority(merchant)
    cand = table.candidates(merchant)
    p = np.where(cand, rng.random((n, n_routes)), np.nan)
    amount = rng.uniform(1, 500, n)
    # the log's own routes are the merchant's, as a logging policy would send them
    logged, _ = sample_routes(cand / cand.sum(axis=1, keepdims=True), rng)
    policies = {
        "static": static_policy(prio),
        "value": choose_route(p, prio, amount, table.fees, epsilon=epsilon, rng=rng).probs,
        "success_rate": success_rate_policy(
            rng.integers(0, 2, n),
            np.sort(rng.uniform(0, 100, n)),
            logged,
            rng.random(n) < 0.7,
            prio,
            SuccessRateConfig(window=5, min_volume=1, epsilon=epsilon),
        ).probs,
    }
    for name, probs in policies.items():
        assert np.all(probs[~cand] == 0), name
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, err_msg=name)
        route, propensity = sample_routes(probs, rng)
        assert cand[np.arange(n), route].all(), name
        assert np.all(propensity > 0), name
    choice = choose_route(p, prio, amount, table.fees, epsilon=epsilon, rng=rng)
    assert cand[np.arange(n), choice.route].all() and cand[np.arange(n), choice.best].all()
    np.testing.assert_allclose(choice.propensity, choice.probs[np.arange(n), choice.route])
