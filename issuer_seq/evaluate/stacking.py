"""The stacked arm: the transformer and LightGBM combined, reported as a model of its own.

A logistic regression of the approval label on the two models' logits (and an intercept),
fitted on the validation split and scored on test. Validation is the split both models held
out from their weights (each used it only to stop early and, LightGBM, to choose its search's
parameters, the transformer, to calibrate), so the combination learns how far to trust each
where neither was fitted.

Serving it means running both scorers on every request, one after the other: its latency is
bench.json's `stacked` arm (bench/scorers.py `StackedScorer`). The service serves one bundle,
so the stack is reported beside the models, never recommended for deployment
(docs/evaluation.md, "Stacking").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from issuer_seq.recalibration import logit  # probabilities clipped 1e-6 from 0 and 1

#: the models the stack combines, in the order of its weights
STACKED = ("transformer", "lightgbm")


def _design(p: Mapping[str, np.ndarray], models: Sequence[str]) -> np.ndarray:
    missing = [m for m in models if m not in p]
    if missing:
        raise ValueError(f"the stack needs the probabilities of {missing}")
    return np.stack([logit(p[m]) for m in models], axis=1)


def fit_stack(
    p_val: Mapping[str, np.ndarray], y_val: np.ndarray, models: Sequence[str] = STACKED
) -> dict[str, Any]:
    """The combination fitted on validation: {"models", "weights", "intercept", "rows"}.

    Unpenalized: two weights on hundreds of thousands of rows need no shrinkage. Raises
    ValueError when validation holds one class only (nothing to fit)."""
    y = np.asarray(y_val).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("the validation split holds one class only: nothing to stack on")
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(_design(p_val, models), y)
    return {
        "models": list(models),
        "weights": [round(float(w), 6) for w in fit.coef_[0]],
        "intercept": round(float(fit.intercept_[0]), 6),
        "rows": int(len(y)),
    }


def apply_stack(stack: Mapping[str, Any], p: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stack's approval probabilities from its models' probabilities."""
    z = _design(p, stack["models"]) @ np.asarray(stack["weights"]) + stack["intercept"]
    return 1.0 / (1.0 + np.exp(-z))
