"""Routing policies: for each attempt, a distribution over its merchant's routes.

Every policy returns `probs`, an (N, R) float array over the route table's columns
(`routes.RouteTable`): each row sums to 1 and is 0 on every route the attempt's merchant lacks.
A deterministic policy puts 1.0 on one route. Ties are broken by the merchant's static
priority, so a policy that knows nothing behaves like the static one.

- `static_policy`: the merchant's first-priority route.
- `success_rate_policy`: success-rate routing as the open-source decision engines of PSP
  orchestrators do it (below).
- `choose_route`: expected value from any model's (N, R) p_approve, with the retry policy's
  economics: `value(r) = p_approve(r) * amount * margin - fee(r)`; optional epsilon
  exploration (off by default) with the chosen route's propensity.

Success-rate routing. Juspay's open-source decision engine (the router behind Hyperswitch's
"success rate based routing" / dynamic routing) keeps, per entity and gateway (here: issuer x
route), a sliding window of recent outcomes: its success-rate calculator (Dynamo) stores
outcomes in blocks closed by count (`max_total_count`) or age (`duration_in_mins`), keeps the
last `max_aggregates_size` blocks, and scores a gateway by its success rate over them, with
`default_success_rate` where it has fewer than `min_aggregates_size` data points. A share of
traffic (`exploration_percent`, in the decision engine `defaultHedgingPercent`) is sent away
from the current best so that the others' scores stay fresh and a recovered gateway is noticed;
a small window reacts fast and is noisy, a large one is stable and slow (its docs on
`defaultBucketSize`). Here the window is a plain sliding one over the last `window` outcomes
and/or the last `window_s` seconds (the blocks only coarsen it), with a minimum volume, an
optional Beta prior, and epsilon exploration spread uniformly over the merchant's routes.

Point in time: the router at an attempt sees only outcomes with `ts` strictly before it. It
learns from the outcomes in the log it is given, i.e. from the routes the logging policy chose
(a replay: its own counterfactual choices produce no outcome to learn from).

numpy only (pandas only to read datetime inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import DEFAULT_ECONOMICS, RetryEconomics
from issuer_seq.routing.routes import NOT_HELD


def check_candidates(candidates: np.ndarray) -> np.ndarray:
    """(N, R) bool, every attempt with at least one route; else an error."""
    cand = np.asarray(candidates, dtype=bool)
    if cand.ndim != 2:
        raise IssuerSeqError(f"candidates must be (N, R), got shape {cand.shape}")
    if cand.shape[0] and not cand.any(axis=1).all():
        raise IssuerSeqError(f"{int((~cand.any(axis=1)).sum())} attempts have no candidate route")
    return cand


def check_probs(probs: np.ndarray, candidates: np.ndarray, name: str = "probs") -> np.ndarray:
    """(N, R) route distribution: finite, >= 0, rows sum to 1, 0 off the candidates."""
    p = np.asarray(probs, dtype=np.float64)
    cand = check_candidates(candidates)
    if p.shape != cand.shape:
        raise IssuerSeqError(f"{name} has shape {p.shape}, candidates {cand.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise IssuerSeqError(f"{name}: probabilities must be finite and >= 0")
    if np.any(p[~cand] > 0):
        raise IssuerSeqError(f"{name} puts weight on a route the merchant lacks")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
        raise IssuerSeqError(f"{name}: every row must sum to 1")
    return p


def one_hot(route: np.ndarray, n_routes: int) -> np.ndarray:
    """(N,) route index -> (N, R) float with 1.0 on that route."""
    out = np.zeros((len(route), n_routes))
    out[np.arange(len(route)), route] = 1.0
    return out


def best_by_priority(score: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """(N,) the held route with the highest score, ties (and all -inf) to the first priority.

    score: (N, R) float, NaN or -inf where a route should lose; priority: (N, R) ranks with
    `NOT_HELD` off the merchant's routes.
    """
    held = priority != NOT_HELD
    s = np.where(held & ~np.isnan(score), score, -np.inf)
    top = s.max(axis=1, initial=-np.inf)
    tie = held & (s == top[:, None])
    return np.argmin(np.where(tie, priority, NOT_HELD), axis=1)


def exploring(best: np.ndarray, candidates: np.ndarray, epsilon: float) -> np.ndarray:
    """(N, R): 1 - epsilon on `best`, epsilon spread uniformly over each attempt's routes."""
    if not 0.0 <= epsilon <= 1.0:
        raise IssuerSeqError(f"epsilon must lie in [0, 1], got {epsilon}")
    cand = check_candidates(candidates)
    if not cand[np.arange(len(best)), best].all():
        raise IssuerSeqError("a chosen route is not one of the merchant's routes")
    uniform = cand / cand.sum(axis=1, keepdims=True)
    return (1.0 - epsilon) * one_hot(best, cand.shape[1]) + epsilon * uniform


