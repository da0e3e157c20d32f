"""`issuer-seq evaluate`: every model and policy on the test split -> evaluation.json.

Approval: the transformer (the run's calibrated network), the baselines (issuer x MCC base
rate, and the tree and linear models of baselines/ when enabled) and, when the log has
truth, the oracle; for a log with routes, their calibration per logged route. Retry: the
policies of evaluate/retry.py on the declined test attempts, valued with the truth.
Routing: the routing policies of evaluate/routing.py on the test attempts (a log with routes
and propensities: valued with the truth where there is one, else off-policy estimates only;
else a "not applicable" entry). Model-size variants (`transformer_<name>`) and
ablation runs (`ablation_<name>`), trained on the same log, are evaluated alongside when
their run dirs exist.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from issuer_seq.baselines.base_rate import base_rate
from issuer_seq.baselines.dataset import next_attempt
from issuer_seq.baselines.route_rates import route_rates
from issuer_seq.baselines.saved_lightgbm import LIGHTGBM_DIR, SAVED
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import TEST, TRAIN, VAL, EventStore
from issuer_seq.delays import grid_seconds, truth_column
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.metrics import (
    approval_metrics,
    calibration_by_route,
    oracle_share,
    recalibration_metrics,
)
from issuer_seq.evaluate.recommend import recommend
from issuer_seq.evaluate.retry import compare_policies
from issuer_seq.evaluate.routing import (
    HISTORY_COLUMNS,
    WARMUP_COLUMNS,
    RouteWarmup,
    evaluate_routing,
)
from issuer_seq.evaluate.routing_scores import lightgbm_route_matrix, transformer_route_matrix
from issuer_seq.evaluate.stacking import apply_stack, fit_stack
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.progress import stage
from issuer_seq.recalibration import RecalibrationSettings, RouteRecalibrationSettings
from issuer_seq.retry_policy import within_session
from issuer_seq.routing import RouteTable
from issuer_seq.routing.route_source import resolve_routes
from issuer_seq.rules import AttemptColumns, Cause, causes, check_retries
from issuer_seq.schema import ValidatedLog, load_log, resolve_log_path
from issuer_seq.train.infer import infer
from issuer_seq.train.trained_run import TrainedRun

log = logging.getLogger(__name__)

#: (log frame, split (N,), delay grid, the log's SQL features) -> {name: (approval p (N,),
#: retry curves (N, G) or None)}
BaselinesFn = Callable[
    [pd.DataFrame, np.ndarray, list[str], pd.DataFrame],
    Mapping[str, tuple[np.ndarray, np.ndarray | None]],
]


def predict(
    net: IssuerSeqNet, store: EventStore, rows: np.ndarray, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated p_approve (N,) and retry curves (N, G), the decline inputs being each row's
    own outcome (the curves of approved rows are meaningless and unused). `progress`: a bar's
    label."""
    out = infer(net, DeviceStore(store), torch.from_numpy(rows), progress=progress)
    return out["p_approve"].numpy(), out["p_retry"].numpy()


def load_truth(data_dir: Path, store: EventStore, grid: list[str]) -> pd.DataFrame | None:
    path = data_dir / "truth.parquet" if data_dir.is_dir() else data_dir.parent / "truth.parquet"
    if not path.exists():
        return None
    truth = pd.read_parquet(path)
    aligned = truth.set_index("txn_id").reindex(store.txn_id)
    if aligned["p_approve"].isna().any():
        raise IssuerSeqError(f"{path}: truth is missing for some attempts of the log")
    missing = [truth_column(g) for g in grid if truth_column(g) not in aligned.columns]
    if missing:
        raise IssuerSeqError(f"{path}: no truth columns {missing} for this run's delay grid")
    return aligned


def rule_view(frame: pd.DataFrame) -> AttemptColumns:
    """The log as the network rules read it."""
    return AttemptColumns(
        card_id=pd.factorize(frame["card_id"])[0],
        ts=frame["ts"].astype("int64").to_numpy() // 1_000_000,
        network=frame["network"].to_numpy(str),
        merchant_id=frame["merchant_id"].astype(str).to_numpy(),
        amount=frame["amount"].to_numpy(),
        response_code=frame["response_code"].to_numpy(str),
        advice_code=frame["advice_code"].fillna("").to_numpy(str),
        attempt=frame["attempt"].to_numpy(),
    )


