"""What the model's and the fallback's retry advice share: the answer, and the network rules.

Every network rule counts one card's attempts at one merchant (Visa's reattempts of a
payment, Mastercard's do-not-retry advice codes and excessive attempts; docs/rules.md), so
the rules read the card-at-merchant stream: a card's attempts elsewhere
cannot push the ones that matter out of its bounded history.

numpy and the rules only (the fallback must work when onnxruntime does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from issuer_seq.retry_policy import NOW_3DS_DELAY_S, Action, limit_to_session
from issuer_seq.rules import (
    DEFAULT_RULES,
    AttemptColumns,
    Cause,
    NetworkRules,
    cause_of,
    check_retries,
)
from issuer_seq.serve.inputs import Event, Raw

#: the state-store stream whose events the network rules read
RULES_STREAM = "card_merchant"


@dataclass
class RetryAdvice:
    curve: dict[str, float]  # delay label -> P(retry approved)
    action: Action
    expected_value: float
    rule: str  # the network rule or policy reason that decided
    allowed: dict[str, bool] = field(default_factory=dict)
    route: str | None = None  # the route to retry on (None: no retry, or one route)


def rule_columns(
    ts: Sequence[int], merchants: Sequence[str], raws: Sequence[Raw]
) -> AttemptColumns:
    """The network rules' view of one card's attempts, row by row."""
    return AttemptColumns(
        card_id=np.zeros(len(ts), dtype=np.int64),
        ts=np.array(ts, dtype=np.int64),
        network=np.array([r.network for r in raws], dtype=str),
        merchant_id=np.array(merchants, dtype=str),
        amount=np.array([r.amount for r in raws], dtype=np.float64),
        response_code=np.array([r.response_code for r in raws], dtype=str),
        advice_code=np.array([r.advice_code for r in raws], dtype=str),
        attempt=np.array([r.attempt for r in raws], dtype=np.int64),
    )


def allowed_retries(
    t: int,
    merchant: str,
    raw: Raw,
    history: Sequence[Event],
    initiator: str,
    grid_s: np.ndarray,
    rules: NetworkRules = DEFAULT_RULES,
    three_ds: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """May the decline (t, merchant, raw) be retried after each grid delay? (allowed (G,)
    bool, rule (G,) str).

    `history`: the card's known events at the merchant (any order; those before t with an
    outcome count). The state store may have lost a payment's earlier attempts (a restart,
    a fresh replica), so the decline's own attempt number counts too (`attempt_floor`).
    A customer-initiated decline is retried only within its checkout session. `three_ds`:
    the retry would be sent with 3-D Secure.
    """
    known = [
        (e.t, e.merchant, e.raw)
        for e in history
        if e.t < t and e.raw is not None and e.raw.response_code
    ]
    ts, merchants, raws = zip((t, merchant, raw), *known, strict=True)  # rows -> columns
    cols = rule_columns(ts, merchants, raws)
    g = len(grid_s)
    allowed, rule = check_retries(
        cols.take(np.zeros(g, dtype=np.int64)),
        t + grid_s,
        cols.take(np.arange(1, len(known) + 1)),
        rules=rules,
        three_ds=three_ds,
        attempt_floor=True,
    )
    return limit_to_session(allowed, rule, initiator, grid_s)


def three_ds_now_allowed(
    t: int,
    merchant: str,
    raw: Raw,
    history: Sequence[Event],
    initiator: str,
    three_ds: bool,
    rules: NetworkRules = DEFAULT_RULES,
) -> bool:
    """Is a retry at once with 3-D Secure on the table: a customer-initiated SCA decline (Visa
    1A, Mastercard 65) sent without 3-D Secure, whose retry `NOW_3DS_DELAY_S` later with it
    the network rules allow?"""
    if cause_of(raw.response_code, raw.network) != Cause.SCA or initiator != "CIT" or three_ds:
        return False
    now = np.array([NOW_3DS_DELAY_S])
    ok, _ = allowed_retries(t, merchant, raw, history, initiator, now, rules, three_ds=True)
    return bool(ok[0])
