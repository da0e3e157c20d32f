"""LightGBM fitted to the simulator's truth: how much of the oracle the SQL features can reach.

A diagnostic for synthetic data, never a model to ship: it trains on the truth.

The oracle's improvement over the issuer x MCC base rate includes what no model can know
from the log (per-card parameters a few dozen attempts reveal only weakly; the onset of
outages, risk regimes, lost cards and expiries). The same LightGBM as the baseline, on the
same SQL features and rows, fitted to the truth `p_approve` instead of the outcomes
(cross-entropy with soft labels, early stopping on the validation split's truth), comes
close to the best function of these features, E[p_approve | features], because soft labels
carry far less noise than approved / declined. Scored on the test split's outcomes, its
share of the oracle's improvement estimates the ceiling for any model of these features.

Used by `scripts/ceiling.py` (with more fits beside it) and `issuer-seq suite` (per world).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.baselines.base_rate import base_rate
from issuer_seq.baselines.dataset import by_split
from issuer_seq.baselines.protocol import LABEL
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.store import TEST, TRAIN, EventStore
from issuer_seq.evaluate.metrics import approval_metrics, oracle_share

#: LightGBM's objective and early-stopping metric for labels in [0, 1]
ON_TRUTH: dict[str, str] = {"objective": "cross_entropy", "metric": "cross_entropy"}


def fit_to_truth(
    data: pd.DataFrame,
    p_true: np.ndarray,
    split: np.ndarray,
    threads: int | None = None,
    num_boost_round: int = 3_000,
) -> LightGBMModel:
    """LightGBM on the features of `data` (an `approval_frame`, one row per attempt) with the
    truth `p_true` (N,) as labels: trained on the training split, stopped early on the
    validation split's truth. `split` (N,): the store's split codes."""
    if not (len(data) == len(p_true) == len(split)):
        raise ValueError(
            f"features ({len(data)} rows), truth ({len(p_true)}) and split ({len(split)}) "
            "must describe the same attempts"
        )
    p = np.asarray(p_true, dtype=np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("the truth p_approve must be probabilities in [0, 1], none missing")
    parts = by_split(data.assign(**{LABEL: p}), split)
    model = LightGBMModel(ON_TRUTH, num_boost_round=num_boost_round, n_jobs=threads)
    return model.fit(parts["train"], parts["val"])


def reference_scores(store: EventStore, p_true: np.ndarray) -> dict[str, dict[str, Any]]:
    """Test-split metrics of the two ends of the oracle share, as `issuer-seq evaluate`
    computes them: `base_rate` (issuer x MCC, fitted on the training split) and `oracle`."""
    test = store.rows(TEST)
    y = store.approved[test]
    return {
        "base_rate": approval_metrics(base_rate(store, store.rows(TRAIN))[test], y),
        "oracle": approval_metrics(np.asarray(p_true)[test], y),
    }


def truth_ceiling(
    data: pd.DataFrame,
    store: EventStore,
    p_true: np.ndarray,
    threads: int | None = None,
    num_boost_round: int = 3_000,
) -> dict[str, Any]:
    """`fit_to_truth` scored on the test split's outcomes: its log loss, AUROC, ECE and
    oracle share, the boosting rounds early stopping kept, and the wall time of fit and
    scoring. `data` rows are the store's attempts in the store's order."""
    started = time.perf_counter()
    model = fit_to_truth(data, p_true, store.split, threads, num_boost_round)
    test = store.rows(TEST)
    m = approval_metrics(model.predict_proba(data.iloc[test]), store.approved[test])
    ref = reference_scores(store, p_true)
    return {
        "logloss": m["logloss"],
        "auroc": m["auroc"],
        "ece": m["ece"],
        "oracle_share": oracle_share(
            m["logloss"], ref["base_rate"]["logloss"], ref["oracle"]["logloss"]
        ),
        "rounds": model.best_iteration,
        "seconds": round(time.perf_counter() - started, 1),
    }
