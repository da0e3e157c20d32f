"""Point-in-time sequence data: history indices, the event store, labels, splits, no leaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq import features as F
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.index import HistoryIndex, build_history_index
from issuer_seq.data.store import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    EventStore,
    StoreConfig,
    build_store,
    summarize_store,
)
from issuer_seq.delays import DEFAULT_GRID, grid_seconds
from issuer_seq.schema import load_log, validate
from tests.conftest import ROOT, handmade_rows

BENCH = ROOT / "scripts" / "bench_sequences.py"
PROPERTY = settings(max_examples=300, deadline=None)


# --------------------------------------------------------------------------------------------
# build_history_index against a brute-force reference


def reference_history(group: np.ndarray, t: np.ndarray, i: int, k: int, lag: int) -> list[int]:
    """The K most recent same-group events strictly before t_i - lag, oldest first."""
    eligible = [j for j in range(len(t)) if group[j] == group[i] and t[j] < t[i] - lag]
    eligible.sort(key=lambda j: (t[j], j))
    return eligible[max(0, len(eligible) - k) :]


@st.composite
def event_logs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Unsorted events with sparse group ids and coarse integer times (many ties)."""
    n = draw(st.integers(1, 40))
    ids = draw(st.sampled_from([(0,), (0, 1), (0, 1, 2), (0, 3, 7, 1000)]))
    group = draw(st.lists(st.sampled_from(ids), min_size=n, max_size=n))
    base = draw(st.sampled_from([0, -5_000, 1_700_000_000]))
    step = draw(st.sampled_from([1, 5, 10, 30]))
    ticks = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    k = draw(st.integers(1, 6))
    lag = draw(st.sampled_from([0, 5, 60]))
    t = base + step * np.asarray(ticks, dtype=np.int64)
    return np.asarray(group, dtype=np.int64), t, k, lag


@PROPERTY
@given(event_logs())
def test_windows_match_brute_force(log: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    group, t, k, lag = log
    index = build_history_index(group, t, k, lag)
    n = len(t)
    events, mask = index.windows(np.arange(n))
    assert events.shape == mask.shape == (n, k)
    for i in range(n):
        expected = reference_history(group, t, i, k, lag)
        n_eligible = int(np.sum((group == group[i]) & (t < t[i] - lag)))
        assert mask[i].sum() == len(expected) == min(k, n_eligible) == index.length[i]
        # Padding only on the left, with the placeholder id 0.
        assert list(mask[i]) == [False] * (k - len(expected)) + [True] * len(expected)
        assert (events[i, : k - len(expected)] == 0).all()
        assert list(events[i, k - len(expected) :]) == expected
        hist = events[i][mask[i]]
        assert (t[hist] < t[i] - lag).all()  # nothing at or after t_i - lag
        assert (group[hist] == group[i]).all()


@PROPERTY
@given(event_logs(), st.data())
def test_windows_of_any_rows_are_the_rows_own(
    log: tuple[np.ndarray, np.ndarray, int, int], data: st.DataObject
) -> None:
    """A batch of rows (any order, repeats) gets each row's own window."""
    group, t, k, lag = log
    index = build_history_index(group, t, k, lag)
    rows = np.asarray(data.draw(st.lists(st.integers(0, len(t) - 1), max_size=20)), np.int64)
    events, mask = index.windows(rows)
    all_events, all_mask = index.windows(np.arange(len(t)))
    assert events.shape == (len(rows), k)
    np.testing.assert_array_equal(events, all_events[rows])
    np.testing.assert_array_equal(mask, all_mask[rows])


@PROPERTY
@given(event_logs(), st.data())
def test_the_window_of_any_group_at_any_time_matches_brute_force(
    log: tuple[np.ndarray, np.ndarray, int, int], data: st.DataObject
) -> None:
    """`at`: the window of a group as of a time, whether or not an event of that group
    happened then (the route stream of a candidate route); at a row's own group and time,
    the row's own window."""
    group, t, k, lag = log
    index = build_history_index(group, t, k, lag)
    end, length = index.at(group, t)
    np.testing.assert_array_equal(end, index.end)
    np.testing.assert_array_equal(length, index.length)
    queries = data.draw(
        st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 7, 1000, 5000]), st.integers(-2, 14)))
    )
    for g, tick in queries:
        when = int(t.min()) + tick * 7
        (e,), (n,) = index.at(np.array([g]), np.array([when]))
        eligible = sorted(
            (j for j in range(len(t)) if group[j] == g and t[j] < when - lag),
            key=lambda j: (t[j], j),
        )
        expected = eligible[max(0, len(eligible) - k) :]
        assert n == len(expected)
        assert list(index.order[e - n : e]) == expected


