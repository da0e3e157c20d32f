"""What the model's and the fallback's retry advice share: the answer, and the network rules.

Every network rule counts one card's attempts at one merchant (Visa's reattempts of a
payment, Mastercard's do-not-retry advice codes and excessive attempts; docs/rules.md), so
the rules read the card-at-merchant stream: a card's attempts elsewhere
cannot push the ones that matter out of its bounded history.

numpy and the rules only (the fallback must work when onnxruntime does not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from issuer_seq.retry_policy import limit_to_session
from issuer_seq.rules import (
    DEFAULT_RULES,
    AttemptColumns,
    Cause,
    NetworkRules,
    cause_of,
    check_retries,
)
from issuer_seq.serve.inputs import Event

#: the state-store stream whose events the network rules read
RULES_STREAM = "card_merchant"
#: "now_with_3ds": the retry goes out this many seconds after the decline, with 3-D Secure
#: (the cardholder completes the challenge within the checkout)
NOW_3DS_DELAY_S = 20

#: (network, amount, response_code, advice_code, attempt), as `Event.raw` keeps them
Raw = tuple[str, float, str, str, int]


@dataclass
class RetryAdvice:
    curve: dict[str, float]  # delay label -> P(retry approved)
    action: str  # a delay label, "now_with_3ds", or "no_retry"
    expected_value: float
    rule: str  # the network rule or policy reason that decided
    allowed: dict[str, bool] = field(default_factory=dict)


def raw_of(attempt: Mapping[str, Any]) -> Raw:
    code = attempt.get("response_code")
    return (
        str(attempt["network"]),
        float(attempt["amount"]),
        "" if code is None else str(code),
        str(attempt.get("advice_code") or ""),
        int(attempt["attempt"]),
    )


def rule_columns(rows: Sequence[tuple[int, str, Raw]]) -> AttemptColumns:
    """The network rules' view of one card's attempts: (ts, merchant, raw) rows."""
    return AttemptColumns(
        card_id=np.zeros(len(rows), dtype=np.int64),
        ts=np.array([r[0] for r in rows], dtype=np.int64),
        network=np.array([r[2][0] for r in rows], dtype=str),
        merchant_id=np.array([r[1] for r in rows], dtype=str),
        amount=np.array([r[2][1] for r in rows], dtype=np.float64),
        response_code=np.array([r[2][2] for r in rows], dtype=str),
        advice_code=np.array([r[2][3] for r in rows], dtype=str),
        attempt=np.array([r[2][4] for r in rows], dtype=np.int64),
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
    known = [(e.t, e.merchant, e.raw) for e in history if e.t < t and e.raw and e.raw[2]]
    cols = rule_columns([(t, merchant, raw), *known])  # type: ignore[list-item]
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
    if cause_of(raw[2], raw[0]) != Cause.SCA or initiator != "CIT" or three_ds:
        return False
    now = np.array([NOW_3DS_DELAY_S])
    ok, _ = allowed_retries(t, merchant, raw, history, initiator, now, rules, three_ds=True)
    return bool(ok[0])
