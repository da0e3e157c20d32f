"""Fusion: the trees' point-in-time aggregates as an input of the transformer (model.fuse).

The inputs are `sql_features`' own columns, transformed the same way wherever they are read;
a run that reads them trains, reloads, evaluates (per route included), exports, and serves
with the same online code that gives LightGBM its aggregates, scoring as the batch pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from issuer_seq.baselines.fused import (
    FUSED_COLUMNS,
    N_FUSED,
    fused_frame_inputs,
    fused_inputs,
    through_route,
)
from issuer_seq.baselines.online import CURRENT_NUMERIC
from issuer_seq.baselines.route_rates import route_rates
from issuer_seq.baselines.sql_features import CATEGORICAL, sql_features
from issuer_seq.cli import conf_dir
from issuer_seq.commands.train import train
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import TEST, TRAIN
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.routing_scores import transformer_route_matrix
from issuer_seq.evaluate.run import evaluate, predict
from issuer_seq.export.bundle import ExportSettings, export_bundle
from issuer_seq.routing.routes import RouteTable
from issuer_seq.schema import load_log
from issuer_seq.serve.inputs import encode_event
from issuer_seq.serve.scorer import Scorer
from issuer_seq.train.trained_run import TrainedRun
from tests.conftest import make_sim
from tests.test_train import FAST as TRAIN_FAST

FAST = [*TRAIN_FAST, "model.fuse=true", "versus_trees.enabled=false"]


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data_dir, run_dir) of a tiny network trained with the fused aggregates."""
    data = make_sim(tmp_path_factory.mktemp("fused_sim"), seed=11, n_cards=300, days=20)
    run = tmp_path_factory.mktemp("fused_run")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        train(compose("train", [f"data_dir={data}", f"run_dir={run}", *FAST]))
    return data, run


def test_fused_inputs_are_signed_logs_with_a_no_event_flag() -> None:
    values = np.array([[0.0, np.nan, -3.0], [np.e - 1, 2.0, np.nan]])
    out = fused_inputs(values)
    assert out.dtype == np.float32 and out.shape == (2, 6)
    np.testing.assert_allclose(out[:, :3], [[0, 0, -np.log(4)], [1, np.log(3), 0]], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 3:], [[0, 1, 0], [0, 0, 1]])
    # what is fused: aggregates only; the attempt's own features the network reads itself
    assert not set(FUSED_COLUMNS) & (set(CATEGORICAL) | set(CURRENT_NUMERIC))
    assert N_FUSED == 2 * len(FUSED_COLUMNS) and "issuer_approval_rate_30d" in FUSED_COLUMNS


def test_a_fused_run_reads_the_sql_aggregates_scaled_by_its_training_split(
    fused_run: tuple[Path, Path],
) -> None:
    data, run_dir = fused_run
    run = TrainedRun.load(run_dir)
    assert run.spec["net"]["n_fused"] == N_FUSED == run.net.n_fused
    vlog = load_log(data)
    store = run.build_store(vlog)
    assert store.fused is not None
    np.testing.assert_array_equal(store.fused, fused_frame_inputs(vlog.frame))
    # given features are the same features: evaluate passes the ones it computed
    given = run.build_store(vlog, sql_features(vlog.frame)).fused
    np.testing.assert_array_equal(given, store.fused)
    train_rows = torch.from_numpy(store.fused[store.rows(TRAIN)])
    torch.testing.assert_close(run.net.fused_mean, train_rows.mean(0))
    # the network reads them: other aggregates, other predictions
    rows = store.rows(TEST)[:300]
    p, _ = predict(run.net, store, rows)
    assert store.fused is not None
    store.fused = store.fused[::-1].copy()
    q, _ = predict(run.net, store, rows)
    assert np.abs(p - q).max() > 1e-4


def test_the_fused_route_matrix_holds_the_logged_prediction(
    fused_run: tuple[Path, Path],
) -> None:
    """Through each route, the issuer x route aggregates are that route's; through the logged
    route they are the SQL's own, so that column is the ordinary prediction."""
    data, run_dir = fused_run
    run = TrainedRun.load(run_dir)
    vlog = load_log(data)
    store = run.build_store(vlog)
    table = RouteTable.from_meta(json.loads((data / "meta.json").read_text()))
    rows = store.rows(TEST)[:400]
    merchants = vlog.frame["merchant_id"].to_numpy(object)[rows]
    with pytest.raises(IssuerSeqError, match="route_rates"):
        transformer_route_matrix(run.net, store, rows, table, merchants)
    rates = {k: v[rows] for k, v in route_rates(vlog.frame, table.names).items()}
    m = transformer_route_matrix(run.net, store, rows, table, merchants, route_rates=rates)
    logged = table.index(vlog.frame["route"].to_numpy(object)[rows])
    p, _ = predict(run.net, store, rows)
    np.testing.assert_allclose(m[np.arange(len(rows)), logged], p, rtol=1e-5, atol=1e-6)
    # swapping in the logged route's rates changes nothing of the SQL's row
    assert store.fused is not None
    own = {k: v[np.arange(len(rows)), logged] for k, v in rates.items()}
    np.testing.assert_allclose(through_route(store.fused[rows], own), store.fused[rows])


