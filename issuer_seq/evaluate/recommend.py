"""Which approval model to deploy for this log: the transformer, LightGBM or the base rate.

The rule (docs/evaluation.md, "Recommendation"): take the model with the lowest test log
loss; recommend instead the fastest model it does not beat significantly, that is, whose
paired 95% bootstrap interval of (best - faster) log loss over the test rows reaches zero.
Speed order is fixed by what each model computes per request: the base rate is a table
lookup, LightGBM reads SQL aggregates, the transformer reads the histories (bench.json, when
given, reports the measured p99 beside it). A transformer worse than the base rate on test
is said so in the recommendation's text, whatever is recommended.
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


def recommend(
    y: np.ndarray,
    p: Mapping[str, np.ndarray],
    bench: Mapping[str, Any] | None = None,
    resamples: int = 1000,
) -> dict[str, Any]:
    """The `recommendation` section of evaluation.json. `p`: test approval probabilities of
    the models of SPEED_ORDER present (the transformer and the base rate at least)."""
    missing = {"transformer", "base_rate"} - set(p)
    if missing:
        raise ValueError(f"recommend needs the transformer and the base rate; missing {missing}")
    models = [m for m in SPEED_ORDER if m in p]
    losses = {m: float(log_loss(p[m], y).mean()) for m in models}
    best = min(models, key=lambda m: losses[m])
    comparisons: dict[str, Any] = {}
    chosen = best
    for faster in models[: models.index(best)]:
        diff, ci = paired_logloss_ci(y, p[best], p[faster], resamples)
        significant = ci[1] < 0
        comparisons[f"{best}_minus_{faster}"] = {
            "logloss_difference": round(diff, 5),
            "ci95": [round(ci[0], 5), round(ci[1], 5)],
            "significant": significant,
        }
        if not significant and chosen == best:
            chosen = faster  # the fastest model the best does not beat beyond noise
    p99 = latency(bench)
    reasons = [
        f"lowest test log loss: {best} ({losses[best]:.4f})"
        + (
            ""
            if chosen == best
            else f", not significantly below {chosen}'s {losses[chosen]:.4f}, which is faster"
        )
    ]
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
                f"{m} {'not measured' if p99.get(m) is None else f'{p99[m]:.3f} ms'}"
                for m in models
                if m != "base_rate"
            )
        )
    return {
        "model": chosen,
        "best_logloss_model": best,
        "logloss": {m: round(v, 5) for m, v in losses.items()},
        "comparisons": comparisons,
        "transformer_worse_than_base_rate": transformer_worse,
        "latency_p99_ms": p99,
        "reasons": reasons,
        "text": f"deploy {chosen}: " + "; ".join(reasons),
    }
