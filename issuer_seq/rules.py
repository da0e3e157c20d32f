"""Card-network response-code taxonomy and retry rules, as pure typed code.

Two halves:

* **Taxonomy** - what an ISO 8583 response code (field 39) and a Mastercard Merchant Advice
  Code (MAC) mean: `Cause`, `CODES`, `cause_of`, `visa_category`, `MAC_MEANINGS`,
  `MAC_RETRY_AFTER`, plus vectorized `causes` / `visa_categories` for bulk feature building.
* **Retry rules** - may this decline be retried at that time? `check_retries` decides
  millions of proposed retries at once from `AttemptColumns` (plain numpy arrays). The tests
  hold it to an independent one-retry-at-a-time oracle (tests/rules_oracle.py).

Figures follow the project's payments notes (docs/rules.md: Visa decline categories after April
2021, Mastercard MACs and excessive-attempt rules). Only numpy and the standard library are
used so the scorer, the simulator and the evaluation can all import this without torch or
pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

import numpy as np

VISA = "visa"
MASTERCARD = "mastercard"


# --------------------------------------------------------------------------------------------
# Taxonomy
# --------------------------------------------------------------------------------------------


class Cause(StrEnum):
    """Why an issuer answered as it did, coarse enough to learn from and to act on."""

    APPROVED = "approved"
    FUNDS = "funds"
    LIMIT = "limit"
    GENERIC = "generic"
    TECHNICAL = "technical"
    SCA = "sca"
    DATA = "data"
    HARD = "hard"
    OTHER = "other"


@dataclass(frozen=True)
class CodeInfo:
    code: str
    meaning: str
    cause: Cause


def _table(rows: Iterable[tuple[str, str, Cause]]) -> dict[str, CodeInfo]:
    return {code: CodeInfo(code, meaning, cause) for code, meaning, cause in rows}


#: the approval label: an attempt is approved when its response code is exactly this one
APPROVED_CODE = "00"

CODES: dict[str, CodeInfo] = _table(
    [
        # Approval variants: none of them is a decline, so none may be "retried".
        ("00", "approved", Cause.APPROVED),
        ("08", "honour with identification", Cause.APPROVED),
        ("10", "approved for partial amount", Cause.APPROVED),
        ("11", "approved (VIP)", Cause.APPROVED),
        ("85", "no reason to decline (account verification)", Cause.APPROVED),
        ("51", "insufficient funds", Cause.FUNDS),
        ("61", "exceeds withdrawal amount limit", Cause.LIMIT),
        # 65 is a frequency limit on Visa; Mastercard reuses it for "SCA required" in the EEA,
        # see _NETWORK_CAUSE.
        ("65", "exceeds withdrawal frequency limit", Cause.LIMIT),
        ("75", "allowable number of PIN tries exceeded", Cause.LIMIT),
        ("N4", "cash request exceeds issuer or approved limit", Cause.LIMIT),
        ("01", "refer to card issuer", Cause.GENERIC),
        ("02", "refer to card issuer, special condition", Cause.GENERIC),
        ("03", "invalid merchant", Cause.GENERIC),
        ("05", "do not honour", Cause.GENERIC),
        ("06", "error", Cause.GENERIC),
        ("59", "suspected fraud", Cause.GENERIC),
        ("62", "restricted card", Cause.GENERIC),
        ("78", "blocked, first used (card not yet activated)", Cause.GENERIC),
        ("93", "transaction cannot be completed: violation of law", Cause.GENERIC),
        ("N3", "cash service not available", Cause.GENERIC),
        ("19", "re-enter transaction", Cause.TECHNICAL),
        ("86", "cannot verify PIN", Cause.TECHNICAL),
        ("91", "issuer or switch inoperative", Cause.TECHNICAL),
        ("92", "unable to route transaction", Cause.TECHNICAL),
        ("96", "system malfunction", Cause.TECHNICAL),
        ("1A", "strong customer authentication required (Visa)", Cause.SCA),
        ("13", "invalid amount", Cause.DATA),
        ("30", "format error", Cause.DATA),
        ("54", "expired card", Cause.DATA),
        ("55", "incorrect PIN", Cause.DATA),
        ("82", "negative CAM, dCVV, iCVV or CVV results", Cause.DATA),
        ("6P", "verification data failed", Cause.DATA),
        ("N7", "CVV2 mismatch", Cause.DATA),
        ("04", "pick up card", Cause.HARD),
        ("07", "pick up card, special condition", Cause.HARD),
        ("12", "invalid transaction", Cause.HARD),
        ("14", "invalid card number", Cause.HARD),
        ("15", "no such issuer", Cause.HARD),
        ("41", "lost card, pick up", Cause.HARD),
        ("43", "stolen card, pick up", Cause.HARD),
        ("46", "closed account", Cause.HARD),
        ("57", "transaction not permitted to cardholder", Cause.HARD),
        ("R0", "stop payment order", Cause.HARD),
        ("R1", "revocation of authorization order", Cause.HARD),
        ("R3", "revocation of all authorizations order", Cause.HARD),
    ]
)

_NETWORK_CAUSE: dict[tuple[str, str], Cause] = {(MASTERCARD, "65"): Cause.SCA}

STOP_RECURRING_CODES: frozenset[str] = frozenset({"R0", "R1", "R3"})
SCA_CODE = "1A"
#: the largest amount (major units) the log contract and the scorer take: it keeps amounts in
#: cents (Mastercard's same-amount rule) and retry values far from float overflow
MAX_AMOUNT = 1e9

VISA_CATEGORY_1: frozenset[str] = frozenset(
    {"04", "07", "12", "14", "15", "41", "43", "46", "57", "R0", "R1", "R3"}
)
VISA_CATEGORY_2: frozenset[str] = frozenset(
    {"03", "19", "51", "59", "61", "62", "65", "75", "78", "86", "91", "93", "96", "N3", "N4"}
)
# Visa lists 14 in category 3 as well; category 1 wins because an invalid PAN never heals.
VISA_CATEGORY_3: frozenset[str] = frozenset({"14", "54", "55", "82", "N7", "1A", "6P"})

_SOFT: frozenset[Cause] = frozenset(
    {Cause.FUNDS, Cause.LIMIT, Cause.GENERIC, Cause.TECHNICAL, Cause.SCA, Cause.OTHER}
)


def normalize_code(code: object) -> str:
    """Canonical spelling of a response or advice code: '5' -> '05', '1a' -> '1A', None -> ''.

    Upstream feeds disagree on zero padding and case; every lookup goes through here so that
    scalar and vectorized paths see the same key.
    """
    if code is None:
        return ""
    text = str(code).strip().upper()
    return text.zfill(2) if len(text) == 1 else text


def normalize_network(network: object) -> str:
    return "" if network is None else str(network).strip().lower()


def cause_of(code: str, network: str | None = None) -> Cause:
    """The `Cause` of a response code; unknown codes are `Cause.OTHER` (treated as soft)."""
    key = normalize_code(code)
    override = _NETWORK_CAUSE.get((normalize_network(network), key))
    if override is not None:
        return override
    info = CODES.get(key)
    return Cause.OTHER if info is None else info.cause


def is_known_code(code: str) -> bool:
    return normalize_code(code) in CODES


def is_soft(cause: Cause | str) -> bool:
    """True when the decline may succeed if retried unchanged (later); DATA and HARD never do."""
    return Cause(cause) in _SOFT


def is_decline(code: str) -> bool:
    """Anything but an approval variant; unknown codes count as declines."""
    return cause_of(code) != Cause.APPROVED


def visa_category(code: str) -> int:
    """Visa reattempt category 1..4 of a decline code; 0 for an approval (not a decline).

    1: never reattempt; 2: cannot approve now; 3: fix the data first; 4: everything else.
    Code 14 is in both 1 and 3 on Visa's lists and is category 1 here.
    """
    key = normalize_code(code)
    if key in VISA_CATEGORY_1:
        return 1
    if key in VISA_CATEGORY_2:
        return 2
    if key in VISA_CATEGORY_3:
        return 3
    if cause_of(key) == Cause.APPROVED:
        return 0
    return 4


MAC_MEANINGS: dict[str, str] = {
    "01": "new account information available (use account updater)",
    "02": "cannot approve at this time, try again later",
    "03": "do not try again",
    "04": "token requirements not met for this token type",
    "21": "payment cancelled (stop recurring)",
    "24": "retry after 1 hour",
    "25": "retry after 24 hours",
    "26": "retry after 2 days",
    "27": "retry after 4 days",
    "28": "retry after 6 days",
    "29": "retry after 8 days",
    "30": "retry after 10 days",
}
MAC_RETRY_AFTER: dict[str, timedelta] = {
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}
MAC_DO_NOT_RETRY: frozenset[str] = frozenset({"03", "21"})
MAC_NEEDS_CREDENTIALS: frozenset[str] = frozenset({"01", "04"})


def _as_text(values: np.ndarray | Sequence[object]) -> np.ndarray:
    """Object arrays may hold None (no advice code); turn them into '' so np.unique can sort."""
    arr = np.asarray(values)
    if arr.dtype.kind == "O":
        arr = np.array(["" if v is None else str(v) for v in arr.ravel()], dtype=str).reshape(
            arr.shape
        )
    return arr


def _map_unique(
    values: np.ndarray, fn: Callable[[str], object], dtype: str | None = None
) -> np.ndarray:
    """Apply a scalar lookup once per distinct value: codes have tens of values, rows millions.

    dtype None infers it from the mapped values (str widths vary), str when there are none.
    """
    arr = _as_text(values)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=dtype or str)
    uniq, inverse = np.unique(arr.ravel(), return_inverse=True)
    mapped = np.array([fn(str(u)) for u in uniq], dtype=dtype)
    return mapped[inverse.reshape(-1)].reshape(arr.shape)


def normalize_codes(codes: np.ndarray | Sequence[object]) -> np.ndarray:
    return _map_unique(np.asarray(codes), normalize_code)


def causes(codes: np.ndarray, networks: np.ndarray | str | None = None) -> np.ndarray:
    """Cause strings (values of `Cause`) for arrays of codes; `networks` broadcasts against them.

    Same result as `cause_of` row by row.
    """
    codes = np.asarray(codes)
    base = _map_unique(codes, lambda c: cause_of(c).value, dtype="<U9")
    if networks is None:
        return base
    nets = _map_unique(
        np.broadcast_to(np.asarray(networks), codes.shape), normalize_network, "<U16"
    )
    norm = normalize_codes(codes)
    for (net, code), cause in _NETWORK_CAUSE.items():
        base[(nets == net) & (norm == code)] = cause.value
    return base


def visa_categories(codes: np.ndarray) -> np.ndarray:
    """`visa_category` over an array of codes, as int8 (0 for approvals)."""
    return _map_unique(np.asarray(codes), visa_category, dtype="int8")


def mac_delay_seconds(advice_codes: np.ndarray) -> np.ndarray:
    """Advised wait in seconds for MAC 24..30, 0 for any other (or no) advice code; int64."""
    secs = {k: int(v.total_seconds()) for k, v in MAC_RETRY_AFTER.items()}
    return _map_unique(np.asarray(advice_codes), lambda c: secs.get(normalize_code(c), 0), "int64")


# --------------------------------------------------------------------------------------------
# Retry rules: the limits and the rules' names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkRules:
    """Network retry limits; defaults are the strictest published reading.

    visa_max_reattempts_30d: Visa allows at most 15 reattempts of one payment (card + merchant)
        in 30 days for categories 2-4; more are charged per attempt.
    mc_max_declines_30d: Mastercard charges declines beyond 35 on the same card, merchant and
        amount in 30 days.
    mc_max_declines_24h: an extra 24-hour cap on the same card, merchant and amount. Sources
        disagree (10 vs 20); 10 is the stricter and the default.
    mac_block_days: after MAC 03 or 21 on a card + merchant, retries are charged for this long.
    """

    visa_max_reattempts_30d: int = 15
    mc_max_declines_30d: int = 35
    mc_max_declines_24h: int = 10
    mac_block_days: int = 30


DEFAULT_RULES = NetworkRules()


RULES: tuple[str, ...] = (
    "not_a_decline",
    "not_after_decline",
    "stop_recurring",
    "visa_category_1",
    "hard_decline",
    "mac_do_not_retry",
    "needs_updated_credentials",
    "needs_3ds",
    "mac_wait",
    "visa_reattempt_cap",
    "mc_excessive_30d",
    "mc_excessive_24h",
    "ok",
)
"""Every rule `check_retries` names, in the order it tests them (the first that fails decides)."""


# --------------------------------------------------------------------------------------------
# Retry rules: the decision, vectorized
# --------------------------------------------------------------------------------------------


def _ids(values: np.ndarray | Sequence[object]) -> np.ndarray:
    arr = np.asarray(values)
    # Mixed int/str object arrays cannot be sorted; as text, 7 and "7" from two feeds are one id.
    return _as_text(arr) if arr.dtype.kind == "O" else arr


@dataclass(frozen=True)
class AttemptColumns:
    """Attempts of many cards as parallel 1-D arrays of length N (one row per attempt).

    card_id, merchant_id: int64 or str ids (compared as text when kinds differ).
    ts: int64 epoch seconds (UTC). network: "visa" / "mastercard" / other.
    amount: float64. response_code: str. advice_code: str, "" (or None) for none.
    attempt: int64, 1 = first try, >1 = reattempt.
    """

    card_id: np.ndarray
    ts: np.ndarray
    network: np.ndarray
    merchant_id: np.ndarray
    amount: np.ndarray
    response_code: np.ndarray
    advice_code: np.ndarray
    attempt: np.ndarray
    _n: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        coerced = {
            "card_id": _ids(self.card_id),
            "ts": np.asarray(self.ts, dtype=np.int64),
            "network": _as_text(self.network),
            "merchant_id": _ids(self.merchant_id),
            "amount": np.asarray(self.amount, dtype=np.float64),
            "response_code": _as_text(self.response_code),
            "advice_code": _as_text(self.advice_code),
            "attempt": np.asarray(self.attempt, dtype=np.int64),
        }
        lengths = {name: arr.shape for name, arr in coerced.items()}
        n = len(coerced["ts"])
        if any(shape != (n,) for shape in lengths.values()):
            raise ValueError(f"AttemptColumns needs 1-D arrays of one length, got {lengths}")
        for name, arr in coerced.items():
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "_n", n)

    def __len__(self) -> int:
        return self._n

    def take(self, rows: np.ndarray) -> AttemptColumns:
        return AttemptColumns(
            card_id=self.card_id[rows],
            ts=self.ts[rows],
            network=self.network[rows],
            merchant_id=self.merchant_id[rows],
            amount=self.amount[rows],
            response_code=self.response_code[rows],
            advice_code=self.advice_code[rows],
            attempt=self.attempt[rows],
        )

    @classmethod
    def empty(cls, card_id_dtype: np.dtype) -> AttemptColumns:
        """No attempts (a decline without history), with card ids of the declines' dtype."""
        text = np.array([], dtype=str)
        return cls(
            card_id=np.array([], dtype=card_id_dtype),
            ts=np.array([], dtype=np.int64),
            network=text,
            merchant_id=text,
            amount=np.array([], dtype=np.float64),
            response_code=text,
            advice_code=text,
            attempt=np.array([], dtype=np.int64),
        )