def sample_routes(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One route per attempt drawn from `probs` (N, R): (route (N,), its propensity (N,))."""
    p = np.asarray(probs, dtype=np.float64)
    cum = np.cumsum(p, axis=1)
    u = rng.random(len(p))[:, None] * cum[:, -1:]
    route = np.minimum((cum <= u).sum(axis=1), p.shape[1] - 1)
    # rounding can put u at the row's total (past the last bin): never return a 0-weight route
    route = np.where(p[np.arange(len(p)), route] > 0, route, np.argmax(p > 0, axis=1))
    return route, p[np.arange(len(p)), route]


def static_policy(priority: np.ndarray) -> np.ndarray:
    """(N, R): everything on the merchant's first-priority route."""
    prio = np.asarray(priority)
    check_candidates(prio != NOT_HELD)
    return one_hot(np.argmin(prio, axis=1), prio.shape[1])


# --- expected value ---------------------------------------------------------------------


def route_values(
    p_approve: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> np.ndarray:
    """(N, R) expected value of sending each attempt through each route.

    value = p_approve * amount * margin - fee(route): the retry policy's economics
    (`RetryEconomics.margin`), with the route's own per-attempt fee in the place of the flat
    `attempt_fee` (the fee is what sending one authorization through that route costs).
    NaN stays NaN (a route the merchant lacks).
    """
    p = np.asarray(p_approve, dtype=np.float64)
    amt = np.asarray(amount, dtype=np.float64)
    return p * amt[:, None] * econ.margin - np.asarray(fees, dtype=np.float64)[None, :]


@dataclass(frozen=True)
class RouteChoice:
    """Per attempt: the greedy route, the route sent, the policy's distribution and values.

    best: (N,) argmax of expected value; route: (N,) the route sent (`best` without
    exploration); propensity: (N,) probability the policy gave `route`; probs: (N, R);
    value: (N, R) expected value per route (NaN off the merchant's routes).
    """

    best: np.ndarray
    route: np.ndarray
    propensity: np.ndarray
    probs: np.ndarray
    value: np.ndarray


def choose_route(
    p_approve: np.ndarray,
    priority: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    epsilon: float = 0.0,
    rng: np.random.Generator | None = None,
) -> RouteChoice:
    """The route of largest expected value per attempt (`route_values`), ties by priority.

    p_approve: (N, R) approval probability through each route from any model (or the truth:
    the oracle), NaN allowed where the merchant lacks the route; priority: (N, R) ranks from
    `RouteTable.priority`. With epsilon > 0 the route sent is drawn from `exploring(best,
    epsilon)` with `rng`, and `propensity` is its probability: the log then supports
    off-policy evaluation.
    """
    prio = np.asarray(priority)
    cand = check_candidates(prio != NOT_HELD)
    p = np.asarray(p_approve, dtype=np.float64)
    if p.shape != cand.shape:
        raise IssuerSeqError(f"p_approve has shape {p.shape}, the merchants' routes {cand.shape}")
    held = p[cand]
    if not ((held >= 0) & (held <= 1)).all():  # NaN fails both
        if np.isnan(held).any():
            raise IssuerSeqError("p_approve is missing (NaN) for a route the merchant holds")
        raise IssuerSeqError("p_approve must lie in [0, 1]")
    amt = np.asarray(amount, dtype=np.float64)
    if amt.shape != (len(p),) or not np.isfinite(amt).all():
        raise IssuerSeqError("amount must be a finite (N,) array")
    value = np.where(cand, route_values(p, amt, fees, econ), np.nan)
    best = best_by_priority(value, prio)
    if epsilon == 0.0:  # `exploring` with no exploration, without its checks (a served call's
        # cost is numpy's per call: /v1/route runs this once per request)
        return RouteChoice(best, best, np.ones(len(best)), one_hot(best, p.shape[1]), value)
    probs = exploring(best, cand, epsilon)
    if rng is None:
        raise IssuerSeqError("exploration (epsilon > 0) needs a random generator")
    route, propensity = sample_routes(probs, rng)
    return RouteChoice(best=best, route=route, propensity=propensity, probs=probs, value=value)


# --- success-rate routing ---------------------------------------------------------------


@dataclass(frozen=True)
class SuccessRateConfig:
    """Success-rate routing per issuer x route.

    window: the last this many outcomes per issuer x route (None: no count limit);
    window_s: only outcomes of the last this many seconds (None: no age limit); both may
    apply. min_volume: fewer outcomes in the window than this and the route scores
    `default_success_rate` (None: it ranks below every route with enough volume, among
    them by priority). prior_strength, prior_rate: a Beta prior of that many pseudo-outcomes
    at that rate added to the window's counts. epsilon: share of traffic spread uniformly
    over the merchant's routes (the decision engines' exploration / hedging percent).
    """

    window: int | None = 200
    window_s: float | None = None
    min_volume: int = 20
    default_success_rate: float | None = None
    prior_strength: float = 0.0
    prior_rate: float = 0.5
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise IssuerSeqError(f"success-rate window must be >= 1 outcome, got {self.window}")
        if self.window_s is not None and not self.window_s > 0:
            raise IssuerSeqError(f"success-rate window_s must be > 0, got {self.window_s}")
        if self.min_volume < 0 or self.prior_strength < 0:
            raise IssuerSeqError("min_volume and prior_strength must be >= 0")
        for name in ("default_success_rate", "prior_rate", "epsilon"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise IssuerSeqError(f"{name} must lie in [0, 1], got {v}")


def as_seconds(ts: Any) -> np.ndarray:
    """(N,) float epoch seconds from numbers or datetimes (naive = UTC, as the log's)."""
    arr = np.asarray(ts)
    if arr.dtype.kind in "iuf":
        out = arr.astype(np.float64)
    else:
        import pandas as pd  # only datetime inputs need it

        idx = pd.DatetimeIndex(pd.to_datetime(ts, utc=True))
        if idx.hasnans:
            raise IssuerSeqError("ts has missing values")
        out = idx.as_unit("ns").asi8 / 1e9
    if not np.all(np.isfinite(out)):
        raise IssuerSeqError("ts has missing or infinite values")
    return out


def _codes(values: Any) -> np.ndarray:
    """(N,) int64 codes of any ids (int64 or text)."""
    return np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)[1]


def success_counts(
    issuer_ids: Any,
    ts: Any,
    logged_route: np.ndarray,
    approved: np.ndarray,
    n_routes: int,
    window: int | None = 200,
    window_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Point-in-time window counts per attempt and route: (successes (N, R), outcomes (N, R)).

    For attempt i and route r: the outcomes of attempts of i's issuer logged on r with
    ts strictly before ts_i, limited to the last `window` of them and to those at or after
    ts_i - window_s. Attempts must be in time order (ties allowed).
    """
    t = as_seconds(ts)
    n = len(t)
    route = np.asarray(logged_route, dtype=np.int64)
    ok = np.asarray(approved)
    if route.shape != (n,) or ok.shape != (n,):
        raise IssuerSeqError(
            f"ts ({n},), logged_route {route.shape} and approved {ok.shape} must match"
        )
    if ok.dtype.kind not in "bui" or np.any((ok != 0) & (ok != 1)):
        raise IssuerSeqError("approved must be 0/1 or bool")
    if n and (route.min() < 0 or route.max() >= n_routes):
        raise IssuerSeqError(f"logged_route must index the {n_routes} routes")
    if np.any(np.diff(t) < 0):
        raise IssuerSeqError("attempts must be in time order (sort by ts first)")
    issuer = _codes(issuer_ids)
    if issuer.shape != (n,):
        raise IssuerSeqError(f"issuer_ids has {len(issuer)} rows, ts {n}")
    # Exact "strictly before" with one sorted key per (issuer, time): times become ranks
    # among the distinct times, so issuer * M + rank orders by issuer, then time.
    times = np.unique(t)
    m = len(times) + 1
    rank = np.searchsorted(times, t, side="left")
    query = issuer * m + rank
    group_start = issuer * m
    lower = None
    if window_s is not None:
        lower = issuer * m + np.searchsorted(times, t - window_s, side="left")
    succ = np.zeros((n, n_routes))
    vol = np.zeros((n, n_routes))
    for r in range(n_routes):
        on_r = route == r
        keys = query[on_r]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        cum = np.concatenate([[0], np.cumsum(ok[on_r][order].astype(np.int64))])
        k = np.searchsorted(keys, query, side="left")  # outcomes strictly before
        lo = np.searchsorted(keys, group_start, side="left")
        if window is not None:
            lo = np.maximum(lo, k - window)
        if lower is not None:
            lo = np.maximum(lo, np.searchsorted(keys, lower, side="left"))
        vol[:, r] = k - lo
        succ[:, r] = cum[k] - cum[lo]
    return succ, vol


@dataclass(frozen=True)
class SuccessRatePolicy:
    """Per attempt: probs (N, R), the greedy route (N,), and the score (N, R) and window
    volume (N, R) it was chosen on (score NaN: below the minimum volume, no default)."""

    probs: np.ndarray
    best: np.ndarray
    score: np.ndarray
    volume: np.ndarray


def success_rate_policy(
    issuer_ids: Any,
    ts: Any,
    logged_route: np.ndarray,
    approved: np.ndarray,
    priority: np.ndarray,
    config: SuccessRateConfig = SuccessRateConfig(),
) -> SuccessRatePolicy:
    """Success-rate routing (module docstring) over a log in time order.

    logged_route (N,) and approved (N,) are the log's routes and outcomes, which the router
    learns from; priority (N, R) the merchants' route ranks. Pass the log from its start (the
    history the router warms up on) and keep the rows to evaluate.
    """
    prio = np.asarray(priority)
    cand = check_candidates(prio != NOT_HELD)
    succ, vol = success_counts(
        issuer_ids, ts, logged_route, approved, cand.shape[1], config.window, config.window_s
    )
    if prio.shape[0] != len(succ):
        raise IssuerSeqError(f"priority has {prio.shape[0]} rows, the log {len(succ)}")
    a = config.prior_strength
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (succ + a * config.prior_rate) / (vol + a)
    default = np.nan if config.default_success_rate is None else config.default_success_rate
    short = (vol < config.min_volume) | (vol + a == 0)  # no volume and no prior: no rate
    score = np.where(short, default, rate)
    # no default: a route short of volume loses to every scored one (scores lie in [0, 1])
    best = best_by_priority(np.where(np.isnan(score), -1.0, score), prio)
    probs = exploring(best, cand, config.epsilon)
    return SuccessRatePolicy(probs=probs, best=best, score=score, volume=vol)
