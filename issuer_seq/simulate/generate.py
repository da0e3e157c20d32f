"""Generating a log: first attempts, issuer answers, logged retries, ground truth.

Cards are simulated in chunks (issuers and merchants are shared by all chunks), so memory is
bounded by the chunk size and the output is appended to Parquet chunk by chunk; at the end
DuckDB sorts the log by time (out of core), so readers get it in the order the input
contract asks for. Within a chunk everything is vectorized: there is no Python loop over
attempts, only over the few retry rounds and calendar months.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from issuer_seq.delays import DEFAULT_GRID, grid_seconds, truth_column
from issuer_seq.rules import (
    AttemptColumns,
    Cause,
    NetworkRules,
    causes,
    check_retries,
    mac_delay_seconds,
)
from issuer_seq.simulate import outcomes
from issuer_seq.simulate.outcomes import Attempts
from issuer_seq.simulate.policy import plan_retries
from issuer_seq.simulate.routes import (
    RouteParams,
    build_routes,
    draw_routes,
    first_rule,
    policy_probabilities,
    retry_rule,
)
from issuer_seq.simulate.world import (
    CARD_TYPES,
    COUNTRY_CODES,
    COUNTRY_CURRENCY,
    COUNTRY_UTC_OFFSET,
    DAY,
    HOUR,
    MCC_CODES,
    MCC_MEDIAN_AMOUNT,
    MCC_RISKY,
    MCC_SUBSCRIPTION,
    NETWORKS,
    NEVER,
    Cards,
    World,
    WorldParams,
    build_cards,
    build_world,
)

log = logging.getLogger(__name__)

# Local-time profile of customer-initiated shopping (share per hour of day).
HOUR_PROFILE = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 4, 5, 6, 7, 6, 5, 5, 5, 6, 7, 8, 8, 7, 4, 2], dtype=float
)
MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class SimConfig:
    world: WorldParams = field(default_factory=WorldParams)
    seed: int = 0
    start: str = "2026-01-05"
    chunk_cards: int = 10_000
    delay_grid: tuple[str, ...] = DEFAULT_GRID
    rules: NetworkRules = field(default_factory=NetworkRules)
    #: None (or n_routes 1): one route, a log without `route` columns, no route effects.
    routes: RouteParams | None = field(default_factory=RouteParams)


def route_truth_column(name: str) -> str:
    """The truth column of the approval probability through route `name`."""
    return f"p_approve_route_{name}"


def build_sim_world(cfg: SimConfig) -> World:
    """The world of a config: issuers, merchants and, unless one route, the routes."""
    world = build_world(cfg.world, cfg.seed, cfg.start)
    if cfg.routes is not None and cfg.routes.n_routes > 1:
        world.routes = build_routes(
            cfg.routes,
            world.issuers.country,
            world.merchants.country,
            MCC_RISKY,
            (cfg.world.days + 8) * DAY,  # as the issuers' processes: retry truth past the end
            np.random.default_rng([cfg.seed, 2]),
        )
    return world


def _pick(rng: np.random.Generator, pools: list[np.ndarray], group: np.ndarray) -> np.ndarray:
    """One element of pools[group[i]] per row, uniformly. (N,)"""
    sizes = np.array([len(p) for p in pools])
    flat = np.concatenate(pools)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return flat[offsets[group] + (rng.random(len(group)) * sizes[group]).astype(np.int64)]


def _merchant_pools(world: World, subscription: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """Merchants of the kind, grouped by country (empty countries fall back to all)."""
    m = world.merchants
    kind = np.flatnonzero(MCC_SUBSCRIPTION[m.mcc] == subscription)
    pools = []
    for c in range(len(COUNTRY_CODES)):
        local = kind[m.country[kind] == c]
        pools.append(local if len(local) else kind)
    return pools, kind


def first_attempts(world: World, cards: Cards, rng: np.random.Generator) -> Attempts:
    """Customer shopping sessions and monthly subscription charges, sorted by (card, t)."""
    p, horizon = world.params, world.horizon
    n_cards = len(cards.issuer)
    card_country = world.issuers.country[cards.issuer]

    # Customer-initiated: sessions at local shopping hours; a session may hold several
    # attempts minutes apart (which is what trips velocity limits).
    n_sess = rng.poisson(cards.session_rate * p.days)
    s_card = np.repeat(np.arange(n_cards), n_sess)
    local_hour = rng.choice(24, len(s_card), p=HOUR_PROFILE / HOUR_PROFILE.sum())
    offset = COUNTRY_UTC_OFFSET[card_country[s_card]]
    s_t = (
        rng.integers(0, p.days, len(s_card)) * DAY
        + (local_hour - offset) * HOUR
        + rng.integers(0, HOUR, len(s_card))
    )
    size = rng.geometric(0.78, len(s_card))
    c_card = np.repeat(s_card, size)
    first_of_session = np.concatenate([[0], np.cumsum(size)[:-1]])
    gaps = rng.exponential(150.0, len(c_card)).astype(np.int64) + 5
    gaps[first_of_session] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first_of_session], size)
    c_t = np.repeat(s_t, size) + within
    pools, _ = _merchant_pools(world, subscription=False)
    domestic = rng.random(len(c_card)) < 0.8
    group = np.where(
        domestic, card_country[c_card], rng.integers(0, len(COUNTRY_CODES), len(c_card))
    )
    c_merchant = _pick(rng, pools, group)
    # Half of the later attempts of a session are at the same shop (a customer trying again).
    repeat = (rng.random(len(c_card)) < 0.5) & (gaps > 0)
    idx = np.arange(len(c_card))
    source = np.maximum.accumulate(np.where(repeat, 0, idx))
    c_merchant = c_merchant[source]
    mcc = world.merchants.mcc[c_merchant]
    c_amount = (
        np.round(rng.lognormal(np.log(MCC_MEDIAN_AMOUNT[mcc] * cards.spend_scale[c_card]), 0.7), 2)
        + 0.5
    )
    c_3ds = rng.random(len(c_card)) < world.merchants.uses_3ds[c_merchant]

    # Merchant-initiated: monthly subscription charges in the merchants' billing runs.
    n_subs = rng.poisson(p.subscriptions_per_card, n_cards)
    sub_card = np.repeat(np.arange(n_cards), n_subs)
    sub_pools, _ = _merchant_pools(world, subscription=True)
    sub_group = np.where(
        rng.random(len(sub_card)) < 0.7,
        card_country[sub_card],
        rng.integers(0, len(COUNTRY_CODES), len(sub_card)),
    )
    sub_merchant = _pick(rng, sub_pools, sub_group)
    sub_amount = (
        np.round(
            rng.lognormal(np.log(MCC_MEDIAN_AMOUNT[world.merchants.mcc[sub_merchant]]), 0.35), 2
        )
        + 0.99
    )
    sub_day = rng.integers(1, 29, len(sub_card))
    sub_cancel = np.where(
        rng.random(len(sub_card)) < p.cancel_subscription_share,
        rng.integers(0, horizon, len(sub_card)),
        NEVER,
    )
    first_month = world.start.astype("datetime64[M]")
    months = int(np.ceil(p.days / 28)) + 1
    m_parts = []
    for m in range(months):
        month_start = (first_month + np.timedelta64(m, "M")).astype("datetime64[s]")
        base = (month_start - world.start).astype(np.int64)
        t = (
            base
            + (sub_day - 1) * DAY
            + world.merchants.billing_hour[sub_merchant] * HOUR
            + rng.integers(0, 1800, len(sub_card))
        )
        m_parts.append(np.flatnonzero((t >= 0) & (t < horizon)))
        m_parts.append(t)
    sub_rows = np.concatenate(m_parts[0::2])
    sub_t = np.concatenate([t[r] for r, t in zip(m_parts[0::2], m_parts[1::2], strict=True)])

    # After a card is lost, stolen, closed or expired its holder mostly moves to a new card;
    # stored-credential (MIT) charges keep coming, and a few customer attempts still do.
    ended = np.minimum(np.minimum(cards.lost_at, cards.closed_at), cards.expires_at)[c_card]
    stale = (c_t >= ended) & (rng.random(len(c_card)) < 0.9)
    keep = (c_t >= 0) & (c_t < horizon) & ~stale
    n_c = int(keep.sum())
    a = Attempts(
        card=np.concatenate([c_card[keep], sub_card[sub_rows]]),
        merchant=np.concatenate([c_merchant[keep], sub_merchant[sub_rows]]),
        t=np.concatenate([c_t[keep], sub_t]).astype(np.int64),
        amount=np.concatenate([c_amount[keep], sub_amount[sub_rows]]),
        mit=np.concatenate([np.zeros(n_c, bool), np.ones(len(sub_rows), bool)]),
        recurring=np.concatenate([np.zeros(n_c, bool), np.ones(len(sub_rows), bool)]),
        three_ds=np.concatenate([c_3ds[keep], np.zeros(len(sub_rows), bool)]),
        attempt=np.ones(n_c + len(sub_rows), dtype=np.int64),
        cancelled_at=np.concatenate([np.full(n_c, NEVER), sub_cancel[sub_rows]]),
        route=np.full(n_c + len(sub_rows), -1, dtype=np.int64),
    )
    order = np.lexsort((a.t, a.card))
    return _take(a, order)


def _take(a: Attempts, rows: np.ndarray) -> Attempts:
    return Attempts(**{k: v[rows] for k, v in vars(a).items()})


def _concat(parts: list[Attempts]) -> Attempts:
    return Attempts(**{k: np.concatenate([vars(p)[k] for p in parts]) for k in vars(parts[0])})


@dataclass
class _Rows:
    """Attempts of a chunk with their outcomes, grown round by round."""

    a: Attempts
    payment: np.ndarray
    parent: np.ndarray  # row of the previous attempt of the payment, -1 for first tries
    response: np.ndarray
    check: np.ndarray  # index in outcomes.CHECKS of the check that declined, -1 if approved
    advice: np.ndarray
    p_approve: np.ndarray
    u_code: np.ndarray
    bucket: np.ndarray
    propensity: np.ndarray
    route_propensity: np.ndarray  # P(the logged policy chose this route), NaN: one route
    route_p: np.ndarray  # (N, R) p_approve through each route, NaN off the merchant's routes
    outage: np.ndarray
    route_outage: np.ndarray
    route_episode: np.ndarray
    tight: np.ndarray
    funds: np.ndarray


def simulate_chunk(
    world: World, cards: Cards, rng: np.random.Generator, cfg: SimConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One chunk of cards -> (transactions, truth) frames with chunk-local ids."""
    grid = grid_seconds(cfg.delay_grid)
    first = first_attempts(world, cards, rng)
    first_card, first_t = first.card, first.t
    network_of_card = NETWORKS[world.issuers.network[cards.issuer]]
    routes = world.routes
    n_routes = 0 if routes is None else len(routes.name)
    has_route = None if routes is None else routes.has

    def answer(a: Attempts, carried: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        """Outcomes of attempts; `carried`: for retries, the check that declined the
        previous attempt and that attempt's time."""
        velocity = outcomes.velocity_counts(first_card, first_t, a.card, a.t)
        u_code = rng.random(len(a))
        fresh, codes, latent = outcomes.hazards(world, cards, a, a.t, velocity, u_code)

        if carried is not None:
            prev_check, prev_t = carried
            still = outcomes.persistence(world, cards, a.card, prev_check, prev_t, a.t)

        def carry(h: np.ndarray) -> np.ndarray:
            return h if carried is None else outcomes.carry_over(h, prev_check, still)

        h = carry(fresh)
        response, check = outcomes.draw(h, codes, rng)
        # The truth through every route: the same moment, draws and carried cause.
        route_p = np.full((len(a), n_routes), np.nan)
        for r in range(n_routes):
            assert has_route is not None
            through = outcomes.through_route(
                world, cards, a, a.t, fresh, latent, np.full(len(a), r)
            )
            p_r = outcomes.p_approve(carry(through))
            route_p[:, r] = np.where(has_route[a.merchant, r], p_r, np.nan)
        return {
            "response": response,
            "check": check,
            "advice": outcomes.advice_codes(
                world, cards, a, response, latent.to_payday, rng, check
            ),
            "p_approve": outcomes.p_approve(h),
            "u_code": u_code,
            "route_p": route_p,
            "outage": latent.outage,
            "route_outage": latent.route_outage,
            "route_episode": latent.route_episode,
            "tight": latent.tight,
            "funds": h[:, outcomes.CHECKS.index("funds")],  # with a retry's carry-over
        }

    n0 = len(first)
    first_route_prop = np.full(n0, np.nan)
    if routes is not None:
        probs = policy_probabilities(routes, first.merchant, first_rule(routes, first.merchant))
        first.route, first_route_prop = draw_routes(rng, probs)
    rows = _Rows(
        a=first,
        payment=np.arange(n0),
        parent=np.full(n0, -1),
        bucket=np.full(n0, -2),
        propensity=np.full(n0, np.nan),
        route_propensity=first_route_prop,
        **answer(first, None),
    )
    last = np.arange(n0)
    for _ in range(MAX_ATTEMPTS - 1):
        declined = last[rows.response[last] != "00"]
        if len(declined) == 0:
            break
        a = _take(rows.a, declined)
        net = network_of_card[a.card]
        cause = causes(rows.response[declined].astype(str), net)
        mac_wait = mac_delay_seconds(_none_to_empty(rows.advice[declined]))
        plan = plan_retries(rng, grid, cause, a.mit, a.three_ds, a.attempt, mac_wait)
        retry_at = a.t + plan.delay
        history = _columns(rows, network_of_card)
        allowed, _ = check_retries(
            history.take(declined),
            retry_at,
            history,
            self_rows=declined,
            three_ds=plan.three_ds,
            rules=cfg.rules,
        )
        send = plan.retry & allowed & (retry_at < world.horizon)
        if not send.any():
            break
        src = declined[send]
        new = _take(rows.a, src)
        new.t = retry_at[send]
        new.attempt = new.attempt + 1
        new.three_ds = plan.three_ds[send]
        new_route_prop = np.full(len(src), np.nan)
        if routes is not None:
            technical = cause[send] == Cause.TECHNICAL.value
            rule = retry_rule(routes, new.merchant, new.route, technical)
            new.route, new_route_prop = draw_routes(
                rng, policy_probabilities(routes, new.merchant, rule)
            )
        out = answer(new, (rows.check[src], rows.a.t[src]))
        start = len(rows.a.t)
        rows = _Rows(
            a=_concat([rows.a, new]),
            payment=np.concatenate([rows.payment, rows.payment[src]]),
            parent=np.concatenate([rows.parent, src]),
            bucket=np.concatenate([rows.bucket, plan.bucket[send]]),
            propensity=np.concatenate([rows.propensity, plan.propensity[send]]),
            route_propensity=np.concatenate([rows.route_propensity, new_route_prop]),
            **{k: np.concatenate([getattr(rows, k), v]) for k, v in out.items()},
        )
        last = np.arange(start, len(rows.a.t))

    rows = _drop_rule_breaking_retries(rows, network_of_card, cfg.rules)
    truth = _retry_truth(world, cards, rows, grid, cfg.delay_grid, first_card, first_t)
    return _frames(world, cards, rows, network_of_card, truth, cfg)


def _drop_rule_breaking_retries(
    rows: _Rows, network_of_card: np.ndarray, rules: NetworkRules
) -> _Rows:
    """Re-check every retry against the finished log and drop those that break a rule.

    Rounds go by attempt number, not time, so a retry was checked before later-round
    attempts of the same card that precede it in time (say, a MAC 03 decline at the same
    merchant) existed. Dropping attempts only removes history, which can never turn an
    allowed retry into a forbidden one, so one pass (plus the dropped retries' own retries)
    leaves a log that obeys the rules.
    """
    retry = np.flatnonzero(rows.parent >= 0)
    if len(retry) == 0:
        return rows
    history = _columns(rows, network_of_card)
    parent = rows.parent[retry]
    allowed, _ = check_retries(
        history.take(parent),
        rows.a.t[retry],
        history,
        self_rows=parent,
        three_ds=rows.a.three_ds[retry],
        rules=rules,
    )
    drop = np.zeros(len(rows.parent), dtype=bool)
    drop[retry[~allowed]] = True
    for _ in range(MAX_ATTEMPTS):
        drop |= (rows.parent >= 0) & drop[np.maximum(rows.parent, 0)]
    if not drop.any():
        return rows
    keep = np.flatnonzero(~drop)
    new_index = np.full(len(drop), -1)
    new_index[keep] = np.arange(len(keep))
    fields = {k: v[keep] for k, v in vars(rows).items() if k not in ("a", "parent")}
    parent = rows.parent[keep]
    return _Rows(
        a=_take(rows.a, keep),
        parent=np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1),
        **fields,
    )


