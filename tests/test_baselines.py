"""Baselines: SQL features against a slow pandas reference, point-in-time, models, retry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from issuer_seq.baselines import Baseline
from issuer_seq.baselines.base_rate import base_rate
from issuer_seq.baselines.dataset import (
    approval_frame,
    by_split,
    decline_frame,
    retry_frame,
    split_of,
)
from issuer_seq.baselines.linear import LogisticModel
from issuer_seq.baselines.protocol import LABEL, log_loss
from issuer_seq.baselines.rates import IssuerMccRate, Oracle
from issuer_seq.baselines.retry_trees import RetryTrees
from issuer_seq.baselines.search import grid_points, search
from issuer_seq.baselines.sql_features import CATEGORICAL, CAUSES, WINDOWS, sql_features
from issuer_seq.baselines.trees import LightGBMModel, XGBoostModel
from issuer_seq.data.store import TRAIN, build_store
from issuer_seq.delays import DEFAULT_GRID
from issuer_seq.rules import causes
from issuer_seq.schema import load_log, validate
from tests.conftest import make_sim

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z

# ---------------------------------------------------------------------------------------------
# The slow, obviously correct reference: one row at a time, filtering the whole log.
# ---------------------------------------------------------------------------------------------


def reference_features(
    frame: pd.DataFrame, windows: Mapping[str, int] = WINDOWS, lag_s: int = 0
) -> pd.DataFrame:
    n = len(frame)
    t = frame["ts"].astype("int64").to_numpy() // 1_000_000
    card = frame["card_id"].to_numpy(dtype=object)
    issuer = frame["issuer_id"].to_numpy(dtype=object)
    merchant = frame["merchant_id"].to_numpy(dtype=object)
    payment = frame["payment_id"].to_numpy(dtype=object)
    attempt = frame["attempt"].to_numpy()
    amount = frame["amount"].to_numpy(dtype=float)
    code = frame["response_code"].to_numpy(dtype=str)
    advice = frame["advice_code"].astype(object).to_numpy()
    # a log without routes is one route: every attempt's route is None
    route = (
        frame["route"].astype(object).where(frame["route"].notna(), None).to_numpy()
        if "route" in frame.columns
        else np.full(n, None, dtype=object)
    )
    cause = causes(code, frame["network"].to_numpy(dtype=str))
    ok = code == "00"
    longest = max(windows, key=lambda w: windows[w])
    nan = float("nan")

    def last(rows: np.ndarray) -> int | None:
        # rows are in log order and the log is sorted by time: the last one is the latest
        return int(rows[-1]) if len(rows) else None

    def since(rows: np.ndarray, i: int) -> float:
        return float(t[i] - t[rows].max()) if len(rows) else nan

    def mean(x: np.ndarray) -> float:
        return float(np.mean(x)) if len(x) else nan

    def top(x: np.ndarray) -> float:
        return float(np.max(x)) if len(x) else nan

    out = []
    for i in range(n):
        ts = frame["ts"].iloc[i]
        r: dict[str, object] = {
            "amount": amount[i],
            "log_amount": np.log1p(amount[i]),
            "attempt": attempt[i],
            "is_recurring": int(frame["is_recurring"].iloc[i]),
            "three_ds": int(frame["three_ds"].iloc[i]),
            "cross_border": int(
                frame["issuer_country"].iloc[i] != frame["merchant_country"].iloc[i]
            ),
            "hour_of_day": ts.hour,
            "day_of_week": ts.day_of_week,
            "day_of_month": ts.day,
            "issuer_id": str(issuer[i]),
            "route": route[i],
        }
        for c in ("mcc", "issuer_country", "merchant_country", "currency", "network"):
            r[c] = frame[c].iloc[i]
        for c in ("card_type", "initiator"):
            r[c] = frame[c].iloc[i]
        before = t < t[i] - lag_s
        card_hist = np.flatnonzero(before & (card == card[i]))
        issuer_hist = np.flatnonzero(before & (issuer == issuer[i]))
        issuer_route_hist = issuer_hist[route[issuer_hist] == route[i]]
        route_hist = np.flatnonzero(before & (route == route[i]))  # every issuer's
        for label, w in windows.items():
            m = card_hist[t[card_hist] >= t[i] - lag_s - w]
            r[f"card_n_{label}"] = len(m)
            r[f"card_approval_rate_{label}"] = mean(ok[m])
            for c in CAUSES:
                r[f"card_{c}_{label}"] = int((cause[m] == c).sum())
            r[f"card_amount_mean_{label}"] = mean(amount[m])
            r[f"card_amount_max_{label}"] = top(amount[m])
            r[f"card_max_approved_amount_{label}"] = top(amount[m][ok[m]])
            m = issuer_hist[t[issuer_hist] >= t[i] - lag_s - w]
            r[f"issuer_n_{label}"] = len(m)
            r[f"issuer_approval_rate_{label}"] = mean(ok[m])
            for c in CAUSES:
                r[f"issuer_{c}_share_{label}"] = mean(cause[m] == c)
            m = issuer_route_hist[t[issuer_route_hist] >= t[i] - lag_s - w]
            r[f"issuer_route_n_{label}"] = len(m)
            r[f"issuer_route_approval_rate_{label}"] = mean(ok[m])
            m = route_hist[t[route_hist] >= t[i] - lag_s - w]
            r[f"route_n_{label}"] = len(m)
            r[f"route_approval_rate_{label}"] = mean(ok[m])
        cm = card_hist[merchant[card_hist] == merchant[i]]
        r["cm_n_all"] = len(cm)
        r["cm_approval_rate_all"] = mean(ok[cm])
        mean_long, max_ok_long = (
            r[f"card_amount_mean_{longest}"],
            r[f"card_max_approved_amount_{longest}"],
        )
        r[f"amount_rel_card_mean_{longest}"] = amount[i] / mean_long if mean_long else nan
        r[f"amount_rel_card_max_approved_{longest}"] = (
            amount[i] / max_ok_long if max_ok_long else nan
        )
        r["card_secs_since_last"] = since(card_hist, i)
        r["card_secs_since_approval"] = since(card_hist[ok[card_hist]], i)
        r["card_secs_since_decline"] = since(card_hist[~ok[card_hist]], i)
        r["card_secs_since_funds"] = since(card_hist[cause[card_hist] == "funds"], i)
        r["card_secs_since_hard"] = since(card_hist[cause[card_hist] == "hard"], i)
        r["issuer_secs_since_approval"] = since(issuer_hist[ok[issuer_hist]], i)
        r["issuer_secs_since_decline"] = since(issuer_hist[~ok[issuer_hist]], i)
        r["issuer_secs_since_technical"] = since(issuer_hist[cause[issuer_hist] == "technical"], i)
        j = last(card_hist)
        r["card_last_response_code"] = None if j is None else code[j]
        r["card_last_cause"] = None if j is None else cause[j]
        r["card_last_advice_code"] = None if j is None else advice[j]
        j = last(cm)
        r["cm_last_response_code"] = None if j is None else code[j]
        r["cm_secs_since_last"] = nan if j is None else float(t[i] - t[j])
        prev = np.flatnonzero(before & (payment == payment[i]) & (attempt == attempt[i] - 1))
        j = last(prev)
        r["prev_response_code"] = None if j is None else code[j]
        r["prev_cause"] = None if j is None else cause[j]
        r["prev_advice_code"] = None if j is None else advice[j]
        r["secs_since_prev_attempt"] = nan if j is None else float(t[i] - t[j])
        out.append(r)
    return pd.DataFrame(out)


def assert_same_features(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert sorted(got.columns) == sorted(want.columns)
    for c in want.columns:
        if c in CATEGORICAL:
            assert isinstance(got[c].dtype, pd.CategoricalDtype), c
            g = got[c].astype("string").fillna("<none>").tolist()
            w = [
                "<none>"
                if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                else str(v)
                for v in want[c]
            ]
            assert g == w, c
        else:
            assert got[c].dtype == np.float64, c
            np.testing.assert_allclose(
                got[c].to_numpy(),
                want[c].to_numpy(dtype=float),
                rtol=1e-9,
                equal_nan=True,
                err_msg=c,
            )


# ---------------------------------------------------------------------------------------------
# Small random logs: few cards, issuers and merchants; many equal and boundary timestamps.
# ---------------------------------------------------------------------------------------------

GAPS = (0, 0, 0, 1, 59, 599, 600, 601, 3_599, 3_600, 86_399, 86_400, 604_800, 2_592_000)
CODES = ("00", "00", "00", "51", "05", "91", "65", "1A", "41", "54", "61", "Z9")


def log_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    base = {
        "card_type": "debit",
        "issuer_country": "DE",
        "mcc": "5411",
        "currency": "EUR",
        "initiator": "CIT",
        "is_recurring": False,
        "three_ds": False,
        "advice_code": None,
        "network": "visa",
        "merchant_id": "m0",
        "merchant_country": "DE",
        "amount": 10.0,
        "attempt": 1,
    }
    df = pd.DataFrame([base | r for r in rows])
    df["advice_code"] = df["advice_code"].astype(object)
    return validate(df).frame


@st.composite
def small_logs(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 24))
    routed = draw(st.booleans())  # a log with a `route` column, or one route
    seconds = T0 + np.cumsum(draw(st.lists(st.sampled_from(GAPS), min_size=n, max_size=n)))
    # sub-second times: attempts within one second are still "the same moment"; the running
    # max keeps the log in time order (a retry never precedes its payment's previous attempt)
    micros = draw(st.lists(st.sampled_from((0, 1, 999_999)), min_size=n, max_size=n))
    us = np.maximum.accumulate(seconds * 1_000_000 + np.array(micros))
    rows: list[dict[str, object]] = []
    latest: dict[int, dict[str, object]] = {}  # card -> its latest payment's last attempt
    for i in range(n):
        card = draw(st.integers(0, 2))
        retry = card in latest and draw(st.booleans())
        prev = latest.get(card)
        row = {
            "txn_id": i,
            "ts": pd.Timestamp(int(us[i]), unit="us", tz="UTC"),
            "card_id": f"c{card}",
            "issuer_id": draw(st.sampled_from((7, 8))),
            "network": draw(st.sampled_from(("visa", "mastercard"))),
            "merchant_country": draw(st.sampled_from(("DE", "FR"))),
            "amount": draw(st.sampled_from((0.0, 5.0, 12.5, 99.0))),
            "response_code": draw(st.sampled_from(CODES)),
            "advice_code": draw(st.sampled_from((None, "02", "24"))),
        }
        if retry and prev is not None:
            row |= {
                "payment_id": prev["payment_id"],
                "attempt": int(prev["attempt"]) + 1,  # type: ignore[call-overload]
                "merchant_id": prev["merchant_id"],
            }
        else:
            row |= {
                "payment_id": i,
                "attempt": 1,
                "merchant_id": draw(st.sampled_from(("m0", "m1"))),
            }
        if routed:
            row["route"] = draw(st.sampled_from(("acq_a", "acq_b")))
        latest[card] = row
        rows.append(row)
    return log_frame(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=small_logs(), lag_s=st.sampled_from((0, 0, 60)))
def test_sql_features_match_pandas_reference(frame: pd.DataFrame, lag_s: int) -> None:
    got = sql_features(frame, lag_s=lag_s, threads=1)
    assert len(got) == len(frame)
    assert_same_features(got, reference_features(frame, lag_s=lag_s))


def _attempt(i: int, seconds: float, code: str) -> dict[str, object]:
    ts = pd.Timestamp(T0, unit="s", tz="UTC") + pd.Timedelta(seconds=seconds)
    return {
        "txn_id": i,
        "payment_id": i,
        "ts": ts,
        "card_id": "c",
        "issuer_id": 1,
        "response_code": code,
    }


def test_windows_end_strictly_before_the_attempt_second() -> None:
    rows = [
        # three attempts in one second (two at the very same microsecond): none sees another
        _attempt(0, 0, "51"),
        _attempt(1, 0, "00"),
        _attempt(2, 0.999999, "05"),
        # exactly 10 minutes later: [t - 600 s, t) starts at the first second, all three count
        _attempt(3, 600, "00"),
        # one second more: the first three fall out of the 10-minute window, not the hour
        _attempt(4, 601, "00"),
    ]
    f = sql_features(log_frame(rows), threads=1)
    assert f["card_n_10m"].tolist() == [0, 0, 0, 3, 1]
    assert f["card_n_1h"].tolist() == [0, 0, 0, 3, 4]
    assert f["issuer_n_10m"].tolist() == [0, 0, 0, 3, 1]
    assert f["card_funds_10m"].tolist() == [0, 0, 0, 1, 0]
    np.testing.assert_allclose(f["card_approval_rate_10m"], [np.nan] * 3 + [1 / 3, 1.0])
    np.testing.assert_allclose(f["card_secs_since_last"], [np.nan] * 3 + [600, 1])
    # of the three tied attempts, the log's last one is "the last response code"
    last = f["card_last_response_code"].astype("string").fillna("-").tolist()
    assert last == ["-", "-", "-", "05", "00"]
    # a lag moves the window's end: with 1 s, an event exactly 1 s earlier is not history yet
    lagged = sql_features(log_frame(rows), lag_s=1, threads=1)
    assert lagged["card_n_1h"].tolist() == [0, 0, 0, 3, 3]


# ---------------------------------------------------------------------------------------------
# A small simulated log shared by the remaining tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    path = make_sim(tmp_path_factory.mktemp("baselines"), seed=3, n_cards=600, days=20)
    frame = load_log(path).frame
    return path, frame, sql_features(frame, threads=1)


def test_no_future_leak(sim: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, frame, features = sim
    t = frame["ts"].astype("int64").to_numpy() // 1_000_000
    cut = int(np.median(t))
    changed = frame.copy()
    later = np.flatnonzero(t >= cut)
    # every outcome at and after the cut flipped (approvals become 05, declines 00), advice
    # codes wiped: the attempts at the cut itself change too
    was_ok = frame["response_code"].to_numpy()[later] == "00"
    changed.loc[later, "response_code"] = np.where(was_ok, "05", "00")
    changed.loc[later, "advice_code"] = pd.NA
    after = sql_features(changed, threads=1)
    upto = t <= cut
    pd.testing.assert_frame_equal(after.loc[upto], features.loc[upto], check_categorical=False)
    assert not after.loc[~upto].equals(features.loc[~upto])


# ---------------------------------------------------------------------------------------------
# Approval baselines
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(sim: tuple[Path, pd.DataFrame, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    _, frame, features = sim
    return by_split(approval_frame(frame, features), split_of(frame))


def test_splits_are_the_store_splits(sim: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    path, frame, _ = sim
    store = build_store(load_log(path))
    np.testing.assert_array_equal(split_of(frame), store.split)
    # and the frame-based issuer x MCC rate is the store's
    data = approval_frame(frame, sim[2])
    parts = by_split(data, store.split)
    model = IssuerMccRate().fit(parts["train"], parts["val"])
    np.testing.assert_allclose(
        model.predict_proba(data), base_rate(store, store.rows(TRAIN)), rtol=1e-12
    )


FAST_TREES = {"learning_rate": 0.1}


@pytest.mark.parametrize(
    "make",
    [
        lambda: LightGBMModel(FAST_TREES, early_stopping_rounds=20, n_jobs=1),
        lambda: XGBoostModel(FAST_TREES | {"max_depth": 6}, early_stopping_rounds=20, n_jobs=1),
        lambda: LogisticModel({"C": 0.01}),  # strong L2: ~5k training rows
    ],
    ids=["lightgbm", "xgboost", "logistic"],
)
def test_models_beat_the_base_rate(
    make: Callable[[], Baseline], splits: dict[str, pd.DataFrame]
) -> None:
    train, val, test = splits["train"], splits["val"], splits["test"]
    model = make().fit(train, val)
    assert isinstance(model, Baseline)
    base = IssuerMccRate().fit(train, val)
    y = val[LABEL].to_numpy()
    p = model.predict_proba(val)
    assert p.shape == (len(val),) and np.all((p > 0) & (p < 1))
    assert log_loss(y, p) < log_loss(y, base.predict_proba(val)) - 0.01
    # values never seen in training (a new issuer, a new code) are scored, not rejected
    odd = test.head(5).copy()
    odd["issuer_id"] = pd.Categorical(["no-such-issuer"] * 5)
    odd["card_last_response_code"] = pd.Categorical(["Q7"] * 5)
    q = model.predict_proba(odd)
    assert np.all((q > 0) & (q < 1))


def test_search_picks_the_lowest_validation_loss(splits: dict[str, pd.DataFrame]) -> None:
    space = {"num_leaves": [4, 31], "min_child_samples": [20, 200], "learning_rate": [0.1]}
    assert len(grid_points(space)) == 4 and len(grid_points(space, n_trials=3, seed=1)) == 3
    result = search(
        lambda p: LightGBMModel(p, early_stopping_rounds=10, n_jobs=1),
        space,
        splits["train"],
        splits["val"],
        n_trials=3,
    )
    assert len(result.trials) == 3
    assert result.val_logloss == min(tr.val_logloss for tr in result.trials)
    assert result.params in [tr.params for tr in result.trials]


def test_oracle_reads_truth(
    sim: tuple[Path, pd.DataFrame, pd.DataFrame], splits: dict[str, pd.DataFrame]
) -> None:
    path = sim[0]
    truth = pd.read_parquet(path / "truth.parquet").set_index("txn_id")["p_approve"]
    val = splits["val"]
    p = Oracle.from_data_dir(path).fit(splits["train"], val).predict_proba(val)
    np.testing.assert_allclose(p, truth.reindex(val["txn_id"]).to_numpy(), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Retry model
# ---------------------------------------------------------------------------------------------


def test_retry_trees_predict_a_curve_for_every_grid_delay(
    sim: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    _, frame, features = sim
    retries = retry_frame(frame, features)
    assert len(retries) > 200
    assert set(retries["delay_bucket"].unique()) <= set(range(len(DEFAULT_GRID)))
    split = split_of(frame)[retries.index]
    model = RetryTrees(LightGBMModel({"learning_rate": 0.1, "num_leaves": 7}, n_jobs=1))
    model.fit(retries[split == 0], retries[split == 1])
    declines = decline_frame(frame, features)
    curve = model.predict_curve(declines)
    assert curve.shape == (len(declines), len(DEFAULT_GRID))
    assert np.all((curve > 0) & (curve < 1))
    # on a retry's own delay, the curve is the model's prediction for that retry
    sample = retries.head(50)
    at_own = model.predict_curve(sample)[np.arange(50), sample["delay_bucket"].astype(int)]
    assert np.corrcoef(at_own, model.predict_proba(sample))[0, 1] > 0.9
