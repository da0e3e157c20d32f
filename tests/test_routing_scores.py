"""p_approve through each of the merchant's routes, by the transformer and by LightGBM.

A route matrix's column for the logged route is the model's ordinary prediction; NaN exactly
where the merchant lacks the route; the route changes the prediction; a log without routes
reads as one route everywhere (the route feature NONE, the issuer x route aggregates the
issuer's). LightGBM fitted to the truth of every route (the routing ceiling) learns each
route's own truth.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from issuer_seq import features as F
from issuer_seq.baselines.dataset import approval_frame
from issuer_seq.baselines.route_rates import route_rates
from issuer_seq.baselines.sql_features import WINDOWS, sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.store import TEST, StoreConfig, build_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.ceiling import fit_routes_to_truth
from issuer_seq.evaluate.routing_scores import lightgbm_route_matrix, transformer_route_matrix
from issuer_seq.evaluate.run import predict
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.routing.routes import RouteTable
from issuer_seq.schema import ValidatedLog, load_log
from issuer_seq.simulate import SimConfig, WorldParams, simulate
from tests.conftest import make_sim

SMALL = StoreConfig(k_card=8, k_issuer=8, k_route=8, k_card_merchant=4)


@pytest.fixture(scope="module")
def routed() -> tuple[ValidatedLog, RouteTable]:
    with tempfile.TemporaryDirectory() as tmp:
        d = make_sim(Path(tmp), seed=5, n_cards=300, days=20)
        vlog = load_log(d)
        table = RouteTable.from_meta(json.loads((d / "meta.json").read_text()))
    assert "route" in vlog.frame.columns
    return vlog, table


def _net(vocab: F.Vocab, seed: int = 0) -> IssuerSeqNet:
    torch.manual_seed(seed)
    return IssuerSeqNet(vocab.sizes(), n_delays=8, d_model=16, n_heads=2, d_ff=32).eval()


def test_transformer_matrix_holds_the_logged_prediction_and_nan_off_route(
    routed: tuple[ValidatedLog, RouteTable],
) -> None:
    vlog, table = routed
    store = build_store(vlog, SMALL)
    assert len(store.vocab.maps["route"]) == table.n_routes  # every route is seen in training
    net = _net(store.vocab)
    rows = store.rows(TEST)[:700]
    merchants = vlog.frame["merchant_id"].to_numpy(object)[rows]
    # batches smaller than the rows: states shared within each batch, rows kept in order
    m = transformer_route_matrix(net, store, rows, table, merchants, batch_size=256)
    assert m.shape == (len(rows), table.n_routes)
    held = table.candidates(merchants)
    assert np.array_equal(np.isfinite(m), held)
    assert np.all((m[held] > 0) & (m[held] < 1))
    logged = table.index(vlog.frame["route"].to_numpy(object)[rows])
    p, _ = predict(net, store, rows)
    np.testing.assert_allclose(m[np.arange(len(rows)), logged], p, rtol=1e-5, atol=1e-6)
    # the route is an input: rows with two routes get two different answers
    two = held.sum(1) >= 2
    spread = np.nanmax(m[two], axis=1) - np.nanmin(m[two], axis=1)
    assert np.all(spread > 0)


def test_transformer_matrix_rejects_misaligned_merchants(
    routed: tuple[ValidatedLog, RouteTable],
) -> None:
    vlog, table = routed
    store = build_store(vlog, SMALL)
    with pytest.raises(IssuerSeqError, match="merchant_id has shape"):
        transformer_route_matrix(_net(store.vocab), store, np.arange(5), table, np.zeros(4))


def test_route_rates_through_the_logged_route_are_the_sql_columns(
    routed: tuple[ValidatedLog, RouteTable],
) -> None:
    vlog, table = routed
    frame = vlog.frame
    for lag_s in (0, 60):
        features = sql_features(frame, lag_s=lag_s, threads=1)
        rates = route_rates(frame, table.names, lag_s=lag_s)
        logged = table.index(frame["route"].to_numpy(object))
        at = np.arange(len(frame))
        for column, values in rates.items():
            assert values.shape == (len(frame), table.n_routes)
            np.testing.assert_allclose(
                values[at, logged], features[column].to_numpy(), rtol=1e-12, equal_nan=True
            )
        # through every route together, the issuer's volume
        for w in WINDOWS:
            total = rates[f"issuer_route_n_{w}"].sum(1)
            np.testing.assert_array_equal(total, features[f"issuer_n_{w}"].to_numpy())


def test_route_rates_reject_a_route_outside_the_list(
    routed: tuple[ValidatedLog, RouteTable],
) -> None:
    vlog, table = routed
    with pytest.raises(IssuerSeqError, match="not in the list"):
        route_rates(vlog.frame, table.names[1:])


def test_lightgbm_matrix_holds_the_logged_prediction_and_nan_off_route(
    routed: tuple[ValidatedLog, RouteTable],
) -> None:
    vlog, table = routed
    frame = vlog.frame
    features = sql_features(frame, threads=1)
    data = approval_frame(frame, features)
    cut = int(len(data) * 0.7)
    model = LightGBMModel({"num_leaves": 15, "min_child_samples": 20}, 40, n_jobs=1)
    model.fit(data.iloc[:cut], data.iloc[cut:])
    assert "route" in model.categories and "issuer_route_n_24h" in model.columns
    rows = np.arange(cut, len(frame))
    m = lightgbm_route_matrix(model, features, frame, rows, table)
    held = table.candidates(frame["merchant_id"].to_numpy(object)[rows])
    assert np.array_equal(np.isfinite(m), held)
    logged = table.index(frame["route"].to_numpy(object)[rows])
    want = model.predict_proba(data.iloc[rows])
    np.testing.assert_allclose(m[np.arange(len(rows)), logged], want, rtol=1e-9)


def test_the_routing_ceiling_learns_each_routes_own_truth(
    routed: tuple[ValidatedLog, RouteTable],
) -> None:
    # a truth where one route approves far less than the others, whatever was logged: the
    # fit must read each (attempt, route) row's own label to predict it on the test rows
    vlog, table = routed
    frame = vlog.frame
    features = sql_features(frame, threads=1)
    rates = route_rates(frame, table.names)
    store = build_store(vlog, SMALL)
    p_routes = np.full((len(frame), table.n_routes), 0.9)
    p_routes[:, 1] = 0.2
    model = fit_routes_to_truth(
        features, frame, store.split, p_routes, table, rates, threads=1, num_boost_round=200
    )
    test = store.rows(TEST)
    m = lightgbm_route_matrix(model, features, frame, test, table, rates=rates)
    held = table.candidates(frame["merchant_id"].to_numpy(object)[test])
    assert held[:, 1].any() and held[:, [0, 2, 3]].any()
    low = m[held[:, 1], 1]
    others = held.copy()
    others[:, 1] = False
    high = m[others]
    assert abs(low.mean() - 0.2) < 0.02 and low.max() < 0.35
    assert abs(high.mean() - 0.9) < 0.02 and high.min() > 0.8
    with pytest.raises(ValueError, match="same attempts"):
        fit_routes_to_truth(features, frame, store.split, p_routes[1:], table, rates)


def test_a_log_without_routes_is_one_route(tmp_path: Path) -> None:
    cfg = SimConfig(
        world=WorldParams(n_cards=150, n_issuers=20, n_merchants=60, days=10),
        seed=2,
        chunk_cards=1000,
        routes=None,
    )
    simulate(cfg, tmp_path, progress=False)
    vlog = load_log(tmp_path)
    frame = vlog.frame
    assert "route" not in frame.columns
    store = build_store(vlog, SMALL)
    assert store.vocab.maps["route"] == {}
    assert np.all(store.cat["route"] == F.NONE)
    features = sql_features(frame, threads=1)
    assert features["route"].isna().all()
    for w in WINDOWS:
        for a, b in (
            ("issuer_route_n", "issuer_n"),
            ("issuer_route_approval_rate", "issuer_approval_rate"),
        ):
            np.testing.assert_array_equal(
                features[f"{a}_{w}"].to_numpy(), features[f"{b}_{w}"].to_numpy(), err_msg=a
            )
    # and the rates of a route list: no route's history, zero volume everywhere
    rates = route_rates(frame, ["acq"])
    assert np.all(rates["issuer_route_n_30d"] == 0)
