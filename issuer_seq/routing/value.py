"""Routing policies valued with the truth (synthetic logs only).

With the truth's approval probability of every attempt through every route of its merchant,
p*(i, r) (`truth.parquet`'s `p_approve_route_<name>`), a policy pi that sends attempt i
through route r with probability pi(r | i) has, summed over the attempts,

    expected approvals  A(pi) = sum_i sum_r pi(r | i) p*(i, r)
    expected value      V(pi) = sum_i sum_r pi(r | i) (p*(i, r) amount_i margin - fee_r)

(a deterministic policy's sum has one term per attempt: the chosen route's). The oracle
sends every attempt to the argmax of its true expected value (`policies.choose_route` on the
truth). The uplift of pi is V(pi) - V(static); its share of the oracle's uplift is
(V(pi) - V(static)) / (V(oracle) - V(static)), and the same for approvals.

The attempts are the logged ones: a policy's other choices would have changed which retries
followed; the valuation, like the off-policy estimates (`ope.py`), takes the attempts as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import DEFAULT_ECONOMICS, RetryEconomics
from issuer_seq.routing.policies import check_probs, choose_route, route_values, static_policy
from issuer_seq.routing.routes import NOT_HELD

STATIC = "static"
ORACLE = "oracle"
TRUTH_PREFIX = "p_approve_route_"


def check_truth(p_true: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(N, R) true p_approve: in [0, 1] on every held route, NaN on every other."""
    p = np.asarray(p_true, dtype=np.float64)
    if p.shape != candidates.shape:
        raise IssuerSeqError(f"truth has shape {p.shape}, the merchants' routes {candidates.shape}")
    if np.isnan(p[candidates]).any():
        raise IssuerSeqError("truth p_approve_route is NaN for a route the merchant holds")
    if not np.isnan(p[~candidates]).all():
        raise IssuerSeqError("truth p_approve_route is set for a route the merchant lacks")
    held = p[candidates]
    if np.any((held < 0) | (held > 1)):
        raise IssuerSeqError("truth p_approve_route must lie in [0, 1]")
    return p


def expected_outcomes(
    probs: np.ndarray,
    p_true: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per attempt, (N,) expected approvals and (N,) expected value of the policy `probs`."""
    held = probs > 0
    p = np.where(held, p_true, 0.0)
    v = np.where(held, route_values(np.where(held, p_true, 0.0), amount, fees, econ), 0.0)
    return (probs * p).sum(axis=1), (probs * v).sum(axis=1)


def truth_matrix(truth: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(N, R) true p_approve per route from a truth frame's `p_approve_route_<name>` columns,
    in the route table's order (rows as the frame's)."""
    cols = [f"{TRUTH_PREFIX}{name}" for name in names]
    missing = [c for c in cols if c not in truth.columns]
    if missing:
        raise IssuerSeqError(f"the truth has no columns {missing}: is the log routed?")
    return truth[cols].to_numpy(dtype=np.float64)


def with_references(
    policies: Mapping[str, np.ndarray],
    p_true: np.ndarray | None,
    priority: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> dict[str, np.ndarray]:
    """Checked policies in the order they are reported: static, `policies`, the oracle (none
    when `p_true` is None: a log without truth)."""
    prio = np.asarray(priority)
    cand = prio != NOT_HELD
    clash = {STATIC, ORACLE} & set(policies)
    if clash:
        raise IssuerSeqError(f"policy names {sorted(clash)} are reserved (added by the valuation)")
    named = {STATIC: static_policy(prio), **policies}
    if p_true is not None:
        truth = check_truth(p_true, cand)
        named[ORACLE] = choose_route(truth, prio, amount, fees, econ).probs
    return {name: check_probs(p, cand, name=f"policy {name}") for name, p in named.items()}


def value_policies(
    policies: Mapping[str, np.ndarray],
    p_true: np.ndarray,
    priority: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> pd.DataFrame:
    """One row per policy: static first, then `policies` (name -> (N, R) probs), the oracle.

    Columns: policy, attempts, approvals, approval_rate, value, uplift_approvals,
    uplift_value (over static), share_of_oracle_uplift (value),
    share_of_oracle_approval_uplift (NaN where the oracle has no uplift).
    """
    prio = np.asarray(priority)
    cand = prio != NOT_HELD
    truth = check_truth(p_true, cand)
    rows: list[dict[str, float | str | int]] = []
    for name, p in with_references(policies, truth, prio, amount, fees, econ).items():
        approvals, value = expected_outcomes(p, truth, amount, fees, econ)
        rows.append(
            {
                "policy": name,
                "attempts": len(p),
                "approvals": float(approvals.sum()),
                "approval_rate": float(approvals.mean()) if len(p) else float("nan"),
                "value": float(value.sum()),
            }
        )
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    top = table.iloc[-1]
    table["uplift_approvals"] = table["approvals"] - base["approvals"]
    table["uplift_value"] = table["value"] - base["value"]
    for col, share in (
        ("uplift_value", "share_of_oracle_uplift"),
        ("uplift_approvals", "share_of_oracle_approval_uplift"),
    ):
        room = top[col.replace("uplift_", "")] - base[col.replace("uplift_", "")]
        table[share] = table[col] / room if room > 0 else np.nan
    return table