def test_same_second_events_are_not_history_and_lag_is_strict() -> None:
    group = np.array([0, 0, 0, 0, 1])
    t = np.array([100, 100, 160, 165, 100])
    no_lag = build_history_index(group, t, k=4)
    assert no_lag.length.tolist() == [0, 0, 2, 3, 0]
    lagged = build_history_index(group, t, k=4, lag_s=60)
    # t=160: 160 - 60 = 100 is not strictly after 100, so nothing; t=165: both t=100 events.
    assert lagged.length.tolist() == [0, 0, 0, 2, 0]
    events, mask = lagged.windows(np.array([3]))
    assert events[0][mask[0]].tolist() == [0, 1]


def test_index_edge_cases() -> None:
    empty = build_history_index(np.zeros(0, np.int64), np.zeros(0, np.int64), k=3)
    assert isinstance(empty, HistoryIndex) and len(empty.order) == 0
    events, mask = empty.windows(np.zeros(0, np.int64))
    assert events.shape == mask.shape == (0, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        build_history_index(np.zeros(2, np.int64), np.zeros(2, np.int64), k=0)
    with pytest.raises(ValueError, match="lag must be >= 0"):
        build_history_index(np.zeros(2, np.int64), np.zeros(2, np.int64), k=1, lag_s=-1)


# --------------------------------------------------------------------------------------------
# The event store on a simulated log


@pytest.fixture(scope="module")
def sim_frame(sim_dir: Path) -> pd.DataFrame:
    return load_log(sim_dir).frame


@pytest.fixture(scope="module")
def sim_store(sim_frame: pd.DataFrame) -> EventStore:
    return build_store(validate(sim_frame), StoreConfig())


def _seconds(frame: pd.DataFrame) -> np.ndarray:
    return frame["ts"].astype("int64").to_numpy() // 1_000_000


@pytest.mark.parametrize("stream", F.STREAMS)
def test_store_histories_are_point_in_time(
    sim_store: EventStore, sim_frame: pd.DataFrame, stream: str
) -> None:
    store = sim_store
    index = store.index(stream)
    k = store.config.k(stream)
    rows = np.arange(len(store))
    events, mask = index.windows(rows)  # (N, K)
    t_hist = np.where(mask, store.t[events], store.t.min() - 1)
    assert (t_hist < store.t[:, None]).all()  # strictly earlier: same second is not history
    assert (np.diff(t_hist, axis=1) >= 0).all()  # oldest first, most recent last
    columns = list(F.STREAM_KEYS[stream])
    for column in columns:  # the same card / issuer / card and merchant as the row
        ids = sim_frame[column].to_numpy()
        assert (ids[events][mask] == np.broadcast_to(ids[:, None], mask.shape)[mask]).all()
    # Each window is as full as it can be: min(K, number of strictly earlier same-entity events),
    # counted independently by pandas' rank (method 'min' = 1 + the count of smaller values).
    earlier = sim_frame.assign(t=store.t).groupby(columns)["t"].rank(method="min") - 1
    np.testing.assert_array_equal(mask.sum(axis=1), np.minimum(k, earlier.to_numpy(np.int64)))
    assert mask.any(axis=1).mean() > 0.2  # every stream has histories on this log
    # The same ids as the log: store.card/issuer are codes of the log's ids.
    assert pd.Series(store.card).groupby(sim_frame["card_id"].to_numpy()).nunique().max() == 1
    assert pd.Series(store.issuer).groupby(sim_frame["issuer_id"].to_numpy()).nunique().max() == 1


def test_store_lag_keeps_histories_before_t_minus_lag(sim_frame: pd.DataFrame) -> None:
    store = build_store(
        validate(sim_frame), StoreConfig(k_card=8, k_issuer=8, k_route=8, lag_s=600)
    )
    for stream in F.STREAMS:
        events, mask = store.index(stream).windows(np.arange(len(store)))
        assert (
            store.t[events][mask] < np.broadcast_to(store.t[:, None] - 600, mask.shape)[mask]
        ).all()


def test_time_split_boundaries(sim_store: EventStore) -> None:
    store = sim_store
    t = {s: store.t[store.split == s] for s in (TRAIN, VAL, TEST)}
    assert t[TRAIN].max() < t[VAL].min() and t[VAL].max() < t[TEST].min()
    fractions = np.bincount(store.split, minlength=3) / len(store)
    np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.01)
    assert store.split_bounds == tuple(
        pd.Timestamp(int(t[s].min()), unit="s", tz="UTC").isoformat() for s in (VAL, TEST)
    )
    # Histories reach back across the boundary: validation rows see training events.
    val = store.rows(VAL)
    events, mask = store.card_index.windows(val)
    assert (store.split[events][mask] == TRAIN).any()


