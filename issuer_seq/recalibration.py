"""Recalibration to recent outcomes: a logit intercept refitted, as time goes on, to the last
hours' outcomes of what was scored.

A model's calibration is fitted once, on the validation days (train/calibrate.py). When the
approval rate moves later (a pay cycle, an issuer tightening its rules, a season), every
probability is off by about the same amount on the logit scale, and nothing fitted before can
see it. `RecentIntercept` follows it: every `step_h` hours it refits one number, the intercept b
that maximizes the likelihood of the outcomes of the last `window_h` hours under p =
sigmoid(logit + b), and adds b to every logit until the next refit. It reads only outcomes
known before the step began, so a score never depends on its own outcome or on a later one.

The service keeps one per process (`Scorer(recalibration=...)`: each score's logit is kept
until its outcome is observed); `evaluate` replays the test split through the same class
(`recalibrated`), so what is reported is what is served. docs/evaluation.md, "Recalibration
to recent outcomes".

Route choice needs more than one number: an issuer may decline through one acquirer route
for days while its others are fine, and a model's route effects are fitted once too.
`IssuerRouteIntercepts` keeps one intercept per issuer x route instead, each refitted every
`step_h` hours to that pair's outcomes of the last `window_h` hours, shrunk towards 0 by a
normal prior of `prior_sd` (a pair with few outcomes stays near its model). The service adds
them to each candidate route's logit (`Scorer(route_recalibration=...)`); `evaluate` replays the
test split through the same class (`recalibrated_routes`). docs/routing.md, "Route choice
recalibrated per issuer x route".
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from issuer_seq.errors import IssuerSeqError

_EPS = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)), p clipped to [1e-6, 1 - 1e-6]."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def _logit(p: float) -> float:
    """`logit` of one probability."""
    q = min(max(p, _EPS), 1 - _EPS)
    return math.log(q / (1 - q))


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_intercept(z: np.ndarray, y: np.ndarray, start: float = 0.0, steps: int = 20) -> float:
    """The b maximizing sum log-likelihood of y (0/1) under sigmoid(z + b): Newton's method
    (the likelihood is concave in b). Outcomes all of one kind have no finite optimum: b is
    bounded to [-5, 5] on the logit scale."""
    b = start
    for _ in range(steps):
        p = sigmoid(z + b)
        step = float(np.sum(y - p)) / max(float(np.sum(p * (1 - p))), 1e-9)
        b = float(np.clip(b + step, -5.0, 5.0))
        if abs(step) < 1e-7:
            break
    return b


@dataclass(frozen=True)
class RecalibrationSettings:
    """`window_h`: hours of outcomes each refit reads; `step_h`: hours between refits;
    `min_outcomes`: fewer outcomes in the window and the intercept is 0 (no correction);
    `max_outcomes`: at most this many of the window's latest outcomes are kept (bounds the
    refit's time and the memory)."""

    window_h: float = 24.0
    step_h: float = 1.0
    min_outcomes: int = 500
    max_outcomes: int = 50_000

    def __post_init__(self) -> None:
        if not self.window_h > 0 or not self.step_h > 0:
            raise IssuerSeqError(
                f"recalibration window_h and step_h must be > 0, got {self.window_h} and "
                f"{self.step_h}"
            )
        if self.min_outcomes < 1 or self.max_outcomes < self.min_outcomes:
            raise IssuerSeqError(
                "recalibration needs 1 <= min_outcomes <= max_outcomes, got "
                f"{self.min_outcomes} and {self.max_outcomes}"
            )


class RecentIntercept:
    """The intercept of the outcomes of the last `window_h` hours, refitted every `step_h`.

    `add(t, logit, approved)` records an outcome known at time t (epoch seconds);
    `bias(t)` is the intercept to add to a logit scored at time t: fitted, at the start of
    t's step, to the outcomes known before that start and within the window. Times must not
    go back by more than a step (a refit is never undone).
    """

    def __init__(self, settings: RecalibrationSettings | None = None) -> None:
        self.settings = settings or RecalibrationSettings()
        self.window_s = self.settings.window_h * 3600.0
        self.step_s = self.settings.step_h * 3600.0
        # the latest max_outcomes outcomes, a ring: times (-inf: empty), logits, labels
        size = self.settings.max_outcomes
        self._t = np.full(size, -np.inf)
        self._z = np.zeros(size)
        self._y = np.zeros(size)
        self._added = 0
        self.refitted_at: float | None = None  # the start of the current step (epoch s)
        self.value = 0.0
        self.fitted_on = 0  # outcomes the current value was fitted to

    def add(self, t: float, logit_value: float, approved: bool | float) -> None:
        i = self._added % len(self._t)
        self._t[i], self._z[i], self._y[i] = t, logit_value, float(approved)
        self._added += 1

    def bias(self, t: float) -> float:
        start = float(np.floor(t / self.step_s)) * self.step_s
        if self.refitted_at is None or start > self.refitted_at:
            self._refit(start)
            self.refitted_at = start
        return self.value

    def _refit(self, start: float) -> None:
        known = (self._t >= start - self.window_s) & (self._t < start)
        self.fitted_on = int(known.sum())
        if self.fitted_on < self.settings.min_outcomes:
            self.value = 0.0
            return
        self.value = fit_intercept(self._z[known], self._y[known], start=self.value)


