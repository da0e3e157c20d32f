"""Acquirer connections (routes): who each merchant can send through, what each route does to
the issuer's answer, and the logged routing policy that chose the route of every attempt.

A route changes an attempt's hazards in three ways (`outcomes.hazards` adds them):
- an acquirer-side outage declines every card on the route (91/96), before the issuer sees it;
- the issuer's risk rules weigh the route: a domestic acquirer (the route's region is the
  issuer's) lowers them by the issuer's cross-border sensitivity, a route's own risk filter
  raises them at some MCCs, and an issuer-by-route episode raises them for days;
- nothing else: funds, limits, SCA and the card's lifecycle do not depend on the route.

The logged policy explores: with probability `static_share` it takes its rule's route (the
merchant's first route by static priority for a first attempt; for a retry the same route, or
after a technical decline the next route in priority: a cascade), else one of the merchant's
routes uniformly. `policy_probabilities` gives the whole distribution, so the propensity of
the chosen route is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from issuer_seq.simulate.world import COUNTRY_REGION, DAY, MINUTE, Intervals, renewal_intervals

GLOBAL = "global"  # a route's region when it is domestic to no issuer


@dataclass(frozen=True)
class Acquirer:
    """One route: its name (the log's `route`), region (`EU`, `US`, `global`), fee per attempt."""

    name: str
    region: str
    fee: float


DEFAULT_ACQUIRERS: tuple[Acquirer, ...] = (
    Acquirer("eu_domestic", "EU", 0.04),
    Acquirer("us_domestic", "US", 0.05),
    Acquirer("global_a", GLOBAL, 0.08),
    Acquirer("global_b", GLOBAL, 0.10),
)


@dataclass(frozen=True)
class RouteParams:
    """Knobs of the routes (conf/simulate.yaml `routes:`; docs/simulator.md *Routes*)."""

    acquirers: tuple[Acquirer, ...] = DEFAULT_ACQUIRERS
    n_routes: int = 4  # the first n acquirers are used
    min_per_merchant: int = 2
    max_per_merchant: int = 3
    domestic_first_share: float = 0.6  # merchants whose static priority starts domestic
    static_share: float = 0.8  # the logged policy follows its rule; else uniform
    domestic_uplift: float = 1.2  # mean logit cut of risk-rule declines through a domestic route
    outages_per_route_day: float = 0.08
    outage_median_minutes: float = 30.0
    risk_filter_share: float = 0.4  # share of (route, risky MCC) pairs with a filter
    risk_filter_strength: float = 0.8  # mean logit raise of a filter
    episodes_per_issuer_route_day: float = 0.006
    episode_median_days: float = 3.0
    episode_strength: float = 2.2  # mean logit raise of risk-rule declines in an episode
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.n_routes <= len(self.acquirers):
            raise ValueError(
                f"routes.n_routes must be between 1 and {len(self.acquirers)} "
                f"(the acquirers listed), got {self.n_routes}"
            )
        used = self.acquirers[: self.n_routes]
        names = tuple(a.name for a in used)
        if len(set(names)) != len(names) or any(not n.strip() for n in names):
            raise ValueError(f"route names must be unique and non-empty, got {list(names)}")
        regions = sorted({*map(str, COUNTRY_REGION), GLOBAL})
        if unknown := [a.region for a in used if a.region not in regions]:
            raise ValueError(f"route regions must be among {regions}, got {unknown}")
        if any(a.fee < 0 for a in used):
            raise ValueError("route fees must be >= 0")
        if not 1 <= self.min_per_merchant <= self.max_per_merchant:
            raise ValueError("routes need 1 <= min_per_merchant <= max_per_merchant")
        if not 0.0 <= self.static_share <= 1.0:
            raise ValueError(f"routes.static_share must be in [0, 1], got {self.static_share}")
        object.__setattr__(self, "names", names)


@dataclass
class Routes:
    """The world's routes, (R,) each, and the merchants' contracts."""

    name: np.ndarray  # (R,) str
    region: np.ndarray  # (R,) str
    fee: np.ndarray  # (R,) float64
    priority: np.ndarray  # (M, R) int64: route indices in static priority order, -1 padded
    count: np.ndarray  # (M,) int64: routes of each merchant
    sensitivity: np.ndarray  # (I,) issuer's cross-border sensitivity (logit)
    mcc_filter: np.ndarray  # (R, n_mcc) logit raise of the route's risk filter
    outages: Intervals  # owner: route; value: P(acquirer-side decline)
    episodes: Intervals  # owner: issuer * R + route; value: logit raise
    static_share: float
    domestic_uplift: float

    @property
    def has(self) -> np.ndarray:
        """(M, R) bool: the merchant is contracted with the route."""
        out = np.zeros((len(self.count), len(self.name)), dtype=bool)
        m, j = np.nonzero(self.priority >= 0)
        out[m, self.priority[m, j]] = True
        return out


#: Cross-border sensitivity multiplier by card type (debit, credit, prepaid).
CARD_SENSITIVITY = np.array([1.3, 0.7, 1.3])


def build_routes(
    p: RouteParams,
    issuer_country: np.ndarray,
    merchant_country: np.ndarray,
    mcc_risky: np.ndarray,
    horizon: int,
    rng: np.random.Generator,
) -> Routes:
    """Draw the merchants' contracts, the issuers' sensitivities and the routes' processes."""
    used = p.acquirers[: p.n_routes]
    n_r, n_m, n_i = len(used), len(merchant_country), len(issuer_country)
    region = np.array([a.region for a in used])

    # Contracts: the domestic route of the merchant's region where one exists, then others
    # (global acquirers more often than another region's domestic one) up to 2-3 routes.
    k = rng.integers(p.min_per_merchant, p.max_per_merchant + 1, n_m).clip(max=n_r)
    m_region = COUNTRY_REGION[merchant_country]
    domestic = region[None, :] == m_region[:, None]  # (M, R)
    weight = np.where(region == GLOBAL, 1.0, 0.3)
    key = rng.exponential(1.0, (n_m, n_r)) / weight[None, :]  # weighted sampling, no replacement
    key = np.where(domestic, -1.0, key)
    chosen = np.argsort(key, axis=1)  # (M, R)
    member = np.arange(n_r)[None, :] < k[:, None]
    # Static priority: domestic first for most merchants, otherwise a random order.
    order_key = rng.random((n_m, n_r))
    first_domestic = rng.random(n_m) < p.domestic_first_share
    dom_chosen = np.take_along_axis(domestic, chosen, axis=1)
    order_key = np.where(dom_chosen & first_domestic[:, None], -1.0, order_key)
    order_key = np.where(member, order_key, np.inf)
    ranked = np.take_along_axis(chosen, np.argsort(order_key, axis=1, kind="stable"), axis=1)
    priority = np.where(member, ranked, -1).astype(np.int64)

    eea_or_uk = COUNTRY_REGION[issuer_country] == "EU"
    sensitivity = rng.gamma(2.0, np.where(eea_or_uk, 0.5, 1.0) * p.domestic_uplift / 2.0, n_i)
    n_mcc = len(mcc_risky)
    filtered = rng.random((n_r, n_mcc)) < np.where(mcc_risky, p.risk_filter_share, 0.0)
    mcc_filter = np.where(
        filtered, rng.uniform(0.5, 1.5, (n_r, n_mcc)) * p.risk_filter_strength, 0.0
    )
    outages = renewal_intervals(
        rng,
        n_r,
        horizon,
        np.full(n_r, p.outages_per_route_day),
        p.outage_median_minutes * MINUTE,
        0.8,
        (0.6, 1.0),
    )
    episodes = renewal_intervals(
        rng,
        n_i * n_r,
        horizon,
        rng.gamma(2.0, p.episodes_per_issuer_route_day / 2.0, n_i * n_r),
        p.episode_median_days * DAY,
        0.6,
        (0.7 * p.episode_strength, 1.3 * p.episode_strength),
    )
    return Routes(
        name=np.array([a.name for a in used]),
        region=region,
        fee=np.array([a.fee for a in used], dtype=np.float64),
        priority=priority,
        count=k.astype(np.int64),
        sensitivity=sensitivity,
        mcc_filter=mcc_filter,
        outages=outages,
        episodes=episodes,
        static_share=p.static_share,
        domestic_uplift=p.domestic_uplift,
    )


def policy_probabilities(routes: Routes, merchant: np.ndarray, rule: np.ndarray) -> np.ndarray:
    """(N, R) probabilities of the logged policy over routes: `static_share` on the rule's
    route `rule` (N,), the rest spread evenly over the merchant's routes; 0 off contract."""
    has = routes.has[merchant]  # (N, R)
    k = routes.count[merchant].astype(np.float64)
    probs = has * ((1.0 - routes.static_share) / k)[:, None]
    probs[np.arange(len(rule)), rule] += routes.static_share
    return probs


def draw_routes(rng: np.random.Generator, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One route per row from (N, R) probabilities: (route index, its propensity), both (N,)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    route = (cum <= u[:, None]).sum(axis=1)
    # u < cum[-1], so a zero-probability route (an empty bin) is never picked
    route = np.minimum(route, probs.shape[1] - 1).astype(np.int64)
    return route, probs[np.arange(len(route)), route]


def first_rule(routes: Routes, merchant: np.ndarray) -> np.ndarray:
    """The static rule: the merchant's first route by priority. (N,)"""
    return routes.priority[merchant, 0]


def retry_rule(
    routes: Routes, merchant: np.ndarray, previous: np.ndarray, technical: np.ndarray
) -> np.ndarray:
    """The cascade rule of a retry: after a technical decline (91/96, which an acquirer's
    outage answers too) the next route in the merchant's priority, else the same route. (N,)"""
    prio = routes.priority[merchant]  # (N, R)
    pos = np.argmax(prio == previous[:, None], axis=1)
    nxt = prio[np.arange(len(merchant)), (pos + 1) % routes.count[merchant]]
    return np.where(technical, nxt, previous)