def allowed_matrix(
    frame: pd.DataFrame, history: AttemptColumns, rows: np.ndarray, grid_s: np.ndarray
) -> np.ndarray:
    """(N, G): may each declined row be retried after each delay (network rules, and a
    customer-initiated payment only within the checkout session)? `history`: the log's
    `rule_view`."""
    t = history.ts
    g = len(grid_s)
    rep = np.repeat(rows, g)
    allowed, _ = check_retries(
        history.take(rep), t[rep] + np.tile(grid_s, len(rows)), history, self_rows=rep
    )
    session = within_session(frame["initiator"].to_numpy(str)[rows], grid_s)
    return allowed.reshape(len(rows), g) & session


#: the longest wait after a decline that still counts as an immediate 3-D Secure retry
NOW_3DS_WITHIN_S = 300


def logged_3ds_retries(
    frame: pd.DataFrame, history: AttemptColumns, rows: np.ndarray
) -> np.ndarray:
    """(N,) for each declined row, the row of its immediate 3-D Secure retry in the log, else -1.

    That is: the decline is a customer-initiated SCA decline (Visa 1A, Mastercard 65) sent
    without 3-D Secure, and the payment's next attempt was sent with 3-D Secure within
    `NOW_3DS_WITHIN_S`, allowed by the network rules; the log's own test of `now_with_3ds`.
    `history`: the log's `rule_view`.
    """
    nxt = next_attempt(frame)[rows]
    three_ds = frame["three_ds"].to_numpy(bool)
    t = history.ts
    ok = causes(history.response_code[rows], history.network[rows]) == Cause.SCA.value
    ok &= ~three_ds[rows] & (frame["initiator"].to_numpy(str)[rows] == "CIT") & (nxt >= 0)
    j = np.where(ok, nxt, 0)
    ok &= three_ds[j] & (t[j] > t[rows]) & (t[j] - t[rows] <= NOW_3DS_WITHIN_S)
    if ok.any():
        allowed, _ = check_retries(
            history.take(rows[ok]), t[j[ok]], history, self_rows=rows[ok], three_ds=True
        )
        ok[np.flatnonzero(ok)] = allowed
    return np.where(ok, nxt, -1)


def n_params(net: IssuerSeqNet) -> int:
    return sum(p.numel() for p in net.parameters())


def trained_on(run: TrainedRun, data_dir: Path) -> bool:
    """Was the run trained on this log (its config's data_dir)? Unknown counts as yes."""
    return not run.data_dir or Path(run.data_dir).resolve() == Path(data_dir).resolve()


def side_runs(
    vlog: ValidatedLog, data_dir: Path, test: np.ndarray, runs: Mapping[str, Path]
) -> dict[str, dict[str, Any]]:
    """Other runs scored on the same test rows, those whose run dirs hold a finished training
    run on this log: {name: {"p": p_approve (N,), "params": parameter count, "run_dir"}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, path in runs.items():
        path = Path(path)
        if not (path / "model_spec.json").exists():
            continue
        try:
            run = TrainedRun.load(path)
        except IssuerSeqError as err:  # a stale or unfinished side run never sinks the rest
            log.warning("%s: skipped: %s", path, err)
            continue
        if not trained_on(run, data_dir):
            log.warning("%s: skipped, trained on another log than %s", path, data_dir)
            continue
        with stage(log, f"{name} ({path}): point-in-time store and scoring"):
            p, _ = predict(run.net, run.build_store(vlog), test, progress=name)
        out[name] = {"p": p, "params": n_params(run.net), "run_dir": str(path)}
    return out


def route_predictors(
    run: TrainedRun,
    store: EventStore,
    frame: pd.DataFrame,
    rows: np.ndarray,
    table: RouteTable,
    features: pd.DataFrame | None = None,
) -> dict[str, np.ndarray]:
    """The models' per-route approval: name -> (len(rows), R) p_approve of each row through
    each route of `table` (its column order), NaN where the row's merchant lacks the route.
    Each entry becomes an expected-value routing policy and that policy's DR reward model.

    The transformer: the run's network, the history states computed once and one query per
    route (evaluate/routing_scores.py). LightGBM: the model `issuer-seq evaluate` saved in
    the run (`baselines/lightgbm`), on the SQL features recomputed for the log, each
    candidate's route and issuer x route figures swapped in; absent when none was saved.
    `features`: the log's SQL features when already computed (default: computed here)."""
    merchants = frame["merchant_id"].to_numpy(object)[rows]
    saved = run.path / LIGHTGBM_DIR
    rates = None
    if run.net.n_fused or (saved / SAVED).exists():
        with stage(log, "route aggregates through every route"):
            rates = route_rates(frame, table.names, lag_s=store.config.lag_s)
    out = {
        "transformer": transformer_route_matrix(
            run.net,
            store,
            rows,
            table,
            merchants,
            progress="transformer per route",
            route_rates=None if rates is None else {k: v[rows] for k, v in rates.items()},
        )
    }
    if (saved / SAVED).exists():
        if features is None:
            with stage(log, "lightgbm per route: SQL features of the log"):
                features = sql_features(frame)
        with stage(log, "lightgbm per route"):
            out["lightgbm"] = lightgbm_route_matrix(
                LightGBMModel.load(saved), features, frame, rows, table, rates=rates
            )
    return out