def test_labels_against_the_raw_frame(sim_store: EventStore, sim_frame: pd.DataFrame) -> None:
    store, frame = sim_store, sim_frame
    t = _seconds(frame)
    code = frame["response_code"].to_numpy(dtype=object)
    np.testing.assert_array_equal(store.approved, (code == "00").astype(np.float32))

    # The next attempt of the same payment, by a plain dictionary lookup.
    keys = list(zip(frame["payment_id"], frame["attempt"], strict=True))
    row_of = {key: i for i, key in enumerate(keys)}
    grid = [int(g) for g in grid_seconds(DEFAULT_GRID)]
    prop = frame["policy_propensity"].to_numpy(np.float64)
    expected_bucket = np.full(len(frame), -1)
    expected_success = np.zeros(len(frame))
    expected_weight = np.zeros(len(frame))
    too_soon = 0
    for i, (p, a) in enumerate(keys):
        j = row_of.get((p, a + 1))
        if code[i] == "00" or j is None:
            continue
        delay = t[j] - t[i]
        below = [b for b, g in enumerate(grid) if g <= delay]
        if not below:
            too_soon += 1
            continue
        expected_bucket[i] = below[-1]
        expected_success[i] = code[j] == "00"
        expected_weight[i] = 1.0 / prop[j]
    assert too_soon > 0, "the simulator should log immediate 3-D Secure retries"
    assert (expected_bucket >= 0).sum() > 200
    np.testing.assert_array_equal(store.retry_bucket, expected_bucket)
    labelled = store.retry_bucket >= 0
    np.testing.assert_array_equal(store.retry_success[labelled], expected_success[labelled])
    np.testing.assert_allclose(store.retry_weight, expected_weight, rtol=1e-6)
    assert (store.retry_weight[~labelled] == 0).all() and (store.retry_weight[labelled] >= 1).all()
    assert (store.approved[labelled] == 0).all()


