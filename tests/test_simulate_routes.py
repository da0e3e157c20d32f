"""The simulator's routes: contracts, the logged routing policy, per-route truth, effects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.schema import load_log
from issuer_seq.simulate import SimConfig, WorldParams, simulate
from issuer_seq.simulate.generate import build_sim_world, first_attempts, route_truth_column
from issuer_seq.simulate.outcomes import hazards, through_route
from issuer_seq.simulate.routes import (
    DEFAULT_ACQUIRERS,
    RouteParams,
    build_routes,
    draw_routes,
    first_rule,
    policy_probabilities,
    retry_rule,
)
from issuer_seq.simulate.world import COUNTRY_CODES, COUNTRY_REGION, MCC_RISKY, build_cards

PROPERTY = settings(max_examples=60, deadline=None)
NAMES = [a.name for a in DEFAULT_ACQUIRERS]


def _joined(d: Path) -> pd.DataFrame:
    tx = pd.read_parquet(d / "transactions.parquet")
    return tx.merge(pd.read_parquet(d / "truth.parquet"), on="txn_id", validate="one_to_one")


def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


def _parents(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(retry rows, their previous attempt's rows) as positions in `df`."""
    row_of = pd.Series(
        np.arange(len(df)), index=pd.MultiIndex.from_frame(df[["payment_id", "attempt"]])
    )
    retry = np.flatnonzero(df["attempt"].to_numpy() > 1)
    keys = zip(df["payment_id"].iloc[retry], df["attempt"].iloc[retry] - 1, strict=True)
    return retry, row_of.loc[list(keys)].to_numpy()


# --------------------------------------------------------------------------------------------
# The routing policy and the contracts, as properties
# --------------------------------------------------------------------------------------------


@st.composite
def worlds(draw: st.DrawFn) -> tuple[RouteParams, np.ndarray, np.ndarray, int]:
    n_routes = draw(st.integers(2, 4))
    lo = draw(st.integers(1, n_routes))
    params = RouteParams(
        n_routes=n_routes,
        min_per_merchant=lo,
        max_per_merchant=draw(st.integers(lo, 4)),
        static_share=draw(st.floats(0.0, 1.0)),
    )
    countries = st.integers(0, len(COUNTRY_CODES) - 1)
    issuers = np.array(draw(st.lists(countries, min_size=1, max_size=5)))
    merchants = np.array(draw(st.lists(countries, min_size=1, max_size=30)))
    return params, issuers, merchants, draw(st.integers(0, 2**32 - 1))


@PROPERTY
@given(worlds())
def test_merchants_hold_their_domestic_route_and_distinct_others(
    world: tuple[RouteParams, np.ndarray, np.ndarray, int],
) -> None:
    params, issuers, merchants, seed = world
    r = build_routes(params, issuers, merchants, MCC_RISKY, 10 * 86400, np.random.default_rng(seed))
    n_r = params.n_routes
    assert ((r.count >= min(params.min_per_merchant, n_r)) & (r.count <= n_r)).all()
    for m in range(len(merchants)):
        mine = r.priority[m, : r.count[m]]
        assert len(set(mine)) == len(mine) and (mine >= 0).all()
        assert (r.priority[m, r.count[m] :] == -1).all()
        domestic = np.flatnonzero(r.region == COUNTRY_REGION[merchants[m]])
        assert set(domestic) <= set(mine)
    assert (r.has.sum(1) == r.count).all()


