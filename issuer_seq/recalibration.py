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


def settings_from(block: Mapping[str, Any] | None) -> RecalibrationSettings | None:
    """A config block (`enabled` and the fields of RecalibrationSettings) -> its settings, or
    None when it is missing or `enabled` is false. An unknown key is an error naming it."""
    if block is None:
        return None
    values = dict(block)
    if not values.pop("enabled", True):
        return None
    unknown = sorted(set(values) - {f.name for f in fields(RecalibrationSettings)})
    if unknown:
        raise IssuerSeqError(
            f"recalibration: unknown key(s) {unknown}; known: enabled, "
            + ", ".join(f.name for f in fields(RecalibrationSettings))
        )
    return RecalibrationSettings(**values)
