"""A second, independent generator of card-authorization logs: the "ledger" world.

It shares no code with `issuer_seq.simulate` (only the data contract: response-code causes
and the network retry rules of `issuer_seq.rules`, the delay grid of `issuer_seq.delays`)
and models the same phenomena with different processes:

- **Outages**: a self-exciting (Hawkes) process per issuer, simulated by its branching
  representation: immigrant outages arrive as a Poisson process, each outage triggers a
  Poisson number of follow-up outages (mean `outage_branching`) at exponential lags (mean
  `outage_decay_hours`). Outages last an exponential time and may overlap (the worst wins).
- **Funds**: every card has a continuous balance: savings plus its pay at each payday
  (monthly, every two weeks or weekly), drawn down linearly by everyday spending and in steps
  by bills (a compound Poisson process). An attempt is short of funds by a logistic function
  of amount minus the available balance (credit cards add their open credit line). The
  balance is exogenous: the logged attempts do not draw it down.
- **Risk rules**: each issuer has a table of rule offsets by MCC group x amount band, and
  tightens blocks of that table (one MCC group, the amount bands from some band up) for
  exponential spells (`rule_changes_per_issuer_day`). Each payment carries its own hidden
  risk score, so a risk decline retried soon mostly fails again.
- **Velocity**: the card's first attempts in the previous hour (not minutes), beyond two.
- **SCA**, **lifecycle** and **time of day** as the domain describes, with their own rates.

The truth is exact: an attempt's `p_approve` is the product of its checks' pass
probabilities, the same product used to draw its outcome, and `p_retry_<delay>` is that
product at the retry's time (with the payment's hidden risk score). Retries come from its
own logged policy (exploring, with propensities) and pass `issuer_seq.rules.check_retries`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.delays import DEFAULT_GRID, grid_seconds, truth_column
from issuer_seq.rules import AttemptColumns, Cause, NetworkRules, causes, check_retries

DAY, HOUR, MINUTE = 86_400, 3_600, 60
NEVER = np.int64(1) << 40
MAX_ATTEMPTS = 4

# (code, currency, UTC offset, strong customer authentication applies)
COUNTRIES = [
    ("US", "USD", -6, False),
    ("GB", "GBP", 0, True),
    ("DE", "EUR", 1, True),
    ("FR", "EUR", 1, True),
    ("NL", "EUR", 1, True),
    ("CA", "CAD", -5, False),
    ("BR", "BRL", -3, False),
    ("JP", "JPY", 9, False),
]
COUNTRY_P = np.array([0.38, 0.12, 0.12, 0.09, 0.05, 0.09, 0.08, 0.07])
C_CODE = np.array([c[0] for c in COUNTRIES])
C_CURRENCY = np.array([c[1] for c in COUNTRIES])
C_OFFSET = np.array([c[2] for c in COUNTRIES], dtype=np.int64)
C_SCA = np.array([c[3] for c in COUNTRIES])

# (mcc, weight among merchants, median amount, rule group: 0 everyday, 1 retail,
#  2 big-ticket, 3 high-risk, 4 subscription)
MCCS = [
    ("5411", 16, 55.0, 0),
    ("5814", 12, 11.0, 0),
    ("5541", 9, 48.0, 0),
    ("5311", 10, 85.0, 1),
    ("5651", 8, 65.0, 1),
    ("5732", 6, 320.0, 2),
    ("4511", 5, 480.0, 2),
    ("7995", 3, 45.0, 3),
    ("5967", 3, 30.0, 3),
    ("4899", 12, 13.0, 4),
    ("7997", 8, 38.0, 4),
    ("6300", 8, 95.0, 4),
]
M_CODE = np.array([m[0] for m in MCCS])
M_WEIGHT = np.array([m[1] for m in MCCS], dtype=float)
M_MEDIAN = np.array([m[2] for m in MCCS])
M_GROUP = np.array([m[3] for m in MCCS], dtype=np.int64)
N_GROUPS = 5
SUBSCRIPTION = M_GROUP == 4
GAMBLING = int(np.flatnonzero(M_CODE == "7995")[0])
BAND_EDGES = np.array([25.0, 100.0, 500.0])  # amount bands: <25, 25-100, 100-500, >=500
N_BANDS = len(BAND_EDGES) + 1
# Local-hour profile of customer attempts: a lunch and an evening peak.
HOUR_P = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 3.5, 4, 6, 8, 6, 4, 4, 4.5, 6, 8, 9, 8, 6, 4, 2]
)
HOUR_P = HOUR_P / HOUR_P.sum()
CHECKS = ("hard", "technical", "sca", "data", "limit", "velocity", "funds", "risk")
MAC_WAIT = np.array([HOUR, DAY, 2 * DAY, 4 * DAY, 6 * DAY, 8 * DAY, 10 * DAY])
MAC_CODE = np.array(["24", "25", "26", "27", "28", "29", "30"])
#: the logged policy's preference over the default grid by cause (mixed with uniform)
PREFER = {
    Cause.TECHNICAL.value: [0.15, 0.45, 0.30, 0.10, 0.0, 0.0, 0.0, 0.0],
    Cause.FUNDS.value: [0.0, 0.0, 0.0, 0.05, 0.15, 0.30, 0.30, 0.20],
    Cause.GENERIC.value: [0.0, 0.05, 0.15, 0.25, 0.25, 0.15, 0.10, 0.05],
    Cause.LIMIT.value: [0.0, 0.0, 0.10, 0.20, 0.35, 0.20, 0.10, 0.05],
}
SOFT = (Cause.FUNDS.value, Cause.GENERIC.value, Cause.TECHNICAL.value, Cause.LIMIT.value)


@dataclass(frozen=True)
class LedgerParams:
    """Knobs of the ledger world (docs/suite.md lists the suite's ranges)."""

    n_cards: int = 6_000
    n_issuers: int = 120
    n_merchants: int = 1_500
    days: int = 60
    seed: int = 0
    start: str = "2026-02-02"
    delay_grid: tuple[str, ...] = DEFAULT_GRID
    cit_per_day: float = 0.45  # mean customer attempts per card per day (before bursts)
    burst_share: float = 0.08  # share of customer attempts followed by quick repeats
    subscriptions_per_card: float = 2.5
    cancel_share: float = 0.04
    outage_immigrants_per_issuer_day: float = 0.03
    outage_branching: float = 0.5  # mean follow-up outages per outage (< 1)
    outage_decay_hours: float = 3.0
    outage_mean_minutes: float = 35.0
    rule_changes_per_issuer_day: float = 0.06
    rule_spell_mean_hours: float = 30.0
    savings_median: float = 150.0  # smaller: tighter funds
    bills_per_day: float = 0.12
    weekly_pay_share: float = 0.2
    biweekly_pay_share: float = 0.3
    sca_soft_decline: float = 0.3
    lost_share: float = 0.01
    expiry_share: float = 0.02
    closure_share: float = 0.005
    rules: NetworkRules = field(default_factory=NetworkRules)


@dataclass
class _Spells:
    """Per-owner spells sorted by (owner, start): start, end, value, and two extra ints."""

    owner: np.ndarray  # (M,) int64
    start: np.ndarray  # (M,) int64 seconds
    end: np.ndarray  # (M,) int64 seconds
    value: np.ndarray  # (M,) float: outage severity or rule strength
    extra: np.ndarray  # (M, 2) int64: for rule spells (mcc group, lowest amount band)

    @classmethod
    def build(
        cls,
        owner: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        value: np.ndarray,
        extra: np.ndarray,
    ) -> _Spells:
        order = np.lexsort((start, owner))
        return cls(owner[order], start[order], end[order], value[order], extra[order])

    def active(self, owner: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, spell) pairs where the owner's spell covers t; spells may overlap.

        Only spells that started within the longest duration before t can cover it, so the
        candidates per query are few however long the log is.
        """
        if len(self.start) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = self.owner * SPAN + self.start
        q = owner.astype(np.int64) * SPAN + t
        hi = np.searchsorted(keys, q, side="right")
        lo = np.searchsorted(keys, q - int((self.end - self.start).max()), side="left")
        n = np.maximum(hi - lo, 0)
        row = np.repeat(np.arange(len(t)), n)
        spell = lo[row] + (np.arange(len(row)) - np.repeat(np.cumsum(n) - n, n))
        hit = self.end[spell] > t[row]
        return row[hit], spell[hit]


def _hawkes_outages(rng: np.random.Generator, p: LedgerParams, horizon: int) -> _Spells:
    """Self-exciting outages per issuer by the branching construction."""
    n = p.n_issuers
    rate = rng.gamma(2.0, p.outage_immigrants_per_issuer_day / 2.0, n)  # per issuer
    pad = 2 * DAY
    k = rng.poisson(rate * (horizon + pad) / DAY)
    owner = np.repeat(np.arange(n), k)
    t = rng.uniform(-pad, horizon, len(owner))
    owners, times = [owner], [t]
    for _ in range(50):  # generations; branching < 1 dies out fast
        kids = rng.poisson(p.outage_branching, len(owner))
        if kids.sum() == 0:
            break
        owner = np.repeat(owner, kids)
        t = np.repeat(t, kids) + rng.exponential(p.outage_decay_hours * HOUR, len(owner))
        owners.append(owner)
        times.append(t)
    owner, t = np.concatenate(owners), np.concatenate(times)
    keep = t < horizon
    owner, t = owner[keep], t[keep].astype(np.int64)
    dur = rng.exponential(p.outage_mean_minutes * MINUTE, len(t)).astype(np.int64) + MINUTE
    sev = rng.uniform(0.5, 0.95, len(t))
    return _Spells.build(owner, t, t + dur, sev, np.zeros((len(t), 2), np.int64))


def _rule_spells(rng: np.random.Generator, p: LedgerParams, horizon: int) -> _Spells:
    """Spells in which an issuer tightens one MCC group from some amount band up."""
    n = p.n_issuers
    pad = 3 * DAY
    k = rng.poisson(rng.gamma(2.0, p.rule_changes_per_issuer_day / 2.0, n) * (horizon + pad) / DAY)
    owner = np.repeat(np.arange(n), k)
    start = rng.uniform(-pad, horizon, len(owner)).astype(np.int64)
    dur = rng.exponential(p.rule_spell_mean_hours * HOUR, len(owner)).astype(np.int64) + HOUR
    group = rng.choice(N_GROUPS, len(owner), p=[0.2, 0.2, 0.25, 0.25, 0.1])
    band = rng.integers(0, N_BANDS, len(owner))
    strength = rng.uniform(1.2, 2.8, len(owner))
    return _Spells.build(owner, start, start + dur, strength, np.stack([group, band], 1))


@dataclass
class _World:
    p: LedgerParams
    start: np.datetime64
    horizon: int
    i_country: np.ndarray
    i_visa: np.ndarray
    i_quality: np.ndarray
    i_sca: np.ndarray
    i_table: np.ndarray  # (I, groups, bands) rule offsets
    outages: _Spells
    rules: _Spells
    m_mcc: np.ndarray
    m_country: np.ndarray
    m_3ds: np.ndarray
    m_bill_hour: np.ndarray
    c_issuer: np.ndarray
    c_type: np.ndarray  # 0 debit, 1 credit, 2 prepaid
    c_rate: np.ndarray
    c_scale: np.ndarray
    c_savings: np.ndarray
    c_line: np.ndarray  # open credit line (0 for debit and prepaid)
    c_pay: np.ndarray  # pay per period
    c_period: np.ndarray  # 0 monthly, else period in days (7 or 14)
    c_payday: np.ndarray  # day of month (monthly) or offset in days
    c_drain: np.ndarray  # spending per second between paydays
    c_limit: np.ndarray
    c_lost: np.ndarray
    c_lost_code: np.ndarray
    c_expires: np.ndarray
    c_closed: np.ndarray
    bill_keys: np.ndarray  # sorted card * span + t of bills
    bill_cum: np.ndarray  # (B + 1,) cumulative bill amounts in key order


SPAN = np.int64(1) << 40


def _build(p: LedgerParams) -> _World:
    rng = np.random.default_rng([p.seed, 7])
    horizon = (p.days + 8) * DAY  # processes run a week past the end: retry truth there
    n_i, n_m, n_c = p.n_issuers, p.n_merchants, p.n_cards
    i_country = rng.choice(len(COUNTRIES), n_i, p=COUNTRY_P)
    size = rng.pareto(1.3, n_i) + 0.2
    group_fx = np.array([-0.4, 0.0, 0.5, 1.0, -0.6])[:, None]
    band_fx = np.array([-0.3, 0.0, 0.3, 0.8])[None, :]
    table = group_fx + band_fx + rng.normal(0, 0.35, (n_i, N_GROUPS, N_BANDS))
    m_country = rng.choice(len(COUNTRIES), n_m, p=COUNTRY_P)
    c_type = rng.choice(3, n_c, p=[0.55, 0.33, 0.12])
    credit = c_type == 1
    u = rng.random(n_c)
    period = np.where(
        u < p.weekly_pay_share, 7, np.where(u < p.weekly_pay_share + p.biweekly_pay_share, 14, 0)
    )
    monthly_pay = rng.lognormal(np.log(2200.0), 0.45, n_c)
    period_s = np.where(period == 0, 30.4 * DAY, period * DAY)
    pay = monthly_pay * period_s / (30.4 * DAY)
    # Bills take a share of the pay; everyday spending takes about the rest of it.
    drain = monthly_pay * rng.uniform(0.55, 0.85, n_c) / (30.4 * DAY)
    n_bills = rng.poisson(p.bills_per_day * horizon / DAY, n_c)
    b_card = np.repeat(np.arange(n_c), n_bills)
    b_t = rng.integers(0, horizon, len(b_card))
    b_amt = rng.exponential(monthly_pay[b_card] * 0.25 / max(p.bills_per_day * 30.4, 1e-9))
    order = np.lexsort((b_t, b_card))
    lifetime = rng.integers(0, horizon, (3, n_c))
    return _World(
        p=p,
        start=np.datetime64(p.start, "s"),
        horizon=horizon,
        i_country=i_country,
        i_visa=rng.random(n_i) < 0.6,
        i_quality=rng.normal(0.0, 0.5, n_i),
        i_sca=np.where(C_SCA[i_country], rng.uniform(0.4, 1.4, n_i), 0.0),
        i_table=table,
        outages=_hawkes_outages(rng, p, horizon),
        rules=_rule_spells(rng, p, horizon),
        m_mcc=rng.choice(len(MCCS), n_m, p=M_WEIGHT / M_WEIGHT.sum()),
        m_country=m_country,
        m_3ds=np.where(C_SCA[m_country], rng.uniform(0.5, 0.95, n_m), rng.uniform(0.0, 0.2, n_m)),
        m_bill_hour=rng.choice([0, 2, 6, 8, 12], n_m),
        c_issuer=rng.choice(n_i, n_c, p=size / size.sum()),
        c_type=c_type,
        c_rate=rng.gamma(1.3, p.cit_per_day / 1.3, n_c),
        c_scale=rng.lognormal(0.0, 0.5, n_c),
        c_savings=np.where(credit, 0.0, rng.lognormal(np.log(p.savings_median), 1.1, n_c)),
        c_line=np.where(credit, rng.lognormal(np.log(2500.0), 0.7, n_c), 0.0),
        c_pay=pay,
        c_period=period.astype(np.int64),
        c_payday=np.where(
            period == 0, rng.choice([1, 1, 15, 25, 28], n_c), rng.integers(0, 14, n_c)
        ),
        c_drain=drain,
        c_limit=np.where(
            credit,
            rng.choice([2000.0, 5000.0, 10000.0], n_c),
            rng.choice([1000.0, 2500.0, 5000.0], n_c),
        ),
        c_lost=np.where(rng.random(n_c) < p.lost_share, lifetime[0], NEVER),
        c_lost_code=np.where(rng.random(n_c) < 0.6, "41", "43"),
        c_expires=np.where(rng.random(n_c) < p.expiry_share, lifetime[1], NEVER),
        c_closed=np.where(rng.random(n_c) < p.closure_share, lifetime[2], NEVER),
        bill_keys=(b_card.astype(np.int64) * SPAN + b_t)[order],
        bill_cum=np.concatenate([[0.0], np.cumsum(b_amt[order])]),
    )


def _last_payday(w: _World, card: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of the last payday at or before t and of the next one. (N,) int64 each."""
    period = w.c_period[card]
    day = w.c_payday[card]
    per_s = np.maximum(period, 1) * DAY
    off = day * DAY
    last_p = t - np.mod(t - off, per_s)
    # Monthly: this month's payday, or the previous month's if it has not come yet.
    moment = w.start + t.astype("timedelta64[s]")
    month = moment.astype("datetime64[M]")

    def payday(m: np.ndarray) -> np.ndarray:
        at = m.astype("datetime64[s]") + ((day - 1) * DAY).astype("timedelta64[s]")
        return (at - w.start).astype(np.int64)

    this = payday(month)
    prev = np.where(t >= this, this, payday(month - np.timedelta64(1, "M")))
    nxt = np.where(t >= this, payday(month + np.timedelta64(1, "M")), this)
    monthly = period == 0
    return np.where(monthly, prev, last_p), np.where(monthly, nxt, last_p + per_s)


def balance(w: _World, card: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Available funds (balance plus open credit line) at t and seconds to the next payday."""
    last, nxt = _last_payday(w, card, t)
    keys = card.astype(np.int64) * SPAN
    bills = (
        w.bill_cum[np.searchsorted(w.bill_keys, keys + t, side="right")]
        - w.bill_cum[np.searchsorted(w.bill_keys, keys + last, side="right")]
    )
    b = w.c_savings[card] + w.c_pay[card] - w.c_drain[card] * (t - last) - bills
    return b + w.c_line[card], (nxt - t).astype(np.int64)


@dataclass
class _Att:
    card: np.ndarray
    merchant: np.ndarray
    t: np.ndarray
    amount: np.ndarray
    mit: np.ndarray
    three_ds: np.ndarray
    attempt: np.ndarray
    cancelled: np.ndarray
    risk: np.ndarray  # the payment's hidden risk score

    def take(self, rows: np.ndarray) -> _Att:
        return _Att(**{k: v[rows] for k, v in vars(self).items()})

    @staticmethod
    def cat(parts: list[_Att]) -> _Att:
        return _Att(**{k: np.concatenate([vars(a)[k] for a in parts]) for k in vars(parts[0])})


def _first_attempts(w: _World, rng: np.random.Generator) -> _Att:
    p, n_c = w.p, w.p.n_cards
    country = w.i_country[w.c_issuer]
    n = rng.poisson(w.c_rate * p.days)
    card = np.repeat(np.arange(n_c), n)
    hour = rng.choice(24, len(card), p=HOUR_P)
    t = rng.integers(0, p.days, len(card)) * DAY + (hour - C_OFFSET[country[card]]) * HOUR
    t = t + rng.integers(0, HOUR, len(card))
    # Bursts: a customer (or a script) repeats within minutes at the same shop.
    reps = np.where(rng.random(len(card)) < p.burst_share, rng.integers(1, 5, len(card)), 0)
    src = np.repeat(np.arange(len(card)), reps)
    lag = (
        np.concatenate([np.cumsum(rng.integers(20, 900, r)) for r in reps])
        if len(src)
        else np.zeros(0, np.int64)
    )
    m_all = np.arange(p.n_merchants)
    shop = ~SUBSCRIPTION[w.m_mcc]
    local = rng.random(len(card)) < 0.85
    pool_all = m_all[shop]
    pick = pool_all[rng.integers(0, len(pool_all), len(card))]
    # Domestic merchants: redraw from the card's country where it has shops.
    by_country = [m_all[shop & (w.m_country == c)] for c in range(len(COUNTRIES))]
    for c, pool in enumerate(by_country):
        rows = np.flatnonzero(local & (country[card] == c))
        if len(pool) and len(rows):
            pick[rows] = pool[rng.integers(0, len(pool), len(rows))]
    merchant = np.concatenate([pick, pick[src]])
    card = np.concatenate([card, card[src]])
    t = np.concatenate([t, t[src] + lag])
    amount = (
        np.round(rng.lognormal(np.log(M_MEDIAN[w.m_mcc[merchant]] * w.c_scale[card]), 0.8), 2) + 0.3
    )
    tds = rng.random(len(card)) < w.m_3ds[merchant]
    cit = _Att(
        card=card,
        merchant=merchant,
        t=t.astype(np.int64),
        amount=amount,
        mit=np.zeros(len(card), bool),
        three_ds=tds,
        attempt=np.ones(len(card), np.int64),
        cancelled=np.full(len(card), NEVER),
        risk=rng.normal(0, 1, len(card)),
    )
    # Subscriptions: a fixed amount billed monthly on a day, in the merchant's billing run.
    k = rng.poisson(p.subscriptions_per_card, n_c)
    s_card = np.repeat(np.arange(n_c), k)
    subs = m_all[SUBSCRIPTION[w.m_mcc]]
    s_merchant = subs[rng.integers(0, len(subs), len(s_card))]
    s_amount = np.round(rng.lognormal(np.log(M_MEDIAN[w.m_mcc[s_merchant]]), 0.4), 0) - 0.01
    s_day = rng.integers(1, 29, len(s_card))
    s_cancel = np.where(
        rng.random(len(s_card)) < p.cancel_share, rng.integers(0, p.days * DAY, len(s_card)), NEVER
    )
    parts = []
    first_month = w.start.astype("datetime64[M]")
    for m in range(p.days // 28 + 2):
        base = ((first_month + np.timedelta64(m, "M")).astype("datetime64[s]") - w.start).astype(
            np.int64
        )
        ts = (
            base
            + (s_day - 1) * DAY
            + w.m_bill_hour[s_merchant] * HOUR
            + rng.integers(0, 3600, len(s_card))
        )
        rows = np.flatnonzero((ts >= 0) & (ts < p.days * DAY))
        parts.append(
            _Att(
                card=s_card[rows],
                merchant=s_merchant[rows],
                t=ts[rows],
                amount=s_amount[rows],
                mit=np.ones(len(rows), bool),
                three_ds=np.zeros(len(rows), bool),
                attempt=np.ones(len(rows), np.int64),
                cancelled=s_cancel[rows],
                risk=rng.normal(0, 1, len(rows)),
            )
        )
    a = _Att.cat([cit, *parts])
    # Cards that ended mostly stop shopping; stored credentials keep being charged.
    ended = np.minimum(np.minimum(w.c_lost, w.c_expires), w.c_closed)[a.card]
    keep = (
        (a.t >= 0)
        & (a.t < p.days * DAY)
        & ~((a.t >= ended) & ~a.mit & (rng.random(len(a.t)) < 0.9))
    )
    a = a.take(np.flatnonzero(keep))
    return a.take(np.lexsort((a.t, a.card)))


def _velocity(first: _Att, card: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The card's first attempts in [t - 1 h, t). Needs `first` sorted by (card, t)."""
    keys = first.card.astype(np.int64) * SPAN + first.t
    q = card.astype(np.int64) * SPAN + t
    return np.searchsorted(keys, q, side="left") - np.searchsorted(keys, q - HOUR, side="left")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _hazards(
    w: _World, a: _Att, t: np.ndarray, first: _Att, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(N, K) hazards in CHECKS order, (N, K) codes, latent state. `u` picks codes."""
    issuer = w.c_issuer[a.card]
    visa = w.i_visa[issuer]
    ic, mc = w.i_country[issuer], w.m_country[a.merchant]
    mcc = w.m_mcc[a.merchant]
    ctype = w.c_type[a.card]
    n = len(t)
    h = np.zeros((n, len(CHECKS)))
    codes = np.empty((n, len(CHECKS)), dtype=object)

    lost, closed, expired = t >= w.c_lost[a.card], t >= w.c_closed[a.card], t >= w.c_expires[a.card]
    cancelled = a.mit & (t >= a.cancelled)
    barred = (ctype == 2) & (mcc == GAMBLING)
    h[:, 0] = np.where(lost | closed | expired | cancelled, 1.0, np.where(barred, 0.6, 0.0))
    codes[:, 0] = np.select(
        [lost, closed & a.mit, closed, expired, cancelled],
        [w.c_lost_code[a.card], "R1", "14", "54", np.where(visa & (u < 0.4), "R0", "R1")],
        "57",
    )

    outage = np.zeros(n)
    row, spell = w.outages.active(issuer, t)
    np.maximum.at(outage, row, w.outages.value[spell])
    hour = np.mod(t // HOUR + C_OFFSET[ic], 24)
    h[:, 1] = np.maximum(outage, 0.001 + 0.002 * ((hour >= 18) & (hour <= 22)))
    codes[:, 1] = np.where(u < 0.4, "91", "96")

    sca = C_SCA[ic] & C_SCA[mc] & ~a.mit & ~a.three_ds & (a.amount > 30)
    h[:, 2] = np.where(sca, np.minimum(w.p.sca_soft_decline * w.i_sca[issuer], 0.98), 0.0)
    codes[:, 2] = np.where(visa, "1A", "65")

    h[:, 3] = np.where(a.mit, 0.0, 0.003)
    codes[:, 3] = np.where(u < 0.8, "N7", "14")

    h[:, 4] = np.where(a.amount > w.c_limit[a.card], 0.8, 0.0)
    codes[:, 4] = "61"

    v = _velocity(first, a.card, t)
    h[:, 5] = 1.0 - np.exp(-0.05 * np.maximum(v - 2, 0) ** 1.5)
    codes[:, 5] = "65"

    avail, to_payday = balance(w, a.card, t)
    h[:, 6] = 0.002 + 0.95 * _sigmoid((a.amount - avail) / (0.15 * a.amount + 15.0))
    codes[:, 6] = "51"

    band = np.searchsorted(BAND_EDGES, a.amount, side="right")
    group = M_GROUP[mcc]
    row, spell = w.rules.active(issuer, t)
    match = (w.rules.extra[spell, 0] == group[row]) & (w.rules.extra[spell, 1] <= band[row])
    tight = np.bincount(row[match], weights=w.rules.value[spell[match]], minlength=n)
    logit = (
        -4.2
        + w.i_quality[issuer]
        + w.i_table[issuer, group, band]
        + tight
        + 0.8 * (ic != mc)
        + 0.5 * (hour < 5)
        + 0.9 * a.risk
        - 0.7 * a.three_ds
    )
    h[:, 7] = _sigmoid(logit)
    codes[:, 7] = np.where((ic != mc) & (u < 0.08), "59", np.where(u > 0.95, "62", "05"))
    latent = {"outage": outage, "tight": tight, "funds": h[:, 6], "to_payday": to_payday}
    return h, codes, latent


def _draw(h: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fired = rng.random(h.shape) < h
    first = np.argmax(fired, axis=1)
    return np.where(fired.any(axis=1), codes[np.arange(len(h)), first], "00").astype(object)


def _advice(
    w: _World, a: _Att, code: np.ndarray, to_payday: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    mc = ~w.i_visa[w.c_issuer[a.card]]
    u = rng.random(len(code))
    mac = np.full(len(code), None, dtype=object)
    mac[mc & np.isin(code, ["41", "43", "14", "57"]) & (u < 0.7)] = "03"
    mac[mc & (code == "54") & (u < 0.5)] = "01"
    mac[mc & (code == "R1")] = "21"
    mac[mc & np.isin(code, ["05", "91", "96"]) & (u < 0.15)] = "02"
    funds = mc & (code == "51") & a.mit & (u < 0.6)
    k = np.minimum(np.searchsorted(MAC_WAIT, to_payday, side="left"), len(MAC_WAIT) - 1)
    mac[funds] = MAC_CODE[k[funds]]
    return mac


def _mac_wait(mac: np.ndarray) -> np.ndarray:
    out = np.zeros(len(mac), np.int64)
    for code, wait in zip(MAC_CODE, MAC_WAIT, strict=True):
        out[mac == code] = wait
    return out


def _columns(a: _Att, w: _World, code: np.ndarray, mac: np.ndarray) -> AttemptColumns:
    return AttemptColumns(
        card_id=a.card.astype(np.int64),
        ts=a.t,
        network=np.where(w.i_visa[w.c_issuer[a.card]], "visa", "mastercard"),
        merchant_id=a.merchant.astype(np.int64),
        amount=a.amount,
        response_code=code.astype(str),
        advice_code=np.array(["" if m is None else m for m in mac], dtype=object).astype(str),
        attempt=a.attempt,
    )


def generate(p: LedgerParams, data_dir: str | Path) -> dict[str, Any]:
    """Write transactions.parquet, truth.parquet and meta.json of a ledger world."""
    grid = grid_seconds(p.delay_grid)
    w = _build(p)
    rng = np.random.default_rng([p.seed, 11])
    first = _first_attempts(w, rng)

    def answer(a: _Att) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        u = rng.random(len(a.t))
        h, codes, latent = _hazards(w, a, a.t, first, u)
        code = _draw(h, codes, rng)
        return (
            code,
            _advice(w, a, code, latent["to_payday"], rng),
            np.prod(1 - h, axis=1),
            latent | {"u": u},
        )

    code, mac, p_ok, lat = answer(first)
    rows = {"a": first, "code": code, "mac": mac, "p": p_ok, "lat": lat}
    payment = np.arange(len(first.t))
    parent = np.full(len(first.t), -1)
    prop = np.full(len(first.t), np.nan)
    last = np.arange(len(first.t))
    for _ in range(MAX_ATTEMPTS - 1):
        a_all: _Att = rows["a"]
        dec = last[rows["code"][last] != "00"]
        if len(dec) == 0:
            break
        d = a_all.take(dec)
        net = np.where(w.i_visa[w.c_issuer[d.card]], "visa", "mastercard")
        cause = causes(rows["code"][dec].astype(str), net)
        wait = _mac_wait(rows["mac"][dec])
        allowed = grid[None, :] >= wait[:, None]
        allowed[~d.mit, 3:] = False  # a checkout retries within 2 hours at most
        pref = np.full(allowed.shape, 1.0)
        for name, wts in PREFER.items():
            if len(wts) == len(grid):
                pref[cause == name] = wts
        pref = pref * allowed
        psum = pref.sum(1, keepdims=True)
        uni = allowed / np.maximum(allowed.sum(1, keepdims=True), 1)
        mix = np.where(psum > 0, 0.6 * uni + 0.4 * pref / np.where(psum > 0, psum, 1), uni)
        bucket = np.minimum(
            (np.cumsum(mix, 1) < rng.random(len(dec))[:, None]).sum(1), len(grid) - 1
        )
        u = rng.random(len(dec))
        room = d.attempt < MAX_ATTEMPTS
        by_grid = np.isin(cause, SOFT) & room & allowed.any(1) & (u < np.where(d.mit, 0.8, 0.25))
        now_3ds = (cause == Cause.SCA.value) & ~d.mit & ~d.three_ds & room & (u < 0.7)
        delay = np.where(
            now_3ds,
            15 + rng.integers(0, 45, len(dec)),
            np.maximum(grid[bucket], wait) + rng.integers(0, 90, len(dec)),
        )
        at = d.t + delay
        hist = _columns(a_all, w, rows["code"], rows["mac"])
        ok, _ = check_retries(
            hist.take(dec), at, hist, self_rows=dec, three_ds=d.three_ds | now_3ds, rules=p.rules
        )
        send = (by_grid | now_3ds) & ok & (at < p.days * DAY)
        if not send.any():
            break
        new = d.take(np.flatnonzero(send))
        new.t, new.attempt = at[send], new.attempt + 1
        new.three_ds = new.three_ds | now_3ds[send]
        c2, m2, p2, l2 = answer(new)
        start = len(a_all.t)
        rows = {
            "a": _Att.cat([a_all, new]),
            "code": np.concatenate([rows["code"], c2]),
            "mac": np.concatenate([rows["mac"], m2]),
            "p": np.concatenate([rows["p"], p2]),
            "lat": {k: np.concatenate([rows["lat"][k], l2[k]]) for k in rows["lat"]},
        }
        payment = np.concatenate([payment, payment[dec[send]]])
        parent = np.concatenate([parent, dec[send]])
        prop = np.concatenate(
            [prop, np.where(now_3ds, 0.7, mix[np.arange(len(dec)), bucket])[send]]
        )
        last = np.arange(start, len(rows["a"].t))

    keep = _rule_abiding(rows, w, parent, p.rules)
    a: _Att = rows["a"].take(keep)
    code, mac = rows["code"][keep], rows["mac"][keep]
    lat = {k: v[keep] for k, v in rows["lat"].items()}
    # Retry truth: the same product of checks after each delay, with the payment's risk
    # score and the code draw held fixed.
    truth: dict[str, np.ndarray] = {}
    declined = np.flatnonzero(code != "00")
    later = a.take(declined)
    later.attempt = later.attempt + 1
    for label, delay in zip(p.delay_grid, grid, strict=True):
        h, _, _ = _hazards(w, later, later.t + delay, first, lat["u"][declined])
        col = np.full(len(a.t), np.nan)
        col[declined] = np.prod(1 - h, axis=1)
        truth[truth_column(label)] = col
    return _write(
        p, w, a, code, mac, rows["p"][keep], payment[keep], prop[keep], lat, truth, data_dir
    )


def _rule_abiding(
    rows: dict[str, Any], w: _World, parent: np.ndarray, rules: NetworkRules
) -> np.ndarray:
    """Rows to keep: retries re-checked against the finished log (rounds go by attempt
    number, so a later round can add history that an earlier retry should have seen);
    a dropped retry drops its own retries. Repeated until nothing changes."""
    keep = np.ones(len(parent), bool)
    while True:
        idx = np.flatnonzero(keep)
        a: _Att = rows["a"].take(idx)
        hist = _columns(a, w, rows["code"][idx], rows["mac"][idx])
        pos = np.full(len(parent), -1)
        pos[idx] = np.arange(len(idx))
        retry = np.flatnonzero(keep & (parent >= 0))
        if len(retry) == 0:
            return idx
        par = pos[parent[retry]]
        ok, _ = check_retries(
            hist.take(par),
            rows["a"].t[retry],
            hist,
            self_rows=par,
            three_ds=rows["a"].three_ds[retry],
            rules=rules,
        )
        drop = np.zeros(len(parent), bool)
        drop[retry[~ok]] = True
        if not drop.any():
            return idx
        for _ in range(MAX_ATTEMPTS):
            drop |= (parent >= 0) & drop[np.maximum(parent, 0)]
        keep &= ~drop


def _write(
    p: LedgerParams,
    w: _World,
    a: _Att,
    code: np.ndarray,
    mac: np.ndarray,
    p_ok: np.ndarray,
    payment: np.ndarray,
    prop: np.ndarray,
    lat: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    data_dir: str | Path,
) -> dict[str, Any]:
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((a.attempt, payment, a.t))
    issuer = w.c_issuer[a.card]
    ts = (w.start + a.t.astype("timedelta64[s]")).astype("datetime64[us]")
    tx = pd.DataFrame(
        {
            "payment_id": pd.factorize(payment)[0].astype(np.int64),
            "attempt": a.attempt.astype(np.int64),
            "ts": pd.DatetimeIndex(ts).tz_localize("UTC"),
            "card_id": a.card.astype(np.int64),
            "issuer_id": issuer.astype(np.int64),
            "network": np.where(w.i_visa[issuer], "visa", "mastercard"),
            "card_type": np.array(["debit", "credit", "prepaid"])[w.c_type[a.card]],
            "issuer_country": C_CODE[w.i_country[issuer]],
            "merchant_id": a.merchant.astype(np.int64),
            "mcc": M_CODE[w.m_mcc[a.merchant]],
            "merchant_country": C_CODE[w.m_country[a.merchant]],
            "amount": a.amount.astype(np.float64),
            "currency": C_CURRENCY[w.m_country[a.merchant]],
            "initiator": np.where(a.mit, "MIT", "CIT"),
            "is_recurring": a.mit.copy(),
            "three_ds": a.three_ds.copy(),
            "response_code": code.astype(str),
            "advice_code": pd.array(mac, dtype="string"),
            "policy_propensity": prop,
        }
    ).iloc[order]
    tx.insert(0, "txn_id", np.arange(len(tx), dtype=np.int64))
    tx = tx.reset_index(drop=True)
    th = pd.DataFrame(
        {
            "txn_id": tx["txn_id"].to_numpy(),
            "p_approve": p_ok[order],
            **{k: v[order] for k, v in truth.items()},
            "latent_outage": lat["outage"][order],
            "latent_risk_regime": lat["tight"][order],
            "latent_funds_hazard": lat["funds"][order],
        }
    )
    tx.to_parquet(out / "transactions.parquet", index=False)
    th.to_parquet(out / "truth.parquet", index=False)
    n = len(tx)
    approved = tx["response_code"] == "00"
    mix = tx.loc[~approved, "response_code"].value_counts(normalize=True).round(4)
    meta = {
        "generator": "issuer_seq.suite.ledger",
        "config": json.loads(json.dumps(asdict(p), default=list)),
        "start": p.start,
        "delay_grid": list(p.delay_grid),
        "truth_columns": ["p_approve", *[truth_column(g) for g in p.delay_grid]],
        "logged_policy": {
            "description": (
                "After soft declines MIT payments are retried with probability 0.8 and CIT "
                "payments with 0.25 (within 2 h); the delay bucket is drawn from 0.6 * uniform "
                "over allowed buckets + 0.4 * a cause-based preference; MAC 24-30 waits are "
                "respected; SCA declines of CIT payments are retried at once with 3-D Secure "
                "with probability 0.7. Up to 4 attempts; every retry passes the network rules."
            ),
            "propensity_column": "policy_propensity",
        },
        "rows": n,
        "approval_rate": round(float(approved.mean()), 4),
        "mit_share": round(float((tx["initiator"] == "MIT").mean()), 4),
        "retry_share": round(float((tx["attempt"] > 1).mean()), 4),
        "decline_code_mix": {str(k): float(v) for k, v in mix.items()},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
