"""The entities of the synthetic payments world and their latent processes.

Issuers, merchants and cards are drawn once per world; each carries the parameters of its
hidden behaviour (outage and risk-regime intervals for issuers, funds cycles and lifecycle
events for cards). Everything is stored as numpy arrays indexed by entity number so that
outcome computation over millions of attempts stays vectorized.

Times are int64 seconds since the world's start (midnight UTC of `start`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from issuer_seq.simulate.routes import Routes

DAY = 86_400
HOUR = 3_600
MINUTE = 60

# Countries: (code, currency, UTC offset in hours, in the EEA or UK where SCA applies)
COUNTRIES: list[tuple[str, str, int, bool]] = [
    ("US", "USD", -5, False),
    ("GB", "GBP", 0, True),
    ("DE", "EUR", 1, True),
    ("FR", "EUR", 1, True),
    ("ES", "EUR", 1, True),
    ("IT", "EUR", 1, True),
    ("NL", "EUR", 1, True),
    ("PL", "PLN", 1, True),
    ("SE", "SEK", 1, True),
    ("IE", "EUR", 0, True),
    ("CA", "CAD", -5, False),
    ("BR", "BRL", -3, False),
    ("MX", "MXN", -6, False),
    ("AU", "AUD", 10, False),
    ("SG", "SGD", 8, False),
]
COUNTRY_WEIGHTS = np.array([34, 10, 9, 7, 5, 5, 4, 3, 2, 2, 5, 4, 3, 4, 3], dtype=float)
COUNTRY_CODES = np.array([c[0] for c in COUNTRIES])
COUNTRY_CURRENCY = np.array([c[1] for c in COUNTRIES])
COUNTRY_UTC_OFFSET = np.array([c[2] for c in COUNTRIES], dtype=np.int64)
COUNTRY_SCA = np.array([c[3] for c in COUNTRIES])
#: Acquiring region of each country: a route is domestic for an issuer of its region.
COUNTRY_REGION = np.array(
    ["EU" if sca else "US" if code == "US" else code for code, _, _, sca in COUNTRIES]
)

# Merchant categories: (mcc, weight, median amount, risky for issuers' risk rules, subscription)
MCCS: list[tuple[str, float, float, bool, bool]] = [
    ("5411", 20, 45.0, False, False),  # grocery
    ("5812", 14, 30.0, False, False),  # restaurants
    ("5999", 16, 40.0, False, False),  # misc retail
    ("5691", 10, 70.0, False, False),  # clothing
    ("5732", 7, 250.0, True, False),  # electronics
    ("4722", 5, 400.0, True, False),  # travel
    ("5967", 4, 35.0, True, False),  # direct marketing
    ("7995", 3, 60.0, True, False),  # gambling
    ("5818", 6, 12.0, False, True),  # digital goods / apps
    ("4899", 10, 15.0, False, True),  # streaming / subscriptions
    ("7997", 5, 40.0, False, True),  # clubs / gyms
]
MCC_CODES = np.array([m[0] for m in MCCS])
MCC_WEIGHTS = np.array([m[1] for m in MCCS], dtype=float)
MCC_MEDIAN_AMOUNT = np.array([m[2] for m in MCCS])
MCC_RISKY = np.array([m[3] for m in MCCS])
MCC_SUBSCRIPTION = np.array([m[4] for m in MCCS])
GAMBLING = int(np.flatnonzero(MCC_CODES == "7995")[0])

CARD_TYPES = np.array(["debit", "credit", "prepaid"])
NETWORKS = np.array(["visa", "mastercard"])


@dataclass(frozen=True)
class WorldParams:
    """Knobs of the world. Defaults give an overall approval rate of about 88%."""

    n_cards: int = 25_000
    n_issuers: int = 200
    n_merchants: int = 2_000
    days: int = 60
    cit_sessions_per_day: float = 0.4
    subscriptions_per_card: float = 2.5
    outages_per_issuer_day: float = 0.08
    outage_median_minutes: float = 25.0
    tight_regimes_per_issuer_day: float = 0.08
    tight_regime_median_hours: float = 14.0
    lost_stolen_share: float = 0.012
    expiry_share: float = 0.02
    closure_share: float = 0.006
    cancel_subscription_share: float = 0.05
    # Added to every card's funds-tightness logit (positive: more insufficient-funds declines).
    funds_tightness_shift: float = 0.0
    # Share of cards paid every two weeks (the rest monthly).
    biweekly_pay_share: float = 0.3
    # Multiplies the EEA/UK issuers' P(SCA soft decline | SCA applies, no 3-D Secure), capped at 1.
    sca_strictness_scale: float = 1.0


@dataclass
class Intervals:
    """Non-overlapping [start, end) intervals per owner, sorted by (owner, start)."""

    owner: np.ndarray  # (M,) int64
    start: np.ndarray  # (M,) int64 seconds
    end: np.ndarray  # (M,) int64 seconds
    value: np.ndarray  # (M,) float64: severity / intensity

    def lookup(self, owner: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Value of the interval of `owner` containing `t`, or 0 where there is none. (N,)"""
        if len(self.owner) == 0:
            return np.zeros(len(t))
        span = np.int64(1) << 40  # larger than any time in seconds
        keys = self.owner * span + self.start
        q = owner.astype(np.int64) * span + t
        pos = np.searchsorted(keys, q, side="right") - 1
        pos_c = np.clip(pos, 0, None)
        hit = (pos >= 0) & (self.owner[pos_c] == owner) & (self.end[pos_c] > t)
        return np.where(hit, self.value[pos_c], 0.0)


