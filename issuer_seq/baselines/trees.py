"""Gradient-boosted trees on the SQL features: LightGBM and XGBoost.

Both stop early on the validation split's log loss and take their hyperparameters as a plain
dict (`params`, merged over tuned defaults), so a search (`search.py`) or a Hydra config can
feed them. Categorical features go in natively (pandas `category`, aligned to the training
categories); missing values (no history) stay missing, which both libraries route on their
own.

Defaults were chosen for ~0.5-1M training rows of ~150 features: a moderate learning rate
with early stopping (the number of trees is found, not set), leaves large enough for the
interactions that matter (issuer state x cross-border x MCC x amount), a minimum leaf size
and L2 penalties that keep 200-level issuer ids and rare codes from being memorised, and
row / column subsampling.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import lightgbm as lgb
import numpy as np
import pandas as pd
import xgboost as xgb
from tqdm.auto import tqdm

from issuer_seq.baselines.protocol import (
    EPS,
    apply_categories,
    feature_columns,
    fit_categories,
    labels,
    weights,
)

LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "objective": "binary",
    "metric": "binary_logloss",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_child_samples": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    # categorical splits: smoothing and a penalty so that rare levels do not get own leaves
    "cat_smooth": 20.0,
    "cat_l2": 10.0,
    "min_data_per_group": 100,
    "max_bin": 255,
    "verbosity": -1,
}

XGBOOST_DEFAULTS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "learning_rate": 0.05,
    "max_depth": 8,
    "min_child_weight": 10.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "max_cat_to_onehot": 4,
    "max_bin": 256,
}

#: default search spaces (name -> values; `search.search` takes any such dict): the knobs
#: that trade fit for variance on this kind of data
LIGHTGBM_SPACE: dict[str, list[Any]] = {
    "num_leaves": [31, 127],
    "min_child_samples": [100, 400],
    "learning_rate": [0.05],
}
XGBOOST_SPACE: dict[str, list[Any]] = {
    "max_depth": [6, 9],
    "min_child_weight": [10.0, 50.0],
    "learning_rate": [0.05],
}


def _lightgbm_bar(rounds: int) -> Callable[[Any], None]:
    """A bar over boosting rounds (on a terminal; early stopping ends it short)."""
    progress = tqdm(total=rounds, desc="lightgbm rounds", disable=None, leave=False)

    def callback(env: Any) -> None:
        progress.update(1)
        if env.iteration + 1 >= env.end_iteration:
            progress.close()

    return callback


class _XGBoostBar(xgb.callback.TrainingCallback):
    """A bar over boosting rounds (on a terminal; early stopping ends it short)."""

    def __init__(self, rounds: int) -> None:
        self.progress = tqdm(total=rounds, desc="xgboost rounds", disable=None, leave=False)

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.progress.update(1)
        return False

    def after_training(self, model: Any) -> Any:
        self.progress.close()
        return model


class _BoostedTrees:
    """What both tree models share: parameters over tuned defaults, the feature columns
    and training categories fixed at fit time, and the fit's parameters with seed and
    threads."""

    DEFAULTS: Mapping[str, Any] = {}
    THREADS_PARAM = ""  # the library's name for its thread count

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 3_000,
        early_stopping_rounds: int = 100,
        exclude: Sequence[str] = (),
        use_weights: bool = False,
        n_jobs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.params = {**self.DEFAULTS, **(params or {})}
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.exclude = tuple(exclude)
        self.use_weights = use_weights
        self.n_jobs = n_jobs
        self.seed = seed
        self.columns: list[str] = []
        self.categories: dict[str, list[str]] = {}

    def _prepare(self, train: pd.DataFrame) -> dict[str, Any]:
        """Fix the columns and categories on the training frame; the fit's parameters."""
        self.columns = feature_columns(train, self.exclude)
        self.categories = fit_categories(train, self.columns)
        params = {**self.params, "seed": self.seed}
        if self.n_jobs is not None:
            params[self.THREADS_PARAM] = self.n_jobs
        return params


