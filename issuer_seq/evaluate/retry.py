"""Retry policies measured against the simulator's truth.

For every declined test attempt a policy chooses a delay of the grid or "no retry". With
the truth `p_retry_<delay>`, the chosen action is worth

    value = p_true(chosen) * amount * margin - attempt_fee - delay cost

(the economics of retry_policy.py), and recovers p_true(chosen) * amount in expectation.
Policies: the transformer's and the tree model's (each choosing by its own predicted curve),
the oracle's (choosing by the truth), fixed schedules, and code-based rules. Every choice is
checked against the network rules: a violation is counted, and must be zero.

A customer-initiated SCA decline sent without 3-D Secure has one more action: retry at once
with 3-D Secure (`now_with_3ds`, no delay cost). Its truth is the approval probability of
that retry, so it is valued where the log holds the retry (`three_ds_possible`; the
simulator's logged policy sends one for 60% of those declines, at random): the models choose
by their own approval probability of that logged attempt, the oracle by its truth, the code
rules always take it, the fixed schedules never do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from issuer_seq.retry_policy import (
    DEFAULT_ECONOMICS,
    NO_RETRY,
    NOW_3DS,
    RetryEconomics,
    choose_retry,
)
from issuer_seq.rules import Cause

FIXED_SCHEDULES = ("5m", "1d", "4d")
#: code-based rules: the delay each cause waits for (None: never)
CODE_RULES: dict[str, str | None] = {
    Cause.TECHNICAL.value: "30m",
    Cause.FUNDS.value: "2d",
    Cause.GENERIC.value: "1d",
    Cause.LIMIT.value: "1d",
    Cause.OTHER.value: "1d",
    Cause.SCA.value: None,  # later without 3-D Secure cannot work
    Cause.DATA.value: None,
    Cause.HARD.value: None,
}


def fixed_schedule(
    delay: str, grid: list[str], allowed: np.ndarray, soft: np.ndarray
) -> np.ndarray:
    """Always retry after `delay` where the rules allow it. (N,)"""
    k = grid.index(delay)
    return np.where(soft & allowed[:, k], k, NO_RETRY)


def code_rules(
    cause: np.ndarray,
    grid: list[str],
    allowed: np.ndarray,
    three_ds_possible: np.ndarray | None = None,
) -> np.ndarray:
    """The cause's delay, or the first allowed later one (MAC waits), or no retry; an SCA
    decline at checkout: at once with 3-D Secure where possible. (N,)"""
    action = np.full(len(cause), NO_RETRY, dtype=np.int64)
    if three_ds_possible is not None:
        action[three_ds_possible & (cause == Cause.SCA.value)] = NOW_3DS
    for c, delay in CODE_RULES.items():
        if delay is None:
            continue
        rows = cause == c
        later = allowed[:, grid.index(delay) :]  # (N, G - k)
        first = np.argmax(later, axis=1)
        ok = rows & later.any(axis=1)
        action[ok] = grid.index(delay) + first[ok]
    return action


def policy_value(
    action: np.ndarray,
    p_true: np.ndarray,
    allowed: np.ndarray,
    amount: np.ndarray,
    cause: np.ndarray,
    grid_s: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    p_true_3ds: np.ndarray | None = None,
    three_ds_possible: np.ndarray | None = None,
) -> dict[str, Any]:
    """What a policy's choices are worth under the truth, overall and by cause.

    `action`: a grid index, NO_RETRY or NOW_3DS (valued by `p_true_3ds` (N,), allowed where
    `three_ds_possible`)."""
    n = len(action)
    later = action >= 0
    now = action == NOW_3DS
    retry = later | now
    k = np.clip(action, 0, None)
    p = np.where(later, p_true[np.arange(n), k], 0.0)
    if p_true_3ds is not None:
        p = np.where(now, np.nan_to_num(p_true_3ds), p)
    days = np.where(later, grid_s[k] / 86_400.0, 0.0)
    value = np.where(
        retry,
        p * amount * econ.margin - econ.attempt_fee - econ.delay_cost_per_day * days * amount,
        0,
    )
    possible = np.zeros(n, bool) if three_ds_possible is None else three_ds_possible
    violations = (later & ~allowed[np.arange(n), k]) | (now & ~possible)
    recovered = p * amount

    def summary(mask: np.ndarray) -> dict[str, Any]:
        declined = float(amount[mask].sum())
        recoveries = float(p[mask].sum())
        retries = int(retry[mask].sum())
        return {
            "declines": int(mask.sum()),
            "value": round(float(value[mask].sum()), 2),
            "expected_recovered_amount": round(float(recovered[mask].sum()), 2),
            "recovery_rate": round(float(recovered[mask].sum()) / declined, 4)
            if declined
            else None,
            "retries": retries,
            "retries_per_recovery": round(retries / recoveries, 3) if recoveries > 0 else None,
            "fees": round(retries * econ.attempt_fee, 2),
            "violations": int(violations[mask].sum()),
        }

    out = summary(np.ones(n, dtype=bool))
    out["by_cause"] = {str(c): summary(cause == c) for c in np.unique(cause)}
    out["chosen_delays"] = {
        "no_retry": int((~retry).sum()),
        "now_with_3ds": int(now.sum()),
        **{f"bucket_{i}": int((action == i).sum()) for i in range(len(grid_s))},
    }
    return out


def compare_policies(
    curves: Mapping[str, np.ndarray],
    p_true: np.ndarray,
    allowed: np.ndarray,
    amount: np.ndarray,
    code: np.ndarray,
    network: np.ndarray,
    cause: np.ndarray,
    grid: list[str],
    grid_s: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    p_now_3ds: Mapping[str, np.ndarray] | None = None,
    three_ds_possible: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every policy's value; learned policies choose by their curve in `curves` (N, G).

    `p_now_3ds`: per policy of `curves` and for "oracle" (the truth), the approval
    probability (N,) of an immediate 3-D Secure retry, used where `three_ds_possible` (N,)."""
    p3 = dict(p_now_3ds or {})
    if three_ds_possible is not None and "oracle" not in p3:
        raise ValueError("three_ds_possible needs p_now_3ds['oracle'], the truth that values it")
    soft = np.isin(
        cause,
        [
            c.value
            for c in (
                Cause.FUNDS,
                Cause.GENERIC,
                Cause.TECHNICAL,
                Cause.LIMIT,
                Cause.OTHER,
                Cause.SCA,
            )
        ],
    )
    actions: dict[str, np.ndarray] = {}
    for name, curve in {**curves, "oracle": p_true}.items():
        actions[name] = choose_retry(
            curve,
            allowed,
            amount,
            code,
            network,
            grid_s,
            p_now_3ds=np.nan_to_num(p3[name]) if name in p3 else None,
            sca_3ds_possible=three_ds_possible if name in p3 else None,
            econ=econ,
        ).action
    for delay in FIXED_SCHEDULES:
        if delay in grid:
            actions[f"fixed_{delay}"] = fixed_schedule(delay, grid, allowed, soft)
    actions["code_rules"] = code_rules(cause, grid, allowed, three_ds_possible)
    actions["no_retry"] = np.full(len(amount), NO_RETRY)
    results = {
        name: policy_value(
            a, p_true, allowed, amount, cause, grid_s, econ, p3.get("oracle"), three_ds_possible
        )
        for name, a in actions.items()
    }
    oracle_value = results["oracle"]["value"]
    for r in results.values():
        r["share_of_oracle_value"] = (
            round(r["value"] / oracle_value, 4) if oracle_value > 0 else None
        )
    return results
