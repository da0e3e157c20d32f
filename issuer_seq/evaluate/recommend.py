"""Which approval model to deploy for this log: the transformer, LightGBM or the base rate.

Two parts (docs/evaluation.md, "Recommendation"). `compare` is the accuracy part and the
expensive one: each candidate's test log loss and a paired bootstrap of every pair. `decide`
reads only that part and bench.json, so it can be re-run when the latency is measured after the
evaluation (the demo benches after it evaluates). `recommend` is the two in one.

The rule: leave out any model whose measured single-request p99 is over the latency budget (when
one is given; the base rate, a table lookup, is always within it); among the rest, take the
model with the lowest test log loss; recommend instead the fastest model it does not beat
significantly, that is, whose paired 95% bootstrap interval of (best - faster) log loss over
the test rows reaches zero. Speed order is fixed by what each model computes per request: the
base rate is a table lookup, LightGBM reads SQL aggregates, the transformer reads the
histories. A model whose latency was not measured is kept and named in `latency_unchecked`: a
budget excludes on a measurement only. A transformer worse than the base rate on test is said so
in the recommendation's text, whatever is recommended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from issuer_seq.evaluate.paired import log_loss

#: fastest first
SPEED_ORDER = ("base_rate", "lightgbm", "transformer")
#: the bench.json arm that measures each model's serving latency
BENCH_ARM = {"transformer": "onnx_fp32", "lightgbm": "lightgbm"}


def paired_logloss_ci(
    y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, resamples: int = 1000
) -> tuple[float, list[float]]:
    """Log loss of a minus b over the same rows, and its 95% interval from a paired bootstrap
    of the rows (percentile method, seeded)."""
    d = log_loss(p_a, y) - log_loss(p_b, y)
    ci = bootstrap(
        (d,),
        np.mean,
        vectorized=True,
        n_resamples=resamples,
        batch=max(1, min(resamples, 20_000_000 // max(len(d), 1))),
        method="percentile",
        random_state=0,
    ).confidence_interval
    return float(d.mean()), [float(ci.low), float(ci.high)]


def latency(bench: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """Single-request p99 (ms) per model from bench.json's scorer arms; None: not measured."""
    if bench is None:
        return None
    arms = bench.get("scorers", {}).get("arms", {})
    out: dict[str, float | None] = {"base_rate": None}
    for model, arm in BENCH_ARM.items():
        single = arms.get(arm, {}).get("single_request", {})
        out[model] = None if single.get("p99_ms") is None else float(single["p99_ms"])
    return out


def compare(y: np.ndarray, p: Mapping[str, np.ndarray], resamples: int = 1000) -> dict[str, Any]:
    """The accuracy part: `logloss` per model and, for every pair, `<slower>_minus_<faster>`
    in `comparisons` (whichever model a budget leaves as the best, its comparisons are there).
    `p`: test approval probabilities of models of SPEED_ORDER (the transformer and the base rate
    at least). Losses are rounded here, so that `decide` on this dict or on its JSON agree."""
    missing = {"transformer", "base_rate"} - set(p)
    if missing:
        raise ValueError(f"recommend needs the transformer and the base rate; missing {missing}")
    unknown = set(p) - set(SPEED_ORDER)
    if unknown:
        raise ValueError(f"recommend compares only {SPEED_ORDER}; got also {unknown}")
    models = [m for m in SPEED_ORDER if m in p]
    comparisons: dict[str, Any] = {}
    for i, faster in enumerate(models):
        for slower in models[i + 1 :]:
            diff, ci = paired_logloss_ci(y, p[slower], p[faster], resamples)
            comparisons[f"{slower}_minus_{faster}"] = {
                "logloss_difference": round(diff, 5),
                "ci95": [round(ci[0], 5), round(ci[1], 5)],
                "significant": ci[1] < 0,  # the slower model is better beyond noise
            }
    return {
        "logloss": {m: round(float(log_loss(p[m], y).mean()), 5) for m in models},
        "comparisons": comparisons,
    }


