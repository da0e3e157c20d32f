"""The merchants' logged retry policy: randomized (exploring) retries after soft declines.

The policy is what produced the retries in the log. It explores: the delay of each retry is
drawn over the delay grid, half uniformly over the allowed delays and half from a cause-based
preference, and the probability of the chosen delay (its propensity) is recorded with the
retry so that learners can correct for the policy. It never breaks the network rules: MAC
24-30 waits are respected here and every retry is checked by `rules.check_retries` before
it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from issuer_seq.rules import Cause

#: Cause-based preference over the default grid (5m, 30m, 2h, 6h, 1d, 2d, 4d, 7d).
PREFERENCE = {
    Cause.TECHNICAL.value: [0.40, 0.35, 0.15, 0.05, 0.05, 0.0, 0.0, 0.0],
    Cause.FUNDS.value: [0.0, 0.0, 0.05, 0.10, 0.25, 0.25, 0.20, 0.15],
    Cause.GENERIC.value: [0.05, 0.05, 0.10, 0.20, 0.30, 0.15, 0.10, 0.05],
    Cause.LIMIT.value: [0.0, 0.05, 0.10, 0.25, 0.30, 0.15, 0.10, 0.05],
}
CIT_BUCKETS = 3  # customer-initiated retries only within the session: 5 min, 30 min, 2 h
IMMEDIATE_3DS = -1  # bucket of the immediate retry with 3-D Secure after an SCA decline


@dataclass
class RetryPlan:
    """Retries the policy wants to send for a batch of declines (rows where retry is True)."""

    retry: np.ndarray  # (N,) bool
    bucket: np.ndarray  # (N,) int64 grid index, IMMEDIATE_3DS, or -2 for none
    delay: np.ndarray  # (N,) int64 seconds
    three_ds: np.ndarray  # (N,) bool: the retry is sent with 3-D Secure
    propensity: np.ndarray  # (N,) P(this bucket | a retry is sent)


def plan_retries(
    rng: np.random.Generator,
    grid: np.ndarray,
    cause: np.ndarray,
    mit: np.ndarray,
    three_ds: np.ndarray,
    attempt: np.ndarray,
    mac_wait: np.ndarray,
    max_attempts: int = 4,
) -> RetryPlan:
    """Decide, for each decline, whether and when the merchant retries.

    cause: (N,) cause strings; mac_wait: (N,) seconds the issuer's MAC asks to wait (0: none).
    """
    n = len(cause)
    k = len(grid)
    soft = np.isin(
        cause, [c.value for c in (Cause.FUNDS, Cause.GENERIC, Cause.TECHNICAL, Cause.LIMIT)]
    )
    sca = cause == Cause.SCA.value
    room = attempt < max_attempts
    u = rng.random(n)

    pref = np.full((n, k), 1.0 / k)
    for name, weights in PREFERENCE.items():
        if len(weights) == k:
            pref[cause == name] = weights
    allowed = grid[None, :] >= mac_wait[:, None]  # (N, K)
    allowed[~mit, CIT_BUCKETS:] = False
    n_allowed = allowed.sum(1)
    pref = pref * allowed
    pref_sum = pref.sum(1, keepdims=True)
    pref = np.where(pref_sum > 0, pref / np.where(pref_sum > 0, pref_sum, 1.0), 0.0)
    uniform = allowed / np.maximum(n_allowed, 1)[:, None]
    mix = np.where(pref_sum > 0, 0.5 * uniform + 0.5 * pref, uniform)  # (N, K)
    cum = np.cumsum(mix, 1)
    bucket = np.minimum((cum < rng.random(n)[:, None]).sum(1), k - 1)
    propensity = mix[np.arange(n), bucket]

    p_send = np.where(mit, 0.85, 0.30)
    grid_retry = soft & room & (n_allowed > 0) & (u < p_send)
    # SCA declines of customer payments: the checkout retries at once with 3-D Secure.
    now_3ds = sca & ~mit & ~three_ds & room & (u < 0.6)
    retry = grid_retry | now_3ds
    jitter = rng.integers(0, 60, n)
    delay = np.where(now_3ds, 20 + jitter, np.maximum(grid[bucket], mac_wait) + jitter)
    return RetryPlan(
        retry=retry,
        bucket=np.where(now_3ds, IMMEDIATE_3DS, np.where(retry, bucket, -2)).astype(np.int64),
        delay=delay.astype(np.int64),
        three_ds=three_ds | now_3ds,
        propensity=np.where(now_3ds, 0.6, np.where(retry, propensity, np.nan)),
    )
