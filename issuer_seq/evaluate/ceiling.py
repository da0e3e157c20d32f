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

For routing, `fit_routes_to_truth` fits the same trees to the truth of every route an
attempt's merchant holds, not just the logged one (one row per attempt and route, the
route's figures swapped in as LightGBM's routing reads them): close to the best function of
these features of p_approve through each route, so the routing policy it drives estimates
how much of the oracle's uplift over static routing a model of these features can reach
(`scripts/ceiling.py --routing`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.baselines.base_rate import base_rate
from issuer_seq.baselines.dataset import by_split
from issuer_seq.baselines.protocol import LABEL
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.store import TEST, TRAIN, VAL, EventStore
from issuer_seq.evaluate.metrics import approval_metrics, oracle_share
from issuer_seq.evaluate.routing_scores import through_each_route
from issuer_seq.routing.routes import RouteTable

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
    p = _probabilities(p_true)
    parts = by_split(data.assign(**{LABEL: p}), split)
    model = LightGBMModel(ON_TRUTH, num_boost_round=num_boost_round, n_jobs=threads)
    return model.fit(parts["train"], parts["val"])


def _probabilities(p_true: np.ndarray) -> np.ndarray:
    p = np.asarray(p_true, dtype=np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("the truth p_approve must be probabilities in [0, 1], none missing")
    return p


def fit_routes_to_truth(
    features: pd.DataFrame,
    log_frame: pd.DataFrame,
    split: np.ndarray,
    p_routes: np.ndarray,
    table: RouteTable,
    rates: Mapping[str, np.ndarray],
    threads: int | None = None,
    num_boost_round: int = 3_000,
) -> LightGBMModel:
    """LightGBM on the SQL features of every attempt through every route its merchant holds
    (`through_each_route`), with the truth p_approve of that route as the label: trained on
    the training split, stopped early on the validation split's truth.

    features: `sql_features(log_frame)`; split (N,): the store's split codes of the log's
    rows; p_routes (N, R): the truth per route in `table`'s order (`truth_matrix`); rates:
    `route_rates(log_frame, table.names)`."""
    if not (len(features) == len(log_frame) == len(split) == len(p_routes)):
        raise ValueError(
            f"features ({len(features)} rows), log ({len(log_frame)}), split ({len(split)}) "
            f"and truth ({len(p_routes)}) must describe the same attempts"
        )
    parts = {}
    for name, code in (("train", TRAIN), ("val", VAL)):
        rows = np.flatnonzero(split == code)
        pieces = [
            x.assign(**{LABEL: _probabilities(p_routes[rows[take], r])})
            for r, take, x in through_each_route(features, log_frame, rows, table, rates)
        ]
        if not pieces:
            raise ValueError(f"no {name} attempt holds a route of the table")
        parts[name] = pd.concat(pieces, ignore_index=True)
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