def renewal_intervals(
    rng: np.random.Generator,
    n_owners: int,
    horizon: int,
    rate_per_day: np.ndarray,
    median_duration: float,
    sigma: float,
    value: tuple[float, float],
) -> Intervals:
    """Alternating off/on periods per owner: exponential gaps, log-normal durations."""
    mean_events = rate_per_day * horizon / DAY
    n_max = int(np.ceil(mean_events.max() * 3 + 10))
    gaps = rng.exponential(1.0, (n_owners, n_max)) * (DAY / np.maximum(rate_per_day, 1e-9))[:, None]
    durations = rng.lognormal(np.log(median_duration), sigma, (n_owners, n_max))
    starts = np.cumsum(gaps + np.concatenate([np.zeros((n_owners, 1)), durations[:, :-1]], 1), 1)
    # Start a little before t=0 so that a world can open in the middle of an outage.
    starts = starts - rng.uniform(0, 1, (n_owners, 1)) * gaps[:, :1]
    ends = starts + durations
    owners = np.repeat(np.arange(n_owners), n_max).reshape(n_owners, n_max)
    values = rng.uniform(value[0], value[1], (n_owners, n_max))
    keep = (starts < horizon) & (ends > 0)
    return Intervals(
        owner=owners[keep].astype(np.int64),
        start=starts[keep].astype(np.int64),
        end=ends[keep].astype(np.int64),
        value=values[keep],
    )


@dataclass
class Issuers:
    country: np.ndarray  # (I,) index into COUNTRIES
    network: np.ndarray  # (I,) index into NETWORKS
    size: np.ndarray  # (I,) share of cards
    quality: np.ndarray  # (I,) generic-decline logit offset
    sca_strictness: np.ndarray  # (I,) P(soft decline | SCA applies, no 3DS)
    outages: Intervals  # value: P(technical decline) during the outage
    tight: Intervals  # value: strength of the tightened risk rules


@dataclass
class Merchants:
    mcc: np.ndarray  # (M,) index into MCCS
    country: np.ndarray  # (M,)
    uses_3ds: np.ndarray  # (M,) P(a CIT attempt is sent with 3-D Secure)
    billing_hour: np.ndarray  # (M,) UTC hour of subscription billing runs


@dataclass
class Cards:
    issuer: np.ndarray  # (C,)
    card_type: np.ndarray  # (C,) index into CARD_TYPES
    session_rate: np.ndarray  # (C,) CIT sessions per day
    spend_scale: np.ndarray  # (C,) multiplies merchants' median amounts
    funds_tightness: np.ndarray  # (C,) logit offset of insufficient-funds declines
    payday_kind: np.ndarray  # (C,) 0 monthly, 1 biweekly
    payday_day: np.ndarray  # (C,) day of month (monthly) or offset in days (biweekly)
    amount_limit: np.ndarray  # (C,) single-transaction limit
    lost_at: np.ndarray  # (C,) seconds, or a sentinel past the horizon
    lost_code: np.ndarray  # (C,) "41" or "43"
    expires_at: np.ndarray  # (C,)
    closed_at: np.ndarray  # (C,)


NEVER = np.int64(1) << 40


@dataclass
class World:
    params: WorldParams
    start: np.datetime64
    issuers: Issuers
    merchants: Merchants
    routes: Routes | None = None  # None: one route, no route effects

    @property
    def horizon(self) -> int:
        return self.params.days * DAY


