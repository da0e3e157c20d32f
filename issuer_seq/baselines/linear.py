"""Logistic regression on the SQL features (scikit-learn pipeline).

The linear baseline a careful team would fit: counts, amounts and recencies are heavy-tailed,
so numeric features go through log1p, then median imputation with a missing-indicator
column per feature that can be missing (no history is information, not a median), then
standardization. Categorical features (and the calendar fields, whose effect is not linear)
are one-hot encoded, with rare levels pooled. The regularization strength `C` is the knob a
search tunes on the validation split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from issuer_seq.baselines.protocol import (
    EPS,
    categorical_columns,
    feature_columns,
    labels,
    weights,
)

#: numeric features one-hot encoded instead (their effect is periodic, not monotone)
CALENDAR: tuple[str, ...] = ("hour_of_day", "day_of_week", "day_of_month")

LOGISTIC_DEFAULTS: dict[str, Any] = {"C": 0.1, "max_iter": 1_000, "min_frequency": 50}
LOGISTIC_SPACE: dict[str, list[Any]] = {"C": [0.01, 0.1, 1.0]}


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def _as_text(x: pd.DataFrame) -> np.ndarray:
    # One spelling for "missing" so that the encoder sees it as a level of its own.
    return x.astype("string").fillna("<none>").to_numpy(dtype=object)


class LogisticModel:
    """One-hot + log/standardize + L2 logistic regression. `val` is unused by `fit` itself."""

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        exclude: Sequence[str] = (),
        use_weights: bool = False,
        max_train_rows: int | None = None,
        seed: int = 0,
    ) -> None:
        self.params = {**LOGISTIC_DEFAULTS, **(params or {})}
        self.exclude = tuple(exclude)
        self.use_weights = use_weights
        self.max_train_rows = max_train_rows
        self.seed = seed
        self.pipeline: Pipeline | None = None
        self.columns: list[str] = []

    def _build(self, frame: pd.DataFrame) -> Pipeline:
        categorical = categorical_columns(frame, self.columns)
        calendar = [c for c in CALENDAR if c in self.columns]
        numeric = [c for c in self.columns if c not in categorical and c not in calendar]
        num = make_pipeline(
            FunctionTransformer(_signed_log1p, feature_names_out="one-to-one"),
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
        )
        cat = make_pipeline(
            FunctionTransformer(_as_text, feature_names_out="one-to-one"),
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                min_frequency=int(self.params["min_frequency"]),
                sparse_output=True,
                dtype=np.float64,
            ),
        )
        features = ColumnTransformer(
            [("num", num, numeric), ("cat", cat, [*categorical, *calendar])],
            sparse_threshold=1.0,  # keep the one-hot block sparse
        )
        model = LogisticRegression(
            C=float(self.params["C"]),
            max_iter=int(self.params["max_iter"]),
            solver="lbfgs",
        )
        return Pipeline([("features", features), ("model", model)])

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self:
        self.columns = feature_columns(train, self.exclude)
        if self.max_train_rows is not None and len(train) > self.max_train_rows:
            pick = np.random.default_rng(self.seed).choice(
                len(train), self.max_train_rows, replace=False
            )
            train = train.iloc[np.sort(pick)]
        self.pipeline = self._build(train)
        w = weights(train, self.use_weights)
        self.pipeline.fit(train[self.columns], labels(train), model__sample_weight=w)
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.pipeline is None:
            raise RuntimeError("fit the model first")
        p = self.pipeline.predict_proba(frame[self.columns])[:, 1]
        return np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
