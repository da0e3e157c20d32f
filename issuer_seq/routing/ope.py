"""Off-policy estimates of a routing policy's value from logged routes, propensities, rewards.

What a user with real logs and no truth has: for each attempt i the route the logging policy
sent it through, a_i, the probability it gave that route, pi_0(a_i | i) (`route_propensity`),
and the reward r_i (approved, or the attempt's value: `logged_rewards`). The policy to value,
pi, gives each attempt a distribution pi(. | i) over its routes (`policies`). With the
importance weight w_i = pi(a_i | i) / pi_0(a_i | i):

    IPS     V = (1/n) sum_i w_i r_i
    SNIPS   V = sum_i w_i r_i / sum_i w_i
    DR      V = (1/n) sum_i [ sum_r pi(r | i) q(i, r) + w_i (r_i - q(i, a_i)) ]

where q(i, r) is a reward model's prediction for attempt i through route r (e.g. a model's
p_approve, or its expected value). IPS is unbiased when pi_0 gives every route pi can choose
a positive probability; SNIPS trades a small bias for less variance (it equals IPS when the
weights average 1); DR is unbiased when either the propensities or the reward model are right,
and exact when the model is exact and rewards equal their expectation.

All three are a ratio of sums, V = sum_i num_i / sum_i den_i (den_i = 1, or w_i for SNIPS),
so one bootstrap serves them: resample the attempts (or whole groups of them, e.g. payments or
cards, when attempts within a group are dependent: a cluster bootstrap) with replacement and
take the 2.5% and 97.5% quantiles of the resampled ratios (the percentile interval).

Estimates are means per attempt; multiply by n for totals comparable to `value.py`'s sums.

Why not a library. Open Bandit Pipeline (`obp`) implements these estimators. Its last release
(0.5.7, 2023) declares Python < 3.11 (this project runs 3.11) and its project file pins torch
1.12, scikit-learn 1.1.3, pandas 1.5.2 and numpy 1.23.5, so pip picks the older 0.4.1 on 3.11.
That one's loose lower bounds do fit our pins and it runs on numpy 2, but it is unmaintained,
would add seaborn and mypy-extensions for three short formulas, bootstraps rows only (no
cluster bootstrap for dependent attempts), and bootstraps SNIPS's per-row terms after dividing
by the whole sample's mean weight, so its SNIPS interval leaves out the normaliser's variance.
So the estimators are written here, following obp's definitions
(`InverseProbabilityWeighting`, `SelfNormalizedInverseProbabilityWeighting`, `DoublyRobust`),
tested on synthetic bandits whose value is known, and checked against obp's point estimates
where obp is installed (tests/test_routing_ope.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import DEFAULT_ECONOMICS, RetryEconomics

ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """One estimator's value per attempt and its bootstrap interval at `level`."""

    estimator: str
    value: float
    low: float
    high: float
    level: float
    n: int

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