def decide(
    accuracy: Mapping[str, Any],
    bench: Mapping[str, Any] | None = None,
    budget_ms: float | None = None,
) -> dict[str, Any]:
    """The `recommendation` section of evaluation.json from `compare`'s accuracy part (or a
    stored recommendation, which holds it), bench.json's latencies and the latency budget
    (None: no budget)."""
    if budget_ms is not None and not budget_ms > 0:
        raise ValueError(f"the latency budget must be a positive number of ms, not {budget_ms}")
    if not {"logloss", "comparisons"} <= set(accuracy):
        raise ValueError(f"no accuracy part (logloss, comparisons) in {sorted(accuracy)}")
    losses: dict[str, float] = dict(accuracy["logloss"])
    comparisons: dict[str, Any] = dict(accuracy["comparisons"])
    models = [m for m in SPEED_ORDER if m in losses]
    p99 = latency(bench)
    measured = {m: v for m, v in (p99 or {}).items() if v is not None}
    over: list[str] = []
    unchecked: list[str] = []
    if budget_ms is not None:
        for m in models:
            if m == "base_rate":
                continue  # a table lookup: always within the budget
            if m not in measured:
                unchecked.append(m)
            elif measured[m] > budget_ms:
                over.append(m)
    allowed = [m for m in models if m not in over]
    best = min(allowed, key=lambda m: losses[m])
    chosen = best
    for faster in allowed[: allowed.index(best)]:
        key = f"{best}_minus_{faster}"
        if key not in comparisons:
            raise ValueError(f"the accuracy part has no comparison {key}: re-run evaluate")
        if not comparisons[key]["significant"]:
            chosen = faster  # the fastest model the best does not beat beyond noise
            break
    reasons = [
        f"lowest test log loss{' within the latency budget' if over else ''}: "
        f"{best} ({losses[best]:.4f})"
        + (
            ""
            if chosen == best
            else f", not significantly below {chosen}'s {losses[chosen]:.4f}, which is faster"
        )
    ]
    reasons += [f"{m} p99 {measured[m]:.3f} ms is over the budget {budget_ms:g} ms" for m in over]
    transformer_worse = losses["transformer"] >= losses["base_rate"]
    if transformer_worse:
        reasons.append(
            f"the transformer is worse than the issuer x MCC base rate on test (log loss "
            f"{losses['transformer']:.4f} against {losses['base_rate']:.4f}): do not deploy it "
            "for this log"
        )
    if p99 is None:
        reasons.append("latency was not measured (no bench.json)")
    else:
        reasons.append(
            "single-request p99: "
            + ", ".join(
                f"{m} {f'{measured[m]:.3f} ms' if m in measured else 'not measured'}"
                for m in models
                if m != "base_rate"
            )
        )
    if unchecked:
        reasons.append(
            f"the latency budget {budget_ms:g} ms is not checked for {' and '.join(unchecked)}: "
            "latency not measured, so kept in the running"
        )
    return {
        "model": chosen,
        "best_logloss_model": min(models, key=lambda m: losses[m]),
        "logloss": losses,
        "comparisons": comparisons,
        "transformer_worse_than_base_rate": transformer_worse,
        "latency_p99_ms": p99,
        "latency_budget_ms": budget_ms,
        "over_budget": over,
        "latency_unchecked": unchecked,
        "reasons": reasons,
        "text": f"deploy {chosen}: " + "; ".join(reasons),
    }


def recommend(
    y: np.ndarray,
    p: Mapping[str, np.ndarray],
    bench: Mapping[str, Any] | None = None,
    budget_ms: float | None = None,
    resamples: int = 1000,
) -> dict[str, Any]:
    """`decide(compare(y, p), bench, budget_ms)`: the recommendation in one call."""
    return decide(compare(y, p, resamples), bench, budget_ms)