class LightGBMModel(_BoostedTrees):
    """LightGBM binary classifier with early stopping on the validation frame."""

    DEFAULTS = LIGHTGBM_DEFAULTS
    THREADS_PARAM = "num_threads"
    booster: lgb.Booster | None = None

    def _x(self, frame: pd.DataFrame) -> pd.DataFrame:
        return apply_categories(frame, self.columns, self.categories)

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self:
        params = self._prepare(train)
        dtrain = lgb.Dataset(
            self._x(train),
            labels(train),
            weight=weights(train, self.use_weights),
            categorical_feature=list(self.categories),
            free_raw_data=True,
        )
        dval = lgb.Dataset(
            self._x(val), labels(val), weight=weights(val, self.use_weights), reference=dtrain
        )
        self.booster = lgb.train(
            params,
            dtrain,
            num_boost_round=self.num_boost_round,
            valid_sets=[dval],
            callbacks=[
                lgb.early_stopping(self.early_stopping_rounds, verbose=False),
                _lightgbm_bar(self.num_boost_round),
            ],
        )
        return self

    @property
    def best_iteration(self) -> int:
        assert self.booster is not None
        return int(self.booster.best_iteration or self.booster.current_iteration())

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("fit the model first")
        p = self.booster.predict(self._x(frame), num_iteration=self.best_iteration)
        return np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)

    def save(self, path: str | Path) -> Path:
        """Write `model.txt` (LightGBM's text format, the best iteration's trees) and
        `lightgbm.json` (feature columns, training categories, parameters) into `path`."""
        if self.booster is None:
            raise RuntimeError("fit the model first")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / "model.txt"), num_iteration=self.best_iteration)
        meta = {
            "columns": self.columns,
            "categories": self.categories,
            "best_iteration": self.best_iteration,
            "params": self.params,
            "exclude": list(self.exclude),
            "seed": self.seed,
        }
        (path / "lightgbm.json").write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LightGBMModel:
        """A model written by `save`, ready to predict."""
        path = Path(path)
        meta = json.loads((path / "lightgbm.json").read_text())
        model = cls(meta["params"], exclude=meta["exclude"], seed=meta["seed"])
        model.booster = lgb.Booster(model_file=str(path / "model.txt"))
        model.columns = list(meta["columns"])
        model.categories = {c: list(v) for c, v in meta["categories"].items()}
        return model


class XGBoostModel(_BoostedTrees):
    """XGBoost (hist, native categoricals) with early stopping on the validation frame."""

    DEFAULTS = XGBOOST_DEFAULTS
    THREADS_PARAM = "nthread"
    booster: xgb.Booster | None = None

    def _dmatrix(self, frame: pd.DataFrame, with_label: bool, ref: Any = None) -> Any:
        x = apply_categories(frame, self.columns, self.categories)
        y = labels(frame) if with_label else None
        w = weights(frame, self.use_weights) if with_label else None
        # QuantileDMatrix bins once against the training matrix's cuts: less memory, faster.
        return xgb.QuantileDMatrix(
            x, label=y, weight=w, enable_categorical=True, ref=ref, max_bin=self.params["max_bin"]
        )

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self:
        params = self._prepare(train)
        dtrain = self._dmatrix(train, with_label=True)
        dval = self._dmatrix(val, with_label=True, ref=dtrain)
        self.booster = xgb.train(
            params,
            dtrain,
            num_boost_round=self.num_boost_round,
            evals=[(dval, "val")],
            early_stopping_rounds=self.early_stopping_rounds,
            verbose_eval=False,
            callbacks=[_XGBoostBar(self.num_boost_round)],
        )
        return self

    @property
    def best_iteration(self) -> int:
        assert self.booster is not None
        return int(self.booster.best_iteration)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("fit the model first")
        x = apply_categories(frame, self.columns, self.categories)
        dm = xgb.DMatrix(x, enable_categorical=True)
        p = self.booster.predict(dm, iteration_range=(0, self.best_iteration + 1))
        return np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