def stacked(
    net: IssuerSeqNet,
    store: EventStore,
    test: np.ndarray,
    p_transformer: np.ndarray,
    p_lightgbm: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray] | None:
    """The stacked arm (evaluate/stacking.py): the transformer and LightGBM combined by a
    logistic regression fitted on the validation split. Its test metrics, with the fitted
    combination under `stack`, and its test probabilities; None, with a warning, when there
    is nothing to fit (validation holds one class only). `p_transformer`: of the test rows;
    `p_lightgbm`: of every row."""
    val = store.rows(VAL)
    with stage(log, f"stacked: the transformer on {len(val):,} validation attempts"):
        p_val, _ = predict(net, store, val, progress="transformer (validation)")
        try:
            stack = fit_stack(
                {"transformer": p_val, "lightgbm": p_lightgbm[val]}, store.approved[val]
            )
        except ValueError as err:
            log.warning("stacked arm left out: %s", err)
            return None
    p = apply_stack(stack, {"transformer": p_transformer, "lightgbm": p_lightgbm[test]})
    return approval_metrics(p, store.approved[test]) | {"stack": stack}, p


def routing_inputs(
    vlog: ValidatedLog,
    data_dir: Path,
    run: TrainedRun,
    store: EventStore,
    test: np.ndarray,
    truth: pd.DataFrame | None,
    routes_file: Path | None = None,
    features: pd.DataFrame | None = None,
    warmup_h: float | None = None,
) -> dict[str, Any]:
    """The arguments of `evaluate_routing` for the test rows: `test_frame`, `truth` (the
    test rows' truth, or None), `meta` and, for a log with routes and propensities,
    `predictors` (the models' per-route p, `route_predictors`), `history` (the log before the
    test split), `routes` (from `routes_file`, else meta.json, else the log) and, with
    `warmup_h`, `warmup` (the attempts of the last `warmup_h` hours before the split, with the
    models' per-route p of them, computed with the test split's)."""
    frame = vlog.frame
    meta_path = resolve_log_path(data_dir).parent / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    test_frame = frame.iloc[test].reset_index(drop=True)
    if "route" not in frame.columns or "route_propensity" not in frame.columns:
        return {"test_frame": test_frame, "truth": None, "meta": meta, "predictors": {}}
    ts = frame["ts"].to_numpy()
    before = ts < ts[test].min() if len(test) else np.zeros(len(frame), bool)
    history = frame.loc[before, list(HISTORY_COLUMNS)]  # only what routing reads of it
    routes = resolve_routes(history, test_frame, meta, routes_file)
    warm = np.zeros(0, np.int64)
    if warmup_h is not None and len(test):
        t = store.t.astype(np.float64)
        since = t[test].min() - warmup_h * 3600.0
        warm = np.flatnonzero(before & (t >= since))
    scored = route_predictors(
        run, store, frame, np.concatenate([warm, test]), routes.table, features
    )
    test_truth = None
    if truth is not None:
        # the truth is aligned to the store's rows: their txn_id lets routing check the frame's
        test_truth = truth.iloc[test].reset_index(drop=True)
        test_truth["txn_id"] = np.asarray(store.txn_id)[test]
    return {
        "test_frame": test_frame,
        "truth": test_truth,
        "meta": meta,
        "predictors": {name: p[len(warm) :] for name, p in scored.items()},
        "history": history,
        "routes": routes,
        "warmup": RouteWarmup(
            frame.iloc[warm][list(WARMUP_COLUMNS)].reset_index(drop=True),
            {name: p[: len(warm)] for name, p in scored.items()},
        ),
    }


