"""How an issuer answers an attempt: independent decline hazards over the latent state.

An attempt passes a fixed sequence of checks, each a hazard `h_k` computed from the latent
state at that moment (lifecycle, outage, SCA, data errors, amount limit, velocity, funds,
risk rules). The attempt is approved when none fires, so

    p_approve = prod_k (1 - h_k)

exactly, and the response code is the code of the first check that fires. A retry carries
its previous decline's cause over (`persistence`, `carry_over`: funds stay short until money
arrives, a risk rule keeps declining the same payment for a while). Because the truth is
this product, the simulator's `p_approve` is the exact probability used to draw the
outcome, and `p_retry_<delay>` is the same product evaluated at the retry's time, with the
decline's cause carried over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from issuer_seq.simulate.routes import CARD_SENSITIVITY
from issuer_seq.simulate.world import (
    COUNTRY_REGION,
    COUNTRY_SCA,
    COUNTRY_UTC_OFFSET,
    DAY,
    GAMBLING,
    HOUR,
    MCC_MEDIAN_AMOUNT,
    MCC_RISKY,
    Cards,
    World,
    payday_phase,
)

#: The checks in the order an attempt meets them. The acquirer's comes first: while the
#: route is down the request never reaches the issuer.
CHECKS = ("acquirer", "hard", "technical", "sca", "data", "limit", "velocity", "funds", "generic")
_K = {name: k for k, name in enumerate(CHECKS)}
VELOCITY_WINDOW = 600  # seconds: attempts on the same card in the last 10 minutes
#: How long the cause of a decline outlasts it, by check (seconds; see `persistence`).
PERSIST_S = {"funds": 2 * DAY, "generic": 2 * HOUR, "limit": DAY}

# MAC 24-30 advise a retry after these delays (docs/rules.md).
MAC_DELAYS = np.array([HOUR, DAY, 2 * DAY, 4 * DAY, 6 * DAY, 8 * DAY, 10 * DAY])
MAC_CODES = np.array(["24", "25", "26", "27", "28", "29", "30"])


@dataclass
class Attempts:
    """A batch of attempts (first tries or retries) as parallel arrays, all (N,)."""

    card: np.ndarray  # chunk-local card index
    merchant: np.ndarray
    t: np.ndarray  # int64 seconds
    amount: np.ndarray
    mit: np.ndarray  # bool: merchant-initiated
    recurring: np.ndarray  # bool
    three_ds: np.ndarray  # bool
    attempt: np.ndarray  # int64, 1 = first try
    cancelled_at: np.ndarray  # int64: when the cardholder stopped this subscription (or never)
    route: np.ndarray  # int64 index into world.routes, -1 where the world has one route

    def __len__(self) -> int:
        return len(self.t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Latent:
    """Latent state at each attempt's moment, kept for ground-truth diagnostics. (N,)"""

    outage: np.ndarray  # P(technical decline) from an ongoing issuer outage, 0 if none
    route_outage: np.ndarray  # P(acquirer-side decline) from the route's outage, 0 if none
    route_episode: np.ndarray  # logit raise of an issuer-by-route episode, 0 if none
    risk_logit: np.ndarray  # the risk-rule logit before the route's terms
    tight: np.ndarray  # strength of an ongoing risk-rule regime, 0 if none
    to_payday: np.ndarray  # seconds until the next payday