@PROPERTY
@given(worlds(), st.data())
def test_the_logged_policy_only_picks_the_merchants_routes_with_exact_propensities(
    world: tuple[RouteParams, np.ndarray, np.ndarray, int], data: st.DataObject
) -> None:
    params, issuers, merchants, seed = world
    rng = np.random.default_rng(seed)
    r = build_routes(params, issuers, merchants, MCC_RISKY, 10 * 86400, rng)
    n = data.draw(st.integers(1, 50))
    merchant = rng.integers(0, len(merchants), n)
    for rule in (
        first_rule(r, merchant),
        retry_rule(
            r,
            merchant,
            first_rule(r, merchant),
            np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        ),
    ):
        assert r.has[merchant, rule].all()
        probs = policy_probabilities(r, merchant, rule)
        assert np.allclose(probs.sum(1), 1.0)
        assert (probs[~r.has[merchant]] == 0).all()
        route, propensity = draw_routes(rng, probs)
        assert r.has[merchant, route].all()
        assert (propensity > 0).all() and (propensity <= 1 + 1e-12).all()
        k = r.count[merchant]
        expected = params.static_share * (route == rule) + (1 - params.static_share) / k
        assert np.allclose(propensity, expected)


def test_a_cascade_moves_to_the_next_route_by_priority_after_a_technical_decline() -> None:
    r = build_routes(
        RouteParams(min_per_merchant=3, max_per_merchant=3),
        np.array([0]),
        np.array([2, 0]),  # a German merchant, a US one
        MCC_RISKY,
        86400,
        np.random.default_rng(0),
    )
    merchant = np.repeat([0, 1], 3)
    prev = r.priority[merchant, np.tile([0, 1, 2], 2)]
    nxt = retry_rule(r, merchant, prev, np.ones(6, bool))
    assert (nxt == r.priority[merchant, np.tile([1, 2, 0], 2)]).all()
    assert (retry_rule(r, merchant, prev, np.zeros(6, bool)) == prev).all()


def test_the_truth_through_another_route_is_the_attempt_sent_there() -> None:
    """`through_route` (what the per-route truth uses) recomputes only the route's checks:
    it must equal the hazards of the attempt sent through that route from the start."""
    cfg = SimConfig(world=WorldParams(n_cards=300, n_issuers=8, n_merchants=40, days=20))
    world = build_sim_world(cfg)
    assert world.routes is not None
    rng = np.random.default_rng(3)
    cards = build_cards(world, 300, rng)
    a = first_attempts(world, cards, rng)
    n = len(a)
    a.route = rng.integers(0, 4, n)
    t = a.t + rng.integers(0, 10 * 86400, n)  # moments spread over outages and episodes
    velocity, u = rng.integers(0, 3, n), rng.random(n)
    h, _, latent = hazards(world, cards, a, t, velocity, u)
    for r in range(4):
        other = np.full(n, r)
        direct, _, _ = hazards(world, cards, a, t, velocity, u, route=other)
        assert np.array_equal(through_route(world, cards, a, t, h, latent, other), direct)
    assert (latent.route_outage > 0).any() and (latent.route_episode > 0).any()


# --------------------------------------------------------------------------------------------
# The simulated log
# --------------------------------------------------------------------------------------------


def test_simulated_routes_meet_the_contract_and_meta(sim_dir: Path) -> None:
    vlog = load_log(sim_dir)  # checked against the routes meta.json declares
    meta = _meta(sim_dir)
    assert [r["name"] for r in meta["routes"]] == NAMES
    assert all(r["fee"] > 0 and r["region"] in ("EU", "US", "global") for r in meta["routes"])
    assert set(vlog.frame["route"]) == set(NAMES)
    assert vlog.frame["route_propensity"].between(0, 1, inclusive="right").all()
    assert meta["routing_policy"]["propensity_column"] == "route_propensity"
    contracts = meta["merchant_routes"]
    assert all(2 <= len(v) <= 3 and len(set(v)) == len(v) for v in contracts.values())
    for route in NAMES:
        assert route_truth_column(route) in meta["truth_columns"]
    assert meta["route_episodes"] and meta["route_outages"]