def build_world(params: WorldParams, seed: int, start: str = "2026-01-05") -> World:
    """Issuers and merchants (shared by every chunk of cards)."""
    rng = np.random.default_rng([seed, 0])
    # Latent processes run a week past the log's end so that retry truth there is defined.
    n_i, horizon = params.n_issuers, (params.days + 8) * DAY
    p_country = COUNTRY_WEIGHTS / COUNTRY_WEIGHTS.sum()
    country = rng.choice(len(COUNTRIES), n_i, p=p_country)
    size = rng.lognormal(0.0, 1.1, n_i)
    size /= size.sum()
    outage_rate = rng.gamma(2.0, params.outages_per_issuer_day / 2.0, n_i)
    tight_rate = rng.gamma(2.0, params.tight_regimes_per_issuer_day / 2.0, n_i)
    issuers = Issuers(
        country=country,
        network=(rng.random(n_i) < 0.42).astype(np.int64),
        size=size,
        quality=rng.normal(0.0, 0.45, n_i),
        sca_strictness=np.where(
            COUNTRY_SCA[country],
            np.minimum(rng.beta(2, 6, n_i) * params.sca_strictness_scale, 1.0),
            0.0,
        ),
        outages=renewal_intervals(
            rng, n_i, horizon, outage_rate, params.outage_median_minutes * MINUTE, 1.0, (0.45, 0.97)
        ),
        tight=renewal_intervals(
            rng, n_i, horizon, tight_rate, params.tight_regime_median_hours * HOUR, 0.7, (0.6, 1.0)
        ),
    )
    n_m = params.n_merchants
    mcc = rng.choice(len(MCCS), n_m, p=MCC_WEIGHTS / MCC_WEIGHTS.sum())
    m_country = rng.choice(len(COUNTRIES), n_m, p=p_country)
    merchants = Merchants(
        mcc=mcc,
        country=m_country,
        uses_3ds=np.where(COUNTRY_SCA[m_country], rng.beta(6, 2, n_m), rng.beta(1, 6, n_m)),
        billing_hour=rng.choice([1, 2, 3, 4, 5, 9, 14], n_m),
    )
    return World(params, np.datetime64(start, "s"), issuers, merchants)


def build_cards(world: World, n: int, rng: np.random.Generator) -> Cards:
    """A chunk of `n` cards; cards are independent given the world."""
    p, horizon = world.params, world.horizon
    issuer = rng.choice(p.n_issuers, n, p=world.issuers.size)
    card_type = rng.choice(3, n, p=[0.5, 0.38, 0.12])
    is_credit = card_type == 1
    biweekly = rng.random(n) < p.biweekly_pay_share
    lifetime = rng.uniform(0, horizon, (3, n)).astype(np.int64)
    lost = rng.random(n) < p.lost_stolen_share
    expires = rng.random(n) < p.expiry_share
    closed = rng.random(n) < p.closure_share
    return Cards(
        issuer=issuer,
        card_type=card_type,
        session_rate=rng.gamma(1.6, p.cit_sessions_per_day / 1.6, n),
        spend_scale=rng.lognormal(0.0, 0.45, n),
        funds_tightness=np.where(
            is_credit,
            rng.normal(-1.6 + p.funds_tightness_shift, 0.8, n),
            rng.normal(-0.3 + p.funds_tightness_shift, 1.1, n),
        ),
        payday_kind=biweekly.astype(np.int64),
        payday_day=np.where(biweekly, rng.integers(0, 14, n), rng.choice([1, 15, 25, 28], n)),
        amount_limit=np.where(
            is_credit, rng.choice([1500, 3000, 8000, 15000], n), rng.choice([1000, 2500, 5000], n)
        ).astype(float),
        lost_at=np.where(lost, lifetime[0], NEVER),
        lost_code=np.where(rng.random(n) < 0.5, "41", "43"),
        expires_at=np.where(expires, lifetime[1], NEVER),
        closed_at=np.where(closed, lifetime[2], NEVER),
    )


def payday_phase(
    world: World, cards: Cards, card: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the pay cycle elapsed at `t` (0 just after payday) and seconds to the next.

    Monthly cards are paid on a fixed day of the month, biweekly ones every 14 days from their
    offset. Both (N,) float64.
    """
    kind = cards.payday_kind[card]
    day = cards.payday_day[card]
    # Biweekly.
    period = 14 * DAY
    offset = day * DAY
    since_b = np.mod(t - offset, period)
    phase_b = since_b / period
    to_next_b = period - since_b
    # Monthly: the payday of this month, or of the previous one if it has not come yet.
    moment = world.start + t.astype("timedelta64[s]")
    month = moment.astype("datetime64[M]")
    this_pay = month.astype("datetime64[s]") + ((day - 1) * DAY).astype("timedelta64[s]")
    passed = moment >= this_pay
    prev_month = np.where(passed, month, month - np.timedelta64(1, "M"))
    prev_pay = prev_month.astype("datetime64[s]") + ((day - 1) * DAY).astype("timedelta64[s]")
    next_pay = (prev_month + np.timedelta64(1, "M")).astype("datetime64[s]") + (
        (day - 1) * DAY
    ).astype("timedelta64[s]")
    since_m = (moment - prev_pay).astype(np.int64)
    to_next_m = (next_pay - moment).astype(np.int64)
    phase_m = since_m / (since_m + to_next_m)
    monthly = kind == 0
    return np.where(monthly, phase_m, phase_b), np.where(monthly, to_next_m, to_next_b).astype(
        float
    )
