"""Rule-based answers for when the model is slow, broken or not loaded yet (fail open).

A payment must not wait for, or fail because of, the scorer: the service answers from these
rules instead and flags the answer `fallback: true`.

* Approval: the issuer's recent approval rate from the state store's events, shrunk towards a
  global prior by `prior_weight` pseudo-events (one event alone would say 0 or 1); the prior
  alone when the issuer has no events. The prior is the training split's approval rate from
  the manifest, else 0.85.
* Retry: a customer-initiated SCA decline sent without 3-D Secure is retried at once with it
  (`now_with_3ds`), where the rules allow that. Otherwise a delay by the decline's cause
  (technical 30 min, funds and limits 2 days, generic, SCA and unknown codes 1 day; never for
  hard and data declines), no earlier than a Mastercard advice code's wait, then the first
  delay at or after it that the network rules allow (`advice.allowed_retries`, on the card's
  history at the merchant); none allowed: no retry. The curve is a flat prior (the training
  split's retry success rate, else 0.5) where the rules allow a retry and 0 where they do
  not: a rule, not an estimate. A retry whose expected value at that prior is not positive
  (a tiny amount against the attempt fee) is not advised. When the state store cannot be
  read, the rules cannot be checked: no retry (`state_unavailable`).

numpy and the rules only: this must keep working when onnxruntime does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from issuer_seq.delays import grid_seconds
from issuer_seq.retry_policy import (
    DEFAULT_ECONOMICS,
    DONT_RETRY,
    RETRY_NOW_WITH_3DS,
    Action,
    RetryEconomics,
    retry_values,
)
from issuer_seq.rules import (
    DEFAULT_RULES,
    MAC_RETRY_AFTER,
    MASTERCARD,
    Cause,
    NetworkRules,
    cause_of,
    normalize_code,
    normalize_network,
)
from issuer_seq.serve.advice import RetryAdvice, allowed_retries, three_ds_now_allowed
from issuer_seq.serve.inputs import Event, Raw

DEFAULT_APPROVAL_PRIOR = 0.85
DEFAULT_RETRY_PRIOR = 0.5

_HOUR, _DAY = 3_600, 86_400
#: the code-based schedule: seconds to wait after a decline of each cause
CAUSE_DELAY_S: dict[Cause, int] = {
    Cause.TECHNICAL: 30 * 60,  # a switch or issuer outage is over within minutes
    Cause.FUNDS: 2 * _DAY,  # wait for money to arrive
    Cause.LIMIT: 2 * _DAY,  # velocity and amount limits reset
    Cause.GENERIC: _DAY,
    Cause.SCA: _DAY,  # 1A is blocked by the rules without 3-D Secure; MC 65 may be a limit
    Cause.OTHER: _DAY,
}
NEVER: frozenset[Cause] = frozenset({Cause.HARD, Cause.DATA, Cause.APPROVED})


def _prior(manifest: Mapping[str, Any], key: str, default: float) -> float:
    train = manifest.get("training_metrics", {}).get("dataset", {}).get("train", {})
    value = train.get(key)
    if isinstance(value, int | float) and 0.0 < float(value) < 1.0:
        return float(value)
    return default


@dataclass(frozen=True)
class FallbackPolicy:
    grid: tuple[str, ...]
    grid_s: np.ndarray  # (G,) seconds
    approval_prior: float = DEFAULT_APPROVAL_PRIOR
    retry_prior: float = DEFAULT_RETRY_PRIOR
    prior_weight: float = 5.0
    rules: NetworkRules = DEFAULT_RULES
    economics: RetryEconomics = DEFAULT_ECONOMICS

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], prior_weight: float) -> FallbackPolicy:
        grid = tuple(str(g) for g in manifest["delay_grid"])
        return cls(
            grid=grid,
            grid_s=grid_seconds(grid),
            approval_prior=_prior(manifest, "approval_rate", DEFAULT_APPROVAL_PRIOR),
            retry_prior=_prior(manifest, "retry_success_rate", DEFAULT_RETRY_PRIOR),
            prior_weight=prior_weight,
        )

    # -- approval -------------------------------------------------------------------------
    def approval(self, issuer_events: Sequence[Event], t: int | None = None) -> float:
        """The issuer's recent approval rate (events before t), shrunk to the prior."""
        codes = [
            e.raw.response_code
            for e in issuer_events
            if e.raw is not None and e.raw.response_code and (t is None or e.t < t)
        ]
        if not codes:
            return self.approval_prior
        approved = sum(cause_of(c) == Cause.APPROVED for c in codes)
        w = self.prior_weight
        return (approved + w * self.approval_prior) / (len(codes) + w)

    # -- retries --------------------------------------------------------------------------
    def allowed(
        self,
        t: int,
        merchant: str,
        raw: Raw,
        card_history: Sequence[Event] = (),
        initiator: str = "MIT",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The network rules at every grid delay (`advice.allowed_retries`; `card_history`:
        the card's events at the merchant): (allowed (G,) bool, rule (G,) str)."""
        return allowed_retries(t, merchant, raw, card_history, initiator, self.grid_s, self.rules)

    def curve(self, allowed: np.ndarray) -> np.ndarray:
        """The flat prior where a retry is allowed, 0 where not. (G,)"""
        return np.where(allowed, self.retry_prior, 0.0)

    def target_s(self, raw: Raw) -> int | None:
        """The code-based wait for a decline, or None for never."""
        cause = cause_of(raw.response_code, raw.network)
        if cause in NEVER:
            return None
        wait = CAUSE_DELAY_S[cause]
        mac = MAC_RETRY_AFTER.get(normalize_code(raw.advice_code))
        if normalize_network(raw.network) == MASTERCARD and mac is not None:
            wait = max(wait, int(mac.total_seconds()))
        return wait

    def no_history(self) -> RetryAdvice:
        """The answer when the state store cannot be read: no retry (`state_unavailable`)."""
        return RetryAdvice(
            curve=dict.fromkeys(self.grid, 0.0),
            action=DONT_RETRY,
            expected_value=0.0,
            rule="state_unavailable",
            allowed=dict.fromkeys(self.grid, False),
        )

    def retry(
        self,
        t: int,
        merchant: str,
        raw: Raw,
        card_history: Sequence[Event] = (),
        initiator: str = "MIT",
        three_ds: bool = False,
    ) -> RetryAdvice:
        allowed, rules = self.allowed(t, merchant, raw, card_history, initiator)
        curve = self.curve(allowed)
        econ = self.economics
        action: Action = DONT_RETRY
        value = 0.0
        amount = np.array([raw.amount])
        if three_ds_now_allowed(t, merchant, raw, card_history, initiator, three_ds, self.rules):
            action, rule = RETRY_NOW_WITH_3DS, "code_rule_sca_3ds"
            at_once = np.zeros(1)  # no delay cost
            value = float(retry_values(np.array([[self.retry_prior]]), amount, at_once, econ)[0, 0])
        elif (target := self.target_s(raw)) is None:
            blocking = [str(r) for r in rules if r != "ok"]
            rule = blocking[0] if blocking else "never_retry"
        else:
            first = min(int(np.searchsorted(self.grid_s, target, side="left")), len(self.grid) - 1)
            later = [i for i in range(first, len(self.grid)) if allowed[i]]
            if later:
                action = Action.decode(later[0], self.grid, self.grid_s)
                rule = f"code_rule_{cause_of(raw.response_code, raw.network).value}"
                values = retry_values(curve[None, :], amount, self.grid_s, econ)
                value = float(values[0, later[0]])
            else:
                rule = str(rules[first]) if rules[first] != "ok" else "not_allowed"
        if action.retries and value <= 0:
            # the fee and the wait outweigh what the retry could recover
            action, rule, value = DONT_RETRY, "not_worth_it", 0.0
        return RetryAdvice(
            curve={label: float(p) for label, p in zip(self.grid, curve, strict=True)},
            action=action,
            expected_value=value,
            rule=rule,
            allowed={label: bool(a) for label, a in zip(self.grid, allowed, strict=True)},
        )