def _none_to_empty(mac: np.ndarray) -> np.ndarray:
    return np.array(["" if m is None else m for m in mac], dtype=object)


def _columns(rows: _Rows, network_of_card: np.ndarray) -> AttemptColumns:
    return AttemptColumns(
        card_id=rows.a.card,
        ts=rows.a.t,
        network=network_of_card[rows.a.card],
        merchant_id=rows.a.merchant,
        amount=rows.a.amount,
        response_code=rows.response.astype(str),
        advice_code=_none_to_empty(rows.advice).astype(str),
        attempt=rows.a.attempt,
    )


def _retry_truth(
    world: World,
    cards: Cards,
    rows: _Rows,
    grid: np.ndarray,
    labels: tuple[str, ...],
    first_card: np.ndarray,
    first_t: np.ndarray,
) -> dict[str, np.ndarray]:
    """P(a retry after each grid delay is approved), from the latent state then and the
    decline's cause carried over. (N,) each."""
    declined = np.flatnonzero(rows.response != "00")
    a = _take(rows.a, declined)
    a.attempt = a.attempt + 1
    check = rows.check[declined]
    out = {}
    for label, delay in zip(labels, grid, strict=True):
        t = a.t + delay
        velocity = outcomes.velocity_counts(first_card, first_t, a.card, t)
        h, _, _ = outcomes.hazards(world, cards, a, t, velocity, rows.u_code[declined])
        h = outcomes.carry_over(h, check, outcomes.persistence(world, cards, a.card, check, a.t, t))
        col = np.full(len(rows.a.t), np.nan)
        col[declined] = outcomes.p_approve(h)
        out[truth_column(label)] = col
    return out


