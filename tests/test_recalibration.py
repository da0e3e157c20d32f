"""Recalibration to recent outcomes (issuer_seq/recalibration.py): it follows a shift of the
approval rate, changes nothing where there is none, and never reads an outcome it could not
have known."""

from __future__ import annotations

import numpy as np
import pytest

from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.metrics import approval_metrics, recalibration_metrics
from issuer_seq.recalibration import (
    FollowOutcomes,
    FollowRouteOutcomes,
    RecalibrationSettings,
    RecentIntercept,
    RouteRecalibrationSettings,
    fit_group_intercepts,
    fit_intercept,
    logit,
    recalibrated,
    recalibrated_routes,
    settings_from,
    sigmoid,
)

HOUR = 3600.0


def world(shift: float, seed: int = 0, days: int = 6, per_hour: int = 200):
    """A model's p (right until day 3) and outcomes: from day 3 on the truth's logit moves by
    `shift`. Returns t, p, y (time order)."""
    rng = np.random.default_rng(seed)
    n = days * 24 * per_hour
    t = np.sort(rng.uniform(0, days * 24 * HOUR, n))
    z = rng.normal(1.5, 1.2, n)
    truth = z + np.where(t >= 3 * 24 * HOUR, shift, 0.0)
    y = (rng.uniform(size=n) < sigmoid(truth)).astype(float)
    return t, sigmoid(z), y


def test_the_intercept_fit_recovers_a_known_shift() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(1.0, 1.0, 200_000)
    y = (rng.uniform(size=len(z)) < sigmoid(z - 0.7)).astype(float)
    assert fit_intercept(z, y) == pytest.approx(-0.7, abs=0.03)
    # outcomes all of one kind have no finite optimum: bounded
    assert fit_intercept(z[:100], np.ones(100)) == 5.0


def test_it_follows_a_shift_and_leaves_a_steady_world_alone() -> None:
    settings = RecalibrationSettings(window_h=24, step_h=1, min_outcomes=500)
    t, p, y = world(shift=-0.8)
    before, after = t < 3 * 24 * HOUR, t >= 3 * 24 * HOUR
    q = recalibrated(
        p[after], y[after], t[after], settings, before=(p[before], y[before], t[before])
    )
    fixed, moved = approval_metrics(p[after], y[after]), approval_metrics(q, y[after])
    assert moved["logloss"] < fixed["logloss"] - 0.005
    assert fixed["ece"] > 0.05 and moved["ece"] < 0.03
    # a day after the shift began, the intercept is the shift
    last = t[after] >= 5 * 24 * HOUR
    assert np.median(logit(q[last]) - logit(p[after][last])) == pytest.approx(-0.8, abs=0.1)
    # no shift: the intercept stays near zero and the log loss where it was
    t, p, y = world(shift=0.0, seed=2)
    before, after = t < 3 * 24 * HOUR, t >= 3 * 24 * HOUR
    q = recalibrated(
        p[after], y[after], t[after], settings, before=(p[before], y[before], t[before])
    )
    assert np.abs(logit(q) - logit(p[after])).max() < 0.15
    assert approval_metrics(q, y[after])["logloss"] == pytest.approx(
        approval_metrics(p[after], y[after])["logloss"], abs=0.001
    )


def test_a_score_never_reads_its_own_outcome_or_a_later_one() -> None:
    """Changing the outcomes from some time on changes no score before the step after it."""
    settings = RecalibrationSettings(window_h=6, step_h=1, min_outcomes=50)
    t, p, y = world(shift=-1.0, days=4, per_hour=60)
    q = recalibrated(p, y, t, settings)
    cut = 50 * HOUR + 1234.0  # inside a step
    flipped = np.where(t >= cut, 1 - y, y)
    q2 = recalibrated(p, flipped, t, settings)
    next_step = (np.floor(cut / HOUR) + 1) * HOUR
    np.testing.assert_array_equal(q[t < next_step], q2[t < next_step])
    assert not np.array_equal(q[t >= next_step], q2[t >= next_step])


def test_few_outcomes_mean_no_correction() -> None:
    settings = RecalibrationSettings(window_h=24, step_h=1, min_outcomes=10_000)
    t, p, y = world(shift=-1.0, days=4, per_hour=50)  # 1,200 outcomes a day
    np.testing.assert_allclose(recalibrated(p, y, t, settings), p, rtol=1e-9)
    follow = RecentIntercept(settings)
    assert follow.bias(0.0) == 0.0 and follow.fitted_on == 0