class FollowOutcomes:
    """`RecentIntercept` in a service: `adjust` recalibrates scores and keeps each one's logit
    under its attempt's key until `observed` records the attempt's outcome with it. An outcome
    whose attempt was not scored here (another replica, a restart, a route call) is not
    recorded; at most `max_pending` scores wait for their outcomes (the oldest are let go).
    Thread-safe."""

    def __init__(self, settings: RecalibrationSettings, max_pending: int = 200_000) -> None:
        self.intercept = RecentIntercept(settings)
        self.max_pending = max_pending
        self._pending: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def adjust(
        self, p: np.ndarray, t: Sequence[float], keys: Sequence[Hashable] | None = None
    ) -> np.ndarray:
        """p (B,) scored at times t (B,) -> recalibrated (B,); `keys`: keep their logits.
        Scalar arithmetic (math): a request's few rows cost less than numpy's calls."""
        z = [_logit(float(pi)) for pi in p]
        with self._lock:
            bias = [self.intercept.bias(ti) for ti in t]
            for key, zi in zip(keys or (), z, strict=False):
                self._pending[key] = zi
                self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        out = [1.0 / (1.0 + math.exp(-(zi + bi))) for zi, bi in zip(z, bias, strict=True)]
        return np.array(out, dtype=np.asarray(p).dtype)

    def observed(self, key: Hashable, t: float, approved: bool) -> bool:
        """Record the outcome of the attempt scored under `key`; False if none was."""
        with self._lock:
            z = self._pending.pop(key, None)
            if z is None:
                return False
            self.intercept.add(t, z, approved)
        return True


