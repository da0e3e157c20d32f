"""The LightGBM baseline served online: `sql_features`' row for one attempt, from memory.

`OnlineFeatures` keeps the events of every card, issuer, issuer x route and route in growable
numpy buffers with running sums of the outcome indicators, and per card x merchant a short sorted
list. Only
the longest window (30 d) + lag + `slack_s` of events is kept in the buffers; anything older
is folded into a small summary, which is all that the unbounded aggregates (recency, the
card's last response, card x merchant counts) need. `row(attempt)` computes every column of
`sql_features` (docs/baselines.md) under the same point-in-time rule: history is the events
with `t' < t - lag` in whole seconds, so attempts at the scored second, itself included, are
never history, and "the last event" among ties is the one observed last (the log's order).
Each aggregate is a few `searchsorted` calls and differences of running sums, whatever the
number of events in the window. numpy and the standard library only.

Replaying a log through `row` then `observe`, in time order, gives `sql_features`' frame
(tests/test_online_features.py). `LightGBMScorer` adds the model: the row, categories coded
as in training, LightGBM on one thread. It is the baseline's end-to-end scorer that
`issuer-seq bench` times beside the transformer's.

One difference from the SQL by design: a payment's previous attempt (`prev_*`) is looked up
among the card's kept events, so a retry more than 30 d + `slack_s` after its previous attempt,
or on another card, finds none (the SQL joins on the payment id alone). Idle cards and
issuers are never evicted here; a deployment would bound them as serve/state.py does.
"""

from __future__ import annotations

import bisect
import copy
import math
import time
from collections import ChainMap
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from issuer_seq.baselines.sql_features import CATEGORICAL, CAUSES, CURRENT_CATEGORICAL, WINDOWS
from issuer_seq.rules import cause_of
from issuer_seq.schema import APPROVED_CODE
from issuer_seq.timestamps import epoch_seconds

if TYPE_CHECKING:
    from issuer_seq.baselines.trees import LightGBMModel

NAN = float("nan")

# Rows of a stream's running sums: approvals, one per counted cause, declines, amount
# (approvals and causes adjacent: an issuer window's rate and shares are one division).
_OK, _CAUSE0 = 0, 1
_DECLINE = _CAUSE0 + len(CAUSES)
_AMOUNT = _DECLINE + 1
_SUMS = _AMOUNT + 1
_CAUSE_ROW = {c: _CAUSE0 + i for i, c in enumerate(CAUSES)}
# Rows of a stream's "last time" prefix: what the recency columns ask for.
_LAST_ROWS = (_OK, _DECLINE, _CAUSE_ROW["funds"], _CAUSE_ROW["hard"], _CAUSE_ROW["technical"])
_LAST_INDEX = np.array(_LAST_ROWS)
_CARD_LAST = np.array([0, 1, 2, 3])  # approval, decline, funds, hard
_ISSUER_LAST = np.array([0, 1, 4])  # approval, decline, technical

CURRENT_NUMERIC = (
    "amount",
    "log_amount",
    "attempt",
    "is_recurring",
    "three_ds",
    "cross_border",
    "hour_of_day",
    "day_of_week",
    "day_of_month",
)
CARD_WINDOW = (
    "card_n",
    "card_approval_rate",
    *(f"card_{c}" for c in CAUSES),
    "card_amount_mean",
    "card_amount_max",
    "card_max_approved_amount",
)
ISSUER_WINDOW = (
    "issuer_n",
    "issuer_approval_rate",
    *(f"issuer_{c}_share" for c in CAUSES),
)
ISSUER_ROUTE_WINDOW = ("issuer_route_n", "issuer_route_approval_rate")
ROUTE_WINDOW = ("route_n", "route_approval_rate")
RECENCY = (
    "card_secs_since_last",
    "card_secs_since_approval",
    "card_secs_since_decline",
    "card_secs_since_funds",
    "card_secs_since_hard",
    "issuer_secs_since_approval",
    "issuer_secs_since_decline",
    "issuer_secs_since_technical",
)
LAST = (
    "card_last_response_code",
    "card_last_cause",
    "card_last_advice_code",
    "cm_last_response_code",
    "cm_secs_since_last",
)
PREV = ("prev_response_code", "prev_cause", "prev_advice_code", "secs_since_prev_attempt")


