"""Benchmark the baselines on a log: test-split metrics of each, printed as one JSON object.

    .venv/bin/python scripts/bench_baselines.py DATA_DIR [--trials N] [--threads N]
        [--skip xgboost,logistic] [--out FILE]

Builds the SQL features over the whole log (timed), splits by time exactly as the
transformer's store does (70/15/15), fits each baseline on train (early stopping and a small
hyperparameter search on val), and scores the test split with scikit-learn's metrics:
AUROC, log loss, Brier, average precision of the decline class, and the share of the
oracle's log-loss improvement over the issuer x MCC rate each model captures (when the log
has truth.parquet). Then the retry tree model: on observed test retries (AUROC, log loss,
beside the truth at the retry's grid delay) and, for every soft test decline, its curve over
the delay grid against the true curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics

from issuer_seq.baselines.dataset import (
    approval_frame,
    by_split,
    decline_frame,
    retry_frame,
    split_of,
)
from issuer_seq.baselines.linear import LOGISTIC_SPACE, LogisticModel
from issuer_seq.baselines.protocol import LABEL, TXN_ID, Baseline
from issuer_seq.baselines.rates import IssuerMccRate, Oracle
from issuer_seq.baselines.retry_trees import RETRY_LIGHTGBM_PARAMS, RETRY_SPACE, RetryTrees
from issuer_seq.baselines.search import SearchResult, search
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LIGHTGBM_SPACE, XGBOOST_SPACE, LightGBMModel, XGBoostModel
from issuer_seq.data.store import TEST, TRAIN, VAL
from issuer_seq.delays import DEFAULT_GRID, truth_column
from issuer_seq.rules import is_soft
from issuer_seq.schema import load_log


def _r(x: float) -> float:
    return round(float(x), 4)


def approval_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "auroc": _r(metrics.roc_auc_score(y, p)),
        "logloss": _r(metrics.log_loss(y, p, labels=[0, 1])),
        "brier": _r(metrics.brier_score_loss(y, p)),
        "ap_decline": _r(metrics.average_precision_score(1 - y, 1 - p)),
    }


def summary(result: SearchResult) -> dict[str, Any]:
    best_iteration = getattr(result.model, "best_iteration", None)
    return {
        "params": result.params,
        "val_logloss": _r(result.val_logloss),
        "trials": [
            {"params": t.params, "val_logloss": _r(t.val_logloss), "fit_s": round(t.fit_s, 1)}
            for t in result.trials
        ],
        **({"best_iteration": best_iteration} if best_iteration is not None else {}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--trials", type=int, default=None, help="max trials per search (default all)")
    ap.add_argument("--threads", type=int, default=None, help="threads for DuckDB and trees")
    ap.add_argument("--skip", default="", help="comma-separated models to skip")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    def note(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    frame = load_log(args.data_dir).frame
    started = time.perf_counter()
    features = sql_features(frame, threads=args.threads)
    sql_s = time.perf_counter() - started
    note(f"SQL features: {features.shape} in {sql_s:.1f} s")
    split = split_of(frame)
    parts = by_split(approval_frame(frame, features), split)
    train, val, test = parts["train"], parts["val"], parts["test"]
    y_test = test[LABEL].to_numpy()
    has_truth = (args.data_dir / "truth.parquet").exists()

    searches: dict[str, tuple[Callable[[dict[str, Any]], Baseline], dict[str, list[Any]]]] = {
        "lightgbm": (lambda p: LightGBMModel(p, n_jobs=args.threads), LIGHTGBM_SPACE),
        "xgboost": (lambda p: XGBoostModel(p, n_jobs=args.threads), XGBOOST_SPACE),
        "logistic": (lambda p: LogisticModel(p), LOGISTIC_SPACE),
    }
    models: dict[str, dict[str, Any]] = {}
    preds: dict[str, np.ndarray] = {}

    def score(name: str, model: Baseline, fit_s: float, extra: dict[str, Any]) -> None:
        preds[name] = model.predict_proba(test)
        models[name] = {**approval_metrics(y_test, preds[name]), "fit_s": round(fit_s, 1), **extra}
        note(f"{name}: {models[name]}")

    t0 = time.perf_counter()
    score("issuer_mcc_rate", IssuerMccRate().fit(train, val), time.perf_counter() - t0, {})
    for name, (make, space) in searches.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        result = search(make, space, train, val, n_trials=args.trials)
        score(name, result.model, time.perf_counter() - t0, summary(result))
    if has_truth:
        score("oracle", Oracle.from_data_dir(args.data_dir), 0.0, {})
        base, floor = models["issuer_mcc_rate"]["logloss"], models["oracle"]["logloss"]
        for m in models.values():
            m["oracle_share"] = _r((base - m["logloss"]) / (base - floor))

    retry = {} if "retry" in skip else bench_retry(frame, features, split, args, has_truth, note)
    out = {
        "data_dir": str(args.data_dir),
        "rows": len(frame),
        "rows_per_split": {"train": len(train), "val": len(val), "test": len(test)},
        "n_features": features.shape[1],
        "sql_features_s": round(sql_s, 1),
        "approval_test": models,
        "retry_test": retry,
    }
    text = json.dumps(out)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def bench_retry(
    frame: pd.DataFrame,
    features: pd.DataFrame,
    split: np.ndarray,
    args: argparse.Namespace,
    has_truth: bool,
    note: Callable[[str], None],
) -> dict[str, Any]:
    retries = retry_frame(frame, features)
    rsplit = split[retries.index.to_numpy()]
    train, val, test = (retries[rsplit == s] for s in (TRAIN, VAL, TEST))
    t0 = time.perf_counter()
    result = search(
        lambda p: RetryTrees(LightGBMModel({**RETRY_LIGHTGBM_PARAMS, **p}, n_jobs=args.threads)),
        RETRY_SPACE,
        train,
        val,
        n_trials=args.trials,
    )
    fit_s = time.perf_counter() - t0
    model = result.model
    assert isinstance(model, RetryTrees)
    y = test[LABEL].to_numpy()
    out: dict[str, Any] = {
        "retries": {"train": len(train), "val": len(val), "test": len(test)},
        "observed": {"retry_trees": approval_metrics(y, model.predict_proba(test))},
        "fit_s": round(fit_s, 1),
        "search": {"params": result.params, "val_logloss": _r(result.val_logloss)},
    }
    if has_truth:
        columns = [truth_column(g) for g in DEFAULT_GRID]
        truth = pd.read_parquet(args.data_dir / "truth.parquet", columns=[TXN_ID, *columns])
        truth = truth.set_index(TXN_ID)
        # the oracle on observed retries: the true curve at the retry's grid delay
        true_curve = truth.reindex(test[TXN_ID].to_numpy()).to_numpy()
        at = true_curve[np.arange(len(test)), test["delay_bucket"].to_numpy(dtype=int)]
        out["observed"]["oracle"] = approval_metrics(y, at)
        # every soft decline of the test split: the whole curve against the true one
        code = frame["response_code"].to_numpy(dtype=object)
        declines = decline_frame(frame, features, np.flatnonzero((split == TEST) & (code != "00")))
        soft = np.array([is_soft(c) for c in declines["decline_cause"].astype(str)])
        declines = declines[soft]
        want = truth.reindex(declines[TXN_ID].to_numpy()).to_numpy()
        keep = ~np.isnan(want).any(axis=1)
        got = model.predict_curve(declines[keep])
        want = want[keep]
        wc = np.clip(want, 1e-7, 1 - 1e-7)
        entropy = -(wc * np.log(wc) + (1 - wc) * np.log1p(-wc))
        gc = np.clip(got, 1e-7, 1 - 1e-7)
        cross = -(wc * np.log(gc) + (1 - wc) * np.log1p(-gc))
        out["curve_vs_truth"] = {
            "soft_declines": int(keep.sum()),
            "mae": _r(np.abs(got - want).mean()),
            "mae_by_delay": {
                g: _r(v) for g, v in zip(DEFAULT_GRID, np.abs(got - want).mean(0), strict=True)
            },
            "kl": _r((cross - entropy).mean()),
            # how often the model's best delay is the truth's best delay
            "argmax_agreement": _r((got.argmax(1) == want.argmax(1)).mean()),
        }
    note(f"retry: {out}")
    return out


if __name__ == "__main__":
    sys.exit(main())