def recalibrated(
    p: np.ndarray,
    approved: np.ndarray,
    t: np.ndarray,
    settings: RecalibrationSettings | None = None,
    before: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """p (N,) scored at times t (N,) in time order, recalibrated as a service with
    `RecentIntercept` would have answered them: each scored, then its outcome `approved`
    recorded. `before`: (p, approved, t) of outcomes known before the first (the days before
    a test split), recorded first. Returns the recalibrated p (N,)."""
    t = np.asarray(t, dtype=np.float64)
    if len(t) and np.any(np.diff(t) < 0):
        raise IssuerSeqError("recalibrated: the attempts must be in time order")
    follow = RecentIntercept(settings)
    if before is not None:
        order = np.argsort(before[2], kind="stable")
        for pb, yb, tb in zip(
            logit(before[0])[order], before[1][order], before[2][order], strict=True
        ):
            follow.add(tb, pb, yb)
    z = logit(p)
    out = np.empty(len(z))
    for i, (zi, yi, ti) in enumerate(zip(z, approved, t, strict=True)):
        out[i] = zi + follow.bias(ti)
        follow.add(ti, zi, yi)
    return sigmoid(out)


def fit_group_intercepts(
    z: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    prior_sd: float,
    steps: int = 8,
    min_evidence: float = 0.0,
) -> np.ndarray:
    """(n_groups,) the intercept of each group, b_g maximizing the log-likelihood of its
    outcomes y (0/1) under sigmoid(z + b_g) minus b_g^2 / (2 prior_sd^2): the posterior mode
    under a normal prior. Newton's method, every group at once (each problem is concave);
    bounded to [-5, 5]. A group without outcomes gets 0.

    `min_evidence` > 0 keeps b_g only where the outcomes say the model is off: where twice the
    log-likelihood b_g gains over 0 (a likelihood-ratio statistic; chi-squared with one degree
    of freedom, mean 1, when the model is right) is at least `min_evidence`; elsewhere 0. In
    steady times the intercepts then stay at 0 instead of following noise."""
    precision = 1.0 / prior_sd**2
    b = np.zeros(n_groups)
    for _ in range(steps):
        p = sigmoid(z + b[groups])
        gradient = np.bincount(groups, y - p, n_groups) - precision * b
        curvature = np.bincount(groups, p * (1 - p), n_groups) + precision
        step = gradient / curvature
        b = np.clip(b + step, -5.0, 5.0)
        if np.max(np.abs(step), initial=0.0) < 1e-7:
            break
    if min_evidence > 0:
        b = np.where(_likelihood_ratio(z, y, groups, n_groups, b) >= min_evidence, b, 0.0)
    return b


def _likelihood_ratio(
    z: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int, b: np.ndarray
) -> np.ndarray:
    """(n_groups,) 2 [log L(b_g) - log L(0)] of each group's outcomes under sigmoid(z + b)."""

    def log_likelihood(shift: np.ndarray) -> np.ndarray:
        # log sigmoid(x) for approvals, log sigmoid(-x) for declines, without overflow
        x = (z + shift) * (2 * y - 1)
        return -np.logaddexp(0.0, -x)

    gain = log_likelihood(b[groups]) - log_likelihood(np.zeros_like(z))
    return 2.0 * np.bincount(groups, gain, n_groups)


@dataclass(frozen=True)
class RouteRecalibrationSettings:
    """`window_h`: hours of outcomes each refit reads; `step_h`: hours between refits;
    `prior_sd`: the spread, on the logit scale, expected of an issuer x route intercept before
    any outcome (smaller: more outcomes needed to move it); `min_evidence`: an intercept is
    kept only where its likelihood-ratio statistic against 0 reaches it (0: always kept;
    `fit_group_intercepts`); `max_outcomes`: at most this many of the latest outcomes are kept
    (bounds the refit's time and the memory)."""

    window_h: float = 24.0
    step_h: float = 1.0
    prior_sd: float = 0.2
    min_evidence: float = 0.0
    max_outcomes: int = 200_000

    def __post_init__(self) -> None:
        if not self.window_h > 0 or not self.step_h > 0 or not self.prior_sd > 0:
            raise IssuerSeqError(
                "route recalibration window_h, step_h and prior_sd must be > 0, got "
                f"{self.window_h}, {self.step_h} and {self.prior_sd}"
            )
        if not self.min_evidence >= 0:
            raise IssuerSeqError(
                f"route recalibration min_evidence must be >= 0, got {self.min_evidence}"
            )
        if self.max_outcomes < 1:
            raise IssuerSeqError(
                f"route recalibration max_outcomes must be >= 1, got {self.max_outcomes}"
            )


class IssuerRouteIntercepts:
    """One intercept per issuer x route, each fitted to that pair's outcomes of the last
    `window_h` hours and refitted every `step_h` (`fit_group_intercepts`).

    `add(t, issuer, route, logit, approved)` records the outcome of an attempt sent through
    `route`, known at time t (epoch seconds), with the logit it was scored at through that
    route; `bias(t, issuer, route)`: the intercept to add to a logit of the pair scored at time
    t, fitted at the start of t's step to the outcomes known before that start. Times must not
    go back by more than a step (a refit is never undone)."""

    def __init__(self, settings: RouteRecalibrationSettings | None = None) -> None:
        self.settings = settings or RouteRecalibrationSettings()
        self.window_s = self.settings.window_h * 3600.0
        self.step_s = self.settings.step_h * 3600.0
        size = self.settings.max_outcomes
        self._t = np.full(size, -np.inf)  # a ring of the latest outcomes (-inf: empty)
        self._z = np.zeros(size)
        self._y = np.zeros(size)
        self._g = np.zeros(size, np.int64)  # the pair's id (`_ids`)
        self._ids: dict[tuple[str, str], int] = {}  # issuers x routes seen: small
        self._added = 0
        self.refitted_at: float | None = None
        self.values: dict[tuple[str, str], float] = {}  # of the pairs with outcomes
        self.fitted_on = 0

    def add(
        self, t: float, issuer: str, route: str, logit_value: float, approved: bool | float
    ) -> None:
        key = (str(issuer), str(route))
        g = self._ids.setdefault(key, len(self._ids))
        i = self._added % len(self._t)
        self._t[i], self._z[i], self._y[i], self._g[i] = t, logit_value, float(approved), g
        self._added += 1

    def bias(self, t: float, issuer: str, route: str) -> float:
        start = math.floor(t / self.step_s) * self.step_s
        if self.refitted_at is None or start > self.refitted_at:
            self._refit(start)
            self.refitted_at = start
        return self.values.get((str(issuer), str(route)), 0.0)

    def _refit(self, start: float) -> None:
        known = (self._t >= start - self.window_s) & (self._t < start)
        self.fitted_on = int(known.sum())
        if not self.fitted_on:
            self.values = {}
            return
        ids, groups = np.unique(self._g[known], return_inverse=True)
        b = fit_group_intercepts(
            self._z[known],
            self._y[known],
            groups,
            len(ids),
            self.settings.prior_sd,
            min_evidence=self.settings.min_evidence,
        )
        keys = list(self._ids)  # in id order
        self.values = {keys[g]: float(v) for g, v in zip(ids, b, strict=True)}


class FollowRouteOutcomes:
    """`IssuerRouteIntercepts` in a service: `adjust` recalibrates an attempt's p through
    each of its routes and, given the attempt's key, keeps the logits until `observed` records
    the outcome through the route the attempt went. An outcome through a route not scored for
    it here is not recorded; at most `max_pending` attempts wait for their outcomes (the oldest
    are let go). Thread-safe."""

    def __init__(self, settings: RouteRecalibrationSettings, max_pending: int = 200_000) -> None:
        self.intercepts = IssuerRouteIntercepts(settings)
        self.max_pending = max_pending
        self._pending: OrderedDict[Hashable, dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def adjust(
        self,
        p: np.ndarray,
        t: float,
        issuer: str,
        routes: Sequence[str],
        key: Hashable | None = None,
    ) -> np.ndarray:
        """p (R,) of one attempt through `routes` at time t -> recalibrated (R,); `key`: keep
        the logits for the attempt's outcome."""
        if len(p) != len(routes):
            raise IssuerSeqError(f"{len(p)} probabilities for {len(routes)} routes")
        z = [_logit(float(pi)) for pi in p]
        names = [str(r) for r in routes]
        with self._lock:
            bias = [self.intercepts.bias(t, issuer, r) for r in names]
            if key is not None:
                self._pending.setdefault(key, {}).update(zip(names, z, strict=True))
                self._pending.move_to_end(key)
                while len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
        out = [1.0 / (1.0 + math.exp(-(zi + bi))) for zi, bi in zip(z, bias, strict=True)]
        return np.array(out, dtype=np.asarray(p).dtype)

    def observed(self, key: Hashable, t: float, issuer: str, route: str, approved: bool) -> bool:
        """Record the outcome through `route` of the attempt scored under `key`; False if it
        was not scored through that route here."""
        with self._lock:
            z = self._pending.pop(key, {}).get(str(route))
            if z is None:
                return False
            self.intercepts.add(t, issuer, route, z, approved)
        return True


def recalibrated_routes(
    p: np.ndarray,
    issuer: np.ndarray,
    route: np.ndarray,
    approved: np.ndarray,
    t: np.ndarray,
    route_names: Sequence[str],
    settings: RouteRecalibrationSettings | None = None,
) -> np.ndarray:
    """p (N, R) of N attempts in time order through each route of `route_names` (NaN where
    the merchant lacks it), recalibrated per issuer x route as a service with
    `IssuerRouteIntercepts` would have answered them: each scored through every route, then
    its outcome `approved` through its logged `route` (N,), a column of p, recorded with its
    logit there. Returns (N, R), NaN where p is."""
    p = np.asarray(p, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    route = np.asarray(route, dtype=np.int64)
    if (
        p.ndim != 2
        or p.shape[1] != len(route_names)
        or not (len(issuer) == len(route) == len(approved) == len(t) == len(p))
    ):
        raise IssuerSeqError(
            f"recalibrated_routes: p {p.shape} needs one row per attempt and one column per "
            f"route of {list(route_names)}"
        )
    if len(t) and np.any(np.diff(t) < 0):
        raise IssuerSeqError("recalibrated_routes: the attempts must be in time order")
    z = logit(p)
    logged = z[np.arange(len(z)), route]
    if np.any(np.isnan(p[np.arange(len(p)), route])):
        raise IssuerSeqError("recalibrated_routes: an attempt's logged route has no p")
    follow = IssuerRouteIntercepts(settings)
    names = [str(r) for r in route_names]
    out = np.empty_like(z)
    for i, (iss, ti) in enumerate(zip(np.asarray(issuer).astype(str), t, strict=True)):
        out[i] = z[i] + [follow.bias(ti, iss, r) for r in names]
        follow.add(ti, iss, names[route[i]], logged[i], approved[i])
    return np.where(np.isnan(p), np.nan, sigmoid(out))


def settings_from(
    block: Mapping[str, Any] | None,
    kind: type[RecalibrationSettings] | type[RouteRecalibrationSettings] = RecalibrationSettings,
) -> Any:
    """A config block (`enabled` and the fields of `kind`: RecalibrationSettings or
    RouteRecalibrationSettings) -> its settings, or None when it is missing or `enabled` is
    false. An unknown key is an error naming it."""
    if block is None:
        return None
    values = dict(block)
    if not values.pop("enabled", True):
        return None
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        what = "route_recalibration" if kind is RouteRecalibrationSettings else "recalibration"
        raise IssuerSeqError(
            f"{what}: unknown key(s) {unknown}; known: enabled, " + ", ".join(known)
        )
    return kind(**values)
