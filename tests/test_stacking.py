"""The stacked arm: a logistic regression on the two models' logits (evaluate/stacking.py),
and its bench scorer (bench/scorers.py `StackedScorer`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from issuer_seq.bench.scorers import StackedScorer
from issuer_seq.data.store import TEST, VAL
from issuer_seq.evaluate import run
from issuer_seq.evaluate.paired import log_loss
from issuer_seq.evaluate.stacking import apply_stack, fit_stack
from issuer_seq.recalibration import logit


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_the_stack_recovers_the_weights_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 200_000))
    y = rng.random(a.size) < _sigmoid(1.5 * a - 0.5 * b + 0.2)
    stack = fit_stack({"transformer": _sigmoid(a), "lightgbm": _sigmoid(b)}, y)
    assert stack["models"] == ["transformer", "lightgbm"] and stack["rows"] == a.size
    assert stack["weights"] == pytest.approx([1.5, -0.5], abs=0.03)
    assert stack["intercept"] == pytest.approx(0.2, abs=0.03)


def test_the_stack_is_no_worse_than_either_model_on_new_rows() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=120_000)
    y = rng.random(z.size) < _sigmoid(z)
    # two imperfect views of the truth, each with its own error and miscalibration
    p = {
        "transformer": _sigmoid(0.6 * (z + rng.normal(scale=0.8, size=z.size))),
        "lightgbm": _sigmoid(1.4 * (z + rng.normal(scale=0.8, size=z.size)) - 0.3),
    }
    fit, new = slice(0, 60_000), slice(60_000, None)
    stack = fit_stack({k: v[fit] for k, v in p.items()}, y[fit])
    stacked = apply_stack(stack, {k: v[new] for k, v in p.items()})
    assert np.all((stacked > 0) & (stacked < 1))
    loss = log_loss(stacked, y[new]).mean()
    for name, q in p.items():
        assert loss < log_loss(q[new], y[new]).mean() - 0.005, name


def test_extreme_probabilities_are_clipped_not_infinite() -> None:
    assert np.isfinite(logit(np.array([0.0, 1.0, 0.5]))).all()
    stack = {"models": ["transformer", "lightgbm"], "weights": [1.0, 1.0], "intercept": 0.0}
    p = apply_stack(stack, {"transformer": np.array([0.0, 1.0]), "lightgbm": np.array([0.0, 1.0])})
    assert np.isfinite(p).all() and p[0] < 1e-6 and p[1] > 1 - 1e-6


def test_nothing_to_fit_or_a_missing_model_is_a_clear_error() -> None:
    p = {"transformer": np.full(10, 0.9), "lightgbm": np.full(10, 0.8)}
    with pytest.raises(ValueError, match="one class only"):
        fit_stack(p, np.ones(10))
    with pytest.raises(ValueError, match="lightgbm"):
        fit_stack({"transformer": p["transformer"]}, np.arange(10) % 2)


class _Fixed:
    """A scorer answering `p` for every attempt, recording what it observed."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.seen: list[Mapping[str, Any]] = []

    def score_batch(self, attempts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.full(len(attempts), self.p)

    def observe(self, outcome: Mapping[str, Any]) -> None:
        self.seen.append(outcome)


def test_the_stacked_scorer_runs_both_models_and_combines_them() -> None:
    stack = {"models": ["transformer", "lightgbm"], "weights": [0.7, 0.4], "intercept": -0.1}
    t, g = _Fixed(0.9), _Fixed(0.6)
    scorer = StackedScorer(t, g, stack)  # type: ignore[arg-type]
    expected = _sigmoid(0.7 * logit(np.array(0.9)) + 0.4 * logit(np.array(0.6)) - 0.1)
    assert scorer.score({"card_id": 1}) == pytest.approx(float(expected))
    assert scorer.score_batch([{}, {}]) == pytest.approx([float(expected)] * 2)
    scorer.observe({"card_id": 1})
    assert t.seen == g.seen == [{"card_id": 1}]


class _Store:
    """The parts of an EventStore the stacked arm reads: rows 0-5 validation, 6-11 test."""

    approved = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0])

    def rows(self, split: int) -> np.ndarray:
        return np.arange(6) if split == VAL else np.arange(6, 12)


def test_evaluate_fits_the_arm_on_validation_or_leaves_it_out_saying_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(2)
    p_val = rng.uniform(0.2, 0.9, 6)
    p_lightgbm = rng.uniform(0.2, 0.9, 12)
    p_test = rng.uniform(0.2, 0.9, 6)
    monkeypatch.setattr(run, "predict", lambda net, store, rows, progress=None: (p_val, None))
    store = _Store()
    metrics, p = run.stacked(None, store, store.rows(TEST), p_test, p_lightgbm)  # type: ignore[arg-type, misc]
    expected = fit_stack({"transformer": p_val, "lightgbm": p_lightgbm[:6]}, store.approved[:6])
    assert metrics["stack"] == expected and metrics["stack"]["rows"] == 6
    assert p == pytest.approx(
        apply_stack(expected, {"transformer": p_test, "lightgbm": p_lightgbm[6:]})
    )
    store.approved = np.r_[np.ones(6, int), store.approved[6:]]  # validation: one class
    with caplog.at_level("WARNING", logger="issuer_seq.evaluate.run"):
        assert run.stacked(None, store, store.rows(TEST), p_test, p_lightgbm) is None  # type: ignore[arg-type]
    assert "stacked arm left out" in caplog.text and "one class only" in caplog.text
