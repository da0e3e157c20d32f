"""Off-policy estimators on synthetic bandits whose true value is known."""

from __future__ import annotations

import numpy as np
import pytest

from issuer_seq.errors import IssuerSeqError
from issuer_seq.retry_policy import RetryEconomics
from issuer_seq.routing.ope import estimate, estimate_all, logged_rewards
from issuer_seq.routing.policies import one_hot, sample_routes

K = 3


def logging_probs(n: int) -> np.ndarray:
    """80% the first-priority route, 20% uniform: the simulator's kind of logging policy."""
    return 0.8 * one_hot(np.zeros(n, dtype=np.int64), K) + 0.2 / K


def bandit(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p_true = rng.uniform(0.3, 0.95, (n, K))
    route, propensity = sample_routes(logging_probs(n), rng)
    reward = (rng.random(n) < p_true[np.arange(n), route]).astype(float)
    return {"p_true": p_true, "route": route, "propensity": propensity, "reward": reward}


def target(p_true: np.ndarray) -> np.ndarray:
    """A policy far from the logging one: 90% on the truly best route, 10% uniform."""
    return 0.9 * one_hot(np.argmax(p_true, axis=1), K) + 0.1 / K


def true_value(pi: np.ndarray, p_true: np.ndarray) -> float:
    return float((pi * p_true).sum(axis=1).mean())


def test_every_estimator_covers_the_true_value_on_a_large_sample() -> None:
    b = bandit(20_000, seed=11)
    pi = target(b["p_true"])
    truth = true_value(pi, b["p_true"])
    logging_value = true_value(logging_probs(20_000), b["p_true"])
    noisy_model = np.clip(b["p_true"] + np.random.default_rng(1).normal(0, 0.1, (20_000, K)), 0, 1)
    got = estimate_all(pi, b["route"], b["propensity"], b["reward"], noisy_model, n_bootstrap=400)
    assert set(got) == {"ips", "snips", "dr"}
    for name, est in got.items():
        assert est.covers(truth), (name, est, truth)
        # and the interval is tight enough to tell the policy from the logging one
        assert not est.covers(logging_value), (name, est, logging_value)
        assert est.n == 20_000 and est.level == 0.95


def test_ips_and_dr_are_unbiased_in_expectation() -> None:
    rng = np.random.default_rng(5)
    n, reps = 400, 300
    p_true = rng.uniform(0.3, 0.95, (n, K))
    pi = target(p_true)
    truth = true_value(pi, p_true)
    wrong_model = np.full((n, K), 0.5)  # DR stays unbiased with a wrong model: propensities known
    ips, dr = np.empty(reps), np.empty(reps)
    for k in range(reps):
        route, prop = sample_routes(logging_probs(n), rng)
        reward = (rng.random(n) < p_true[np.arange(n), route]).astype(float)
        ips[k] = estimate("ips", pi, route, prop, reward, n_bootstrap=0).value
        dr[k] = estimate("dr", pi, route, prop, reward, wrong_model, n_bootstrap=0).value
    for name, values in (("ips", ips), ("dr", dr)):
        se = values.std(ddof=1) / np.sqrt(reps)
        assert abs(values.mean() - truth) < 4 * se, (name, values.mean(), truth, se)
    # the same check has power: the naive mean of the logged rewards is biased
    assert abs(true_value(logging_probs(n), p_true) - truth) > 10 * ips.std() / np.sqrt(reps)


def test_snips_equals_ips_when_the_weights_average_one() -> None:
    rng = np.random.default_rng(2)
    n = 1000
    route = rng.integers(0, K, n)
    pi = np.full((n, K), 1.0 / K)
    w = rng.uniform(0.5, 1.5, n)
    w /= w.mean()
    propensity = (1.0 / K) / w  # weights pi / pi_0 = w, averaging exactly 1
    reward = rng.random(n)
    ips = estimate("ips", pi, route, propensity, reward, n_bootstrap=0).value
    snips = estimate("snips", pi, route, propensity, reward, n_bootstrap=0).value
    assert ips == pytest.approx(snips, rel=1e-12)
    # and they part when the weights do not average 1
    skewed = estimate("snips", pi, route, propensity * 0.5, reward, n_bootstrap=0).value
    assert skewed == pytest.approx(snips) and estimate(
        "ips", pi, route, propensity * 0.5, reward, n_bootstrap=0
    ).value == pytest.approx(2 * ips)


def test_the_logging_policy_itself_is_valued_at_its_mean_reward() -> None:
    b = bandit(2000, seed=3)
    probs = logging_probs(2000)
    for name in ("ips", "snips"):
        est = estimate(name, probs, b["route"], b["propensity"], b["reward"], n_bootstrap=0)
        assert est.value == pytest.approx(b["reward"].mean(), rel=1e-12)


def test_dr_is_exact_with_an_exact_model_and_expected_rewards() -> None:
    b = bandit(3000, seed=4)
    pi = target(b["p_true"])
    expected_reward = b["p_true"][np.arange(3000), b["route"]]
    est = estimate("dr", pi, b["route"], b["propensity"], expected_reward, b["p_true"])
    assert est.value == pytest.approx(true_value(pi, b["p_true"]), abs=1e-12)
    assert est.high - est.low < 0.05  # only the contexts' own spread remains
    # with realised rewards the exact model still shrinks the interval well below IPS's
    dr = estimate("dr", pi, b["route"], b["propensity"], b["reward"], b["p_true"], seed=1)
    ips = estimate("ips", pi, b["route"], b["propensity"], b["reward"], seed=1)
    assert dr.high - dr.low < 0.7 * (ips.high - ips.low)


def test_a_cluster_bootstrap_widens_the_interval_of_dependent_attempts() -> None:
    b = bandit(1500, seed=8)
    pi = target(b["p_true"])
    copies = 5  # every attempt logged five times: five rows, one piece of information
    rep = {k: np.repeat(v, copies, axis=0) for k, v in b.items()}
    group = np.repeat(np.arange(1500), copies)
    alone = estimate("ips", pi, b["route"], b["propensity"], b["reward"], seed=2)
    naive = estimate(
        "ips", np.repeat(pi, copies, axis=0), rep["route"], rep["propensity"], rep["reward"], seed=2
    )
    clustered = estimate(
        "ips",
        np.repeat(pi, copies, axis=0),
        rep["route"],
        rep["propensity"],
        rep["reward"],
        groups=group,
        seed=2,
    )
    assert naive.value == pytest.approx(alone.value) == pytest.approx(clustered.value)
    width = {k: e.high - e.low for k, e in (("a", alone), ("n", naive), ("c", clustered))}
    assert width["n"] < 0.6 * width["a"]  # sqrt(5) too narrow when rows are taken as independent
    assert width["c"] == pytest.approx(width["a"], rel=0.15)


def test_logged_rewards_are_the_realised_value() -> None:
    econ = RetryEconomics(margin=0.02)
    got = logged_rewards(
        np.array([1, 0, 1]),
        np.array([100.0, 50.0, 10.0]),
        np.array([0, 1, 1]),
        np.array([0.1, 0.3]),
        econ,
    )
    np.testing.assert_allclose(got, [2.0 - 0.1, -0.3, 0.2 - 0.3])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"propensity": np.array([0.5, 0.0])}, r"outside \(0, 1\]"),
        ({"propensity": np.array([0.5, 1.2])}, r"outside \(0, 1\]"),
        ({"propensity": np.array([0.5, np.nan])}, r"outside \(0, 1\]"),
        ({"route": np.array([0, 3])}, "index"),
        ({"reward": np.array([1.0, np.nan])}, "finite"),
        ({"probs": np.array([[0.5, 0.2, 0.2], [1, 0, 0]])}, "summing to 1"),
        ({"estimator": "dr"}, "reward_model"),
        ({"estimator": "magic"}, "unknown estimator"),
    ],
)
def test_estimate_rejects_bad_input(change: dict, match: str) -> None:
    args = {
        "estimator": "ips",
        "probs": np.array([[1.0, 0, 0], [0, 1.0, 0]]),
        "route": np.array([0, 1]),
        "propensity": np.array([0.5, 0.5]),
        "reward": np.array([1.0, 0.0]),
    } | change
    with pytest.raises(IssuerSeqError, match=match):
        estimate(
            args["estimator"], args["probs"], args["route"], args["propensity"], args["reward"]
        )


def test_matches_open_bandit_pipeline_where_installed() -> None:
    """Parity with obp's estimators (optional: obp is not a dependency, see ope.py)."""
    ope = pytest.importorskip("obp.ope")
    b = bandit(2000, seed=9)
    pi = target(b["p_true"])
    q = np.clip(b["p_true"] + 0.05, 0, 1)
    kw = {
        "reward": b["reward"],
        "action": b["route"],
        "pscore": b["propensity"],
        "action_dist": pi[:, :, None],
    }
    ours = estimate_all(pi, b["route"], b["propensity"], b["reward"], q, n_bootstrap=0)
    ips = ope.InverseProbabilityWeighting().estimate_policy_value(**kw)
    snips = ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**kw)
    dr = ope.DoublyRobust().estimate_policy_value(
        **kw, estimated_rewards_by_reg_model=q[:, :, None]
    )
    assert ours["ips"].value == pytest.approx(ips, rel=1e-12)
    assert ours["snips"].value == pytest.approx(snips, rel=1e-12)
    assert ours["dr"].value == pytest.approx(dr, rel=1e-12)
