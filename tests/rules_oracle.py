"""An independent oracle for `issuer_seq.rules.check_retries`: the same network rules, one
proposed retry at a time, written plainly over `Attempt` objects and `datetime`s.

No product code calls it. It exists so that the vectorized rules (window counts by sorting and
binary search) are checked against a second implementation that reads like docs/rules.md:
tests/test_rules.py pins every rule through both, and hypothesis compares them on random
histories. Keep the two independent: this file takes nothing from `check_retries`' machinery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from issuer_seq.rules import (
    CODES,
    DEFAULT_RULES,
    MAC_DO_NOT_RETRY,
    MAC_MEANINGS,
    MAC_NEEDS_CREDENTIALS,
    MAC_RETRY_AFTER,
    MASTERCARD,
    SCA_CODE,
    STOP_RECURRING_CODES,
    VISA,
    AttemptColumns,
    Cause,
    NetworkRules,
    cause_of,
    is_decline,
    normalize_code,
    normalize_network,
    visa_category,
)
from issuer_seq.timestamps import epoch_seconds

WINDOW_30D = timedelta(days=30)
WINDOW_24H = timedelta(hours=24)


@dataclass(frozen=True)
class Attempt:
    """One authorization attempt of a card. `ts` must be timezone-aware (UTC)."""

    ts: datetime
    network: str
    merchant_id: str | int
    amount: float
    response_code: str
    advice_code: str | None = None
    attempt: int = 1  # 1 = first try, >1 = a reattempt of the same payment

    def __post_init__(self) -> None:
        _require_aware(self.ts, "Attempt.ts")


@dataclass(frozen=True)
class RetryDecision:
    allowed: bool
    rule: str  # one of issuer_seq.rules.RULES
    reason: str
    earliest: datetime | None = None  # set for "mac_wait": the first allowed retry time


def _require_aware(ts: datetime, name: str) -> None:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {ts!r}")


def _cents(amount: float) -> int:
    # Same-amount matching on floats is fragile; compare in minor units, rounded half-even like
    # np.rint so the vectorized path matches.
    return int(round(amount * 100))


def _same_merchant(a: str | int, b: str | int) -> bool:
    # Ids are compared as text so that 7 and "7" from different feeds are one merchant.
    return str(a) == str(b)


def _deny(rule: str, reason: str, earliest: datetime | None = None) -> RetryDecision:
    return RetryDecision(False, rule, reason, earliest)


def check_retry(
    decline: Attempt,
    retry_at: datetime,
    history: Sequence[Attempt] = (),
    *,
    three_ds: bool = False,
    updated_credentials: bool = False,
    rules: NetworkRules = DEFAULT_RULES,
    attempt_floor: bool = False,
) -> RetryDecision:
    """May `decline` be retried at `retry_at` without breaking a network rule?

    `history` holds the same card's other attempts (any merchant), not `decline` itself; rows
    outside the relevant windows or at other merchants are ignored here. Rules are tested in
    the order of `issuer_seq.rules.RULES` and the first that fails decides:

    1. approvals are not declines; a retry must come strictly after the decline;
    2. never: stop-recurring R0/R1/R3, Visa category 1 (incl. 14), any HARD cause, and on
       Mastercard MAC 03/21 on this decline or on any decline of the same card + merchant
       within `rules.mac_block_days` before `retry_at`;
    3. DATA causes and Mastercard MAC 01/04 need `updated_credentials`; Visa 1A needs
       `three_ds` (retrying later without 3-D Secure cannot succeed). Mastercard 65 is SCA only
       in the EEA and a frequency limit elsewhere, so it is not forced to 3-D Secure;
    4. Mastercard MAC 24..30: not before `decline.ts + MAC_RETRY_AFTER[mac]` (`earliest`);
    5. Visa: reattempts (attempt > 1) of the same card + merchant in (retry_at - 30 d,
       retry_at), counting `decline` when it is a reattempt and the proposed retry, must not
       exceed `rules.visa_max_reattempts_30d` (15);
    6. Mastercard excessive attempts: declines on the same card + merchant + amount (to the
       cent) in (retry_at - 30 d, retry_at), counting `decline`, must stay below
       `rules.mc_max_declines_30d` (35) so that one more decline is not over the limit; the
       same within 24 h against `rules.mc_max_declines_24h`. Sources disagree on the 24-hour
       cap (10 or 20 declines); the default 10 is the stricter reading.

    `attempt_floor`: the 30-day counts are at least `decline.attempt`, for a history that may
    have lost the payment's earlier attempts (its attempts 2..n and the retry are n
    reattempts; its attempts 1..n are n declines).

    Only "visa" and "mastercard" get network-specific rules; other networks get 1-3 only.
    """
    _require_aware(retry_at, "retry_at")
    code = normalize_code(decline.response_code)
    network = normalize_network(decline.network)
    mac = normalize_code(decline.advice_code)
    is_visa, is_mc = network == VISA, network == MASTERCARD
    cause = cause_of(code, network)

    if cause == Cause.APPROVED:
        return _deny("not_a_decline", f"response {code} is an approval, nothing to retry")
    if retry_at <= decline.ts:
        return _deny("not_after_decline", "a retry must come after the decline it retries")
    if code in STOP_RECURRING_CODES:
        return _deny("stop_recurring", f"{code}: the cardholder stopped recurring payments")
    if is_visa and visa_category(code) == 1:
        return _deny("visa_category_1", f"Visa category 1 ({code}): the issuer will never approve")
    if cause == Cause.HARD:
        return _deny("hard_decline", f"{code} ({CODES[code].meaning}) is a hard decline")

    # History is what happened strictly before the retry; the retry itself counts separately.
    relevant = [h for h in history if h.ts < retry_at]
    same_merchant = [h for h in relevant if _same_merchant(h.merchant_id, decline.merchant_id)]
    if is_mc:
        if mac in MAC_DO_NOT_RETRY:
            return _deny("mac_do_not_retry", f"MAC {mac}: {MAC_MEANINGS[mac]}")
        block_from = retry_at - timedelta(days=rules.mac_block_days)
        if any(
            normalize_code(h.advice_code) in MAC_DO_NOT_RETRY
            and is_decline(h.response_code)
            and h.ts > block_from
            for h in same_merchant
        ):
            return _deny(
                "mac_do_not_retry",
                f"MAC 03/21 on this card and merchant within {rules.mac_block_days} days",
            )

    if not updated_credentials:
        if cause == Cause.DATA:
            return _deny("needs_updated_credentials", f"{code}: retry only with corrected data")
        if is_mc and mac in MAC_NEEDS_CREDENTIALS:
            return _deny("needs_updated_credentials", f"MAC {mac}: {MAC_MEANINGS[mac]}")
    if code == SCA_CODE and not three_ds:
        return _deny("needs_3ds", "1A: retry only with 3-D Secure authentication")
    if is_mc and mac in MAC_RETRY_AFTER:
        earliest = decline.ts + MAC_RETRY_AFTER[mac]
        if retry_at < earliest:
            return _deny("mac_wait", f"MAC {mac}: {MAC_MEANINGS[mac]}", earliest)

    if is_visa:
        start = retry_at - WINDOW_30D
        count = 1 + sum(1 for h in same_merchant if h.attempt > 1 and h.ts > start)
        count += int(decline.attempt > 1 and decline.ts > start)
        if attempt_floor:
            count = max(count, decline.attempt)
        if count > rules.visa_max_reattempts_30d:
            return _deny(
                "visa_reattempt_cap",
                f"{count} reattempts in 30 days would exceed Visa's "
                f"{rules.visa_max_reattempts_30d}",
            )
    if is_mc:
        cents = _cents(decline.amount)
        same_amount = [
            h for h in same_merchant if is_decline(h.response_code) and _cents(h.amount) == cents
        ]
        for rule, window, cap in (
            ("mc_excessive_30d", WINDOW_30D, rules.mc_max_declines_30d),
            ("mc_excessive_24h", WINDOW_24H, rules.mc_max_declines_24h),
        ):
            start = retry_at - window
            count = int(decline.ts > start) + sum(1 for h in same_amount if h.ts > start)
            if attempt_floor and window == WINDOW_30D:
                count = max(count, decline.attempt)
            if count >= cap:
                return _deny(
                    rule,
                    f"{count} declines of this card, merchant and amount in {window}; "
                    f"another would pass Mastercard's {cap}",
                )
    return RetryDecision(True, "ok", "no network rule forbids this retry")


def attempt_columns(
    attempts: Sequence[Attempt], card_ids: Sequence[object] | np.ndarray
) -> AttemptColumns:
    """The `AttemptColumns` of `attempts` (for `check_retries`); `card_ids` is parallel to them."""
    return AttemptColumns(
        card_id=np.asarray(card_ids),
        ts=np.array([epoch_seconds(a.ts) for a in attempts], dtype=np.int64),
        network=np.array([a.network for a in attempts], dtype=str),
        merchant_id=np.array([str(a.merchant_id) for a in attempts], dtype=str),
        amount=np.array([a.amount for a in attempts], dtype=np.float64),
        response_code=np.array([a.response_code for a in attempts], dtype=str),
        advice_code=np.array([a.advice_code or "" for a in attempts], dtype=str),
        attempt=np.array([a.attempt for a in attempts], dtype=np.int64),
    )