def test_truth_gives_every_route_of_the_merchant_and_nan_elsewhere(big_sim_dir: Path) -> None:
    df = _joined(big_sim_dir)
    contracts = _meta(big_sim_dir)["merchant_routes"]
    merchant = df["merchant_id"].astype(str).to_numpy()
    p = np.stack([df[route_truth_column(n)].to_numpy() for n in NAMES], axis=1)
    has = np.array([[n in contracts[m] for n in NAMES] for m in merchant])
    assert (np.isnan(p) == ~has).all()
    assert ((p[has] >= 0) & (p[has] <= 1)).all()
    # the route taken is one the merchant has, and its truth is the attempt's p_approve
    taken = df["route"].map({n: i for i, n in enumerate(NAMES)}).to_numpy()
    assert has[np.arange(len(df)), taken].all()
    assert np.array_equal(p[np.arange(len(df)), taken], df["p_approve"].to_numpy())
    # routes matter: the best and the worst route of an attempt differ
    several = has.sum(1) > 1
    spread = np.nanmax(p[several], 1) - np.nanmin(p[several], 1)
    assert np.mean(spread > 0.01) > 0.2


def test_the_logged_propensities_are_the_policys(big_sim_dir: Path) -> None:
    df = _joined(big_sim_dir).sort_values(["payment_id", "attempt"], ignore_index=True)
    contracts = _meta(big_sim_dir)["merchant_routes"]
    mine = df["merchant_id"].astype(str).map(contracts)
    k = mine.map(len).to_numpy()
    route = df["route"].to_numpy()
    first = df["attempt"].to_numpy() == 1
    rule = np.array([m[0] for m in mine], dtype=object)  # static priority for first tries
    retry, parent = _parents(df)
    technical = df["response_code"].isin(["91", "96"]).to_numpy()[parent]
    prev = route[parent]
    nxt = [m[(m.index(r) + 1) % len(m)] for m, r in zip(mine.iloc[retry], prev, strict=True)]
    rule[retry] = np.where(technical, np.array(nxt, dtype=object), prev)
    expected = 0.8 * (route == rule) + 0.2 / k
    assert np.allclose(df["route_propensity"].to_numpy(), expected)
    # the policy explores: a fifth of first tries leave the static route, evenly
    static = (route == rule)[first]
    assert 0.8 < static.mean() < 0.9
    # cascades: after a technical decline most retries move to another route
    moved = route[retry] != prev
    assert moved[technical].mean() > 0.7 > 0.25 > moved[~technical].mean()


def test_network_rules_count_attempts_across_routes(big_sim_dir: Path) -> None:
    """Visa's 15 reattempts in 30 days count a card's retries at a merchant on every route;
    counted here over the whole log by plain pandas, independently of rules.py."""
    df = pd.read_parquet(big_sim_dir / "transactions.parquet")
    retries = df[df["attempt"] > 1]
    several = retries.merge(df, on="payment_id").groupby("payment_id")["route_y"].nunique()
    assert (several > 1).sum() > 50  # payments that cascaded: their retries span routes
    visa = retries[retries["network"] == "visa"].sort_values("ts")
    t = visa["ts"].astype("int64").to_numpy() // 10**9
    key = visa["card_id"].astype(str) + "|" + visa["merchant_id"].astype(str)
    worst = 0
    for _, rows in pd.Series(t, index=key.to_numpy()).groupby(level=0):
        times = rows.to_numpy()
        counts = np.arange(len(times)) - np.searchsorted(times, times - 30 * 86400, "right") + 1
        worst = max(worst, int(counts.max()))
    assert worst <= 15