def _factorize_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense int64 codes for the values of `a` and `b` on one shared dictionary."""
    if a.dtype.kind != b.dtype.kind and "U" in (a.dtype.kind, b.dtype.kind):
        a, b = a.astype(str), b.astype(str)
    _, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse[: len(a)], inverse[len(a) :]


def _combine(
    q_a: np.ndarray, h_a: np.ndarray, q_b: np.ndarray, h_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dense keys for the pair (a, b), given dense codes for a and raw values for b.

    Re-densifying after each column keeps the mixed code below N * N, far from int64 overflow.
    """
    q_code, h_code = _factorize_pair(q_b, h_b)
    width = int(max(q_code.max(initial=0), h_code.max(initial=0))) + 1
    return _factorize_pair(q_a * width + q_code, h_a * width + h_code)


def _window_counts(
    rows: np.ndarray,
    q_key: np.ndarray,
    q_lo: np.ndarray,
    q_hi: np.ndarray,
    h_key: np.ndarray,
    h_ts: np.ndarray,
    h_mask: np.ndarray,
    self_rows: np.ndarray | None,
) -> np.ndarray:
    """For the queries i in `rows`: # history rows j with mask, key_j == key_i and
    lo_i < ts_j <= hi_i; 0 for the other queries.

    History is sorted once on key * span + ts; each query is two binary searches (needles
    sorted too, which keeps searchsorted cache-friendly on millions of rows). A query's own row
    (self_rows[i] >= 0) is subtracted so that a log holding the declines themselves can be
    passed as history.
    """
    counts = np.zeros(len(q_key), dtype=np.int64)
    keys, times = h_key[h_mask], h_ts[h_mask]
    if len(rows) == 0 or len(keys) == 0:
        return counts
    key, lo, hi = q_key[rows], q_lo[rows], q_hi[rows]
    t0 = int(min(times.min(), lo.min()))
    span = int(max(times.max(), hi.max())) - t0 + 1
    n_keys = int(max(keys.max(), key.max())) + 1
    if n_keys * span >= 2**62:
        raise ValueError("time range x number of keys too large for int64 window counting")
    combined = np.sort(keys * span + (times - t0))

    def at_or_before(bound: np.ndarray) -> np.ndarray:
        needles = key * span + (bound - t0)
        order = np.argsort(needles, kind="stable")
        found = np.empty(len(needles), dtype=np.int64)
        found[order] = np.searchsorted(combined, needles[order], side="right")
        return found

    counts[rows] = at_or_before(hi) - at_or_before(lo)
    if self_rows is not None:
        own_rows = rows[self_rows[rows] >= 0]
        own = self_rows[own_rows]
        counted = (
            h_mask[own]
            & (h_key[own] == q_key[own_rows])
            & (h_ts[own] > q_lo[own_rows])
            & (h_ts[own] <= q_hi[own_rows])
        )
        counts[own_rows[counted]] -= 1
    return counts


