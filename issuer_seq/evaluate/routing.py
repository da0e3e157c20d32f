"""Routing policies on the test split: valued with the truth, estimated off-policy, and their
reaction to issuer-by-route episodes (evaluation.json's `routing`; docs/evaluation.md).

Attempts. Every test attempt is a routing decision: first attempts and retries alike (the
logging policy records a propensity for both, and a retry's route is chosen as a first
attempt's is), so the default is `attempts="all"`; `attempts="first"` keeps first attempts
only. The attempts are the logged ones: another route would have changed which retries
followed; the valuation and the estimates take the attempts as given (routing/value.py).

Policies, each an (N, R) distribution over the route table's columns:

- `static`: the merchant's first-priority route;
- `success_rate`: per issuer x route sliding window with exploration (routing/policies.py),
  warmed up on the log before the test split (`history`) and point in time: attempt i sees
  the logged outcomes strictly before its time;
- one expected-value policy per entry of `predictors` (name -> (N, R) p_approve per route,
  NaN where the merchant lacks it): the argmax of p_approve x amount x margin - fee;
- `<predictor>_recalibrated`, with `recalibration` settings: the same on the predictor's
  matrix recalibrated per issuer x route to recent outcomes (recalibration.py
  `recalibrated_routes`: each attempt scored with the intercepts of its issuer's routes
  fitted to the test outcomes logged before it, as the service answers with
  `route_recalibration` on). Given `warmup` (the attempts of the last `window_h` hours
  before the split, with each predictor's p of them), their outcomes are recorded first, as
  a service running before the split would have had them; without it the replay starts at
  the split with no intercept;
- `oracle`: the same on the truth's p_approve per route.

For each: expected approvals and value with the truth, uplift over static and share of the
oracle's uplift, with percentile bootstrap intervals over payments (a payment's attempts are
resampled together), and where the oracle's uplift lies (`by_condition`: attempts while one
of their routes is in an acquirer outage, while their issuer declines through one of them,
and the rest; from meta.json's `route_outages` and `route_episodes`) with each policy's
share of it there. Off-policy: IPS, SNIPS and DR from the logged route, propensity and
outcome, each beside the truth-valued figure per attempt, with `covers` and, where DR's
interval misses the truth, `why`. DR's reward model is the predictor's own matrix for its
policy; for static, success-rate and the oracle it is `logged_rate_model`: each issuer x
route's approval rate on the history, shrunk to the route's rate (what a user with logs and
no model has; not the truth, which would make DR exact by construction).

A log without truth (a user's real log) gets the off-policy estimates alone
(`mode: off_policy_only`): the same policies but the oracle, their IPS, SNIPS and DR rows
without truth-valued figures, and the logging policy's own value per attempt (`logged`) for
reference. The route table comes from `routing/route_source.py`: a routes file, meta.json, or
the log itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.errors import IssuerSeqError
from issuer_seq.recalibration import RouteRecalibrationSettings, recalibrated_routes
from issuer_seq.retry_policy import DEFAULT_ECONOMICS, RetryEconomics
from issuer_seq.routing.ope import ESTIMATORS, estimate_terms, logged_rewards
from issuer_seq.routing.policies import (
    SuccessRateConfig,
    as_seconds,
    choose_route,
    route_values,
    success_rate_policy,
)
from issuer_seq.routing.reaction import REACTED, episode_reactions, median_reaction_hours
from issuer_seq.routing.route_source import (
    META_SOURCE,
    ResolvedRoutes,
    check_logged_routes,
    resolve_routes,
)
from issuer_seq.routing.routes import NOT_HELD, RouteTable
from issuer_seq.routing.value import (
    ORACLE,
    STATIC,
    attempt_conditions,
    expected_outcomes,
    truth_matrix,
    uplift_by_condition,
    with_references,
)

SUCCESS_RATE = "success_rate"
DEFAULT_SUCCESS_RATE = SuccessRateConfig()
ATTEMPTS = ("all", "first")
#: the reward model of the policies without a predictor of their own (module docstring)
RATE_MODEL = "issuer_route_rate"
#: pseudo-attempts of the route's rate added to each issuer x route's logged outcomes
RATE_PRIOR_STRENGTH = 20.0
#: per total: the keys of its uplift over static and its share of the oracle's uplift
SHARE_KEYS = {
    "approvals": ("uplift_approvals", "share_of_oracle_approval_uplift"),
    "value": ("uplift_value", "share_of_oracle_uplift"),
}
#: what success-rate routing and the default reward model read of the history
HISTORY_COLUMNS = ("ts", "issuer_id", "merchant_id", "route", "response_code")
NO_PROPENSITY = (
    "no route_propensity: off-policy estimates need the logging policy's propensities (the "
    "probability with which it chose each logged route)"
)
OFF_POLICY_ONLY = (
    "off-policy estimates only: the log has no truth, so every policy's value is estimated "
    "from the logged routes, propensities and outcomes (IPS, SNIPS, DR); no oracle, no "
    "truth-valued figures, no episode reactions"
)
WARMUP_COLUMNS = ("ts", "issuer_id", "route", "response_code")
NEEDED = (
    "ts",
    "issuer_id",
    "merchant_id",
    "amount",
    "response_code",
    "payment_id",
    "attempt",
    "route",
    "route_propensity",
)


@dataclass(frozen=True)
class RouteWarmup:
    """What the per issuer x route recalibration's replay records before the test split's
    first attempt: `frame`, the attempts of the window before it (WARMUP_COLUMNS), and
    `predictors`, each predictor's (M, R) p of them through each route of the route table (as
    the test split's). Each attempt's outcome is recorded through its logged route with the
    predictor's p there; an attempt whose route is not in the table, or has no p, is left out
    (evaluation.json's `routing.route_recalibration.warmup_outcomes` counts the others)."""

    frame: pd.DataFrame
    predictors: Mapping[str, np.ndarray]


def not_applicable(reason: str) -> dict[str, Any]:
    """The section of a log the routing evaluation does not apply to, with the reason."""
    return {"applicable": False, "note": reason}


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: None."""
    x = float(x)
    return x if np.isfinite(x) else None


def _interval(point: float, samples: np.ndarray, level: float) -> dict[str, float | None]:
    tail = (1.0 - level) / 2.0
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return {"value": _finite(point), "low": None, "high": None}
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return {"value": _finite(point), "low": _finite(low), "high": _finite(high)}


def logged_rate_model(
    history: pd.DataFrame | None,
    table: RouteTable,
    issuer_ids: np.ndarray,
    priority: np.ndarray,
    strength: float = RATE_PRIOR_STRENGTH,
) -> np.ndarray:
    """(N, R) approval rate of each attempt's issuer through each route on the `history` log,
    shrunk to the route's rate with `strength` pseudo-attempts, NaN where the merchant lacks
    the route. A route without history takes the history's overall rate; no history at all
    gives 0.5 everywhere (DR then rests on its importance-weighted correction)."""
    n_routes = table.n_routes
    q = np.full(priority.shape, 0.5)
    if history is not None and len(history) and "route" in history.columns:
        ok = (history["response_code"].astype(str) == "00").to_numpy(np.float64)
        r = table.index(history["route"].to_numpy())
        overall = ok.mean()
        att = np.bincount(r, minlength=n_routes).astype(np.float64)
        route_rate = np.where(att > 0, np.bincount(r, ok, n_routes) / np.maximum(att, 1), overall)
        keys, code = np.unique(
            np.concatenate(
                [
                    history["issuer_id"].astype(str).to_numpy(),
                    np.asarray(issuer_ids).astype(str),
                ]
            ),
            return_inverse=True,
        )
        hist_code, test_code = code[: len(history)], code[len(history) :]
        cell = hist_code * n_routes + r
        size = len(keys) * n_routes
        s = np.bincount(cell, ok, size).reshape(len(keys), n_routes)
        n = np.bincount(cell, minlength=size).reshape(len(keys), n_routes)
        rate = (s + strength * route_rate[None, :]) / (n + strength)
        q = rate[test_code]
    return np.where(priority != NOT_HELD, q, np.nan)


def _aligned_truth(test_frame: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    if len(truth) != len(test_frame):
        raise IssuerSeqError(
            f"truth has {len(truth)} rows, the test attempts {len(test_frame)}: align them first"
        )
    ids = truth["txn_id"] if "txn_id" in truth.columns else None
    if ids is None and truth.index.name == "txn_id":
        ids = truth.index.to_series()
    if ids is not None and not np.array_equal(
        ids.astype(str).to_numpy(), test_frame["txn_id"].astype(str).to_numpy()
    ):
        raise IssuerSeqError("truth rows are not the test attempts' (txn_id differs)")
    return truth


def _check_predictor(name: str, p: np.ndarray, cand: np.ndarray) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != cand.shape:
        raise IssuerSeqError(
            f"predictor {name!r} has shape {arr.shape}, the test attempts' routes {cand.shape}"
        )
    held = arr[cand]
    if np.isnan(held).any() or np.any((held < 0) | (held > 1)):
        raise IssuerSeqError(
            f"predictor {name!r}: p_approve must lie in [0, 1] on every route the merchant holds"
        )
    return np.where(cand, arr, np.nan)


def _bootstrap_totals(
    groups: np.ndarray,
    per_attempt: np.ndarray,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(B, P) totals over payments resampled with replacement. per_attempt: (N, P)."""
    codes = np.unique(groups, return_inverse=True)[1]
    k = int(codes.max()) + 1 if len(codes) else 0
    sums = np.stack(
        [np.bincount(codes, per_attempt[:, j], k) for j in range(per_attempt.shape[1])], axis=1
    )
    out = np.empty((n_bootstrap, per_attempt.shape[1]))
    chunk = max(1, 2_000_000 // max(k, 1))  # bounds the (chunk, k) index matrix's memory
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, k, size=(b, k))
        counts = np.stack([np.bincount(row, minlength=k) for row in idx])
        out[start : start + b] = counts @ sums
    return out


def value_with_intervals(
    policies: Mapping[str, np.ndarray],
    p_true: np.ndarray,
    amount: np.ndarray,
    fees: np.ndarray,
    groups: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    versus: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per policy (static first, the oracle last, as `with_references` orders them): totals
    of expected approvals and value with the truth, uplift over static and share of the
    oracle's uplift, each {value, low, high} with a percentile bootstrap over `groups`.
    `versus`: policy -> another; that policy also gets `versus` {policy, the change of its
    share of the oracle's uplift (value) over the other's, paired: the same resamples}."""
    names = list(policies)
    if names[0] != STATIC or names[-1] != ORACLE:
        raise IssuerSeqError("policies must run from static to the oracle (with_references)")
    per = [expected_outcomes(p, p_true, amount, fees, econ) for p in policies.values()]
    a = np.stack([x[0] for x in per], axis=1)
    v = np.stack([x[1] for x in per], axis=1)
    p = len(names)
    boot = _bootstrap_totals(
        groups, np.concatenate([a, v], axis=1), n_bootstrap, np.random.default_rng(seed)
    )
    totals = {"approvals": (a.sum(axis=0), boot[:, :p]), "value": (v.sum(axis=0), boot[:, p:])}
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for kind, (point, samples) in totals.items():
        up_point = point - point[0]
        up_samples = samples - samples[:, :1]
        room, room_s = up_point[-1], up_samples[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            share_point = up_point / room if room > 0 else np.full(p, np.nan)
            share_samples = np.where(room_s > 0, up_samples / room_s, np.nan)
        uplift, share = SHARE_KEYS[kind]
        for j, name in enumerate(names):
            out[name][kind] = _interval(point[j], samples[:, j], level)
            out[name][uplift] = _interval(up_point[j], up_samples[:, j], level)
            out[name][share] = _interval(share_point[j], share_samples[:, j], level)
    for j, name in enumerate(names):
        out[name]["approval_rate"] = _finite(a[:, j].mean()) if len(a) else None
    point, samples = totals["value"]
    up_point, up_samples = point - point[0], samples - samples[:, :1]
    room, room_s = up_point[-1], up_samples[:, -1]
    for name, other in (versus or {}).items():
        j, k = names.index(name), names.index(other)
        with np.errstate(invalid="ignore", divide="ignore"):
            change = (up_point[j] - up_point[k]) / room if room > 0 else np.nan
            changes = np.where(room_s > 0, (up_samples[:, j] - up_samples[:, k]) / room_s, np.nan)
        out[name]["versus"] = {
            "policy": other,
            "share_of_oracle_uplift_change": _interval(change, changes, level),
        }
    return out


def _why_not_covered(
    row: Mapping[str, Any], ess: float, n: int, dm: float, n_checks: int, level: float
) -> str:
    """A sentence on why DR's interval misses the truth, from the numbers at hand."""
    half = max((row["high"] - row["low"]) / 2.0, 1e-12)
    gap = row["low"] - row["truth"] if row["truth"] < row["low"] else row["truth"] - row["high"]
    reasons = [
        f"the truth {row['truth']:.4g} lies {gap / half:.2f} half-widths outside "
        f"[{row['low']:.4g}, {row['high']:.4g}]"
    ]
    dm_off = abs(dm - row["truth"])
    if gap / half < 0.5:
        reasons.append(
            f"a near miss: a {level:.0%} interval misses by chance about "
            f"{1 - level:.0%} of the time, and {n_checks} DR checks are made"
        )
    if dm_off > 2 * half:
        reasons.append(
            f"the reward model is off (its direct-method value errs by {dm_off:.4g}), so DR "
            "rests on the weighted correction"
        )
    if ess < 0.1 * n:
        reasons.append(
            f"heavy importance weights (effective sample size {ess:.0f} of {n} attempts)"
        )
    reasons.append(
        "payments are resampled as independent while an issuer's or route's attempts share "
        "episodes and outages, which narrows the interval"
    )
    return "; ".join(reasons)


def logged_rewards_by_kind(
    approved: np.ndarray,
    amount: np.ndarray,
    logged_route: np.ndarray,
    fees: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
) -> dict[str, np.ndarray]:
    """(N,) realised reward of each logged attempt: `approval` (0/1) and `value`."""
    return {
        "approval": approved.astype(np.float64),
        "value": logged_rewards(approved, amount, logged_route, fees, econ),
    }


def on_policy(
    rewards: Mapping[str, np.ndarray],
    groups: np.ndarray,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """The logging policy's own value per attempt, per reward: the mean logged reward
    {value, low, high}, with the payments resampled as for the estimates."""
    per = np.stack([*rewards.values(), np.ones(len(groups))], axis=1)
    boot = _bootstrap_totals(groups, per, n_bootstrap, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = boot[:, :-1] / boot[:, -1:]
    return {
        kind: _interval(float(r.mean()), means[:, j], level)
        for j, (kind, r) in enumerate(rewards.items())
    }


def off_policy(
    policies: Mapping[str, np.ndarray],
    reward_models: Mapping[str, tuple[str, np.ndarray]],
    p_true: np.ndarray | None,
    amount: np.ndarray,
    fees: np.ndarray,
    logged_route: np.ndarray,
    propensity: np.ndarray,
    approved: np.ndarray,
    groups: np.ndarray,
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per policy x reward (approval, value) x estimator (ips, snips, dr): truth,
    estimate, low, high (per attempt), covers, error, reward_model and, for a DR row that
    misses the truth, why. `reward_models`: policy -> (name, (N, R) p_approve). Without the
    truth (`p_true` None) the rows have no truth, covers, error or why.

    The estimators of routing/ope.py; every estimate's percentile interval comes from one set
    of payment resamples (each estimate is a ratio of sums, so the resampled sums of all of
    them are one matrix product), which makes the section's cost one bootstrap's."""
    rewards = logged_rewards_by_kind(approved, amount, logged_route, fees, econ)
    rows: list[dict[str, Any]] = []
    nums, dens = [], []
    rows_idx = np.arange(len(logged_route))
    for name, probs in policies.items():
        model_name, q = reward_models[name]
        truths: dict[str, float] = {}
        if p_true is not None:
            approvals, value = expected_outcomes(probs, p_true, amount, fees, econ)
            truths = {"approval": float(approvals.mean()), "value": float(value.mean())}
        models = {"approval": q, "value": route_values(q, amount, fees, econ)}
        w = probs[rows_idx, logged_route] / propensity
        ess = float(w.sum() ** 2 / max((w**2).sum(), 1e-300))
        for reward, r in rewards.items():
            dm = float(np.where(probs > 0, probs * models[reward], 0.0).sum(axis=1).mean())
            for est in ESTIMATORS:
                num, den = estimate_terms(est, probs, logged_route, propensity, r, models[reward])
                nums.append(num)
                dens.append(den)
                rows.append(
                    {
                        "policy": name,
                        "reward": reward,
                        "estimator": est,
                        "reward_model": model_name if est == "dr" else None,
                        **({"truth": truths[reward]} if truths else {}),
                        "estimate": float(num.sum() / den.sum()),
                        "effective_sample_size": ess,
                        "direct_method": dm if est == "dr" else None,
                    }
                )
    m = len(rows)
    boot = _bootstrap_totals(
        groups,
        np.stack([*nums, *dens], axis=1),
        n_bootstrap,
        np.random.default_rng(seed),
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = boot[:, :m] / boot[:, m:]
    n_checks = sum(1 for r in rows if r["estimator"] == "dr")
    for j, row in enumerate(rows):
        iv = _interval(row["estimate"], ratios[:, j], level)
        row["low"], row["high"] = iv["low"], iv["high"]
        if p_true is None:
            continue
        row["covers"] = bool(iv["low"] is not None and iv["low"] <= row["truth"] <= iv["high"])
        row["error"] = row["estimate"] - row["truth"]
        if row["estimator"] == "dr" and not row["covers"] and iv["low"] is not None:
            row["why"] = _why_not_covered(
                row,
                row["effective_sample_size"],
                len(logged_route),
                row["direct_method"],
                n_checks,
                level,
            )
    return [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def reactions(
    policies: Mapping[str, np.ndarray],
    episodes: pd.DataFrame,
    issuer_ids: np.ndarray,
    ts: np.ndarray,
    priority: np.ndarray,
    names: tuple[str, ...],
) -> dict[str, Any]:
    """Reaction to the issuer-by-route episodes inside the attempts' span, compared on the
    episodes the oracle reacts to (routing/reaction.py). A median of None: more than half of
    those episodes never saw the policy move away (`never` counts as infinite)."""
    t = as_seconds(ts)
    if len(episodes) and len(t):
        start, end = as_seconds(episodes["start"]), as_seconds(episodes["end"])
        episodes = episodes[(end > t.min()) & (start < t.max())].reset_index(drop=True)
    per = {
        name: episode_reactions(episodes, issuer_ids, t, probs, priority, names)
        for name, probs in policies.items()
    }
    oracle = per[ORACLE]
    chosen = (oracle["status"] == REACTED).to_numpy() if len(oracle) else np.zeros(0, bool)
    out: dict[str, Any] = {
        "episodes_in_test": int(len(episodes)),
        "oracle_status": {str(k): int(v) for k, v in oracle["status"].value_counts().items()}
        if len(oracle)
        else {},
        "compared_on": int(chosen.sum()),
        "episodes": [
            {
                "issuer_id": str(e["issuer_id"]),
                "route": str(e["route"]),
                "start": str(e["start"]),
                "episode_hours": _finite(e["episode_hours"]),
            }
            for _, e in oracle[chosen].iterrows()
        ]
        if len(oracle)
        else [],
        "policies": {},
    }
    for name, rx in per.items():
        sub = rx[chosen] if len(rx) else rx
        counts = sub["status"].value_counts() if len(sub) else pd.Series(dtype=int)
        median = median_reaction_hours(sub) if len(sub) else float("nan")
        out["policies"][name] = {
            "median_hours": _finite(median),
            "median_is_never": bool(np.isinf(median)),
            "reacted": int(counts.get(REACTED, 0)),
            "never": int(counts.get("never", 0)),
            "hours": [
                _finite(h) if s == REACTED else None
                for s, h in zip(sub["status"], sub["reaction_hours"], strict=True)
            ],
        }
    return out


def warmed_success_rate(
    history: pd.DataFrame,
    frame: pd.DataFrame,
    table: RouteTable,
    config: SuccessRateConfig = DEFAULT_SUCCESS_RATE,
) -> np.ndarray:
    """(len(frame), R) success-rate routing of `frame`'s attempts (rows in its order), the
    router replaying `history` and then `frame` in time order: each attempt sees the logged
    outcomes strictly before its time, the history's included."""
    cols = list(HISTORY_COLUMNS)
    both = pd.concat([history[cols], frame[cols]], ignore_index=True)
    order = np.argsort(as_seconds(both["ts"]), kind="stable")
    ordered = both.iloc[order]
    probs = success_rate_policy(
        ordered["issuer_id"],
        ordered["ts"],
        table.index(ordered["route"].to_numpy()),
        (ordered["response_code"].astype(str) == "00").to_numpy(),
        table.priority(ordered["merchant_id"].to_numpy()),
        config,
    ).probs
    out = np.empty_like(probs)
    out[order] = probs
    return out[len(history) :]


def _warmup_outcomes(
    warmup: RouteWarmup, table: RouteTable
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The warm-up's recorded attempts in time order: issuer, logged route's column,
    approved, time (s), and each predictor's (M, R) p; those through a route the table lacks,
    or without a p there, left out."""
    w = warmup.frame
    lacking = [c for c in WARMUP_COLUMNS if c not in w.columns]
    if lacking:
        raise IssuerSeqError(f"the recalibration's warm-up attempts lack columns {lacking}")
    order = np.argsort(as_seconds(w["ts"]), kind="stable")
    names = w["route"].astype(str).to_numpy(object)[order]
    known = np.isin(names, np.asarray(table.names, dtype=object))
    route = np.where(known, table.index(np.where(known, names, table.names[0])), -1)
    p: dict[str, np.ndarray] = {}
    for name, matrix in warmup.predictors.items():
        arr = np.asarray(matrix, dtype=np.float64)
        if arr.shape != (len(w), table.n_routes):
            raise IssuerSeqError(
                f"warm-up predictor {name!r} has shape {arr.shape}, the warm-up attempts' "
                f"routes {(len(w), table.n_routes)}"
            )
        p[name] = arr[order]
        known &= np.isfinite(p[name][np.arange(len(order)), np.maximum(route, 0)])
    return (
        w["issuer_id"].to_numpy(object)[order][known],
        route[known],
        (w["response_code"].astype(str) == "00").to_numpy()[order][known],
        as_seconds(w["ts"]).astype(np.float64)[order][known],
        {name: arr[known] for name, arr in p.items()},
    )


def _replay(
    frame: pd.DataFrame,
    logged_route: np.ndarray,
    table: RouteTable,
    settings: RouteRecalibrationSettings,
    warmup: RouteWarmup | None = None,
) -> tuple[Callable[[str, np.ndarray], np.ndarray], int]:
    """(name, p (N, R) of `frame`'s attempts, time order) -> p recalibrated per issuer x route
    (`recalibrated_routes`), every attempt's outcome recorded through its logged route, after
    `warmup`'s outcomes with that predictor's p; the attempts' columns read once for every
    predictor. Also the number of warm-up outcomes recorded."""
    issuer = frame["issuer_id"].to_numpy(object)
    approved = (frame["response_code"].astype(str) == "00").to_numpy()
    t = as_seconds(frame["ts"]).astype(np.float64)
    warm_p: dict[str, np.ndarray] = {}
    route = logged_route
    if warmup is not None:
        w_issuer, w_route, w_approved, w_t, warm_p = _warmup_outcomes(warmup, table)
        if len(w_t) and len(t) and w_t[-1] > t[0]:
            raise IssuerSeqError("the recalibration's warm-up attempts must precede the test split")
        issuer = np.concatenate([w_issuer, issuer])
        approved = np.concatenate([w_approved, approved])
        t = np.concatenate([w_t, t])
        route = np.concatenate([w_route, logged_route])
    n_warm = len(t) - len(logged_route)

    def replay(name: str, p: np.ndarray) -> np.ndarray:
        if n_warm:
            if name not in warm_p:
                raise IssuerSeqError(f"the recalibration's warm-up has no p of predictor {name!r}")
            p = np.concatenate([warm_p[name], p])
        return recalibrated_routes(p, issuer, route, approved, t, table.names, settings)[n_warm:]

    return replay, n_warm


def recalibration_verdicts(routing: Mapping[str, Any]) -> list[str]:
    """A line per model whose routing also ran recalibrated per issuer x route: the change of
    its share of the oracle's uplift, paired, and whether to serve it so."""
    lines = []
    for name, policy in routing["policies"].items():
        versus = policy.get("versus")
        if not versus:
            continue
        c = versus["share_of_oracle_uplift_change"]
        if None in (c["value"], c["low"], c["high"]):
            continue
        ahead = c["low"] > 0
        lines.append(
            f"{name}: {100 * c['value']:+.1f} points of the oracle's uplift over "
            f"{versus['policy']} (95%: {100 * c['low']:+.1f} to {100 * c['high']:+.1f}): "
            + (
                "ahead; serve with route_recalibration.enabled=true"
                if ahead
                else "not ahead; leave route_recalibration off"
            )
        )
    return lines


def evaluate_routing(
    test_frame: pd.DataFrame,
    truth: pd.DataFrame | None,
    meta: Mapping[str, Any],
    predictors: Mapping[str, np.ndarray],
    history: pd.DataFrame | None = None,
    attempts: str = "all",
    econ: RetryEconomics = DEFAULT_ECONOMICS,
    success_rate: SuccessRateConfig = DEFAULT_SUCCESS_RATE,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    routes: ResolvedRoutes | None = None,
    recalibration: RouteRecalibrationSettings | None = None,
    warmup: RouteWarmup | None = None,
) -> dict[str, Any]:
    """The routing section of evaluation.json (module docstring).

    test_frame: the test split's attempts; truth: the truth rows of those attempts, in the
    same order (None: off-policy estimates only); meta: the simulator's meta.json (`routes`,
    `merchant_routes`, `route_episodes`; {} for a real log); predictors: name -> (N, R)
    p_approve per route of the test attempts, in the route table's column order; history: the
    log before the test split (success-rate routing warms up on it; the default DR reward
    model is fitted on it); routes: the route table (None: `resolve_routes` from meta.json,
    else inferred from the log); recalibration: each predictor also recalibrated per issuer x
    route (`<name>_recalibrated`; None: not), its replay warmed up on `warmup` (None: starting
    at the split). A log without routes or without propensities gives a "not applicable"
    entry.
    """
    if attempts not in ATTEMPTS:
        raise IssuerSeqError(f"attempts must be one of {list(ATTEMPTS)}, got {attempts!r}")
    if "route" not in test_frame.columns:
        return not_applicable(
            "one route: the log has no route column, so there is no route choice to evaluate"
        )
    if "route_propensity" not in test_frame.columns:
        return not_applicable(NO_PROPENSITY)
    if not len(test_frame):
        return not_applicable("no test attempts")
    missing = [c for c in NEEDED if c not in test_frame.columns]
    if missing:
        raise IssuerSeqError(f"the test attempts lack columns {missing} for routing")
    hist = history if history is not None else test_frame.iloc[:0]
    lacking = [c for c in HISTORY_COLUMNS if c not in hist.columns]
    if lacking:
        raise IssuerSeqError(f"the history (the log before the test split) lacks {lacking}")
    if truth is not None:
        truth = _aligned_truth(test_frame, truth)
    routes = routes or resolve_routes(hist, test_frame, meta)
    table = routes.table
    reserved = {STATIC, ORACLE, SUCCESS_RATE} & set(predictors)
    if reserved:
        raise IssuerSeqError(f"predictor names {sorted(reserved)} are reserved policy names")

    order = np.argsort(as_seconds(test_frame["ts"]), kind="stable")
    frame = test_frame.iloc[order].reset_index(drop=True)
    sr_test = warmed_success_rate(hist, frame, table, success_rate)
    logged_route = check_logged_routes(
        table, frame["merchant_id"].to_numpy(object), frame["route"].to_numpy(object), routes.source
    )

    keep = np.ones(len(frame), bool) if attempts == "all" else frame["attempt"].to_numpy() == 1
    # every attempt's outcome feeds the recalibration's replay, whichever are valued
    replay, n_warm = (
        (None, 0)
        if recalibration is None
        else _replay(frame, logged_route, table, recalibration, warmup)
    )
    versus = {f"{name}_recalibrated": name for name in predictors if replay is not None}
    frame = frame[keep].reset_index(drop=True)
    prio = table.priority(frame["merchant_id"].to_numpy())
    cand = prio != NOT_HELD
    route = logged_route[keep]
    propensity = frame["route_propensity"].to_numpy(np.float64)
    approved = (frame["response_code"].astype(str) == "00").to_numpy()
    amount = frame["amount"].to_numpy(np.float64)
    groups = frame["payment_id"].astype(str).to_numpy()
    fees = table.fees
    p_true = None
    if truth is not None:
        p_true = truth_matrix(truth.iloc[order].reset_index(drop=True)[keep], table.names)
        if routes.source != META_SOURCE:  # the truth's routes beyond the table are no choice
            p_true = np.where(cand, p_true, np.nan)

    mats: dict[str, np.ndarray] = {}
    for name, p in predictors.items():
        arr = np.asarray(p)
        if arr.ndim != 2 or len(arr) != len(order):
            raise IssuerSeqError(
                f"predictor {name!r} has shape {arr.shape}, the test attempts' routes "
                f"{(len(order), table.n_routes)}"
            )
        mats[name] = _check_predictor(name, arr[order][keep], cand)
        if replay is not None:
            mats[f"{name}_recalibrated"] = _check_predictor(
                name, replay(name, arr[order])[keep], cand
            )
    given = {SUCCESS_RATE: sr_test[keep]} | {
        name: choose_route(m, prio, amount, fees, econ).probs for name, m in mats.items()
    }
    policies = with_references(given, p_true, prio, amount, fees, econ)
    kinds = {STATIC: "static", SUCCESS_RATE: "success_rate", ORACLE: "oracle"}
    kinds |= dict.fromkeys(versus, "expected_value_recalibrated")
    rate_model = logged_rate_model(hist, table, frame["issuer_id"].to_numpy(), prio)
    reward_models = {
        name: (name, mats[name]) if name in mats else (RATE_MODEL, rate_model) for name in policies
    }
    ope = off_policy(
        policies,
        reward_models,
        p_true,
        amount,
        fees,
        route,
        propensity,
        approved,
        groups,
        econ,
        n_bootstrap,
        level,
        seed,
    )
    section: dict[str, Any] = {
        "applicable": True,
        "mode": "truth" if p_true is not None else "off_policy_only",
        "attempts": attempts,
        "n_attempts": int(len(frame)),
        "n_payments": int(len(np.unique(groups))),
        "routes": [{"name": n, "fee": float(f)} for n, f in zip(table.names, fees, strict=True)],
        "route_table": {"source": routes.source, "notes": list(routes.notes)},
        "margin": econ.margin,
        "level": level,
        "n_bootstrap": n_bootstrap,
        "success_rate_config": {
            k: getattr(success_rate, k) for k in success_rate.__dataclass_fields__
        },
        "route_recalibration": None
        if recalibration is None
        else {k: getattr(recalibration, k) for k in recalibration.__dataclass_fields__}
        | {"warmup_outcomes": n_warm},
    }
    if p_true is None:
        rewards = logged_rewards_by_kind(approved, amount, route, fees, econ)
        return section | {
            "note": OFF_POLICY_ONLY,
            "policies": {name: {"kind": kinds.get(name, "expected_value")} for name in policies},
            "ope": ope,
            "logged": on_policy(rewards, groups, n_bootstrap, level, seed),
        }

    values = value_with_intervals(
        policies, p_true, amount, fees, groups, econ, n_bootstrap, level, seed, versus
    )
    episodes = pd.DataFrame(
        meta.get("route_episodes") or [], columns=["issuer_id", "route", "start", "end"]
    )
    react = reactions(
        policies,
        episodes,
        frame["issuer_id"].to_numpy(),
        frame["ts"].to_numpy(),
        prio,
        table.names,
    )
    outages = pd.DataFrame(meta.get("route_outages") or [], columns=["route", "start", "end"])
    condition = attempt_conditions(
        frame["ts"].to_numpy(), frame["issuer_id"].to_numpy(), cand, table.names, outages, episodes
    )
    dr = [r for r in ope if r["estimator"] == "dr"]
    return section | {
        "policies": {
            name: {"kind": kinds.get(name, "expected_value"), **values[name]} for name in policies
        },
        "by_condition": uplift_by_condition(policies, p_true, amount, fees, condition, econ),
        "ope": ope,
        "dr_covers": {"covered": sum(r["covers"] for r in dr), "checks": len(dr)},
        "reaction": react,
    }
