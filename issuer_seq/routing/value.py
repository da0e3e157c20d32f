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
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import DEFAULT_ECONOMICS, RetryEconomics
from issuer_seq.routing.policies import (
    as_seconds,
    check_probs,
    choose_route,
    route_values,
    static_policy,
)
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


#: where an attempt stands when it is routed (`attempt_conditions`), in order of precedence
CONDITIONS = ("route_outage", "issuer_episode", "steady")


def attempt_conditions(
    ts: Any,
    issuer_ids: Any,
    held: np.ndarray,
    route_names: Sequence[str],
    outages: pd.DataFrame,
    episodes: pd.DataFrame,
) -> np.ndarray:
    """(N,) each attempt's condition (`CONDITIONS`): `route_outage` where a route its
    merchant holds (held (N, R), the route table's columns `route_names`) is in an acquirer
    outage at its time; else `issuer_episode` where its issuer is declining through one of
    them (an issuer-by-route episode); else `steady`, where only what lasts (domestic
    acquiring, the routes' risk filters, their fees) tells the routes apart.

    outages: rows (route, start, end); episodes: rows (issuer_id, route, start, end): the
    simulator's meta.json `route_outages` and `route_episodes`; each interval [start, end).
    """
    t = as_seconds(ts)
    cand = np.asarray(held, dtype=bool)
    if cand.shape != (len(t), len(route_names)):
        raise IssuerSeqError(f"held has shape {cand.shape}, need ({len(t)}, {len(route_names)})")
    column = {name: i for i, name in enumerate(route_names)}
    for what, frame in (("outages", outages), ("episodes", episodes)):
        unknown = sorted(set(frame["route"].astype(str)) - set(column)) if len(frame) else []
        if unknown:
            raise IssuerSeqError(f"{what} name unknown routes {unknown} (known: {list(column)})")
    # issuers as integer codes shared by the attempts and the episodes (compared per episode)
    attempts = np.asarray(issuer_ids, dtype=object).astype(str)
    if attempts.shape != t.shape:
        raise IssuerSeqError(f"issuer_ids has {len(attempts)} rows, ts {len(t)}")
    _, codes = np.unique(
        np.concatenate(
            [
                attempts,
                episodes["issuer_id"].astype(str).to_numpy(dtype=object),
            ]
        ),
        return_inverse=True,
    )
    issuer, episode_issuer = codes[: len(t)], codes[len(t) :]

    def during(frame: pd.DataFrame, whose: np.ndarray | None) -> np.ndarray:
        # attempts inside one of the intervals on a route they hold (and, with `whose`,
        # of the interval's issuer)
        hit = np.zeros(len(t), dtype=bool)
        if not len(frame):
            return hit
        starts, ends = as_seconds(frame["start"]), as_seconds(frame["end"])
        for j, route in enumerate(frame["route"].astype(str)):
            inside = cand[:, column[route]] & (t >= starts[j]) & (t < ends[j])
            hit |= inside if whose is None else inside & (issuer == whose[j])
        return hit

    down = during(outages, None)
    episode = during(episodes, episode_issuer)
    return np.where(down, CONDITIONS[0], np.where(episode, CONDITIONS[1], CONDITIONS[2]))


def uplift_by_condition(
    policies: Mapping[str, np.ndarray],
    p_true: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    condition: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> dict[str, dict[str, Any]]:
    """Where the oracle's uplift over static routing lies, and how much of it each policy
    captures there: per condition of `attempt_conditions` (those with attempts), its
    `attempts`, `oracle_uplift_share` (the condition's part of the oracle's whole uplift in
    value; the parts sum to 1) and `share_of_oracle_uplift` per policy within it (None where
    the oracle gains nothing there). A policy's share over all attempts is the sum of its
    shares weighted by the parts. `policies` as `with_references` orders them (static first,
    the oracle last)."""
    names = list(policies)
    if names[0] != STATIC or names[-1] != ORACLE:
        raise IssuerSeqError("policies must run from static to the oracle (with_references)")
    value = np.stack(
        [expected_outcomes(p, p_true, amount, fees, econ)[1] for p in policies.values()], axis=1
    )
    uplift = value - value[:, :1]  # (N, P) each policy's gain over static, per attempt
    total = uplift[:, -1].sum()
    out: dict[str, dict[str, Any]] = {}
    for name in CONDITIONS:
        mask = np.asarray(condition) == name
        if not mask.any():
            continue
        gain = uplift[mask].sum(axis=0)
        room = gain[-1]
        out[name] = {
            "attempts": int(mask.sum()),
            "oracle_uplift_share": float(room / total) if total > 0 else None,
            "share_of_oracle_uplift": {
                p: float(g / room) if room > 0 else None for p, g in zip(names, gain, strict=True)
            },
        }
    return out
