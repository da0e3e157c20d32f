"""Off-policy estimates checked against the truth: how close the logged data alone comes.

For each policy (static, the given ones, the oracle: `value.with_references`) and each reward
(`approval`: approved 0/1; `value`: `ope.logged_rewards`), the IPS, SNIPS and, with a reward
model, DR estimates of the value per attempt beside the truth's
(`value.expected_outcomes`, averaged over the attempts), with `covers` (the truth lies in the
estimate's interval) and the error. The reward model is one (N, R) p_approve per route (any
model's); for the `value` reward it enters through `policies.route_values`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.retry_policy import DEFAULT_ECONOMICS, RetryEconomics
from issuer_seq.routing.ope import estimate_all, logged_rewards
from issuer_seq.routing.policies import route_values
from issuer_seq.routing.value import expected_outcomes, with_references

REWARDS = ("approval", "value")


def ope_against_truth(
    policies: Mapping[str, np.ndarray],
    p_true: np.ndarray,
    priority: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    logged_route: np.ndarray,
    propensity: np.ndarray,
    approved: np.ndarray,
    reward_model: np.ndarray | None = None,
    groups: Any | None = None,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per policy x reward x estimator: policy, reward, estimator, truth, estimate,
    low, high, covers, error (estimate - truth). Values are per attempt."""
    amt = np.asarray(amount, dtype=np.float64)
    named = with_references(policies, p_true, priority, amt, fees, econ)
    ok = np.asarray(approved, dtype=np.float64)
    rewards = {
        "approval": ok,
        "value": logged_rewards(ok, amt, logged_route, fees, econ),
    }
    models: dict[str, np.ndarray | None] = {"approval": None, "value": None}
    if reward_model is not None:
        q = np.asarray(reward_model, dtype=np.float64)
        models = {"approval": q, "value": route_values(q, amt, fees, econ)}
    rows = []
    for name, probs in named.items():
        approvals, value = expected_outcomes(probs, p_true, amt, fees, econ)
        truths = {"approval": float(approvals.mean()), "value": float(value.mean())}
        for reward in REWARDS:
            estimates = estimate_all(
                probs,
                logged_route,
                propensity,
                rewards[reward],
                models[reward],
                groups=groups,
                n_bootstrap=n_bootstrap,
                level=level,
                seed=seed,
            )
            for est in estimates.values():
                rows.append(
                    {
                        "policy": name,
                        "reward": reward,
                        "estimator": est.estimator,
                        "truth": truths[reward],
                        "estimate": est.value,
                        "low": est.low,
                        "high": est.high,
                        "covers": est.covers(truths[reward]),
                        "error": est.value - truths[reward],
                    }
                )
    return pd.DataFrame(rows)
