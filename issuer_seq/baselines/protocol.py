"""What every baseline is, and the conventions of the frames baselines read.

A baseline is anything with `fit(train, val)` and `predict_proba(frame)`: no base class, just
this `Protocol`. Frames are feature frames (`sql_features` output, one row per attempt)
carrying a few reserved columns besides the features:

- `approved` (LABEL): the label, 1.0 when the attempt (or, for retry frames, the retry) was
  approved; present on frames that are fitted on or scored;
- `txn_id` (TXN_ID): the attempt's id, so that truth can be joined (the oracle);
- `weight` (WEIGHT): optional example weight (retry frames: 1 / the logging propensity).

Every other column is a feature: categorical ones as pandas `category`, the rest numeric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd

LABEL = "approved"
TXN_ID = "txn_id"
WEIGHT = "weight"
RESERVED: frozenset[str] = frozenset({LABEL, TXN_ID, WEIGHT})

# Clip probabilities away from 0 and 1 before a log loss: one confident mistake must not
# make a whole comparison infinite.
EPS = 1e-7


@runtime_checkable
class Baseline(Protocol):
    """A model of p(approved) fitted on a training frame, tuned or stopped on a validation one."""

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self: ...

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N,) probabilities of LABEL = 1, in (0, 1)."""
        ...


def feature_columns(frame: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """The frame's feature columns: everything but the reserved ones and `exclude`."""
    skip = RESERVED | set(exclude)
    return [c for c in frame.columns if c not in skip]


def categorical_columns(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]


def fit_categories(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, list[str]]:
    """The training frame's categories per categorical column (values seen in training)."""
    out = {}
    for c in categorical_columns(frame, columns):
        seen = frame[c].dropna().unique()
        out[c] = sorted(str(v) for v in seen)
    return out


def apply_categories(
    frame: pd.DataFrame, columns: Sequence[str], categories: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """`frame[columns]` with the training categories: a value unseen in training is missing.

    Trees and encoders work on category codes, so the same value must get the same code in
    every split; `sql_features` only knows the categories of the frame it was given.
    """
    out = frame.loc[:, list(columns)].copy()
    for c, cats in categories.items():
        values = out[c]
        if not isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype("string").astype("category")
        out[c] = values.cat.set_categories(list(cats))
    return out


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(dtype=np.float64)


def weights(frame: pd.DataFrame, use: bool) -> np.ndarray | None:
    """Example weights when asked for and present, else None (unweighted)."""
    if not use or WEIGHT not in frame.columns:
        return None
    return frame[WEIGHT].to_numpy(dtype=np.float64)


def log_loss(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (weighted when `weight` is given), probabilities clipped."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(loss, weights=weight))