def feature_columns(windows: Mapping[str, int] = WINDOWS) -> list[str]:
    """`sql_features`' columns, in its order, for these windows."""
    longest = max(windows, key=lambda w: windows[w])
    return [
        *CURRENT_NUMERIC,
        *CURRENT_CATEGORICAL,
        *(f"{name}_{w}" for w in windows for name in CARD_WINDOW),
        *(f"{name}_{w}" for w in windows for name in ISSUER_WINDOW),
        *(f"{name}_{w}" for w in windows for name in ISSUER_ROUTE_WINDOW),
        *(f"{name}_{w}" for w in windows for name in ROUTE_WINDOW),
        "cm_n_all",
        "cm_approval_rate_all",
        f"amount_rel_card_mean_{longest}",
        f"amount_rel_card_max_approved_{longest}",
        *RECENCY,
        *LAST,
        *PREV,
    ]


def _text(value: Any) -> str | None:
    """A code as the log holds it; None for a missing one (None, NaN, pandas' NA)."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return None
    if type(value).__name__ == "NAType":
        return None
    return str(value)


class _Stream:
    """One card's or issuer's kept events, in time order (ties: in the order observed).

    Buffers hold events [start, n). `sums[:, i]` is the sum over buffer events [0, i) of each
    indicator row, so any range's sums are one difference; `last[:, i]` is the latest time,
    up to and including event i and counting folded events, of an event with each of the
    `_LAST_ROWS` indicators (NaN: none). Events before `start` are folded into `old_t` (the
    last one's time), `old_last` (its codes, cards only) and `old_flag_t` (as `last`). Cards
    also keep each event's codes, merchant and payment: `detail[i]` is buffer event i.
    """

    __slots__ = (
        "t",
        "sums",
        "last",
        "amount",
        "ok_amount",
        "start",
        "n",
        "old_t",
        "old_flag_t",
        "detail",
        "old_last",
        "pairs",
    )

    def __init__(self, detail: bool, capacity: int = 8) -> None:
        self.t = np.empty(capacity, dtype=np.int64)
        self.sums = np.zeros((_SUMS, capacity + 1))  # (S, cap + 1)
        self.last = np.empty((len(_LAST_ROWS), capacity))  # (L, cap)
        self.amount = np.empty(capacity)
        self.ok_amount = np.empty(capacity)  # -inf where not approved
        self.start = 0
        self.n = 0
        self.old_t = NAN
        self.old_flag_t = np.full(len(_LAST_ROWS), NAN)
        # per event: (code, cause, advice, merchant, payment, attempt)
        self.detail: list[tuple[str, str, str | None, Any, Any, int]] | None = (
            [] if detail else None
        )
        self.old_last: tuple[str, str, str | None] | None = None
        self.pairs: dict[Any, _Pair] = {}

    def _grow(self) -> None:
        """Make room at the end: drop the folded prefix, and double when still half full."""
        s, n = self.start, self.n
        live, cap = n - s, len(self.t)
        new_cap = cap * 2 if live * 2 > cap else cap
        t = np.empty(new_cap, dtype=np.int64)
        sums = np.zeros((_SUMS, new_cap + 1))
        last = np.empty((len(_LAST_ROWS), new_cap))
        amount = np.empty(new_cap)
        ok_amount = np.empty(new_cap)
        t[:live] = self.t[s:n]
        sums[:, : live + 1] = self.sums[:, s : n + 1]
        last[:, :live] = self.last[:, s:n]
        amount[:live] = self.amount[s:n]
        ok_amount[:live] = self.ok_amount[s:n]
        self.t, self.sums, self.last = t, sums, last
        self.amount, self.ok_amount = amount, ok_amount
        if self.detail is not None:
            del self.detail[:s]
        self.start, self.n = 0, live

    def append(self, t: int, flags: np.ndarray, amount: float, ok: bool, detail: Any) -> None:
        """Add an event at its place in time (after the events of the same second)."""
        if self.n == len(self.t):
            self._grow()
        n, s = self.n, self.start
        i = n
        if n > s and self.t[n - 1] > t:  # a late outcome: rare, so a plain O(n) insert
            i = int(self.t[s:n].searchsorted(t, side="right")) + s
            self.t[i + 1 : n + 1] = self.t[i:n].copy()
            self.amount[i + 1 : n + 1] = self.amount[i:n].copy()
            self.ok_amount[i + 1 : n + 1] = self.ok_amount[i:n].copy()
            self.sums[:, i + 2 : n + 2] = self.sums[:, i + 1 : n + 1] + flags[:, None]
            self.last[:, i + 1 : n + 1] = self.last[:, i:n].copy()
            for j, row in enumerate(_LAST_ROWS):
                if flags[row]:
                    np.fmax(self.last[j, i + 1 : n + 1], t, out=self.last[j, i + 1 : n + 1])
        self.t[i] = t
        self.amount[i] = amount
        self.ok_amount[i] = amount if ok else -np.inf
        self.sums[:, i + 1] = self.sums[:, i] + flags
        before = self.last[:, i - 1] if i > s else self.old_flag_t
        self.last[:, i] = np.where(flags[_LAST_INDEX] > 0, t, before)
        if self.detail is not None:
            self.detail.insert(i, detail)
        self.n = n + 1

    def fold_late(self, t: int, flags: np.ndarray) -> None:
        """A late outcome older than the last folded event: only its recency can matter."""
        for j, row in enumerate(_LAST_ROWS):
            if flags[row] and not t < self.old_flag_t[j]:  # NaN-safe
                self.old_flag_t[j] = float(t)
                live = self.last[j, self.start : self.n]
                np.fmax(live, t, out=live)

    def retire(self, before: int) -> None:
        """Fold the events with t < `before` away (they are out of every window)."""
        s, n = self.start, self.n
        k = int(self.t[s:n].searchsorted(before, side="left")) + s
        if k == s:
            return
        self.old_t = float(self.t[k - 1])
        self.old_flag_t = self.last[:, k - 1].copy()
        if self.detail is not None:
            code, cause, advice = self.detail[k - 1][:3]
            self.old_last = (code, cause, advice)
        self.start = k


class _Pair:
    """One card x merchant: kept times, running approvals and codes; a summary of the rest."""

    __slots__ = ("t", "ok", "code", "start", "old_n", "old_ok", "old_t", "old_code")

    def __init__(self) -> None:
        self.t: list[int] = []
        self.ok: list[int] = [0]  # running approvals: ok[i] = approvals among t[:i]
        self.code: list[str] = []
        self.start = 0
        self.old_n = 0
        self.old_ok = 0
        self.old_t = NAN
        self.old_code: str | None = None

    def append(self, t: int, ok: bool, code: str, before: int) -> None:
        if t < self.old_t:  # older than the folded events: it only counts
            self.old_n += 1
            self.old_ok += ok
            return
        i = bisect.bisect_right(self.t, t, self.start)
        self.t.insert(i, t)
        self.code.insert(i, code)
        self.ok.insert(i + 1, self.ok[i] + ok)
        for j in range(i + 2, len(self.ok)):  # only after a late outcome
            self.ok[j] += ok
        k = bisect.bisect_left(self.t, before, self.start, len(self.t))
        if k > self.start:
            self.old_n += k - self.start
            self.old_ok += self.ok[k] - self.ok[self.start]
            self.old_t, self.old_code = float(self.t[k - 1]), self.code[k - 1]
            self.start = k
            if k > 32 and 2 * k > len(self.t):
                del self.t[:k], self.code[:k], self.ok[:k]
                self.start = 0

    def at(self, cutoff: int) -> tuple[int, int, float, str | None]:
        """(events, approvals, last time, last code) before `cutoff`."""
        h = bisect.bisect_left(self.t, cutoff, self.start)
        n = self.old_n + h - self.start
        ok = self.old_ok + self.ok[h] - self.ok[self.start]
        if h > self.start:
            return n, ok, float(self.t[h - 1]), self.code[h - 1]
        return n, ok, self.old_t, self.old_code


class OnlineFeatures:
    """Point-in-time baseline features of one attempt at a time, from in-memory state.

    observe(outcome) adds an attempt with its `response_code` (and `advice_code`); row(attempt)
    gives its features: (values (F,) float64 with NaN at categorical columns, categorical
    values in `categorical` order, text or None), F = len(columns), the columns of
    `sql_features` in its order. Outcomes may arrive late (out of time order); scoring an
    attempt more than `slack_s` older than the newest outcome of its card or issuer may miss
    events that were already folded away.
    """

    def __init__(
        self, windows: Mapping[str, int] = WINDOWS, lag_s: int = 0, slack_s: int = 86_400
    ) -> None:
        if not windows:
            raise ValueError("at least one trailing window is needed")
        self.windows = dict(windows)
        self.lag_s = int(lag_s)
        self.keep_s = max(self.windows.values()) + self.lag_s + int(slack_s)
        self.columns = feature_columns(self.windows)
        self.categorical = [c for c in self.columns if c in CATEGORICAL]
        w = np.array(list(self.windows.values()), dtype=np.int64)
        self._offsets = np.append(w, 0)  # (W + 1,): window starts, then the cutoff itself
        pos = {c: i for i, c in enumerate(self.columns)}
        first = next(iter(self.windows))
        longest = max(self.windows, key=lambda k: self.windows[k])
        nw = len(self.windows)
        self._card = slice(pos[f"card_n_{first}"], pos[f"card_n_{first}"] + 12 * nw)
        self._issuer = slice(pos[f"issuer_n_{first}"], pos[f"issuer_n_{first}"] + 9 * nw)
        at = pos[f"issuer_route_n_{first}"]
        self._issuer_route = slice(at, at + len(ISSUER_ROUTE_WINDOW) * nw)
        at = pos[f"route_n_{first}"]
        self._route = slice(at, at + len(ROUTE_WINDOW) * nw)
        self._mean = pos[f"card_amount_mean_{longest}"]
        self._top_ok = pos[f"card_max_approved_amount_{longest}"]
        self._cm = pos["cm_n_all"]
        self._rel = pos[f"amount_rel_card_mean_{longest}"]
        self._recency = pos[RECENCY[0]]
        self._cm_secs = pos["cm_secs_since_last"]
        self._prev_secs = pos["secs_since_prev_attempt"]
        self.cards: MutableMapping[Any, _Stream] = {}
        self.issuers: MutableMapping[Any, _Stream] = {}
        # (issuer id, route or None): a log without routes is one route per issuer
        self.issuer_routes: MutableMapping[tuple[Any, str | None], _Stream] = {}
        # route or None, every issuer's attempts through it
        self.routes: MutableMapping[str | None, _Stream] = {}
        self._causes: dict[tuple[str, str], str] = {}

    # -- state ----------------------------------------------------------------------------
    def _cause(self, code: str, network: str) -> str:
        key = (code, network)
        cause = self._causes.get(key)
        if cause is None:
            cause = self._causes[key] = cause_of(code, network).value
        return cause

    def observe(self, outcome: Mapping[str, Any]) -> None:
        """Append an attempt with its outcome to its card's, issuer's and card x merchant's."""
        code = _text(outcome.get("response_code"))
        if code is None:
            raise ValueError("an outcome needs its response_code")
        t = epoch_seconds(outcome["ts"])
        cause = self._cause(code, str(outcome["network"]))
        ok = code == APPROVED_CODE
        amount = float(outcome["amount"])
        flags = np.zeros(_SUMS)
        flags[_OK if ok else _DECLINE] = 1.0
        row = _CAUSE_ROW.get(cause)
        if row is not None:
            flags[row] = 1.0
        flags[_AMOUNT] = amount
        card = self.cards.get(outcome["card_id"])
        if card is None:
            card = self.cards[outcome["card_id"]] = _Stream(detail=True)
        issuer = self.issuers.get(outcome["issuer_id"])
        if issuer is None:
            issuer = self.issuers[outcome["issuer_id"]] = _Stream(detail=False)
        route_name = _text(outcome.get("route"))
        key = (outcome["issuer_id"], route_name)
        issuer_route = self.issuer_routes.get(key)
        if issuer_route is None:
            issuer_route = self.issuer_routes[key] = _Stream(detail=False)
        route = self.routes.get(route_name)
        if route is None:
            route = self.routes[route_name] = _Stream(detail=False)
        merchant = outcome["merchant_id"]
        detail = (
            code,
            cause,
            _text(outcome.get("advice_code")),
            merchant,
            outcome.get("payment_id"),
            int(outcome.get("attempt", 1)),
        )
        for stream in (card, issuer, issuer_route, route):
            if t < stream.old_t:  # older than events already folded away: fold it too
                stream.fold_late(t, flags)
            else:
                stream.append(t, flags, amount, ok, detail)
                stream.retire(int(stream.t[stream.n - 1]) - self.keep_s)
        pair = card.pairs.get(merchant)
        if pair is None:
            pair = card.pairs[merchant] = _Pair()
        pair.append(t, ok, code, int(card.t[card.n - 1]) - self.keep_s)

    def with_outcome(self, outcome: Mapping[str, Any]) -> OnlineFeatures:
        """A view that has also observed `outcome`, for the rows of attempts that would
        follow it (a retry of a decline not observed yet): the streams the outcome touches
        (its card, issuer, issuer x route and route) are copied, every other is read from
        this one, which is left as it is."""
        other = copy.copy(self)
        card, issuer, route = outcome["card_id"], outcome["issuer_id"], _text(outcome.get("route"))
        for name, key in (
            ("cards", card),
            ("issuers", issuer),
            ("issuer_routes", (issuer, route)),
            ("routes", route),
        ):
            table = getattr(self, name)
            own = {key: copy.deepcopy(table[key])} if key in table else {}
            setattr(other, name, ChainMap(own, table))  # writes go to `own`
        other.observe(outcome)
        return other

    # -- features -------------------------------------------------------------------------
    def row(self, attempt: Mapping[str, Any]) -> tuple[np.ndarray, list[str | None]]:
        """(values (F,), categorical values) of an attempt about to be sent."""
        t = epoch_seconds(attempt["ts"])
        cutoff = t - self.lag_s
        x = np.full(len(self.columns), NAN)
        amount = float(attempt["amount"])
        issuer_country = str(attempt["issuer_country"])
        merchant_country = str(attempt["merchant_country"])
        x[:9] = (
            amount,
            math.log1p(amount),
            float(attempt.get("attempt", 1)),
            1.0 if attempt["is_recurring"] else 0.0,
            1.0 if attempt["three_ds"] else 0.0,
            1.0 if issuer_country != merchant_country else 0.0,
            (t % 86_400) // 3_600,
            (t // 86_400 + 3) % 7,  # 1970-01-01 was a Thursday: Monday = 0
            time.gmtime(t).tm_mday,
        )
        cats: list[str | None] = [
            str(attempt["mcc"]),
            issuer_country,
            merchant_country,
            str(attempt["currency"]),
            str(attempt["network"]),
            str(attempt["card_type"]),
            str(attempt["initiator"]),
            str(attempt["issuer_id"]),
            _text(attempt.get("route")),
        ]
        r = self._recency
        issuer = self.issuers.get(attempt["issuer_id"])
        iw = x[self._issuer].reshape(-1, 9)  # (W, 9) view: count, approval rate, cause shares
        if issuer is None:
            iw[:, 0] = 0.0
        else:
            idx = self._bounds(issuer, cutoff)
            hi = int(idx[-1])
            at = issuer.sums[:_DECLINE, idx]  # (1 + causes, W + 1)
            count = (hi - idx[:-1]).astype(np.float64)
            iw[:, 0] = count
            count[count == 0] = NAN  # x / NaN is NaN: an average over no rows is NULL
            iw[:, 1:] = ((at[:, -1:] - at[:, :-1]) / count).T
            if hi > issuer.start:
                x[r + 5 : r + 8] = t - issuer.last[_ISSUER_LAST, hi - 1]
            else:
                x[r + 5 : r + 8] = t - issuer.old_flag_t[_ISSUER_LAST]
        self._rate_windows(
            x[self._issuer_route].reshape(-1, len(ISSUER_ROUTE_WINDOW)),
            self.issuer_routes.get((attempt["issuer_id"], cats[-1])),
            cutoff,
        )
        self._rate_windows(
            x[self._route].reshape(-1, len(ROUTE_WINDOW)), self.routes.get(cats[-1]), cutoff
        )
        card = self.cards.get(attempt["card_id"])
        if card is None:
            cw = x[self._card].reshape(-1, 12)
            cw[:, 0] = 0.0
            cw[:, 2:9] = 0.0
            x[self._cm] = 0.0
            return x, [*cats, None, None, None, None, None, None, None]
        hi = self._card_windows(x[self._card].reshape(-1, 12), card, cutoff)
        mean, top_ok = x[self._mean], x[self._top_ok]
        x[self._rel] = amount / mean if mean != 0 else NAN  # NaN stays NaN
        x[self._rel + 1] = amount / top_ok if top_ok != 0 else NAN
        if hi > card.start:
            x[r] = t - card.t[hi - 1]
            x[r + 1 : r + 5] = t - card.last[_CARD_LAST, hi - 1]
        else:
            x[r] = t - card.old_t
            x[r + 1 : r + 5] = t - card.old_flag_t[_CARD_LAST]
        last, prev = self._last_and_prev(card, hi, attempt)
        if prev is not None:
            x[self._prev_secs] = t - prev[3]
        pair = card.pairs.get(attempt["merchant_id"])
        cm_code = None
        if pair is None:
            x[self._cm] = 0.0
        else:
            n, ok, pair_t, cm_code = pair.at(cutoff)
            x[self._cm] = n
            x[self._cm + 1] = ok / n if n else NAN
            x[self._cm_secs] = t - pair_t
        return x, [*cats, *last, cm_code, *(prev[:3] if prev else (None, None, None))]

    def route_rows(self, attempt: Mapping[str, Any], routes: Sequence[str | None]) -> np.ndarray:
        """`row(attempt)`'s values as if sent through each of `routes` (R, F): the row is
        computed once, then only its issuer x route and route columns per route."""
        values, _ = self.row(attempt)
        out = np.repeat(values[None, :], len(routes), axis=0)
        cutoff = epoch_seconds(attempt["ts"]) - self.lag_s
        for i, route in enumerate(routes):
            name = _text(route)
            for columns, stream in (
                (self._issuer_route, self.issuer_routes.get((attempt["issuer_id"], name))),
                (self._route, self.routes.get(name)),
            ):
                block = out[i, columns].reshape(-1, 2)  # a view: written in place
                block[:] = NAN  # as `row` starts it: a rate over no events stays NaN
                self._rate_windows(block, stream, cutoff)
        return out

    def _bounds(self, stream: _Stream, cutoff: int) -> np.ndarray:
        """(W + 1,) buffer indices: each window's first event, then the cutoff's."""
        s = stream.start
        return stream.t[s : stream.n].searchsorted(cutoff - self._offsets) + s

    def _rate_windows(self, out: np.ndarray, stream: _Stream | None, cutoff: int) -> None:
        """Fill `out` (W, 2): count and approval rate of a stream (the issuer through the
        route, or the route)."""
        if stream is None:
            out[:, 0] = 0.0
            return
        idx = self._bounds(stream, cutoff)
        count = (idx[-1] - idx[:-1]).astype(np.float64)
        out[:, 0] = count
        count[count == 0] = NAN
        ok = stream.sums[_OK, idx]
        out[:, 1] = (ok[-1] - ok[:-1]) / count

    def _card_windows(self, out: np.ndarray, card: _Stream, cutoff: int) -> int:
        """Fill `out` (W, 12): count, approval rate, cause counts, amount mean, max, max
        approved; return the buffer index of the first event at or after the cutoff."""
        idx = self._bounds(card, cutoff)
        lo, hi = idx[:-1], int(idx[-1])
        at = card.sums[:, idx]  # (S, W + 1)
        sums = at[:, -1:] - at[:, :-1]  # (S, W)
        count = (hi - lo).astype(np.float64)
        out[:, 0] = count
        out[:, 2:9] = sums[_CAUSE0:_DECLINE].T
        count[count == 0] = NAN
        out[:, 1] = sums[_OK] / count
        out[:, 9] = sums[_AMOUNT] / count
        first = int(lo.min())
        if hi > first:
            # windows share their end: each one's max is a suffix max of the longest
            back = slice(hi - 1, first - 1 if first > 0 else None, -1)
            top = np.maximum.accumulate(card.amount[back])[::-1]
            top_ok = np.maximum.accumulate(card.ok_amount[back])[::-1]
            inside = lo < hi
            i = np.minimum(lo - first, hi - first - 1)
            out[:, 10] = np.where(inside, top[i], NAN)
            best = np.where(inside, top_ok[i], NAN)
            best[best == -np.inf] = NAN
            out[:, 11] = best
        return hi

    @staticmethod
    def _last_and_prev(
        card: _Stream, hi: int, attempt: Mapping[str, Any]
    ) -> tuple[tuple[str | None, str | None, str | None], tuple[Any, ...] | None]:
        """The card's last event before the cutoff, and this payment's previous attempt."""
        detail = card.detail
        assert detail is not None
        last: tuple[str | None, str | None, str | None]
        if hi > card.start:
            last = detail[hi - 1][:3]
        else:
            last = card.old_last or (None, None, None)
        number = int(attempt.get("attempt", 1))
        payment = attempt.get("payment_id")
        if number <= 1 or payment is None:
            return last, None
        for i in range(hi - 1, card.start - 1, -1):  # retries follow their attempt closely
            d = detail[i]
            if d[5] == number - 1 and d[4] == payment:
                return last, (d[0], d[1], d[2], float(card.t[i]))
        return last, None


class LightGBMScorer:
    """The LightGBM baseline end to end: online features, categories coded, one thread.

    The same interface as the transformer's `Scorer` where the bench needs it: `score`,
    `score_batch`, `observe`.
    """

    def __init__(self, model: LightGBMModel, features: OnlineFeatures | None = None) -> None:
        if model.booster is None:
            raise ValueError("the LightGBM model is not fitted")
        self.model = model
        self.booster = model.booster
        self.num_iteration = model.best_iteration
        self.features = features or OnlineFeatures()
        where = {c: i for i, c in enumerate(self.features.columns)}
        missing = [c for c in model.columns if c not in where]
        if missing:
            raise ValueError(f"the model needs columns the online features lack: {missing}")
        self._take = np.array([where[c] for c in model.columns], dtype=np.int64)
        cat_index = {c: i for i, c in enumerate(self.features.categorical)}
        # (position in the model's row, position among the categorical values, value -> code)
        self._codes = [
            (model.columns.index(c), cat_index[c], {v: float(k) for k, v in enumerate(cats)})
            for c, cats in model.categories.items()
        ]

    def encode(self, values: np.ndarray, cats: Sequence[str | None]) -> np.ndarray:
        """The model's input row (D,): its columns, categories as training codes (NaN: unseen)."""
        x = values[self._take]
        for at, j, codes in self._codes:
            v = cats[j]
            x[at] = NAN if v is None else codes.get(v, NAN)
        return x

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(B,) approval probabilities of model rows (B, D)."""
        return np.asarray(
            self.booster.predict(x, num_iteration=self.num_iteration, num_threads=1),
            dtype=np.float64,
        )

    def score_batch(self, attempts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        x = np.stack([self.encode(*self.features.row(a)) for a in attempts])  # (B, D)
        return self.predict(x)

    def score(self, attempt: Mapping[str, Any]) -> float:
        return float(self.predict(self.encode(*self.features.row(attempt))[None, :])[0])

    def observe(self, outcome: Mapping[str, Any]) -> None:
        self.features.observe(outcome)


__all__ = ["LightGBMScorer", "OnlineFeatures", "feature_columns"]