def _flag(value: np.ndarray | bool, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=bool), (n,))


def check_retries(
    declines: AttemptColumns,
    retry_at: np.ndarray,
    history: AttemptColumns | None = None,
    *,
    self_rows: np.ndarray | None = None,
    three_ds: np.ndarray | bool = False,
    updated_credentials: np.ndarray | bool = False,
    rules: NetworkRules = DEFAULT_RULES,
    attempt_floor: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """May each of N declines be retried at its `retry_at` without breaking a network rule?

    Decided for all N at once, without a per-row Python loop. Rules are tested in the order of
    `RULES` and the first that fails decides (docs/rules.md states each one):

    1. approvals are not declines; a retry must come strictly after the decline;
    2. never: stop-recurring R0/R1/R3, Visa category 1 (incl. 14), any HARD cause, and on
       Mastercard MAC 03/21 on this decline or on any decline of the same card + merchant
       within `rules.mac_block_days` before `retry_at`;
    3. DATA causes and Mastercard MAC 01/04 need `updated_credentials`; Visa 1A needs
       `three_ds`. Mastercard 65 is SCA only in the EEA, so it is not forced to 3-D Secure;
    4. Mastercard MAC 24..30: not before the decline's ts + `MAC_RETRY_AFTER[mac]`;
    5. Visa: reattempts (attempt > 1) of the same card + merchant in (retry_at - 30 d,
       retry_at), counting the decline when it is a reattempt and the proposed retry, must
       not exceed `rules.visa_max_reattempts_30d`;
    6. Mastercard: declines of the same card + merchant + amount (to the cent) in
       (retry_at - 30 d, retry_at), counting the decline, must stay below
       `rules.mc_max_declines_30d`, and within 24 h below `rules.mc_max_declines_24h`.

    Only "visa" and "mastercard" get network-specific rules; other networks get 1-3 only.

    declines: the N declined attempts (with card_id). retry_at: (N,) int64 epoch seconds.
    history: attempts of any cards (M rows); each decline sees the rows with its card_id.
    self_rows: (N,) int index into history of each decline's own row, -1 where history does
        not hold it; that row is then not counted twice (pass the whole log as history).
    three_ds, updated_credentials: bool, scalar or (N,).
    attempt_floor: where history may lack a payment's earlier attempts (a scorer's store after
        a restart), count at least what the decline's `attempt` number implies for the
        30-day limits: attempts 2..n were reattempts and attempts 1..n declines. Cautious: a
        payment whose attempts span more than 30 days may be blocked early.
    Returns (allowed (N,) bool, rule (N,) str, a name from `RULES`).
    """
    n = len(declines)
    retry_at = np.asarray(retry_at, dtype=np.int64).reshape(-1)
    if retry_at.shape != (n,):
        raise ValueError(f"retry_at must have shape ({n},), got {retry_at.shape}")
    if self_rows is not None:
        self_rows = np.asarray(self_rows, dtype=np.int64).reshape(-1)
        if self_rows.shape != (n,):
            raise ValueError(f"self_rows must have shape ({n},), got {self_rows.shape}")
    tds, upd = _flag(three_ds, n), _flag(updated_credentials, n)

    code = normalize_codes(declines.response_code)
    mac = normalize_codes(declines.advice_code)
    network = _map_unique(declines.network, normalize_network, "<U16")
    is_visa, is_mc = network == VISA, network == MASTERCARD
    cause = causes(code, network)
    ts = declines.ts

    width = max(len(r) for r in RULES)
    rule = np.full(n, "ok", dtype=f"<U{width}")
    decided = np.zeros(n, dtype=bool)

    def decide(mask: np.ndarray, name: str) -> None:
        hit = mask & ~decided
        rule[hit] = name
        decided[hit] = True

    decide(cause == Cause.APPROVED.value, "not_a_decline")
    decide(retry_at <= ts, "not_after_decline")
    decide(np.isin(code, list(STOP_RECURRING_CODES)), "stop_recurring")
    decide(is_visa & (visa_categories(code) == 1), "visa_category_1")
    decide(cause == Cause.HARD.value, "hard_decline")

    if history is None or len(history) == 0:
        history = AttemptColumns.empty(declines.card_id.dtype)
        self_rows = None
    h_code = normalize_codes(history.response_code)
    h_is_decline = causes(h_code) != Cause.APPROVED.value
    h_mac = normalize_codes(history.advice_code)

    # Keys shared by declines and history: one payment = card + merchant (Visa, MAC block),
    # or card + merchant + amount in cents (Mastercard excessive attempts).
    q_card, h_card = _factorize_pair(declines.card_id, history.card_id)
    q_merchant, h_merchant = _combine(q_card, h_card, declines.merchant_id, history.merchant_id)
    q_cents = np.rint(declines.amount * 100).astype(np.int64)
    h_cents = np.rint(history.amount * 100).astype(np.int64)
    q_payment, h_payment = _combine(q_merchant, h_merchant, q_cents, h_cents)
    day = 86_400

    def counts(
        among: np.ndarray, q_key: np.ndarray, h_key: np.ndarray, h_mask: np.ndarray, window_s: int
    ) -> np.ndarray:
        assert history is not None  # narrowed above; closures lose the narrowing
        # Only rows still undecided need the (costly) count.
        rows = np.flatnonzero(among & ~decided)
        return _window_counts(
            rows, q_key, retry_at - window_s, retry_at - 1, h_key, history.ts, h_mask, self_rows
        )

    do_not_retry = h_is_decline & np.isin(h_mac, list(MAC_DO_NOT_RETRY))
    decide(is_mc & np.isin(mac, list(MAC_DO_NOT_RETRY)), "mac_do_not_retry")
    blocked = counts(is_mc, q_merchant, h_merchant, do_not_retry, rules.mac_block_days * day)
    decide(is_mc & (blocked > 0), "mac_do_not_retry")
    needs_data = (cause == Cause.DATA.value) | (is_mc & np.isin(mac, list(MAC_NEEDS_CREDENTIALS)))
    decide(needs_data & ~upd, "needs_updated_credentials")
    decide((code == SCA_CODE) & ~tds, "needs_3ds")
    delay = mac_delay_seconds(mac)
    decide(is_mc & (delay > 0) & (retry_at < ts + delay), "mac_wait")

    reattempts = 1 + counts(is_visa, q_merchant, h_merchant, history.attempt > 1, 30 * day)
    reattempts += (declines.attempt > 1) & (ts > retry_at - 30 * day)
    if attempt_floor:  # attempts 2..n of the payment, and the proposed retry
        reattempts = np.maximum(reattempts, declines.attempt)
    decide(is_visa & (reattempts > rules.visa_max_reattempts_30d), "visa_reattempt_cap")

    for name, window_s, cap in (
        ("mc_excessive_30d", 30 * day, rules.mc_max_declines_30d),
        ("mc_excessive_24h", day, rules.mc_max_declines_24h),
    ):
        n_declines = counts(is_mc, q_payment, h_payment, h_is_decline, window_s)
        n_declines += ts > retry_at - window_s
        if attempt_floor and window_s == 30 * day:  # attempts 1..n of the payment
            n_declines = np.maximum(n_declines, declines.attempt)
        decide(is_mc & (n_declines >= cap), name)

    return ~decided, rule