def test_routes_show_in_the_histories(big_sim_dir: Path) -> None:
    df = _joined(big_sim_dir)
    approved = df["response_code"] == "00"
    by_route = approved.groupby(df["route"]).agg(["mean", "size"])
    se = np.sqrt(0.25 / by_route["size"].min())
    assert by_route["mean"].max() - by_route["mean"].min() > 4 * se, by_route
    # domestic acquiring: an EU issuer's attempt is worth more through the EU route
    eu, world = df[route_truth_column("eu_domestic")], df[route_truth_column("global_a")]
    eu_issuer = df["issuer_country"].isin(["DE", "FR", "ES", "IT", "NL", "GB", "IE", "PL", "SE"])
    both = eu.notna() & world.notna()
    gain = (eu - world)[both & eu_issuer]
    assert len(gain) > 1000 and gain.mean() > 0.003
    assert abs((eu - world)[both & (df["issuer_country"] == "US")].mean()) < gain.mean() / 2
    # an acquirer's outage answers 91/96 for every card on its route
    technical = df["response_code"].isin(["91", "96"])
    down = df["latent_route_outage"] > 0
    assert down.sum() > 20 and technical[down].mean() > 0.4 > 0.02 > technical[~down].mean()
    assert df.loc[down & technical, "advice_code"].isna().all()  # the issuer never answered
    # an issuer-by-route episode: the issuer's 05s through that route rise, then fall back
    generic = df["response_code"].isin(["05", "62"])
    episode = df["latent_route_episode"] > 0
    pairs = df.loc[episode, ["issuer_id", "route"]].drop_duplicates()
    same = df.merge(pairs, on=["issuer_id", "route"]).index
    inside = df.index.isin(same) & episode
    outside = df.index.isin(same) & ~episode
    assert generic[inside].mean() > 3 * generic[outside].mean()


def test_episodes_and_outages_in_meta_match_the_truth(big_sim_dir: Path) -> None:
    df = _joined(big_sim_dir)
    meta = _meta(big_sim_dir)
    ep = pd.DataFrame(meta["route_episodes"])
    ep["start"] = pd.to_datetime(ep["start"], utc=True)
    ep["end"] = pd.to_datetime(ep["end"], utc=True)
    rows = df.loc[df["latent_route_episode"] > 0, ["issuer_id", "route", "ts"]]
    hit = rows.merge(ep, on=["issuer_id", "route"])
    hit = hit[(hit["ts"] >= hit["start"]) & (hit["ts"] < hit["end"])]
    assert hit[["issuer_id", "route", "ts"]].drop_duplicates().shape[0] == len(rows)
    quiet = df.loc[df["latent_route_episode"] == 0, ["issuer_id", "route", "ts"]].merge(
        ep, on=["issuer_id", "route"]
    )
    assert not ((quiet["ts"] >= quiet["start"]) & (quiet["ts"] < quiet["end"])).any()
    out = pd.DataFrame(meta["route_outages"])
    assert set(out["route"]) <= set(NAMES) and (out["p_decline"] > 0).all()


@pytest.mark.parametrize("routes", [None, RouteParams(n_routes=1)])
def test_one_route_gives_todays_log(tmp_path: Path, routes: RouteParams | None) -> None:
    cfg = SimConfig(
        world=WorldParams(n_cards=400, n_issuers=10, n_merchants=50, days=10), routes=routes
    )
    meta = simulate(cfg, tmp_path, progress=False)
    vlog = load_log(tmp_path)
    assert not {"route", "route_propensity"} & set(vlog.frame.columns)
    truth = pd.read_parquet(tmp_path / "truth.parquet")
    assert not [c for c in truth.columns if "route" in c]
    assert meta["routes"] is None and meta["merchant_routes"] is None
    assert "route_share" not in meta


def test_cli_routes_config(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "issuer_seq.cli", "simulate", "n_cards=200", "days=5"]
    one = subprocess.run(
        [*exe, f"data_dir={tmp_path / 'one'}", "routes=null"], capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr
    assert "route" not in pd.read_parquet(tmp_path / "one" / "transactions.parquet").columns
    two = subprocess.run(
        [*exe, f"data_dir={tmp_path / 'two'}", "routes.n_routes=2"], capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr
    routes = pd.read_parquet(tmp_path / "two" / "transactions.parquet")["route"]
    assert set(routes) == {"eu_domestic", "us_domestic"}
    for override, message in [
        ("routes.n_routes=7", "routes.n_routes must be between 1 and 4"),
        ("routes.acquirers.0.region=EEA", "route regions must be among ['AU', 'BR',"),
        ("routes.static_share=1.5", "routes.static_share must be in [0, 1], got 1.5"),
    ]:
        bad = subprocess.run(
            [*exe, f"data_dir={tmp_path / 'bad'}", override], capture_output=True, text=True
        )
        assert bad.returncode == 2, override
        assert message in bad.stdout + bad.stderr