def routing_section(
    vlog: ValidatedLog,
    data_dir: Path,
    run: TrainedRun,
    store: EventStore,
    test: np.ndarray,
    truth: pd.DataFrame | None,
    routes_file: Path | None = None,
    features: pd.DataFrame | None = None,
    recalibration: RouteRecalibrationSettings | None = None,
) -> dict[str, Any]:
    """evaluation.json's `routing`: evaluate/routing.py on the test rows (`routing_inputs`),
    success-rate routing warmed up on the log before the test split; without truth,
    off-policy estimates only; with `recalibration`, each model's routing also recalibrated
    per issuer x route, its replay warmed up on the attempts of the last `window_h` hours
    before the split."""
    warmup_h = None if recalibration is None else recalibration.window_h
    inputs = routing_inputs(
        vlog, data_dir, run, store, test, truth, routes_file, features, warmup_h
    )
    return evaluate_routing(**inputs, recalibration=recalibration)


def recalibration_section(
    net: IssuerSeqNet,
    store: EventStore,
    test: np.ndarray,
    p_model: np.ndarray,
    p_lightgbm: np.ndarray | None,
    settings: RecalibrationSettings,
) -> dict[str, Any]:
    """The transformer's (and LightGBM's, given its p of every row) test metrics recalibrated
    to recent outcomes, the window starting on the validation days' last outcomes."""
    t = store.t.astype(np.float64)
    since = t[test].min() - settings.window_h * 3600.0
    before = np.flatnonzero((store.split == VAL) & (t >= since))
    p_before = (
        predict(net, store, before, progress="transformer, before the test split")[0]
        if len(before)
        else np.zeros(0)
    )
    models = {"transformer": (p_before, p_model)}
    if p_lightgbm is not None:
        models["lightgbm"] = (p_lightgbm[before], p_lightgbm[test])
    return recalibration_metrics(
        models, (store.approved[before], t[before]), store.approved[test], t[test], settings
    )


