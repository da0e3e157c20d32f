"""The trees' aggregates as an input of the transformer (fusion, docs/training.md).

The point-in-time aggregates LightGBM reads (per card, issuer, issuer x route, route and card
x merchant over trailing windows, recencies, last codes' times) are computed by the same code
that computes them for the trees: `sql_features` over a log for training and evaluation,
`OnlineFeatures.row` per request for the scorer of a fused bundle (serve/scorer.py).
`fused_inputs` turns their numeric columns, the current attempt's own features left out (the
network reads those itself), into what the network takes: a signed log of each value, and a
0/1 column per value marking "no event" (NaN), so (N, 2 x len(FUSED_COLUMNS)) float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from issuer_seq.baselines.online import CURRENT_NUMERIC, feature_columns
from issuer_seq.baselines.sql_features import CATEGORICAL, WINDOWS, sql_features
from issuer_seq.errors import IssuerSeqError

#: the aggregates fused into the network, in `sql_features`' order
FUSED_COLUMNS: tuple[str, ...] = tuple(
    c for c in feature_columns(WINDOWS) if c not in CATEGORICAL and c not in CURRENT_NUMERIC
)

#: the width of the network's `fused` input
N_FUSED: int = 2 * len(FUSED_COLUMNS)


def fused_inputs(values: np.ndarray) -> np.ndarray:
    """(N, len(FUSED_COLUMNS)) aggregates, NaN for "no event" -> (N, N_FUSED) float32:
    sign(x) log(1 + |x|) with NaN as 0, then the NaN indicators."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    clean = np.where(missing, 0.0, values)
    scaled = np.sign(clean) * np.log1p(np.abs(clean))
    return np.concatenate([scaled, missing], axis=1).astype(np.float32)


def fused_frame_inputs(
    frame: pd.DataFrame,
    lag_s: int = 0,
    features: pd.DataFrame | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Every attempt of a validated log frame: `fused_inputs` of its `sql_features` (computed
    here unless given, as `sql_features(frame, lag_s=lag_s)`)."""
    if features is None:
        features = sql_features(frame, WINDOWS, lag_s=lag_s, threads=threads)
    if len(features) != len(frame):
        raise IssuerSeqError(
            f"features has {len(features)} rows but the log {len(frame)}: compute them from it"
        )
    return fused_inputs(features.loc[:, list(FUSED_COLUMNS)].to_numpy(np.float64))


def through_route(fused: np.ndarray, rates: Mapping[str, np.ndarray]) -> np.ndarray:
    """`fused` (N, N_FUSED) with its route aggregates replaced by another route's: `rates`
    maps `issuer_route_*` and `route_*` columns to (N,) values (NaN: no event), as
    `route_rates` gives them per route."""
    out = fused.copy()
    n = len(FUSED_COLUMNS)
    for column, values in rates.items():
        i = FUSED_COLUMNS.index(column)
        one = fused_inputs(np.asarray(values, np.float64)[:, None])
        out[:, i], out[:, n + i] = one[:, 0], one[:, 1]
    return out