def _frames(
    world: World,
    cards: Cards,
    rows: _Rows,
    network_of_card: np.ndarray,
    truth: dict[str, np.ndarray],
    cfg: SimConfig,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    a, m = rows.a, world.merchants
    issuer = cards.issuer[a.card]
    ts = (world.start + a.t.astype("timedelta64[s]")).astype("datetime64[us]")
    tx = pd.DataFrame(
        {
            "txn_id": np.arange(len(a.t), dtype=np.int64),
            "payment_id": rows.payment.astype(np.int64),
            "attempt": a.attempt,
            "ts": pd.DatetimeIndex(ts).tz_localize("UTC"),
            "card_id": a.card.astype(np.int64),
            "issuer_id": issuer.astype(np.int64),
            "network": network_of_card[a.card],
            "card_type": CARD_TYPES[cards.card_type[a.card]],
            "issuer_country": COUNTRY_CODES[world.issuers.country[issuer]],
            "merchant_id": a.merchant.astype(np.int64),
            "mcc": MCC_CODES[m.mcc[a.merchant]],
            "merchant_country": COUNTRY_CODES[m.country[a.merchant]],
            "amount": a.amount.astype(np.float64),
            "currency": COUNTRY_CURRENCY[m.country[a.merchant]],
            "initiator": np.where(a.mit, "MIT", "CIT"),
            "is_recurring": a.recurring,
            "three_ds": a.three_ds,
            "response_code": rows.response.astype(str),
            "advice_code": pd.array(rows.advice, dtype="string"),
            # Logged-policy bookkeeping (the contract keeps it; training weights retries by it).
            "policy_propensity": rows.propensity,
        }
    )
    routes = world.routes
    per_route: dict[str, np.ndarray] = {}
    latent_route: dict[str, np.ndarray] = {}
    if routes is not None:
        tx["route"] = routes.name[a.route]
        tx["route_propensity"] = rows.route_propensity
        per_route = {
            route_truth_column(str(name)): rows.route_p[:, r] for r, name in enumerate(routes.name)
        }
        latent_route = {
            "latent_route_outage": rows.route_outage,
            "latent_route_episode": rows.route_episode,
        }
    th = pd.DataFrame(
        {
            "txn_id": tx["txn_id"],
            "p_approve": rows.p_approve,
            **truth,
            **per_route,
            "latent_outage": rows.outage,
            "latent_risk_regime": rows.tight,
            "latent_funds_hazard": rows.funds,
            **latent_route,
        }
    )
    order = np.argsort(a.t, kind="stable")
    tx, th = tx.iloc[order].reset_index(drop=True), th.iloc[order].reset_index(drop=True)
    tx["txn_id"] = th["txn_id"] = np.arange(len(tx), dtype=np.int64)
    return tx, th


def simulate(cfg: SimConfig, data_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write transactions.parquet, truth.parquet and meta.json under `data_dir`."""
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = build_sim_world(cfg)
    n_cards = cfg.world.n_cards
    chunks = list(range(0, n_cards, cfg.chunk_cards))
    unsorted = out / "transactions.unsorted.parquet"
    tx_writer: pq.ParquetWriter | None = None
    truth_writer: pq.ParquetWriter | None = None
    stats = _Stats()
    n_txn = n_pay = 0
    try:
        for i, lo in enumerate(tqdm(chunks, desc="simulate", unit="chunk", disable=not progress)):
            n = min(cfg.chunk_cards, n_cards - lo)
            rng = np.random.default_rng([cfg.seed, 1, i])
            cards = build_cards(world, n, rng)
            tx, th = simulate_chunk(world, cards, rng, cfg)
            tx["txn_id"] += n_txn
            th["txn_id"] += n_txn
            tx["payment_id"] += n_pay
            tx["card_id"] += lo
            n_txn += len(tx)
            n_pay = int(tx["payment_id"].max()) + 1
            stats.add(tx)
            tx_table = pa.Table.from_pandas(tx, preserve_index=False)
            th_table = pa.Table.from_pandas(th, preserve_index=False)
            if tx_writer is None:
                tx_writer = pq.ParquetWriter(unsorted, tx_table.schema)
                truth_writer = pq.ParquetWriter(out / "truth.parquet", th_table.schema)
            tx_writer.write_table(tx_table)
            assert truth_writer is not None
            truth_writer.write_table(th_table)
    finally:
        if tx_writer is not None:
            tx_writer.close()
        if truth_writer is not None:
            truth_writer.close()
    if tx_writer is not None:
        _sort_by_time(unsorted, out / "transactions.parquet")
    meta = {
        "generator": "issuer_seq.simulate",
        "config": _jsonable(asdict(cfg)),
        "start": cfg.start,
        "delay_grid": list(cfg.delay_grid),
        "truth_columns": [
            "p_approve",
            *[truth_column(g) for g in cfg.delay_grid],
            *([] if world.routes is None else map(route_truth_column, world.routes.name)),
        ],
        "logged_policy": {
            "description": (
                "After soft declines (funds, generic, technical, limit) MIT payments are retried "
                "with probability 0.85 and CIT payments with 0.30; the delay bucket is drawn from "
                "0.5 * uniform over allowed buckets + 0.5 * a cause-based preference (CIT only "
                "5m/30m/2h); MAC 24-30 waits are respected; SCA declines of CIT payments are "
                "retried at once with 3-D Secure with probability 0.6. Up to 4 attempts per "
                "payment; every retry passes the network rules."
            ),
            "propensity_column": "policy_propensity",
        },
        **_route_meta(world),
        **stats.summary(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _route_meta(world: World) -> dict[str, Any]:
    """meta.json's routes: the list, each merchant's in static priority order, the logged
    routing policy, and the acquirer outages and issuer-by-route episodes inside the log's
    days (times ISO 8601 UTC), so that evaluation can measure reactions to them."""
    routes = world.routes
    if routes is None:
        return {"routes": None, "merchant_routes": None}
    names = [str(n) for n in routes.name]

    def iso(t: np.ndarray) -> list[str]:
        stamps = world.start + np.asarray(t, dtype=np.int64).astype("timedelta64[s]")
        return [f"{s}Z" for s in stamps.astype("datetime64[s]")]

    def inside(iv: Any) -> np.ndarray:
        return np.flatnonzero((iv.end > 0) & (iv.start < world.params.days * DAY))

    n_r = len(names)
    ep = routes.episodes
    keep = inside(ep)
    out = routes.outages
    keep_o = inside(out)
    return {
        "routes": [
            {"name": n, "region": str(routes.region[r]), "fee": float(routes.fee[r])}
            for r, n in enumerate(names)
        ],
        "merchant_routes": {
            str(m): [names[r] for r in routes.priority[m, : routes.count[m]]]
            for m in range(len(routes.count))
        },
        "routing_policy": {
            "description": (
                f"First attempts: with probability {routes.static_share:g} the merchant's first "
                "route by static priority, else one of its routes uniformly. Retries: with "
                f"probability {routes.static_share:g} the cascade rule (after a technical "
                "decline, 91/96, the next route in the merchant's priority; else the same "
                "route), else one of the merchant's routes uniformly."
            ),
            "static_share": routes.static_share,
            "propensity_column": "route_propensity",
        },
        "route_outages": [
            {
                "route": names[int(out.owner[i])],
                "start": s,
                "end": e,
                "p_decline": round(float(out.value[i]), 4),
            }
            for i, s, e in zip(keep_o, iso(out.start[keep_o]), iso(out.end[keep_o]), strict=True)
        ],
        "route_episodes": [
            {
                "issuer_id": int(ep.owner[i] // n_r),
                "route": names[int(ep.owner[i] % n_r)],
                "start": s,
                "end": e,
                "logit": round(float(ep.value[i]), 4),
            }
            for i, s, e in zip(keep, iso(ep.start[keep]), iso(ep.end[keep]), strict=True)
        ],
    }


def _sort_by_time(src: Path, dst: Path, batch_rows: int = 1 << 17) -> None:
    """Rewrite the chunk-ordered log `src` as `dst` sorted by `ts`, then delete `src`.

    Chunks are time-sorted each but interleave in time. DuckDB sorts out of core (spilling
    next to the log), attempts of one second keep their order in `src` (its row number breaks
    ties, as a stable sort would), and the batches are written with `src`'s own schema, so the
    columns read back exactly as pandas wrote them.
    """
    schema = pq.read_schema(src)
    con = duckdb.connect(config={"temp_directory": str(dst.parent / ".sort.tmp")})
    try:
        query = con.sql(
            "SELECT * EXCLUDE (file_row_number) FROM read_parquet($src, file_row_number = true) "
            "ORDER BY ts, file_row_number",
            params={"src": str(src)},
        )
        with query.to_arrow_reader(batch_rows) as reader, pq.ParquetWriter(dst, schema) as writer:
            for batch in reader:
                writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    finally:
        con.close()
    src.unlink()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


class _Stats:
    """Running marginals over chunks for meta.json."""

    def __init__(self) -> None:
        self.rows = 0
        self.approved = 0
        self.mit = 0
        self.retries = 0
        self.codes: dict[str, int] = {}
        self.route_rows: dict[str, int] = {}
        self.route_approved: dict[str, int] = {}

    def add(self, tx: pd.DataFrame) -> None:
        if "route" in tx.columns:
            approved = (tx["response_code"] == "00").groupby(tx["route"]).agg(["size", "sum"])
            for route, (n, ok) in approved.iterrows():
                self.route_rows[str(route)] = self.route_rows.get(str(route), 0) + int(n)
                self.route_approved[str(route)] = self.route_approved.get(str(route), 0) + int(ok)
        self.rows += len(tx)
        self.approved += int((tx["response_code"] == "00").sum())
        self.mit += int((tx["initiator"] == "MIT").sum())
        self.retries += int((tx["attempt"] > 1).sum())
        for code, count in tx["response_code"].value_counts().items():
            self.codes[str(code)] = self.codes.get(str(code), 0) + int(count)

    def summary(self) -> dict[str, Any]:
        declines = self.rows - self.approved
        mix = {
            c: round(n / max(declines, 1), 4)
            for c, n in sorted(self.codes.items(), key=lambda kv: -kv[1])
            if c != "00"
        }
        return {
            "rows": self.rows,
            "approval_rate": round(self.approved / max(self.rows, 1), 4),
            "mit_share": round(self.mit / max(self.rows, 1), 4),
            "retry_share": round(self.retries / max(self.rows, 1), 4),
            "decline_code_mix": mix,
            **(
                {
                    "route_share": {
                        r: round(n / max(self.rows, 1), 4) for r, n in self.route_rows.items()
                    },
                    "route_approval_rate": {
                        r: round(self.route_approved[r] / n, 4) for r, n in self.route_rows.items()
                    },
                }
                if self.route_rows
                else {}
            ),
        }
