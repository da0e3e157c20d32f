"""The LightGBM baseline's online scorer: the same feature rows as the SQL, the same scores.

Replaying a log through `OnlineFeatures` (score each attempt, then observe it) must give
`sql_features`' frame: numeric columns close, NaN where the SQL gives NULL, categories equal.
This is what makes the bench's LightGBM latency arm honest: it computes the very features the
model was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from issuer_seq.baselines.dataset import approval_frame
from issuer_seq.baselines.online import LightGBMScorer, OnlineFeatures
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.schema import load_log
from tests.conftest import make_sim
from tests.test_baselines import _attempt, assert_same_features, log_frame, small_logs


def online_frame(
    frame: pd.DataFrame, lag_s: int = 0, slack_s: int = 0, first: int = 0
) -> pd.DataFrame:
    """Rows `first`.. of the log as the online features see them when replayed in order;
    rows before `first` are observed in the order given (they may come late)."""
    features = OnlineFeatures(lag_s=lag_s, slack_s=slack_s)
    records = frame.to_dict("records")
    for rec in records[:first]:
        features.observe(rec)
    values, cats = [], []
    for rec in records[first:]:
        v, c = features.row(rec)
        values.append(v)
        cats.append(c)
        features.observe(rec)
    out = pd.DataFrame(
        np.array(values).reshape(-1, len(features.columns)), columns=features.columns
    )
    labels = pd.DataFrame(cats, columns=features.categorical, dtype=object)
    for c in features.categorical:
        out[c] = labels[c].astype("string").astype("category")
    return out


def test_columns_are_the_sql_columns() -> None:
    frame = log_frame([_attempt(0, 0, "51"), _attempt(1, 5, "00")])
    assert OnlineFeatures().columns == list(sql_features(frame, threads=1).columns)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=small_logs(), lag_s=st.sampled_from((0, 60)), slack_s=st.sampled_from((0, 86_400)))
def test_replay_gives_the_sql_features(frame: pd.DataFrame, lag_s: int, slack_s: int) -> None:
    want = sql_features(frame, lag_s=lag_s, threads=1)
    assert_same_features(online_frame(frame, lag_s, slack_s), want)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=small_logs(), data=st.data())
def test_late_outcomes_change_nothing(frame: pd.DataFrame, data: st.DataObject) -> None:
    """History observed out of time order (late outcomes) gives the same later rows.

    Seconds are shuffled as units: among attempts of one second, the one observed last is
    "the last" (as the log's order is for the SQL), so their order within a second is kept.
    """
    first = data.draw(st.integers(0, len(frame)))
    seconds = frame["ts"].astype("int64").to_numpy()[:first] // 1_000_000
    groups = [np.flatnonzero(seconds == s) for s in np.unique(seconds)]
    order = data.draw(st.permutations(range(len(groups))))
    rows = [i for g in order for i in groups[g]] + list(range(first, len(frame)))
    shuffled = frame.iloc[rows].reset_index(drop=True)
    want = sql_features(frame, threads=1).iloc[first:].reset_index(drop=True)
    assert_same_features(online_frame(shuffled, first=first), want)


@pytest.fixture(scope="module")
def sim() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small simulated log longer than the longest window, and its SQL features."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        frame = load_log(make_sim(Path(tmp), seed=3, n_cards=250, days=40)).frame
    return frame, sql_features(frame, threads=1)


def test_replay_of_a_simulated_log_gives_the_sql_features(
    sim: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, want = sim
    assert (frame["ts"].max() - frame["ts"].min()).days > 31  # events get folded away
    assert_same_features(online_frame(frame), want)


def test_scorer_gives_the_models_probabilities(
    sim: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    frame, features = sim
    data = approval_frame(frame, features)
    cut = int(len(data) * 0.7)
    params = {"num_leaves": 15, "min_child_samples": 20}
    model = LightGBMModel(params, num_boost_round=40, n_jobs=1)  # one thread: shared cores
    model.fit(data.iloc[:cut], data.iloc[cut:])
    loaded = LightGBMModel.load(model.save(tmp_path / "lightgbm"))
    assert loaded.columns == model.columns and loaded.categories == model.categories
    scorer = LightGBMScorer(loaded)
    records = frame.to_dict("records")
    for rec in records[:cut]:
        scorer.observe(rec)
    got = []
    for rec in records[cut:]:
        got.append(scorer.score(rec))
        scorer.observe(rec)
    want = model.predict_proba(data.iloc[cut:])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # EPS clipping aside
    batch = scorer.score_batch(records[-16:])
    assert batch.shape == (16,) and np.all((batch > 0) & (batch < 1))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=small_logs(), data=st.data())
def test_a_copy_with_an_outcome_reads_as_if_it_were_observed(
    frame: pd.DataFrame, data: st.DataObject
) -> None:
    """`with_outcome(o)` gives the rows of attempts of o's card and issuer that observing o
    gives, and leaves the features it was made from as they were."""
    records = frame.to_dict("records")
    cut = data.draw(st.integers(1, len(records)))
    outcome = records[cut - 1]
    later = [*records[cut:], {**outcome, "ts": outcome["ts"] + pd.Timedelta(minutes=1)}]
    seen, ahead = OnlineFeatures(), OnlineFeatures()
    for rec in records[: cut - 1]:
        seen.observe(rec)
        ahead.observe(rec)
    ahead.observe(outcome)
    before = [seen.row(r)[0] for r in later]
    copy = seen.with_outcome(outcome)
    same = [
        r
        for r in later
        if (r["card_id"], r["issuer_id"]) == (outcome["card_id"], outcome["issuer_id"])
    ]
    for rec in same:
        np.testing.assert_array_equal(copy.row(rec)[0], ahead.row(rec)[0])
        assert copy.row(rec)[1] == ahead.row(rec)[1]
    for rec, want in zip(later, before, strict=True):
        np.testing.assert_array_equal(seen.row(rec)[0], want)


def test_rows_through_each_route_are_the_rows_of_the_attempt_sent_through_it(
    sim: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = sim
    records = frame.to_dict("records")
    features = OnlineFeatures()
    for rec in records[:-50]:
        features.observe(rec)
    routes = [*sorted(frame["route"].unique()), "not_a_route", None]
    for rec in records[-50:]:
        want = np.stack([features.row({**rec, "route": r})[0] for r in routes])
        np.testing.assert_array_equal(features.route_rows(rec, routes), want)