def test_the_window_forgets_old_outcomes_and_keeps_at_most_max_outcomes() -> None:
    follow = RecentIntercept(
        RecalibrationSettings(window_h=2, step_h=1, min_outcomes=1, max_outcomes=100)
    )
    for i in range(300):  # one outcome a minute, all declined, for five hours
        follow.add(i * 60.0, 2.0, 0.0)
    assert follow.bias(5 * HOUR) < -2.0
    assert follow.fitted_on == 100  # the window's 120, the latest 100 kept
    follow.bias(10 * HOUR)  # nothing in the window ending at hour 10
    assert follow.fitted_on == 0 and follow.value == 0.0


def test_a_service_records_only_the_outcomes_of_attempts_it_scored() -> None:
    settings = RecalibrationSettings(window_h=24, step_h=1, min_outcomes=1)
    follow = FollowOutcomes(settings, max_pending=2)
    p = follow.adjust(np.array([0.9, 0.8], np.float32), [10.0, 20.0], ["a", "b"])
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, [0.9, 0.8], rtol=1e-6)  # nothing known yet
    assert follow.observed("a", 10.0, False) and not follow.observed("a", 10.0, False)
    assert not follow.observed("never scored", 15.0, True)
    follow.adjust(np.array([0.5, 0.5]), [30.0, 40.0], ["c", "d"])  # "b" let go: max_pending 2
    assert not follow.observed("b", 20.0, True)
    # an hour on, the one recorded decline at p 0.9 pulls the next score down
    (later,) = follow.adjust(np.array([0.9]), [HOUR + 1.0])
    assert later < 0.9


def test_settings_are_checked_and_a_disabled_block_is_none() -> None:
    assert settings_from(None) is None
    assert settings_from({"enabled": False, "window_h": 5}) is None
    assert settings_from({"enabled": True, "window_h": 6}) == RecalibrationSettings(window_h=6)
    with pytest.raises(IssuerSeqError, match="unknown key.*windows_h"):
        settings_from({"enabled": True, "windows_h": 6})
    with pytest.raises(IssuerSeqError, match="window_h and step_h must be > 0"):
        RecalibrationSettings(step_h=0)
    with pytest.raises(IssuerSeqError, match="min_outcomes <= max_outcomes"):
        RecalibrationSettings(min_outcomes=10, max_outcomes=5)
    with pytest.raises(IssuerSeqError, match="time order"):
        recalibrated(np.array([0.5, 0.5]), np.array([1, 0]), np.array([2.0, 1.0]))


def test_the_serve_and_evaluate_configs_compose_to_settings() -> None:
    from hydra import compose, initialize_config_dir

    from issuer_seq.cli import conf_dir
    from issuer_seq.commands.serve import settings

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        off = settings(compose("serve", ["artifact_dir=x"]))
        on = settings(compose("serve", ["artifact_dir=x", "recalibration.enabled=true"]))
        evaluate = compose("evaluate", ["data_dir=x", "run_dir=y"])
    assert off.recalibration is None  # off in serving unless asked for
    assert on.recalibration == RecalibrationSettings()
    assert settings_from(evaluate.recalibration) == RecalibrationSettings()
    assert off.route_recalibration is None and on.route_recalibration is None
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        routes_on = settings(
            compose("serve", ["artifact_dir=x", "route_recalibration.enabled=true"])
        )
    assert routes_on.route_recalibration == RouteRecalibrationSettings()
    assert (
        settings_from(evaluate.route_recalibration, RouteRecalibrationSettings)
        == RouteRecalibrationSettings()
    )


def test_evaluates_section_says_how_much_was_corrected() -> None:
    t, p, y = world(shift=-0.8)
    before, after = t < 3 * 24 * HOUR, t >= 3 * 24 * HOUR
    settings = RecalibrationSettings()
    out = recalibration_metrics(
        {"m": (p[before], p[after])}, (y[before], t[before]), y[after], t[after], settings
    )
    assert out["m"]["corrected_share"] == 1.0  # 4,800 outcomes a day: every step corrected
    assert out["m"]["ece_change"] < 0 and out["outcomes_before"] == before.sum()
    few = RecalibrationSettings(min_outcomes=10**6, max_outcomes=10**6)
    out = recalibration_metrics(
        {"m": (p[before], p[after])}, (y[before], t[before]), y[after], t[after], few
    )
    assert out["m"]["corrected_share"] == 0.0 and out["m"]["logloss_change"] == 0.0


# -- per issuer x route ---------------------------------------------------------------------
ROUTES = ("eu", "us", "global")


