"""The LightGBM model that `issuer-seq bench` serves: a saved one, or fitted once and saved.

`issuer-seq evaluate` saves the LightGBM model its search chose (`LightGBMModel.save`:
model.txt + lightgbm.json) in `<run_dir>/baselines/lightgbm`; the bench serves that one, so
the report's LightGBM latency and accuracy are one model's. Without it (an evaluation
without LightGBM, or none yet) the bench looks in `<out_dir>/lightgbm`, and otherwise fits
one with the tuned defaults (no search) on the same split as the evaluation: SQL features
over the log before the test split, the latest `max_train_rows` training rows, early stopping
on the validation rows. It is saved to `<out_dir>/lightgbm` for the next run. Latency depends
on the trees (their number and size), not on how well they were tuned; the evaluation's
accuracy row is the one the report shows beside it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.baselines.dataset import approval_frame, split_of
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.store import TEST, TRAIN, VAL

log = logging.getLogger(__name__)

#: where, under a run dir, evaluate saves its LightGBM approval model (bench serves it)
LIGHTGBM_DIR = Path("baselines") / "lightgbm"
#: beside the model evaluate saved: how it was chosen
FIT_INFO = "evaluate_fit.json"
SAVED = "lightgbm.json"
FITTED = "bench_fit.json"  # how the bench fitted it, beside the model it saved


def saved_model_dirs(run_dir: Path, out_dir: Path) -> list[Path]:
    """Where a saved model is looked for, in order."""
    return [run_dir / LIGHTGBM_DIR, out_dir / "lightgbm"]


def fit_lightgbm(
    frame: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
    max_train_rows: int | None = None,
    threads: int | None = None,
    split: np.ndarray | None = None,
) -> tuple[LightGBMModel, pd.DataFrame, dict[str, Any]]:
    """LightGBM on the SQL features of a validated log's training split (no search): the
    model, the approval frame of the rows before the test split (indexed by their row in
    `frame`) it was fitted and early-stopped on, and how it was fitted. `split`: the log's
    TRAIN / VAL / TEST per row (default: `split_of`, the store's default fractions)."""
    started = time.perf_counter()
    split = split_of(frame) if split is None else np.asarray(split)
    known = split != TEST  # train and validation: a prefix of the log in time
    features = sql_features(frame.loc[known].reset_index(drop=True), threads=threads)
    data = approval_frame(frame.loc[known].reset_index(drop=True), features)
    data.index = np.flatnonzero(known)
    split = split[known]
    train = data.loc[split == TRAIN]
    if max_train_rows is not None and len(train) > max_train_rows:
        train = train.iloc[-int(max_train_rows) :]  # the latest: closest to serving time
    val = data.loc[split == VAL]
    sql_s = time.perf_counter() - started
    model = LightGBMModel(dict(params or {}), n_jobs=threads).fit(train, val)
    info = {
        "source": "fitted by bench (tuned defaults, no search)",
        "train_rows": len(train),
        "val_rows": len(val),
        "features": len(model.columns),
        "sql_features_s": round(sql_s, 1),
        "fit_s": round(time.perf_counter() - started - sql_s, 1),
    }
    return model, data, info


def load_or_fit_lightgbm(
    frame: pd.DataFrame,
    run_dir: Path,
    out_dir: Path,
    params: Mapping[str, Any] | None = None,
    max_train_rows: int | None = None,
    threads: int | None = None,
) -> tuple[LightGBMModel, dict[str, Any]]:
    """(model, what it is): a saved model if there is one, else fitted and saved."""
    for path in saved_model_dirs(run_dir, out_dir):
        if (path / SAVED).exists():
            model = LightGBMModel.load(path)
            log.info("LightGBM: the saved model in %s", path)
            info: dict[str, Any] = {"source": "saved", "features": len(model.columns)}
            if (path / FIT_INFO).exists():  # chosen by evaluate's search: how
                info = json.loads((path / FIT_INFO).read_text())
            elif (path / FITTED).exists():  # fitted by an earlier bench: how
                info = json.loads((path / FITTED).read_text()) | {"reused": True}
            break
    else:
        path = out_dir / "lightgbm"
        log.info("LightGBM: no saved model; fitting one (SQL features, no search) -> %s", path)
        model, _, info = fit_lightgbm(frame, params, max_train_rows, threads)
        model.save(path)
        (path / FITTED).write_text(json.dumps(info, indent=2))
        log.info("LightGBM: %s", info)
    booster = model.booster
    assert booster is not None
    dump = booster.dump_model(num_iteration=model.best_iteration)
    leaves = [tree["num_leaves"] for tree in dump["tree_info"]]
    info |= {
        "path": str(path),
        "trees": len(leaves),
        "mean_leaves": round(sum(leaves) / max(len(leaves), 1), 1),
        "params": {
            k: model.params[k] for k in ("learning_rate", "num_leaves") if k in model.params
        },
    }
    return model, info