def logged_rewards(
    approved: np.ndarray,
    amount: np.ndarray,
    logged_route: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> np.ndarray:
    """(N,) the value each logged attempt realised: approved * amount * margin - fee(route),
    the realised counterpart of `policies.route_values`."""
    ok = np.asarray(approved, dtype=np.float64)
    fee = np.asarray(fees, dtype=np.float64)[np.asarray(logged_route, dtype=np.int64)]
    return ok * np.asarray(amount, dtype=np.float64) * econ.margin - fee


def _check(
    probs: np.ndarray,
    logged_route: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    reward_model: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    pi = np.asarray(probs, dtype=np.float64)
    if pi.ndim != 2:
        raise IssuerSeqError(f"the policy's probs must be (N, R), got shape {pi.shape}")
    n, n_routes = pi.shape
    a = np.asarray(logged_route)
    if a.shape != (n,) or a.dtype.kind not in "iu":
        raise IssuerSeqError(f"logged_route must be ({n},) route indices")
    if n and (a.min() < 0 or a.max() >= n_routes):
        raise IssuerSeqError(f"logged_route must index the policy's {n_routes} routes")
    p0 = np.asarray(propensity, dtype=np.float64)
    if p0.shape != (n,):
        raise IssuerSeqError(f"propensity must be ({n},), got {p0.shape}")
    bad = ~((p0 > 0) & (p0 <= 1))
    if bad.any():
        raise IssuerSeqError(
            f"{int(bad.sum())} logged propensities lie outside (0, 1] (or are missing)"
        )
    r = np.asarray(reward, dtype=np.float64)
    if r.shape != (n,) or not np.all(np.isfinite(r)):
        raise IssuerSeqError(f"reward must be a finite ({n},) array")
    if not np.all(np.isfinite(pi)) or np.any(pi < 0) or not np.allclose(pi.sum(axis=1), 1):
        raise IssuerSeqError("the policy's probs must be >= 0 with rows summing to 1")
    q = None
    if reward_model is not None:
        q = np.asarray(reward_model, dtype=np.float64)
        if q.shape != pi.shape:
            raise IssuerSeqError(f"reward_model must be {pi.shape}, got {q.shape}")
        # only the routes the policy can take or the log took enter the estimate
        used = (pi > 0) | (np.arange(n_routes)[None, :] == a[:, None])
        if not np.all(np.isfinite(q[used])):
            raise IssuerSeqError("reward_model is missing for a route the policy or log used")
        q = np.where(used, q, 0.0)
    return pi, a.astype(np.int64), p0, r, q


def _terms(
    estimator: str,
    pi: np.ndarray,
    a: np.ndarray,
    p0: np.ndarray,
    r: np.ndarray,
    q: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per attempt (num, den) with the estimate sum(num) / sum(den)."""
    rows = np.arange(len(a))
    w = pi[rows, a] / p0
    if estimator == "ips":
        return w * r, np.ones_like(w)
    if estimator == "snips":
        return w * r, w
    if estimator == "dr":
        if q is None:
            raise IssuerSeqError("the doubly robust estimate needs a reward_model")
        return (pi * q).sum(axis=1) + w * (r - q[rows, a]), np.ones_like(w)
    raise IssuerSeqError(f"unknown estimator {estimator!r} (known: {list(ESTIMATORS)})")


def estimate_terms(
    estimator: str,
    probs: np.ndarray,
    logged_route: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    reward_model: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per attempt (num, den), checked, with the estimate sum(num) / sum(den): what `estimate`
    bootstraps, for callers that bootstrap many estimates on one set of resamples."""
    pi, a, p0, r, q = _check(probs, logged_route, propensity, reward, reward_model)
    return _terms(estimator, pi, a, p0, r, q)


def _group_sums(
    num: np.ndarray, den: np.ndarray, groups: Any | None
) -> tuple[np.ndarray, np.ndarray]:
    if groups is None:
        return num, den
    g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    if g.shape != num.shape:
        raise IssuerSeqError(f"groups must have one entry per attempt ({len(num)})")
    return np.bincount(g, weights=num), np.bincount(g, weights=den)


def bootstrap_ratio(
    num: np.ndarray,
    den: np.ndarray,
    n_bootstrap: int,
    level: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Percentile interval of sum(num) / sum(den) over units resampled with replacement."""
    k = len(num)
    if k == 0 or n_bootstrap < 1:
        return float("nan"), float("nan")
    stats = np.empty(n_bootstrap)
    chunk = max(1, 4_000_000 // k)  # bound the (chunk, k) index matrix's memory
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, k, size=(b, k))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[start : start + b] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)


def estimate(
    estimator: str,
    probs: np.ndarray,
    logged_route: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    reward_model: np.ndarray | None = None,
    groups: Any | None = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """One estimator (`ips`, `snips` or `dr`) of the policy `probs`' value per attempt.

    probs: (N, R) the policy to value; logged_route (N,) route indices; propensity (N,) the
    logging policy's probability of the logged route, in (0, 1]; reward (N,); reward_model
    (N, R) predicted reward per route (needed by `dr`); groups (N,) ids for a cluster
    bootstrap (None: attempts resampled one by one).
    """
    if not 0.0 < level < 1.0:
        raise IssuerSeqError(f"level must lie in (0, 1), got {level}")
    pi, a, p0, r, q = _check(probs, logged_route, propensity, reward, reward_model)
    num, den = _terms(estimator, pi, a, p0, r, q)
    total = float(den.sum())
    value = float(num.sum()) / total if total > 0 else float("nan")
    gnum, gden = _group_sums(num, den, groups)
    low, high = bootstrap_ratio(gnum, gden, n_bootstrap, level, np.random.default_rng(seed))
    return Estimate(estimator, value, low, high, level, len(a))


def estimate_all(
    probs: np.ndarray,
    logged_route: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    reward_model: np.ndarray | None = None,
    groups: Any | None = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Mapping[str, Estimate]:
    """IPS, SNIPS and (with a reward model) DR of one policy: name -> `Estimate`."""
    names = ESTIMATORS if reward_model is not None else ("ips", "snips")
    return {
        name: estimate(
            name,
            probs,
            logged_route,
            propensity,
            reward,
            reward_model,
            groups,
            n_bootstrap,
            level,
            seed,
        )
        for name in names
    }
