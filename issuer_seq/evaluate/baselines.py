"""The tree and linear baselines, fitted for an evaluation on the same rows as the model.

SQL features (DuckDB) over the whole log, then LightGBM, XGBoost and logistic regression
fitted on the training split with their small hyperparameter searches scored on validation
(baselines/), and the retry tree model (LightGBM with the delay as a feature) for the retry
policy comparison. Returns, per model, approval probabilities for every row of the log and,
for the retry model, a curve over the delay grid for every declined row. The chosen LightGBM
approval model can be saved (`lightgbm_dir`), for `issuer-seq bench` to serve the evaluated
model rather than fit its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.baselines.dataset import approval_frame, by_split, decline_frame, retry_frame
from issuer_seq.baselines.linear import LOGISTIC_SPACE, LogisticModel
from issuer_seq.baselines.protocol import Baseline
from issuer_seq.baselines.retry_trees import RETRY_LIGHTGBM_PARAMS, RETRY_SPACE, RetryTrees
from issuer_seq.baselines.saved_lightgbm import FIT_INFO
from issuer_seq.baselines.search import search
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LIGHTGBM_SPACE, XGBOOST_SPACE, LightGBMModel, XGBoostModel
from issuer_seq.data.store import TEST, TRAIN, VAL
from issuer_seq.progress import stage
from issuer_seq.schema import APPROVED_CODE

log = logging.getLogger(__name__)

MODELS = ("lightgbm", "xgboost", "logistic")


def fit_baselines(
    frame: pd.DataFrame,
    split: np.ndarray,
    grid: Sequence[str],
    features: pd.DataFrame | None = None,
    models: Sequence[str] = MODELS,
    retry_model: bool = True,
    trials: int | None = None,
    threads: int | None = None,
    lightgbm_dir: Path | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{name: (p_approve of every row (N,), retry curves (N, G) or None)}.

    `lightgbm_dir`: save the search's LightGBM approval model there (`LightGBMModel.save`,
    plus `FIT_INFO`: its parameters, validation log loss and rows); `features`: the log's
    `sql_features` when already computed (default: computed here).
    """
    if features is None:
        with stage(log, "SQL features (DuckDB)"):
            features = sql_features(frame, threads=threads)
    data = approval_frame(frame, features)
    parts = by_split(data, split)
    makers: dict[str, tuple[Callable[[dict[str, Any]], Baseline], dict[str, list[Any]]]] = {
        "lightgbm": (lambda p: LightGBMModel(p, n_jobs=threads), LIGHTGBM_SPACE),
        "xgboost": (lambda p: XGBoostModel(p, n_jobs=threads), XGBOOST_SPACE),
        "logistic": (lambda p: LogisticModel(p), LOGISTIC_SPACE),
    }
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name in models:
        make, space = makers[name]
        t0 = time.perf_counter()
        with stage(log, f"{name}: search and scoring"):
            result = search(make, space, parts["train"], parts["val"], n_trials=trials, name=name)
            out[name] = (result.model.predict_proba(data), None)
        log.info("%s: chose %s", name, result.params)
        if name == "lightgbm" and lightgbm_dir is not None:
            model = result.model
            assert isinstance(model, LightGBMModel)
            model.save(lightgbm_dir)
            info = {
                "source": "issuer-seq evaluate (search on validation)",
                "search_params": result.params,
                "val_logloss": round(result.val_logloss, 6),
                "trials": len(result.trials),
                "train_rows": len(parts["train"]),
                "val_rows": len(parts["val"]),
                "features": len(model.columns),
                "fit_s": round(time.perf_counter() - t0, 1),
            }
            (lightgbm_dir / FIT_INFO).write_text(json.dumps(info, indent=2, default=str))
            log.info("lightgbm: saved the chosen model to %s", lightgbm_dir)
    if retry_model and "lightgbm" in out:
        with stage(log, "lightgbm retry model: search and curves"):
            retries = retry_frame(frame, features, grid)
            rsplit = split[retries.index.to_numpy()]
            result = search(
                lambda p: RetryTrees(LightGBMModel({**RETRY_LIGHTGBM_PARAMS, **p}, n_jobs=threads)),
                RETRY_SPACE,
                retries[rsplit == TRAIN],
                retries[rsplit == VAL],
                n_trials=trials,
                weighted=True,
                name="lightgbm retry",
            )
            model = result.model
            assert isinstance(model, RetryTrees)
            declined = np.flatnonzero(
                (split == TEST) & (frame["response_code"].to_numpy(dtype=object) != APPROVED_CODE)
            )
            curves = np.full((len(frame), len(grid)), np.nan)
            curves[declined] = model.predict_curve(decline_frame(frame, features, declined))
            out["lightgbm"] = (out["lightgbm"][0], curves)
    return out