def test_a_fused_run_evaluates(fused_run: tuple[Path, Path]) -> None:
    data, run_dir = fused_run
    result = evaluate(data, run_dir, baselines=None)
    assert 0 < result["approval"]["transformer"]["logloss"] < 1
    assert "transformer" in json.dumps(result["routing"])


@pytest.fixture(scope="module")
def fused_bundle(fused_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, run_dir = fused_run
    out = tmp_path_factory.mktemp("fused_bundle") / "bundle"
    settings = ExportSettings(run_dir=run_dir, artifact_dir=out, parity_rows=1500, fp16=False)
    export_bundle(settings)
    return out


def test_a_fused_run_exports_its_aggregates_as_an_input(fused_bundle: Path) -> None:
    manifest = json.loads((fused_bundle / "manifest.json").read_text())
    assert manifest["fused"]["columns"] == list(FUSED_COLUMNS)
    assert manifest["fused"]["size"] == N_FUSED
    (spec,) = [s for s in manifest["factored"]["query"]["inputs"] if s["name"] == "fused"]
    assert spec["shape"] == ["batch", N_FUSED]
    assert manifest["schema"]["inputs"][-1]["name"] == "fused"
    assert manifest["parity"]["worst"]["ratio"] <= 1.0
    assert manifest["factored"]["parity"]["worst"]["ratio"] <= 1.0


def test_a_fused_bundle_serves_as_the_batch_pipeline_scores(
    fused_run: tuple[Path, Path], fused_bundle: Path
) -> None:
    """Replayed through the scorer (score each attempt, then observe it), the log gets the
    batch pipeline's probabilities: the online aggregates are the SQL's, point in time."""
    data, run_dir = fused_run
    vlog = load_log(data)
    run = TrainedRun.load(run_dir)
    store = run.build_store(vlog)
    n = 1500
    with torch.no_grad():
        expected = run.net(DeviceStore(store).gather(torch.arange(n)))[0].numpy()
    records = vlog.frame.head(n + 20).to_dict("records")
    for scorer in (Scorer(fused_bundle), Scorer(fused_bundle, model_file="model.onnx")):
        got = []
        for rec in records[:n]:
            got.append(scorer.score({**rec, "response_code": None, "advice_code": None}))
            scorer.observe(rec)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
        # each candidate route reads its own issuer x route aggregates
        routes = sorted(vlog.frame["route"].unique())
        for rec in records[n:]:
            want = [scorer.score({**rec, "route": r}) for r in routes]
            np.testing.assert_allclose(scorer.score_routes(rec, routes), want, rtol=1e-5)


def test_a_fused_retry_reads_the_decline_observed_or_not(
    fused_run: tuple[Path, Path], fused_bundle: Path
) -> None:
    """An immediate 3-D Secure retry is scored with the decline among its aggregates, whether
    its outcome was observed yet or not; observing it later changes nothing."""
    data, _ = fused_run
    records = load_log(data).frame.head(800).to_dict("records")
    scorer = Scorer(fused_bundle)
    for rec in records:
        scorer.observe(rec)
    last = records[-1]
    decline = {
        **last,
        "ts": last["ts"] + pd.Timedelta(minutes=5),
        "network": "visa",
        "initiator": "CIT",
        "is_recurring": False,
        "three_ds": False,
        "attempt": 1,
        "payment_id": "fused-sca-1",
        "response_code": "1A",
        "advice_code": None,
    }
    event = encode_event(scorer.vocab, decline)
    before = scorer.online.row(decline)[0]
    p, possible = scorer.now_with_3ds(decline, event, [])
    assert possible and 0.0 < p < 1.0
    np.testing.assert_array_equal(scorer.online.row(decline)[0], before)  # left as it was
    assert scorer.advise_retry(decline).action.name == "now_with_3ds"
    scorer.observe(decline)
    assert scorer.now_with_3ds(decline, event, []) == pytest.approx((p, True), rel=1e-6)


def test_a_fused_bundle_refuses_a_shared_store_plainly(fused_bundle: Path, redis_url: str) -> None:
    from issuer_seq.serve.state import RedisStore

    store = RedisStore.from_url(redis_url, {"card": 40, "issuer": 40, "card_merchant": 40})
    with pytest.raises(IssuerSeqError, match="memory store"):
        Scorer(fused_bundle, store=store)