def _change_outcomes(frame: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """The same log with every outcome at or after `at` flipped (still a valid log)."""
    out = frame.copy()
    later = (out["ts"] >= at).to_numpy()
    code = out["response_code"].to_numpy(dtype=object)
    advice = out["advice_code"].to_numpy(dtype=object)
    flipped = np.where(code == "00", "51", "00")
    out["response_code"] = pd.array(
        np.where(later, flipped, code), dtype=out["response_code"].dtype
    )
    new_advice = np.where(code == "00", "01", None)  # a MAC on the new declines only
    out["advice_code"] = pd.array(np.where(later, new_advice, advice), dtype=object)
    return out


@pytest.mark.parametrize("where", [0.5, 0.9])
def test_no_label_leaks_into_inputs(sim_frame: pd.DataFrame, where: float) -> None:
    """Changing the outcomes of one first attempt and everything after it changes no input
    of that attempt and nothing of any earlier event."""
    frame = sim_frame
    first = frame.index[(frame["attempt"] == 1).to_numpy()]
    row_at = int(first[int(len(first) * where)])
    at = frame["ts"].iloc[row_at]
    changed = _change_outcomes(frame, at)
    before = (frame["ts"] < at).to_numpy()
    assert (changed["response_code"] != frame["response_code"]).to_numpy()[~before].all()

    a = build_store(validate(frame))
    # At 0.9 the change is in the test split, so the fitted vocabulary must not move; at 0.5
    # it is in the training split, whose vocabulary (ids by frequency) is fitted on outcomes,
    # so the trained model's vocabulary is passed, as at scoring time.
    in_test = a.split[row_at] == TEST
    assert in_test == (where == 0.9)
    b = build_store(validate(changed), vocab=None if in_test else a.vocab)
    assert a.vocab == b.vocab
    assert (a.approved != b.approved)[~before].all()  # the labels did change

    for name in F.CATEGORICAL:
        np.testing.assert_array_equal(a.cat[name][before], b.cat[name][before], err_msg=name)
        if name not in F.OUTCOME_FEATURES:
            np.testing.assert_array_equal(a.cat[name], b.cat[name], err_msg=name)
    for name in F.NUMERIC:
        np.testing.assert_array_equal(a.num[name], b.num[name], err_msg=name)
    for stream in F.STREAMS:
        ia, ib = a.index(stream), b.index(stream)
        for field in ("order", "end", "length"):
            np.testing.assert_array_equal(getattr(ia, field), getattr(ib, field))
        # The attempt's history: identical events, all strictly before it, with all features.
        events, mask = ia.windows(np.array([row_at]))
        hist = events[mask]
        assert before[hist].all()
        assert stream != "issuer" or len(hist) > 0  # an issuer's history is never empty here
        for name in F.CATEGORICAL:
            np.testing.assert_array_equal(a.cat[name][hist], b.cat[name][hist])


# --------------------------------------------------------------------------------------------
# The hand-made messy log


SMALL = StoreConfig(k_card=2, k_issuer=3, k_route=3, k_card_merchant=2)


def _handmade_store(config: StoreConfig = SMALL, **changes: dict[str, object]) -> EventStore:
    df = handmade_rows()
    for column, values in changes.items():
        for txn, value in values.items():
            df.loc[df["txn_id"] == txn, column] = value
    return build_store(validate(df), config)


def _ids(store: EventStore, index: HistoryIndex, txn: str) -> list[str]:
    row = int(np.flatnonzero(store.txn_id == txn)[0])
    events, mask = index.windows(np.array([row]))
    return [str(store.txn_id[e]) for e in events[0][mask[0]]]


def test_handmade_log_builds_a_store() -> None:
    store = _handmade_store()
    assert store.txn_id.tolist() == ["t4", "t1", "t2", "t5", "t6", "t3"]  # sorted by ts
    assert store.split.tolist() == [TRAIN, TRAIN, TRAIN, VAL, VAL, TEST]
    # Card streams (k=2): c1 = t1, t2, t3; c2 = t4, t5; c3 = t6.
    assert _ids(store, store.card_index, "t3") == ["t1", "t2"]
    assert _ids(store, store.card_index, "t2") == ["t1"]
    assert _ids(store, store.card_index, "t5") == ["t4"]
    assert _ids(store, store.card_index, "t6") == []
    # Issuer streams (k=3): i1 = t4, t1, t2, t3; i2 = t5 and t6 at the same second.
    assert _ids(store, store.issuer_index, "t3") == ["t4", "t1", "t2"]
    assert _ids(store, store.issuer_index, "t6") == []
    assert _ids(store, store.issuer_index, "t5") == []
    # One merchant: the card at the merchant is the card.
    assert _ids(store, store.card_merchant_index, "t3") == ["t1", "t2"]
    # Labels: p2 declined (51) and retried one day later, approved.
    row = {txn: i for i, txn in enumerate(store.txn_id)}
    assert store.retry_bucket.tolist() == [-1, -1, DEFAULT_GRID.index("1d"), -1, -1, -1]
    assert store.retry_success[row["t2"]] == 1 and store.retry_weight[row["t2"]] == 1
    assert store.approved.tolist() == [0, 1, 0, 0, 1, 1]
    assert (store.cat["advice_code"] == F.NONE).all()  # all null

    summary = summarize_store(store)
    assert summary["k_card_merchant"] == 2
    assert summary["examples"] == 6
    assert sum(summary[name]["examples"] for name in SPLIT_NAMES) == 6
    assert sum(summary[name]["retry_labels"] for name in SPLIT_NAMES) == 1
    assert sum(summary[name]["declines"] for name in SPLIT_NAMES) == 3
    json.dumps(summary)  # plain types, ready to print


def test_card_merchant_history_holds_the_cards_attempts_at_that_merchant() -> None:
    store = _handmade_store(merchant_id={"t1": "m2"})  # c1: t1 at m2, then t2, t3 at m1
    assert _ids(store, store.card_index, "t3") == ["t1", "t2"]
    assert _ids(store, store.card_merchant_index, "t3") == ["t2"]
    assert _ids(store, store.card_merchant_index, "t2") == []
    # another card at the same merchant is not the card's history: c2's t5 after c2's t4 only
    assert _ids(store, store.card_merchant_index, "t5") == ["t4"]


def test_same_payment_marks_the_payments_earlier_attempts_only() -> None:
    # c1 at m1: t1 (payment p1), t2 (p2, declined 51), t3 (p2's retry): for t3, t2 is the
    # same payment and t1 only the same merchant.
    store = _handmade_store()
    row = int(np.flatnonzero(store.txn_id == "t3")[0])
    batch = DeviceStore(store).gather(torch.tensor([row]))
    for s in ("card", "card_merchant"):
        assert batch[f"{s}_same_merchant"].tolist() == [[1.0, 1.0]]
        assert batch[f"{s}_same_payment"].tolist() == [[0.0, 1.0]]
    first = int(np.flatnonzero(store.txn_id == "t2")[0])  # a first attempt: no earlier one
    assert DeviceStore(store).gather(torch.tensor([first]))["card_same_payment"].sum() == 0


def test_vocabulary_is_fitted_on_the_training_split_only() -> None:
    # 7995 only in the test split, 5812 only in validation; i2 and 'Z9' only in validation.
    store = _handmade_store(mcc={"t3": "7995", "t6": "5812"})
    row = {txn: i for i, txn in enumerate(store.txn_id)}
    assert store.cat["mcc"][row["t3"]] == F.OOV and store.cat["mcc"][row["t6"]] == F.OOV
    assert store.cat["mcc"][row["t1"]] >= F.N_SPECIAL
    assert "7995" not in store.vocab.maps["mcc"] and "5812" not in store.vocab.maps["mcc"]
    assert store.cat["issuer"][row["t5"]] == store.cat["issuer"][row["t6"]] == F.OOV
    assert store.cat["response_code"][row["t5"]] == F.OOV  # unknown code, unseen in training
    assert store.cat["cause"][row["t5"]] == F.OOV  # its cause 'other' is unseen too
    assert store.vocab.size("mcc") == F.N_SPECIAL + 1


def test_unknown_code_seen_in_training_gets_its_own_id_consistently() -> None:
    # Everything but the last second in training: 'Z9' (t5) gets its own id.
    store = _handmade_store(StoreConfig(k_card=2, k_issuer=3, k_route=3, split=(1.0, 0.0, 0.0)))
    row = {txn: i for i, txn in enumerate(store.txn_id)}
    z9 = store.cat["response_code"][row["t5"]]
    assert z9 >= F.N_SPECIAL and store.vocab.maps["response_code"]["Z9"] == z9
    assert store.vocab.maps["cause"]["other"] == store.cat["cause"][row["t5"]]
    # Bulk (training) and one-at-a-time (scorer) encodings agree on every feature of every row.
    raw = F.raw_categorical(validate(handmade_rows()).frame)
    for name in F.CATEGORICAL:
        one_by_one = F.encode(store.vocab, name, raw[name].tolist())
        np.testing.assert_array_equal(one_by_one, store.cat[name], err_msg=name)


def test_retry_weight_is_inverse_propensity_of_the_retry() -> None:
    df = handmade_rows()
    df["policy_propensity"] = np.where(df["txn_id"] == "t3", 0.25, np.nan)
    store = build_store(validate(df), SMALL)
    row = int(np.flatnonzero(store.txn_id == "t2")[0])
    assert store.retry_weight[row] == pytest.approx(4.0)
    assert store.retry_weight.sum() == pytest.approx(4.0)


def test_retries_sooner_than_the_first_grid_point_get_no_label() -> None:
    df = handmade_rows()
    df.loc[df["txn_id"] == "t3", "ts"] = pd.Timestamp("2026-03-01T10:09:59Z")  # 4m59s later
    store = build_store(validate(df), SMALL)
    assert (store.retry_bucket == -1).all() and (store.retry_weight == 0).all()
    df.loc[df["txn_id"] == "t3", "ts"] = pd.Timestamp("2026-03-01T10:10:00Z")  # exactly 5m
    store = build_store(validate(df), SMALL)
    assert store.retry_bucket.max() == 0


# --------------------------------------------------------------------------------------------
# The benchmark script


def _bench_module() -> ModuleType:
    import issuer_seq.bench.sequences as module

    return module


def test_benchmark_reference_agrees_and_detects_a_difference(sim_frame: pd.DataFrame) -> None:
    bench = _bench_module()
    df = bench._frame(sim_frame, 3_000)
    ks = {"card_id": 4, "issuer_id": 6}
    mine = bench.ours(df, df["t"].to_numpy(), ks)
    theirs = bench.pandas_reference(df, ks)
    assert all(bench.same_histories(mine[c], theirs[c]) for c in ks)
    events, mask = mine["issuer_id"]
    row = int(np.flatnonzero(mask[:, -1])[-1])
    tampered = events.copy()
    tampered[row, -1] += 1
    assert not bench.same_histories((tampered, mask), theirs["issuer_id"])


def test_benchmark_script_runs(sim_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), str(sim_dir), "--k-card", "8", "--k-issuer", "16"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    result = json.loads(proc.stdout)
    assert result["identical"] is True
    assert result["rows"] == len(load_log(sim_dir).frame)
    assert (result["k_card"], result["k_issuer"]) == (8, 16)
    assert result["speedup"] > 1
    assert result["ours_s"] > 0 and result["pandas_s"] > 0