def routed_world(seed: int = 0, days: int = 4, per_hour: int = 240):
    """Attempts of 6 issuers through 3 routes, sent uniformly; a model right everywhere but
    for issuer "0" through "us", which from day 2 on declines 2 logits more (an episode the
    model does not know). Returns t, issuer, route (column), p (N, 3) the model's, y."""
    rng = np.random.default_rng(seed)
    n = days * 24 * per_hour
    t = np.sort(rng.uniform(0, days * 24 * HOUR, n))
    issuer = rng.integers(0, 6, n).astype(str)
    route = rng.integers(0, 3, n)
    z = rng.normal(1.5, 0.8, (n, 1)) + np.array([0.0, 0.3, -0.1])  # "us" the best
    episode = (issuer == "0") & (t >= 2 * 24 * HOUR)
    truth = z[np.arange(n), route] - 2.0 * (episode & (route == 1))
    y = (rng.uniform(size=n) < sigmoid(truth)).astype(float)
    return t, issuer, route, sigmoid(z), y


def test_group_intercepts_recover_shifts_and_shrink_the_groups_with_few_outcomes() -> None:
    rng = np.random.default_rng(4)
    groups = np.repeat([0, 1, 2], [50_000, 50_000, 20])
    z = rng.normal(1.0, 1.0, len(groups))
    shift = np.array([-1.0, 0.5, -1.0])[groups]
    y = (rng.uniform(size=len(z)) < sigmoid(z + shift)).astype(float)
    b = fit_group_intercepts(z, y, groups, 4, prior_sd=0.2)
    assert b[0] == pytest.approx(-1.0, abs=0.05) and b[1] == pytest.approx(0.5, abs=0.05)
    assert -1.0 < b[2] < 0.0  # 20 outcomes: pulled towards 0 by the prior
    assert b[3] == 0.0  # no outcomes
    wide = fit_group_intercepts(z, y, groups, 4, prior_sd=5.0)
    assert wide[2] < b[2]  # a wider prior lets the few outcomes move it further


def test_min_evidence_keeps_the_intercepts_of_real_shifts_and_zeroes_the_noise() -> None:
    rng = np.random.default_rng(5)
    # a shifted group, then 40 groups the model describes exactly, then one with no outcomes
    groups = np.repeat(np.arange(41), [20_000] + [2_000] * 40)
    z = rng.normal(1.5, 1.0, len(groups))
    shift = np.where(groups == 0, -1.0, 0.0)
    y = (rng.uniform(size=len(z)) < sigmoid(z + shift)).astype(float)
    free = fit_group_intercepts(z, y, groups, 42, prior_sd=0.2)
    gated = fit_group_intercepts(z, y, groups, 42, prior_sd=0.2, min_evidence=10.83)
    assert gated[0] == free[0] and free[0] < -0.8  # the shift: far past the bar, kept
    assert np.count_nonzero(free[1:41]) == 40  # without the bar every group follows its noise
    # with it (p < 0.001 for each group the model describes), about none of them does
    assert np.count_nonzero(gated[1:41]) <= 1
    kept = gated[1:41] != 0
    assert np.array_equal(gated[1:41][kept], free[1:41][kept])
    assert gated[41] == 0.0
    # the statistic is the likelihood ratio: a bar at 0 keeps every fitted intercept
    assert np.array_equal(fit_group_intercepts(z, y, groups, 42, 0.2, min_evidence=0.0), free)
    with pytest.raises(IssuerSeqError, match="min_evidence must be >= 0"):
        RouteRecalibrationSettings(min_evidence=-1.0)


def test_route_recalibration_follows_an_issuer_declining_through_one_route() -> None:
    t, issuer, route, p, y = routed_world(per_hour=1200)  # 2,000 outcomes a pair in a window
    settings = RouteRecalibrationSettings(window_h=12, step_h=1, prior_sd=0.5)
    q = recalibrated_routes(p, issuer, route, y, t, ROUTES, settings)
    b = logit(q) - logit(p)
    late = t >= 3 * 24 * HOUR  # a day into the episode
    hit = late & (issuer == "0")
    assert np.median(b[hit, 1]) < -1.2  # the episode's pair: most of the 2 logits
    # its other routes, and the other issuers: noise (a standard error of about 0.07)
    assert np.abs(np.median(b[hit][:, [0, 2]], axis=0)).max() < 0.25
    assert np.abs(np.median(b[late & (issuer != "0")], axis=0)).max() < 0.25
    # expected-value choice (no fees): issuer 0's attempts move off "us" once it declines
    before = (issuer == "0") & (t < 2 * 24 * HOUR) & (t > 24 * HOUR)
    assert np.all(np.argmax(p[hit], 1) == 1) and np.all(np.argmax(q[before], 1) == 1)
    assert np.mean(np.argmax(q[hit], 1) == 1) < 0.02


