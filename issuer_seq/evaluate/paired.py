"""Paired comparison of two models' approval probabilities on the same rows.

Both models' log loss and AUROC, their difference, and a 95% interval of the difference from
a paired bootstrap of the rows (scipy.stats.bootstrap, percentile method, seeded): whether a
lead is larger than the split's sampling noise. Used by `scripts/segments.py` and by
`issuer-seq suite`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score

from issuer_seq.evaluate.metrics import EPS


def log_loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, clipped as evaluate's metrics clip (their mean is evaluate's log loss)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


#: whole-split metrics compared by `differences`: name -> metric(y, p)
METRICS = {"logloss": lambda y, p: log_loss(p, y).mean(), "auroc": roc_auc_score}


def differences(
    y: np.ndarray, p_transformer: np.ndarray, p_lightgbm: np.ndarray, resamples: int
) -> dict[str, dict[str, Any]]:
    """Both models' log loss and AUROC on the whole split and transformer - LightGBM, with a
    95% interval from a paired bootstrap of its rows (`resamples` 0: no interval)."""
    out: dict[str, dict[str, Any]] = {}
    for name, metric in METRICS.items():

        def gap(y, a, b, metric=metric):  # type: ignore[no-untyped-def]
            return metric(y, a) - metric(y, b)

        out[name] = {
            "transformer": round(float(metric(y, p_transformer)), 5),
            "lightgbm": round(float(metric(y, p_lightgbm)), 5),
            "difference": round(float(gap(y, p_transformer, p_lightgbm)), 5),
        }
        if resamples:
            ci = bootstrap(
                (y, p_transformer, p_lightgbm),
                gap,
                paired=True,
                vectorized=False,
                n_resamples=resamples,
                method="percentile",
                random_state=0,
            ).confidence_interval
            out[name]["ci95"] = [round(float(ci.low), 5), round(float(ci.high), 5)]
    return out