def hazards(
    world: World,
    cards: Cards,
    a: Attempts,
    t: np.ndarray,
    velocity: np.ndarray,
    u_code: np.ndarray,
    route: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Latent]:
    """Hazards (N, K) in CHECKS order, the code each check would answer (N, K), latent state.

    `t` may differ from `a.t` (a hypothetical retry later); `velocity` is the number of the
    card's first attempts in the 10 minutes before `t`; `u_code` (N,) picks among a check's
    codes so that the same draw gives the same code at every `t`; `route` (N,), default
    `a.route`, is the route the attempt goes through (the truth asks for every route).
    """
    iss, mer = world.issuers, world.merchants
    issuer = cards.issuer[a.card]
    i_country = iss.country[issuer]
    m_country = mer.country[a.merchant]
    mcc = mer.mcc[a.merchant]
    visa = iss.network[issuer] == 0
    card_type = cards.card_type[a.card]
    n = len(t)
    h = np.zeros((n, len(CHECKS)))
    codes = np.empty((n, len(CHECKS)), dtype=object)

    # Lifecycle: once lost, stolen, closed or expired, every attempt is declined.
    lost = t >= cards.lost_at[a.card]
    closed = t >= cards.closed_at[a.card]
    expired = t >= cards.expires_at[a.card]
    cancelled = a.recurring & (t >= a.cancelled_at)
    not_permitted = (card_type == 2) & (mcc == GAMBLING)
    route = a.route if route is None else route
    route_outage, episode, route_logit = _route_terms(world, issuer, card_type, mcc, route, t)
    h[:, _K["acquirer"]] = route_outage
    codes[:, _K["acquirer"]] = np.where(u_code < 0.55, "91", "96")

    h[:, _K["hard"]] = np.where(
        lost | closed | expired | cancelled, 1.0, np.where(not_permitted, 0.5, 0.0)
    )
    stop_code = np.where(visa, np.where(u_code < 0.5, "R0", "R1"), "R1")
    codes[:, _K["hard"]] = np.select(
        [lost, closed & a.recurring, closed, expired, cancelled],
        [cards.lost_code[a.card], "R1", "14", "54", stop_code],
        "57",
    )

    # Technical: an outage at the issuer, or background switch errors peaking with load.
    local_hour = np.mod(t // HOUR + COUNTRY_UTC_OFFSET[i_country], 24)
    outage = iss.outages.lookup(issuer, t)
    peak = (local_hour >= 11) & (local_hour <= 20)
    h[:, _K["technical"]] = np.maximum(outage, 0.0012 + 0.0015 * peak)
    codes[:, _K["technical"]] = np.where(u_code < 0.55, "91", "96")

    # Strong customer authentication: EEA/UK issuer and merchant, customer-initiated, no 3DS,
    # above the low-value exemption.
    sca = COUNTRY_SCA[i_country] & COUNTRY_SCA[m_country] & ~a.mit & ~a.three_ds & (a.amount > 30)
    h[:, _K["sca"]] = np.where(sca, iss.sca_strictness[issuer], 0.0)
    codes[:, _K["sca"]] = np.where(visa, "1A", "65")

    # Data errors on keyed-in customer payments (stored credentials of MIT are clean).
    h[:, _K["data"]] = np.where(a.mit, 0.0, 0.0035)
    codes[:, _K["data"]] = np.where(u_code < 0.85, "N7", "14")

    h[:, _K["limit"]] = np.where(a.amount > cards.amount_limit[a.card], 0.7, 0.0)
    codes[:, _K["limit"]] = "61"

    h[:, _K["velocity"]] = np.where(velocity > 0, _sigmoid(-5.5 + 1.3 * velocity), 0.0)
    codes[:, _K["velocity"]] = np.where(visa, "65", "05")

    phase, to_payday = payday_phase(world, cards, a.card, t)
    typical = MCC_MEDIAN_AMOUNT[mcc] * cards.spend_scale[a.card]
    funds_logit = (
        -5.0
        + cards.funds_tightness[a.card]
        + 4.5 * phase**2
        + 0.8 * np.log(a.amount / typical + 1e-3)
        + 0.5 * (card_type == 2)
    )
    h[:, _K["funds"]] = _sigmoid(funds_logit)
    codes[:, _K["funds"]] = "51"

    # Risk rules: cross-border, risky categories and large amounts, much more so while the
    # issuer's rules are tightened; stricter at night, local time.
    cross_border = i_country != m_country
    risky = MCC_RISKY[mcc]
    large = a.amount > 300
    tight = iss.tight.lookup(issuer, t)
    flagged = cross_border | risky | large
    night = local_hour < 6
    generic_logit = (
        -4.3
        + iss.quality[issuer]
        + 0.9 * cross_border
        + 0.6 * risky
        + 0.3 * np.log1p(a.amount / 200)
        + 0.7 * night
        + 0.3 * (card_type == 2)
        - 0.6 * a.three_ds
        + tight * (0.7 + 2.3 * flagged)
    )
    h[:, _K["generic"]] = _sigmoid(generic_logit + route_logit)
    codes[:, _K["generic"]] = np.where(cross_border & (u_code < 0.1), "62", "05")

    latent = Latent(
        outage=outage,
        route_outage=route_outage,
        route_episode=episode,
        risk_logit=generic_logit,
        tight=tight,
        to_payday=to_payday,
    )
    return h, codes, latent


def through_route(
    world: World,
    cards: Cards,
    a: Attempts,
    t: np.ndarray,
    h: np.ndarray,
    latent: Latent,
    route: np.ndarray,
) -> np.ndarray:
    """Hazards (N, K) of the attempts of `hazards(...) -> h, _, latent` at the same moments
    `t`, sent through `route` (N,) instead: only the acquirer and risk-rule checks depend on
    the route, so the rest is reused."""
    issuer = cards.issuer[a.card]
    mcc = world.merchants.mcc[a.merchant]
    outage, _, logit = _route_terms(world, issuer, cards.card_type[a.card], mcc, route, t)
    out = h.copy()
    out[:, _K["acquirer"]] = outage
    out[:, _K["generic"]] = _sigmoid(latent.risk_logit + logit)
    return out


def _route_terms(
    world: World,
    issuer: np.ndarray,
    card_type: np.ndarray,
    mcc: np.ndarray,
    route: np.ndarray,
    t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the route does: (acquirer-side decline hazard, episode strength, risk-rule logit
    term), all (N,) and all 0 in a one-route world.

    The logit term: minus the issuer's cross-border sensitivity (scaled by card type) through
    a domestic route, plus the route's risk filter at the MCC, plus an ongoing issuer-by-route
    episode."""
    r = world.routes
    zero = np.zeros(len(t))
    if r is None:
        return zero, zero, zero
    n_r = len(r.name)
    outage = r.outages.lookup(route, t)
    episode = r.episodes.lookup(issuer.astype(np.int64) * n_r + route, t)
    domestic = r.region[route] == COUNTRY_REGION[world.issuers.country[issuer]]
    sensitivity = r.sensitivity[issuer] * CARD_SENSITIVITY[card_type]
    logit = -sensitivity * domestic + r.mcc_filter[route, mcc] + episode
    return outage, episode, logit


def p_approve(h: np.ndarray) -> np.ndarray:
    """(N, K) hazards -> (N,) approval probability."""
    return np.prod(1.0 - h, axis=1)


def draw(
    h: np.ndarray, codes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Response codes ('00' where no check fires, else the first firing check's code) and
    the index in CHECKS of that check (-1 where approved). Both (N,)."""
    fired = rng.random(h.shape) < h
    any_fired = fired.any(axis=1)
    first = np.argmax(fired, axis=1)
    out = np.where(any_fired, codes[np.arange(len(h)), first], "00")
    return out.astype(object), np.where(any_fired, first, -1)


def persistence(
    world: World,
    cards: Cards,
    card: np.ndarray,
    check: np.ndarray,
    t0: np.ndarray,
    t: np.ndarray,
) -> np.ndarray:
    """P(the cause of a decline by `check` at `t0` still holds at `t` >= `t0`). (N,)

    A cardholder short of funds stays short until money arrives: the next payday ends it,
    other deposits end it at rate 1 / PERSIST_S["funds"]. An issuer's risk rule keeps
    declining the same payment for a while, and an amount limit holds until its period
    rolls over (e-folding times PERSIST_S["generic"], PERSIST_S["limit"]); these are the
    issuer's and the cardholder's, so they hold whatever route the retry takes. Other causes
    carry nothing over: an issuer's or an acquirer's outage, the SCA rule and velocity are
    functions of the moment already. `check` is an index in CHECKS, -1 for none.
    """
    s = np.zeros(len(t))
    dt = (t - t0).astype(np.float64)
    funds = np.flatnonzero(check == CHECKS.index("funds"))
    if len(funds):
        _, to_payday = payday_phase(world, cards, card[funds], t0[funds])
        still = dt[funds] < to_payday
        s[funds] = np.where(still, np.exp(-dt[funds] / PERSIST_S["funds"]), 0.0)
    for cause in ("generic", "limit"):
        rows = np.flatnonzero(check == CHECKS.index(cause))
        s[rows] = np.exp(-dt[rows] / PERSIST_S[cause])
    return s


def carry_over(h: np.ndarray, check: np.ndarray, still: np.ndarray) -> np.ndarray:
    """Hazards (N, K) of a retry: the check that declined the previous attempt fires for
    sure while its cause still holds (probability `still`), else as fresh."""
    h = h.copy()
    rows = np.flatnonzero(check >= 0)
    cols = check[rows]
    h[rows, cols] = 1.0 - (1.0 - h[rows, cols]) * (1.0 - still[rows])
    return h


def advice_codes(
    world: World,
    cards: Cards,
    a: Attempts,
    response: np.ndarray,
    to_payday: np.ndarray,
    rng: np.random.Generator,
    check: np.ndarray,
) -> np.ndarray:
    """Mastercard merchant advice codes for the declines; None elsewhere. (N,) object.

    `check` (N,) is the declining check's index in CHECKS: an acquirer-side decline never
    reached the issuer, so it carries no advice."""
    mc = (world.issuers.network[cards.issuer[a.card]] == 1) & (check != _K["acquirer"])
    u = rng.random(len(response))
    mac = np.full(len(response), None, dtype=object)
    hard = np.isin(response, ["41", "43", "14", "57", "04", "07"])
    mac[mc & hard & (u < 0.75)] = "03"
    mac[mc & (response == "54") & (u < 0.6)] = "01"
    mac[mc & (response == "R1")] = "21"
    mac[mc & np.isin(response, ["05", "91", "96"]) & (u < 0.2)] = "02"
    # Issuers know when funds arrive: on recurring payments the MAC advises the first
    # retry delay at which the next payday has passed.
    funds = mc & (response == "51") & a.recurring & (u < 0.6)
    k = np.minimum(np.searchsorted(MAC_DELAYS, to_payday, side="left"), len(MAC_DELAYS) - 1)
    mac[funds] = MAC_CODES[k[funds]]
    return mac


def velocity_counts(
    first_card: np.ndarray, first_t: np.ndarray, card: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Number of first attempts of `card` in [t - 10 min, t). Inputs sorted by (card, t)."""
    span = np.int64(1) << 40
    keys = first_card.astype(np.int64) * span + first_t
    hi = np.searchsorted(keys, card.astype(np.int64) * span + t, side="left")
    lo = np.searchsorted(keys, card.astype(np.int64) * span + t - VELOCITY_WINDOW, side="left")
    return (hi - lo).astype(np.int64)