def test_route_recalibration_with_min_evidence_moves_for_the_episode_alone() -> None:
    t, issuer, route, p, y = routed_world(per_hour=1200)
    settings = RouteRecalibrationSettings(window_h=12, step_h=1, prior_sd=0.5, min_evidence=10.83)
    b = logit(recalibrated_routes(p, issuer, route, y, t, ROUTES, settings)) - logit(p)
    late = t >= 3 * 24 * HOUR
    hit = late & (issuer == "0")
    assert np.median(b[hit, 1]) < -1.2  # the episode's pair moves as without the bar
    # every other pair stays at its model's figure nearly always (was noise of about 0.07)
    assert np.mean(b[hit][:, [0, 2]] == 0.0) > 0.95
    assert np.mean(b[late & (issuer != "0")] == 0.0) > 0.95


def test_route_recalibration_reads_no_outcome_before_its_step_ends() -> None:
    """Flipping outcomes from some time on changes no score before the next step."""
    t, issuer, route, p, y = routed_world(days=2, per_hour=60)
    settings = RouteRecalibrationSettings(window_h=6, step_h=1)
    q = recalibrated_routes(p, issuer, route, y, t, ROUTES, settings)
    cut = 30 * HOUR + 1234.0
    q2 = recalibrated_routes(p, issuer, route, np.where(t >= cut, 1 - y, y), t, ROUTES, settings)
    next_step = (np.floor(cut / HOUR) + 1) * HOUR
    assert np.array_equal(q[t < next_step], q2[t < next_step])
    assert not np.allclose(q[t >= next_step], q2[t >= next_step])


def test_route_recalibration_keeps_unheld_routes_nan_and_checks_its_input() -> None:
    t, issuer, route, p, y = routed_world(days=1, per_hour=20)
    p = p.copy()
    p[route != 2, 2] = np.nan  # "global" not held where it was not the logged route
    q = recalibrated_routes(p, issuer, route, y, t, ROUTES)
    assert np.array_equal(np.isnan(q), np.isnan(p))
    with pytest.raises(IssuerSeqError, match="time order"):
        recalibrated_routes(p[::-1], issuer, route, y, t[::-1], ROUTES)
    with pytest.raises(IssuerSeqError, match="one column per route"):
        recalibrated_routes(p[:, :2], issuer, route, y, t, ROUTES)
    bad = route.copy()
    bad[route != 2] = 2  # logged through a route without p
    with pytest.raises(IssuerSeqError, match="logged route has no p"):
        recalibrated_routes(p, issuer, bad, y, t, ROUTES)
    with pytest.raises(IssuerSeqError, match="prior_sd must be > 0"):
        RouteRecalibrationSettings(prior_sd=0)
    assert settings_from({"prior_sd": 0.3}, RouteRecalibrationSettings) == (
        RouteRecalibrationSettings(prior_sd=0.3)
    )
    with pytest.raises(IssuerSeqError, match="route_recalibration: unknown key.*min_outcomes"):
        settings_from({"min_outcomes": 3}, RouteRecalibrationSettings)


def test_a_service_records_route_outcomes_only_through_the_routes_it_scored() -> None:
    follow = FollowRouteOutcomes(RouteRecalibrationSettings(), max_pending=2)
    p = np.array([0.9, 0.6], dtype=np.float32)
    out = follow.adjust(p, 10.0, "i", ["a", "b"], key="k1")
    assert out.dtype == np.float32 and np.allclose(out, p)  # no outcomes yet: no intercept
    assert not follow.observed("k1", 20.0, "i", "c", False)  # went through a route not scored
    follow.adjust(p, 10.0, "i", ["a", "b"], key="k1")
    assert follow.observed("k1", 20.0, "i", "b", False)
    assert not follow.observed("k1", 20.0, "i", "b", False)  # recorded once
    for key in ("k2", "k3", "k4"):  # at most 2 wait: k2 is let go
        follow.adjust(p[:1], 30.0, "i", ["a"], key=key)
    assert not follow.observed("k2", 40.0, "i", "a", True)
    assert follow.observed("k4", 40.0, "i", "a", True)
    # the next step's refit reads the two recorded outcomes: (i, b) declined, (i, a) approved
    later = follow.adjust(p, 7200.0, "i", ["a", "b"])
    assert follow.intercepts.fitted_on == 2
    assert logit(later[0]) > logit(p[0]) and logit(later[1]) < logit(p[1])
    with pytest.raises(IssuerSeqError, match="2 probabilities for 1 routes"):
        follow.adjust(p, 7200.0, "i", ["a"])