def evaluate(
    data_dir: Path,
    run_dir: Path,
    baselines: BaselinesFn | None = None,
    ablations: Mapping[str, Path] | None = None,
    variants: Mapping[str, Path] | None = None,
    bench: Mapping[str, Any] | None = None,
    latency_budget_ms: float | None = None,
    routes_file: Path | None = None,
    threads: int | None = None,
    recalibration: RecalibrationSettings | None = None,
    route_recalibration: RouteRecalibrationSettings | None = None,
) -> dict[str, Any]:
    """`variants`: name -> run dir of the same network at another size (rows
    `transformer_<name>`); `ablations`: name -> run dir of an ablation (`ablation_<name>`);
    `bench`: a bench.json whose latencies the recommendation cites and holds against
    `latency_budget_ms` (None: not measured; no budget); `routes_file`: the routes, fees and
    merchants' routes of a log without meta.json (docs/routing.md); `threads`: DuckDB's for
    the log's SQL features, computed once for the baselines and LightGBM's route matrix;
    `recalibration`: the transformer's and LightGBM's test metrics also recalibrated to recent
    outcomes (`recalibration`; None: not reported); `route_recalibration`: each model's routing
    also recalibrated per issuer x route (routing `<model>_recalibrated`; None: not). Each
    stage logs its time."""
    started = time.perf_counter()
    with stage(log, "log and run"):
        trained = TrainedRun.load(run_dir)
        vlog = load_log(data_dir)
    features = None
    if baselines is not None:
        with stage(log, "SQL features (DuckDB)"):
            features = sql_features(vlog.frame, threads=threads)
        log.info("SQL features: %d columns", features.shape[1])
    with stage(log, "point-in-time store"):
        # the fused aggregates, when the network reads them, are these features (same lag)
        store = trained.build_store(vlog, features if trained.store_config.lag_s == 0 else None)
        grid = [str(g) for g in trained.spec["store"]["delay_grid"]]
        grid_s = grid_seconds(grid)
        test = store.rows(TEST)
        y = store.approved[test]
        truth = load_truth(Path(data_dir), store, grid)

    with stage(log, f"transformer: scoring {len(test):,} test attempts"):
        p_model, curves_model = predict(trained.net, store, test, progress="transformer")
    approval: dict[str, dict[str, Any]] = {
        "transformer": approval_metrics(p_model, y) | {"params": n_params(trained.net)}
    }
    with stage(log, "base rate"):
        p_base = base_rate(store, store.rows(TRAIN))[test]
        approval["base_rate"] = approval_metrics(p_base, y)
    retry_curves: dict[str, np.ndarray] = {"transformer": curves_model}
    p_test = {"transformer": p_model}  # approval p of the test rows, of the retry policies
    p_approval = {"transformer": p_model}  # of every approval model: calibration by route
    p_whole_log: dict[str, np.ndarray] = {}  # a baseline's p of every row of the log
    if baselines is not None:
        assert features is not None
        for name, (p_all, curves) in baselines(vlog.frame, store.split, grid, features).items():
            approval[name] = approval_metrics(p_all[test], y)
            p_approval[name] = p_all[test]
            p_whole_log[name] = p_all
            if curves is not None:
                retry_curves[name] = curves[test]
                p_test[name] = p_all[test]
            arm = stacked(trained.net, store, test, p_model, p_all) if name == "lightgbm" else None
            if arm is not None:
                approval["stacked"], p_approval["stacked"] = arm
    for prefix, runs in (("transformer_", variants), ("ablation_", ablations)):
        for name, side in side_runs(vlog, Path(data_dir), test, runs or {}).items():
            approval[prefix + name] = approval_metrics(side["p"], y) | {
                "params": side["params"],
                "run_dir": side["run_dir"],
            }
    if truth is not None:
        approval["oracle"] = approval_metrics(truth["p_approve"].to_numpy()[test], y)
        base, oracle = approval["base_rate"]["logloss"], approval["oracle"]["logloss"]
        for m in approval.values():
            m["oracle_share"] = oracle_share(m["logloss"], base, oracle)

    result: dict[str, Any] = {
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "split": {"test_start": store.split_bounds[1], "test_examples": int(len(test))},
        "approval": approval,
    }
    if recalibration is not None:
        with stage(log, "recalibration to recent outcomes"):
            result["recalibration"] = recalibration_section(
                trained.net, store, test, p_model, p_whole_log.get("lightgbm"), recalibration
            )
    with stage(log, "recommendation"):
        candidates = {"base_rate": p_base} | {
            k: v for k, v in p_approval.items() if k in ("transformer", "lightgbm")
        }
        result["recommendation"] = recommend(y, candidates, bench, latency_budget_ms)
    frame = vlog.frame
    if "route" in frame.columns:
        if truth is not None:
            p_approval["oracle"] = truth["p_approve"].to_numpy()[test]
        result["calibration_by_route"] = calibration_by_route(
            p_approval, y, frame["route"].to_numpy(object)[test]
        )
    else:
        result["calibration_by_route"] = {"note": "the log has no route column: one route"}
    declined = test[store.approved[test] == 0]
    pos = np.searchsorted(test, declined)
    if truth is None:
        result["retry"] = {"note": "no truth.parquet: retry policies need the simulator's truth"}
    elif len(declined):
        with stage(log, f"retry policies: network rules for {len(declined):,} test declines"):
            p_true = np.stack([truth[truth_column(g)].to_numpy()[declined] for g in grid], axis=1)
            code = frame["response_code"].to_numpy(str)[declined]
            network = frame["network"].to_numpy(str)[declined]
            history = rule_view(frame)
            # the immediate 3-D Secure retries the log holds (in the test split: they are later)
            retry_3ds = logged_3ds_retries(frame, history, declined)
            in_test = np.full(len(frame), -1)
            in_test[test] = np.arange(len(test))
            at = np.where(retry_3ds >= 0, in_test[retry_3ds], -1)
            possible = at >= 0
            p_3ds = {name: np.where(possible, p[at], np.nan) for name, p in p_test.items()}
            p_3ds["oracle"] = np.where(possible, truth["p_approve"].to_numpy()[retry_3ds], np.nan)
            allowed = allowed_matrix(frame, history, declined, grid_s)
        with stage(log, f"retry policies: {len(retry_curves)} models, rules and the oracle"):
            policies = compare_policies(
                {k: v[pos] for k, v in retry_curves.items()},
                p_true,
                allowed,
                frame["amount"].to_numpy()[declined],
                code,
                network,
                causes(code, network),
                grid,
                grid_s,
                p_now_3ds=p_3ds,
                three_ds_possible=possible,
            )
        result["retry"] = {
            "declines": int(len(declined)),
            "grid": grid,
            "now_with_3ds_declines": int(possible.sum()),
            "policies": policies,
        }
    with stage(log, f"routing policies on {len(test):,} test attempts"):
        result["routing"] = routing_section(
            vlog,
            Path(data_dir),
            trained,
            store,
            test,
            truth,
            routes_file,
            features,
            route_recalibration,
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
