"""Choosing a retry window: expected value per delay, restricted to what the rules allow.

For a soft decline and each delay d of the grid:

    value(d) = p_success(d) * amount * margin - retry_cost(d) - delay_cost(d) * amount

where retry_cost is the cost of sending one more authorization (`attempt_fee`), and
delay_cost a configurable cost of waiting (money tied up, customer churn) per day, as a share
of the amount. The networks' own fees (Visa's excessive-reattempt fee, Mastercard's charges
after MAC 03/21 or past the excessive-attempt caps) apply only to retries the rules forbid,
which this policy never sends. The policy picks the allowed delay with the largest positive
value, or "no retry". Allowed means `rules.check_retries` says so and, for a
customer-initiated payment, that the customer is still at the checkout (`within_session`:
a CIT retry hours later is useless); hard and data declines are never retried as is. An
"immediate retry with 3-D Secure" action is offered for SCA declines of customer-initiated
payments (Visa 1A, Mastercard 65), valued with its own success probability.

The policy works on arrays, one code per decline (a grid index, `NO_RETRY` or `NOW_3DS`);
`Action` is one decision as the scorer, the fallback and the HTTP answers carry it: its name
and its delay.

numpy only: the scorer (serve/) and the evaluation share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from issuer_seq.rules import Cause, causes

# the codes of `choose_retry`'s actions that are not a grid index
NO_RETRY = -1
NOW_3DS = -2
#: "now_with_3ds": the retry goes out this many seconds after the decline, with 3-D Secure
#: (the cardholder completes the challenge within the checkout)
NOW_3DS_DELAY_S = 20

#: A customer-initiated payment is retried only while the customer is still at the checkout:
#: delays up to this many seconds (the 5 min and 30 min points of the default grid).
CIT_SESSION_S = 30 * 60


def within_session(
    initiator: np.ndarray, grid_s: np.ndarray, cit_session_s: int = CIT_SESSION_S
) -> np.ndarray:
    """(N, G) bool: may a retry of each payment wait each delay? MIT: always; CIT: in session."""
    cit = np.asarray(initiator, dtype=object).astype(str) == "CIT"
    return ~cit[:, None] | (np.asarray(grid_s)[None, :] <= cit_session_s)


def limit_to_session(
    allowed: np.ndarray, rules: np.ndarray, initiator: str, grid_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One decline's rule check over the grid, (G,) allowed and (G,) rule, with the delays a
    customer-initiated payment cannot wait refused as `cit_session`."""
    session = within_session(np.array([initiator]), grid_s)[0]
    return allowed & session, np.where(allowed & ~session, "cit_session", rules)


@dataclass(frozen=True, slots=True)
class Action:
    """One retry decision: `name`, a delay label of the grid, "now_with_3ds" or "no_retry";
    `delay_s`, when the retry goes out, in seconds after the decline (None: no retry)."""

    name: str
    delay_s: int | None

    @property
    def retries(self) -> bool:
        return self.delay_s is not None

    @classmethod
    def decode(cls, code: int, grid: Sequence[str], grid_s: np.ndarray) -> Action:
        """The action of one of `choose_retry`'s codes (a grid index, NO_RETRY or NOW_3DS)."""
        if code == NO_RETRY:
            return DONT_RETRY
        if code == NOW_3DS:
            return RETRY_NOW_WITH_3DS
        return cls(grid[code], int(grid_s[code]))


DONT_RETRY = Action("no_retry", None)
RETRY_NOW_WITH_3DS = Action("now_with_3ds", NOW_3DS_DELAY_S)


@dataclass(frozen=True)
class RetryEconomics:
    """Money side of a retry. Defaults: a PSP's take on a recovered payment and card fees."""

    margin: float = 0.03  # share of the amount the merchant/PSP keeps when a payment succeeds
    attempt_fee: float = 0.02  # processing cost of sending one more authorization
    delay_cost_per_day: float = 0.0005  # cost of waiting, as a share of the amount per day


DEFAULT_ECONOMICS = RetryEconomics()


@dataclass(frozen=True)
class RetryChoice:
    """Per decline: the chosen action and its expected value. All (N,)."""

    action: np.ndarray  # grid index, NO_RETRY or NOW_3DS (`Action.decode`)
    value: np.ndarray  # expected value of the chosen action (0 for no retry)
    reason: np.ndarray  # why: "best_value", "not_worth_it", "not_allowed", "hard", ...


def retry_values(
    p_success: np.ndarray,
    amount: np.ndarray,
    grid_s: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> np.ndarray:
    """Expected value of a retry at each delay. p_success (N, G) -> (N, G)."""
    days = grid_s[None, :] / 86_400.0
    gain = p_success * amount[:, None] * econ.margin
    return gain - econ.attempt_fee - econ.delay_cost_per_day * days * amount[:, None]


def choose_retry(
    p_success: np.ndarray,
    allowed: np.ndarray,
    amount: np.ndarray,
    response_code: np.ndarray,
    network: np.ndarray,
    grid_s: np.ndarray,
    p_now_3ds: np.ndarray | None = None,
    sca_3ds_possible: np.ndarray | None = None,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> RetryChoice:
    """The best allowed action per decline.

    p_success: (N, G) success probability at each grid delay; allowed: (N, G) bool from the
    network rules; p_now_3ds: (N,) success probability of an immediate 3-D Secure retry, used
    where `sca_3ds_possible` (CIT SCA declines).
    """
    n = len(amount)
    values = retry_values(p_success, amount, grid_s, econ)
    values = np.where(allowed, values, -np.inf)
    best = np.argmax(values, axis=1)
    best_value = values[np.arange(n), best]
    cause = causes(np.asarray(response_code, dtype=str), np.asarray(network, dtype=str))
    never = np.isin(cause, [Cause.HARD.value, Cause.DATA.value, Cause.APPROVED.value])
    action = np.where(best_value > 0, best, NO_RETRY)
    value = np.where(best_value > 0, best_value, 0.0)
    worth = np.where(best_value > 0, "best_value", "not_worth_it")
    reason = np.where(
        never, "never_retry", np.where(~allowed.any(axis=1), "not_allowed", worth)
    ).astype(object)
    if p_now_3ds is not None and sca_3ds_possible is not None:
        v3 = p_now_3ds * amount * econ.margin - econ.attempt_fee
        take = sca_3ds_possible & (v3 > value)
        action = np.where(take, NOW_3DS, action)
        value = np.where(take, v3, value)
        reason = np.where(take, "now_with_3ds", reason).astype(object)
    action = np.where(never, NO_RETRY, action)
    value = np.where(never, 0.0, value)
    return RetryChoice(action=action.astype(np.int64), value=value, reason=reason)
