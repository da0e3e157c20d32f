"""Estimate how much of the oracle's log-loss improvement the SQL features can reach at all.

python scripts/ceiling.py DATA_DIR [--threads N] [--latents] [--routing]
    [--transformer RUN_DIR [OVERRIDE ...]]

A diagnostic for synthetic data, never a model to ship: it reads the simulator's truth.

The oracle's improvement over the issuer x MCC base rate (docs/targets.md) includes what no model
can know from the log: per-card parameters (funds tightness, payday, amount limit) that a few
dozen attempts reveal only weakly, and the onset of outages, risk regimes, lost cards and
expiries. To size what is attainable, the same LightGBM is fitted twice on the same SQL
features and rows:

- `outcomes`: on the approved / declined labels, as the baseline is;
- `truth`: on the truth `p_approve` (cross-entropy with soft labels, early stopping on the
  validation split's truth). Soft labels carry far less noise than outcomes, so this fit is
  close to the best function of these features: E[p_approve | features]. It is
  `issuer_seq.evaluate.ceiling.truth_ceiling`, which `issuer-seq suite` runs on every world.

Both are scored on the test split's outcomes. The `truth` fit's share of the oracle's
improvement is an estimate of the ceiling for any model of these features; its gap to the
oracle is what the features cannot reveal.

`--latents` adds three more `truth` fits, each given some of the simulator's latent state
at the attempt as extra features (truth.parquet's `latent_*` columns, which no log holds):
the card's funds hazard (its tightness, pay-cycle phase and amount against its usual), the
issuer's outage and risk regime, and all three. Each shows how much of the gap to the oracle
that part of the hidden state accounts for.

`--routing` (a routed log) also values routing by each fit, as `issuer-seq evaluate` does
(evaluation.json's `routing`): success-rate routing, LightGBM on outcomes (the baseline,
scoring each candidate route with its figures swapped in), and LightGBM fitted to the truth of
every route the merchant holds (`fit_routes_to_truth`: one row per attempt and route, so the
route effects are learned from the truth, not only from the logged routes). That last
policy's share of the oracle's uplift over static routing estimates how much of it a model of
these features can reach; the episodes each policy left show how fast that model reacts.

`--transformer RUN_DIR` also trains the transformer (the default recipe plus the overrides)
on the truth of the training split, the same way: an estimate of what its inputs, the
card's and the issuer's recent histories, can reveal. Validation (early stopping,
calibration) and test use the outcomes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

from issuer_seq.baselines.dataset import approval_frame, by_split
from issuer_seq.baselines.route_rates import route_rates
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.cli import conf_dir
from issuer_seq.commands.train import train
from issuer_seq.data.store import TEST, TRAIN, EventStore, StoreConfig, build_store
from issuer_seq.evaluate.ceiling import fit_routes_to_truth, reference_scores, truth_ceiling
from issuer_seq.evaluate.metrics import approval_metrics, oracle_share
from issuer_seq.evaluate.routing import HISTORY_COLUMNS, evaluate_routing
from issuer_seq.evaluate.routing_scores import lightgbm_route_matrix
from issuer_seq.evaluate.run import load_truth
from issuer_seq.routing.route_source import resolve_routes
from issuer_seq.routing.value import truth_matrix
from issuer_seq.schema import ValidatedLog, load_log

#: `--latents`: fit name -> truth.parquet latent columns given to LightGBM as features
LATENT_FITS = {
    "truth_with_funds_hazard": ["latent_funds_hazard"],
    "truth_with_outage_and_regime": ["latent_outage", "latent_risk_regime"],
    "truth_with_all_latents": ["latent_funds_hazard", "latent_outage", "latent_risk_regime"],
}


def ceiling(
    data_dir: Path,
    threads: int | None = None,
    transformer: Path | None = None,
    overrides: Sequence[str] = (),
    latents: bool = False,
    routing: bool = False,
) -> dict[str, dict[str, Any]]:
    vlog = load_log(data_dir)
    store = build_store(vlog)
    truth = load_truth(data_dir, store, [])
    if truth is None:
        raise SystemExit(f"{data_dir}: no truth.parquet (the ceiling needs synthetic data)")
    p_true = truth["p_approve"].to_numpy()
    test = store.rows(TEST)

    data = approval_frame(vlog.frame, sql_features(vlog.frame, threads=threads))
    parts = by_split(data, store.split)
    outcomes = LightGBMModel(n_jobs=threads).fit(parts["train"], parts["val"])
    scores = reference_scores(store, p_true)
    scores["lightgbm_outcomes"] = approval_metrics(
        outcomes.predict_proba(data)[test], store.approved[test]
    )
    scores["lightgbm_truth"] = truth_ceiling(data, store, p_true, threads)
    if latents:
        for name, columns in LATENT_FITS.items():
            extra = {c: truth[c].to_numpy(dtype=float) for c in columns}
            scores[f"lightgbm_{name}"] = truth_ceiling(data.assign(**extra), store, p_true, threads)
    if transformer is not None:
        scores["transformer_truth"] = train_on_truth(vlog, data_dir, transformer, overrides)
    base, oracle = scores["base_rate"]["logloss"], scores["oracle"]["logloss"]
    out: dict[str, dict[str, Any]] = {
        name: {
            "auroc": round(m["auroc"], 4),
            "logloss": round(m["logloss"], 4),
            "oracle_share": round(oracle_share(m["logloss"], base, oracle), 3),
        }
        for name, m in scores.items()
    }
    if routing:
        out["routing"] = routing_ceiling(vlog, data_dir, store, truth, data, outcomes, threads)
    return out


def routing_ceiling(
    vlog: ValidatedLog,
    data_dir: Path,
    store: EventStore,
    truth: pd.DataFrame,
    features: pd.DataFrame,
    outcomes: LightGBMModel,
    threads: int | None,
) -> dict[str, Any]:
    """Routing on the test split by LightGBM on outcomes and LightGBM fitted to every route's
    truth (module docstring): per policy, the share of the oracle's uplift in expected value
    over static routing (95% interval) and the issuer-by-route episodes it left."""
    frame = vlog.frame
    if "route" not in frame.columns or "route_propensity" not in frame.columns:
        raise SystemExit(f"{data_dir}: --routing needs a routed log with route_propensity")
    meta = json.loads((data_dir / "meta.json").read_text())
    test = store.rows(TEST)
    ts = frame["ts"].to_numpy()
    history = frame.loc[ts < ts[test].min(), list(HISTORY_COLUMNS)]
    test_frame = frame.iloc[test].reset_index(drop=True)
    routes = resolve_routes(history, test_frame, meta)
    table = routes.table
    rates = route_rates(frame, table.names)
    p_routes = truth_matrix(truth, table.names)
    fitted = fit_routes_to_truth(features, frame, store.split, p_routes, table, rates, threads)
    predictors = {
        name: lightgbm_route_matrix(model, features, frame, test, table, rates=rates)
        for name, model in (("lightgbm_outcomes", outcomes), ("lightgbm_truth_routes", fitted))
    }
    test_truth = truth.iloc[test].reset_index(drop=True)
    test_truth["txn_id"] = np.asarray(store.txn_id)[test]
    section = evaluate_routing(
        test_frame, test_truth, meta, predictors, history=history, routes=routes
    )
    react = section["reaction"]
    return {
        "episodes_compared": react["compared_on"],
        "policies": {
            name: {
                "share_of_oracle_uplift": v["share_of_oracle_uplift"],
                "episodes_left": react["policies"][name]["reacted"],
                "median_reaction_hours": react["policies"][name]["median_hours"],
            }
            for name, v in section["policies"].items()
        },
        "rounds": fitted.best_iteration,
    }


def train_on_truth(
    vlog: ValidatedLog, data_dir: Path, run_dir: Path, overrides: Sequence[str]
) -> dict[str, Any]:
    """Train the transformer on the training split's truth; its test metrics (outcomes)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", [f"data_dir={data_dir}", f"run_dir={run_dir}", *overrides])
    store = build_store(vlog, StoreConfig.from_json(cfg.data))
    truth = load_truth(data_dir, store, [])
    assert truth is not None
    soft = truth["p_approve"].to_numpy(dtype=np.float32)
    store.approved = np.where(store.split == TRAIN, soft, store.approved).astype(np.float32)
    train(cfg, store)
    return json.loads((run_dir / "metrics.json").read_text())["approval"]["test"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--latents", action="store_true", help="also fit with the simulator's latent state"
    )
    parser.add_argument(
        "--routing", action="store_true", help="also value routing by each fit (routed logs)"
    )
    parser.add_argument("--transformer", type=Path, default=None, metavar="RUN_DIR")
    parser.add_argument("overrides", nargs="*", help="train overrides for --transformer")
    args = parser.parse_intermixed_args()
    result = ceiling(
        args.data_dir, args.threads, args.transformer, args.overrides, args.latents, args.routing
    )
    print(json.dumps(result, indent=2))
