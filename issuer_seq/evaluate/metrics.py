"""Approval metrics of the evaluation protocol (docs/targets.md), on numpy arrays.

AUROC, average precision of the *decline* class, log loss, Brier, ECE (15 equal-width bins)
and the calibration curve; ECE per logged route (`calibration_by_route`); the share of the
oracle's log-loss improvement captured (scikit-learn underneath).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)

from issuer_seq.recalibration import RecalibrationSettings, recalibrated

EPS = 1e-15


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width bins of |mean p - mean y| x share."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(sum_p[used] - sum_y[used])) / len(p))


def calibration_curve(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    """Per non-empty bin: mean predicted probability, observed rate, count."""
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    used = count > 0
    mean_p = np.bincount(idx, weights=p, minlength=bins)[used] / count[used]
    rate = (
        np.bincount(idx, weights=np.asarray(y, dtype=np.float64), minlength=bins)[used]
        / count[used]
    )
    return {
        "mean_predicted": mean_p.tolist(),
        "observed": rate.tolist(),
        "count": count[used].tolist(),
    }


def approval_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The protocol's metrics of approval probabilities `p` against outcomes `y` (1 = approved)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y).astype(np.int64)
    return {
        "auroc": float(roc_auc_score(y, p)),
        "ap_decline": float(average_precision_score(1 - y, 1 - p)),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": ece(p, y),
        "n": int(len(y)),
        "calibration_curve": calibration_curve(p, y),
        "pr_curve_decline": pr_curve(p, y),
    }


def pr_curve(p: np.ndarray, y: np.ndarray, points: int = 100) -> dict[str, list[float]]:
    """Precision and recall of the decline class, thinned to about `points` points."""
    precision, recall, _ = precision_recall_curve(1 - y, 1 - p)
    keep = np.unique(np.linspace(0, len(recall) - 1, points).astype(np.int64))
    return {
        "precision": np.round(precision[keep], 5).tolist(),
        "recall": np.round(recall[keep], 5).tolist(),
    }


def calibration_by_route(
    p: Mapping[str, np.ndarray], y: np.ndarray, route: np.ndarray
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Per model and per logged route: ECE, the mean predicted and the observed approval
    rate, and the count. p: model -> (N,) approval probabilities; y (N,) outcomes; route (N,)
    route names (rows without one are left out). A model calibrated overall can still be off
    on one route (an acquirer's outages, an issuer declining through it), and the routing
    policies compare p across routes."""
    keys = pd.Series(np.asarray(route, dtype=object)).astype("string")
    y = np.asarray(y, dtype=np.float64)
    if len(keys) != len(y):
        raise ValueError(f"{len(keys)} routes for {len(y)} outcomes")
    masks = {
        str(r): (keys == r).fillna(False).to_numpy(bool) for r in sorted(keys.dropna().unique())
    }
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for model, values in p.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != y.shape:
            raise ValueError(f"{model}: {values.shape} probabilities for {y.shape} outcomes")
        out[model] = {
            r: {
                "ece": ece(values[m], y[m]),
                "mean_predicted": float(values[m].mean()),
                "observed": float(y[m].mean()),
                "n": int(m.sum()),
            }
            for r, m in masks.items()
            if m.any()
        }
    return out


def oracle_share(logloss_model: float, logloss_base: float, logloss_oracle: float) -> float:
    """Share of the oracle's log-loss improvement over the base rate that a model captures."""
    gap = logloss_base - logloss_oracle
    return float((logloss_base - logloss_model) / gap) if gap > 0 else float("nan")


def recalibration_metrics(
    models: Mapping[str, tuple[np.ndarray, np.ndarray]],
    before: tuple[np.ndarray, np.ndarray],
    y: np.ndarray,
    t: np.ndarray,
    settings: RecalibrationSettings,
) -> dict[str, Any]:
    """Each model's test approval p recalibrated to recent outcomes (issuer_seq/recalibration.py),
    as a service following them would have answered: `models` name -> (p of the outcomes
    `before` the split (their y, t), p of the split (y, t)). The metrics with it, and their
    change from the model's fixed calibration, and the share of attempts scored with a
    nonzero intercept (`corrected_share`)."""
    y_before, t_before = before
    order = np.argsort(t, kind="stable")
    out: dict[str, Any] = {"settings": asdict(settings), "outcomes_before": int(len(t_before))}
    for name, (p_before, p) in models.items():
        fixed = approval_metrics(p, y)
        moved = np.empty(len(p))
        moved[order] = recalibrated(
            p[order], y[order], t[order], settings, before=(p_before, y_before, t_before)
        )
        m = approval_metrics(moved, y)
        out[name] = {key: round(m[key], 5) for key in ("logloss", "auroc", "ece", "brier")} | {
            f"{key}_change": round(m[key] - fixed[key], 5) for key in ("logloss", "auroc", "ece")
        }
        # scored with an intercept: fewer than min_outcomes in a window leaves none
        out[name]["corrected_share"] = round(float(np.mean(np.abs(moved - p) > 1e-9)), 4)
    return out
