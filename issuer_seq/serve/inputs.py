"""Raw attempts -> encoded events -> the network's named inputs, with numpy alone.

This is the serving twin of data/store.py + data/batches.py and uses the same feature
functions (features.py), so that a log replayed through the scorer gives exactly the inputs
the training batches give (tests/test_serve_inputs.py and tests/test_scorer.py replay one).

A request reads each stream's history as a `Window`: the K most recent events before the
cut-off, as columns. The scorer's in-memory store keeps every key's events as such columns
already in time order (serve/state.py `History`), so a window is a slice; a plain list of
events (the Redis store, tests) is turned into one by `window_of`.

An attempt is a mapping with the log's columns (see docs/data_contract.md): `ts` (ISO 8601
string, epoch seconds, or datetime), `card_id`, `issuer_id`, `merchant_id`, `network`,
`card_type`, `issuer_country`, `mcc`, `merchant_country`, `amount`, `currency`, `initiator`,
`is_recurring`, `three_ds`, `attempt`, `payment_id` (required on retries and outcomes), and
for outcomes `response_code` / `advice_code`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from issuer_seq import features as F
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import STREAMS, _lookup, _text
from issuer_seq.rules import cause_of
from issuer_seq.timestamps import epoch_seconds

_CAT_INDEX = {f: i for i, f in enumerate(F.CATEGORICAL)}
# Input names, made once: (categorical, numeric, relative, length) per stream.
_NAMES = {
    s: (
        [f"{s}_{f}" for f in F.CATEGORICAL],
        [f"{s}_{f}" for f in F.NUMERIC],
        [f"{s}_{f}" for f in F.RELATIVE],
        f"{s}_length",
    )
    for s in STREAMS
}
_CUR_CAT = [f"cur_{f}" for f in F.CATEGORICAL]
_CUR_NUM = [f"cur_{f}" for f in F.NUMERIC]
_UTC_OFFSET: dict[str, int] = {}  # issuer country -> features.utc_offset_s


class Raw(NamedTuple):
    """What the network rules and the fallback read of an attempt, as the client sent it."""

    network: str
    amount: float
    response_code: str  # "" before the answer
    advice_code: str  # "" for none
    attempt: int

    @classmethod
    def of(cls, attempt: Mapping[str, Any]) -> Raw:
        code = attempt.get("response_code")
        return cls(
            str(attempt["network"]),
            float(attempt["amount"]),
            "" if code is None else str(code),
            str(attempt.get("advice_code") or ""),
            int(attempt["attempt"]),
        )


@dataclass(frozen=True)
class Event:
    """One attempt as the histories keep it: time, merchant, payment, encoded features."""

    t: int  # epoch seconds (floored, as the store does)
    merchant: str
    cat: tuple[int, ...]  # ids in features.CATEGORICAL order (outcomes included)
    num: tuple[float, ...]  # values in features.NUMERIC order
    raw: Raw | None = None  # what the network rules need
    # payment_id as text; None when the attempt came without one (it then matches nothing)
    payment: str | None = None
    # the event graph's output for this event (S,) float32, and the id of the encoder that
    # computed it (`Scorer.encoder`); None: not computed (a store filled by another bundle
    # or before states were kept, a backfill): the scorer recomputes it when read
    state: np.ndarray | None = field(default=None, compare=False)
    encoder: str | None = None

    def to_json(self) -> list[Any]:
        # `raw` is written as a JSON list, in its fields' order; the state as base64 of its
        # float32 bytes (little-endian)
        state = None
        if self.state is not None:
            state = base64.b64encode(np.asarray(self.state, "<f4").tobytes()).decode()
        return [
            self.t,
            self.merchant,
            list(self.cat),
            list(self.num),
            self.raw,
            self.payment,
            state,
            self.encoder,
        ]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Event:
        raw = Raw(*data[4]) if len(data) > 4 and data[4] is not None else None
        payment = data[5] if len(data) > 5 else None
        state = None
        if len(data) > 7 and data[6] is not None:
            state = np.frombuffer(base64.b64decode(data[6]), "<f4").astype(np.float32)
        encoder = data[7] if state is not None else None
        return cls(
            int(data[0]), str(data[1]), tuple(data[2]), tuple(data[3]), raw, payment, state, encoder
        )


@dataclass(frozen=True)
class Window:
    """A stream's history as one request reads it: its K most recent events before the
    cut-off, oldest first, as columns."""

    t: np.ndarray  # (n,) int64 epoch seconds
    merchant: np.ndarray  # (n,) object
    payment: np.ndarray  # (n,) object (None: unknown)
    cat: np.ndarray  # (C, n) integer ids in features.CATEGORICAL order
    num: np.ndarray  # (F, n) float32 in features.NUMERIC order
    # (n, S) float32: each event's cached state, where `encoder` names who computed it
    state: np.ndarray
    encoder: np.ndarray  # (n,) object: the id of the encoder that computed it, or None

    def __len__(self) -> int:
        return len(self.t)


def stream_key(stream: str, attempt: Mapping[str, Any], event: Event | None = None) -> str:
    """The state-store key of the attempt's history in `stream` (features.STREAM_KEYS): the
    card or issuer id as text; for the card at a merchant, both, as a JSON list; for the
    route, the id the bundle's vocabulary gives the route (`event`: the attempt encoded),
    as training groups the stream (routes it never saw share one stream, as there)."""
    if stream == F.ROUTE_STREAM:
        if event is None:
            raise ValueError("the route stream's key needs the attempt encoded (`event`)")
        return route_key(event.cat[F.ROUTE])
    columns = F.STREAM_KEYS[stream]
    if len(columns) == 1:
        return str(attempt[columns[0]])
    return json.dumps([str(attempt[c]) for c in columns])


def route_key(route_id: int) -> str:
    """The state-store key of the route stream of the route with vocabulary id `route_id`."""
    return f"route:{int(route_id)}"


def with_route(event: Event, route_id: int) -> Event:
    """`event` sent through the route with vocabulary id `route_id` instead."""
    cat = list(event.cat)
    cat[F.ROUTE] = int(route_id)
    return replace(event, cat=tuple(cat))


def with_pending(known: list[Event], event: Event) -> list[Event]:
    """A key's known events with `event` (an outcome not observed yet: the decline a retry
    follows) in its place in time; `known` itself when it holds the event already."""
    if any(e.t == event.t and e.payment == event.payment for e in known):
        return known
    return sorted([*known, event], key=lambda e: e.t)


def history_lengths(history: Mapping[str, Any]) -> dict[str, int]:
    """stream -> K, from a bundle manifest's `history` (`k_card`, `k_issuer`, ...)."""
    missing = [dim for dim in F.HISTORY_DIMS.values() if dim not in history]
    if missing:
        raise IssuerSeqError(
            f"the bundle's history lacks {', '.join(missing)}: it was exported for other "
            "streams than this scorer's; export the run again"
        )
    return {s: int(history[dim]) for s, dim in F.HISTORY_DIMS.items()}


def window_of(events: Sequence[Event], cutoff: int, k: int) -> Window:
    """The window of a list of events, oldest first: the last k with t < cutoff."""
    kept = [e for e in events if e.t < cutoff][-k:] if k > 0 else []
    if not kept:
        n_cat = len(events[0].cat) if events else len(F.CATEGORICAL)
        n_num = len(events[0].num) if events else len(F.NUMERIC)
        return Window(
            np.zeros(0, np.int64),
            np.zeros(0, object),
            np.zeros(0, object),
            np.zeros((n_cat, 0), np.int64),
            np.zeros((n_num, 0), np.float32),
            np.zeros((0, 0), np.float32),
            np.zeros(0, object),
        )

    def column(values: list[Any]) -> np.ndarray:
        out = np.empty(len(kept), object)
        for i, v in enumerate(values):  # one by one: a list of arrays would broadcast
            out[i] = v
        return out

    # states sized as the latest event's; one of another size (another bundle's) is left
    # out, as none: recomputed when read, never read as another network's
    size = next((len(e.state) for e in reversed(kept) if e.state is not None), 0)
    state = np.zeros((len(kept), size), np.float32)
    encoder = np.empty(len(kept), object)
    for i, e in enumerate(kept):
        if e.state is not None and len(e.state) == size:
            state[i], encoder[i] = e.state, e.encoder
    return Window(
        np.array([e.t for e in kept], dtype=np.int64),
        column([e.merchant for e in kept]),
        column([e.payment for e in kept]),
        np.array([e.cat for e in kept], dtype=np.int64).T,
        np.array([e.num for e in kept], dtype=np.float32).T,
        state,
        encoder,
    )


def _utc_offset(country: object) -> int:
    """features.utc_offset_s of one country, computed once per country."""
    key = str(country)
    offset = _UTC_OFFSET.get(key)
    if offset is None:
        offset = _UTC_OFFSET[key] = int(F.utc_offset_s([key])[0])
    return offset


def raw_values(attempt: Mapping[str, Any]) -> dict[str, object]:
    """The text-like raw value of each categorical feature, as features.raw_categorical."""
    code = attempt.get("response_code")
    network = attempt["network"]
    return {
        "response_code": code,
        "cause": None if code is None else cause_of(str(code), str(network)).value,
        "advice_code": attempt.get("advice_code"),
        "mcc": attempt["mcc"],
        "merchant_country": attempt["merchant_country"],
        "issuer_country": attempt["issuer_country"],
        "currency": attempt["currency"],
        "network": network,
        "card_type": attempt["card_type"],
        "initiator": attempt["initiator"],
        "is_recurring": bool(attempt["is_recurring"]),
        "three_ds": bool(attempt["three_ds"]),
        "cross_border": attempt["issuer_country"] != attempt["merchant_country"],
        "issuer": attempt["issuer_id"],
        "route": attempt.get("route"),
    }


def retry_without_payment(attempt: int) -> str:
    """What is wrong with a retry sent without its payment_id."""
    return (
        f"payment_id is required on a retry (attempt {attempt}): the model matches it "
        "against the payment's earlier attempts"
    )


def encode_event(vocab: F.Vocab, attempt: Mapping[str, Any]) -> Event:
    """Encode one attempt (with or without its outcome)."""
    values = raw_values(attempt)
    maps = vocab.maps
    # features.encode's lookup, one value at a time (no array per feature)
    cat = tuple([_lookup(maps[f], _text(values[f])) for f in F.CATEGORICAL])
    t = epoch_seconds(attempt["ts"])
    num = F.numeric_one(
        attempt["amount"], attempt["attempt"], t, _utc_offset(attempt["issuer_country"])
    )
    payment = attempt.get("payment_id")
    if payment is None and attempt["attempt"] > 1:
        raise IssuerSeqError(retry_without_payment(attempt["attempt"]))
    return Event(
        t=t,
        merchant=str(attempt["merchant_id"]),
        payment=None if payment is None else str(payment),
        cat=cat,
        num=tuple(np.array(num, np.float32).tolist()),  # rounded to float32, as in training
        raw=Raw.of(attempt),
    )


def relative(event: Event, window: Window, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) features.RELATIVE of the window's last n events as seen from `event`, written
    into `out` when given: features.relative_features' numpy arithmetic, column by column
    (a request's windows are short, and numpy's cost per call is most of the time)."""
    if out is None:
        out = np.empty((n, len(F.RELATIVE)), np.float32)
    out[:, 0] = np.log1p(np.maximum(event.t - window.t[-n:], 0) / 60.0)
    out[:, 1] = window.merchant[-n:] == event.merchant
    # an attempt without a payment id is a payment of its own
    out[:, 2] = window.payment[-n:] == event.payment if event.payment is not None else 0.0
    return out


def decline_ids(declines: Sequence[Event] | None, b: int) -> dict[str, np.ndarray]:
    """`decline_response_code`, `decline_advice_code` (B,): the declines' ids, or NONE."""
    out = {}
    for f in ("response_code", "advice_code"):
        ids = [F.NONE if d is None else d.cat[_CAT_INDEX[f]] for d in (declines or [None] * b)]
        out[f"decline_{f}"] = np.array(ids, dtype=np.int64)
    return out


def build_inputs(
    current: Sequence[Event],
    histories: Mapping[str, Sequence[Window | Sequence[Event]]],
    ks: Mapping[str, int],
    lag_s: int = 0,
    declines: Sequence[Event] | None = None,
) -> dict[str, np.ndarray]:
    """Named inputs for a batch of B current attempts.

    histories[s][b]: the stream's history for attempt b, either a `Window` already cut at
    t - lag (its last K events are used), or the known events, oldest first (any number; only
    those strictly before t - lag are used, the K most recent of them). declines[b]: the
    decline the retry head is asked about (None: NONE ids, as for plain scoring).

    Each input is a contiguous (B,) or (B, K) array: a slice of one (C, B, K) block per kind.
    """
    b = len(current)
    out: dict[str, np.ndarray] = {}
    n_cat, n_num = len(F.CATEGORICAL), len(F.NUMERIC)
    cur_cat = np.array([e.cat for e in current], dtype=np.int64).reshape(b, n_cat).T.copy()
    cur_num = np.array([e.num for e in current], dtype=np.float32).reshape(b, n_num).T.copy()
    for i, f in enumerate(F.CATEGORICAL):
        out[_CUR_CAT[i]] = np.full(b, F.NONE) if f in F.OUTCOME_FEATURES else cur_cat[i]
    for i, name in enumerate(_CUR_NUM):
        out[name] = cur_num[i]
    for s in STREAMS:
        k = ks[s]
        cat = np.zeros((n_cat, b, k), dtype=np.int64)  # (C, B, K)
        num = np.zeros((n_num, b, k), dtype=np.float32)  # (F, B, K)
        rel = np.zeros((len(F.RELATIVE), b, k), dtype=np.float32)  # (3, B, K)
        length = np.zeros(b, dtype=np.int64)
        for row, (event, known) in enumerate(zip(current, histories[s], strict=True)):
            window = known if isinstance(known, Window) else window_of(known, event.t - lag_s, k)
            n = min(len(window), k)
            length[row] = n
            if n == 0:
                continue
            cat[:, row, k - n :] = window.cat[:, -n:]
            num[:, row, k - n :] = window.num[:, -n:]
            rel[:, row, k - n :] = relative(event, window, n).T
        cat_names, num_names, rel_names, length_name = _NAMES[s]
        for i, name in enumerate(cat_names):
            out[name] = cat[i]
        for i, name in enumerate(num_names):
            out[name] = num[i]
        for i, name in enumerate(rel_names):
            out[name] = rel[i]
        out[length_name] = length
    return out | decline_ids(declines, b)


#: computes cached states: cat (n, C) int64, num (n, F) float32 -> (n, S) float32
StateEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]
_OUTCOME_INDEX = [i for i, f in enumerate(F.CATEGORICAL) if f in F.OUTCOME_FEATURES]
_ROUTE = STREAMS.index(F.ROUTE_STREAM)


def without_outcome(cat: Sequence[int]) -> list[int]:
    """An event's ids with its outcome's (features.OUTCOME_FEATURES) NONE: the attempt as
    the query reads it, before its answer."""
    ids = list(cat)
    for i in _OUTCOME_INDEX:
        ids[i] = F.NONE
    return ids


def query_buffers(
    b: int, ks: Mapping[str, int], state_size: int, routes: bool = False
) -> dict[str, np.ndarray]:
    """Zeroed inputs of the query graph for a batch of B attempts, or with `routes` of the
    route graph for one attempt through B routes, shaped as `build_query_inputs` fills them."""
    n_rel, k = len(F.RELATIVE), max(ks.values())
    out = {
        "cur_cat": np.zeros((b, len(F.CATEGORICAL)), dtype=np.int64),
        "cur_num": np.zeros((b, len(F.NUMERIC)), dtype=np.float32),
    }
    rows, n = (1, len(F.SHARED)) if routes else (b, len(STREAMS))
    out["states"] = np.zeros((rows, n, k, state_size), dtype=np.float32)
    out["rel"] = np.zeros((rows, n, k, n_rel), dtype=np.float32)
    out["length"] = np.zeros((rows, n), dtype=np.int64)
    if routes:
        out["route_states"] = np.zeros((b, k, state_size), dtype=np.float32)
        out["route_rel"] = np.zeros((b, k, n_rel), dtype=np.float32)
        out["route_length"] = np.zeros(b, dtype=np.int64)
    else:
        out["decline_response_code"] = np.zeros(b, dtype=np.int64)
        out["decline_advice_code"] = np.zeros(b, dtype=np.int64)
    return out


def build_query_inputs(
    current: Sequence[Event],
    histories: Mapping[str, Sequence[Window | Sequence[Event]]],
    ks: Mapping[str, int],
    encoder: str,
    encode: StateEncoder,
    state_size: int,
    lag_s: int = 0,
    declines: Sequence[Event] | None = None,
    routes: bool = False,
    into: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The query graph's inputs (export/factored.py) for a batch of B current attempts, or
    with `routes` the route graph's, for one attempt through B candidate routes.

    Histories as for `build_inputs`, or, for a stream, one history that every row shares when
    the rows are one attempt through several routes (`Scorer.score_routes`: the same time,
    merchant and payment, so the same window and relative features; it is read once; the
    route graph takes every stream but the route's so). The query graph's streams are stacked
    on the axis after the batch, each window right-aligned to the longest K: `states`
    (B, N, K, S), `rel` (B, N, K, 3), `length` (B, N); the route graph's shared streams the
    same with a batch of 1, and its route stream `route_states` (B, K, S), `route_rel`
    (B, K, 3), `route_length` (B,). Each history event's cached state is used when the
    encoder `encoder` computed it; any other (none kept, or another bundle's) is recomputed
    from its encoded features by `encode`, all of them in one call. Padding slots are zeros.

    `into`: `query_buffers` of this batch to fill (zeroed first) and return, instead of new
    ones (the scorer keeps some bound to ONNX Runtime, `Scorer.feeds`).
    """
    b = len(current)
    k = max(ks.values())
    if into is None:
        out = query_buffers(b, ks, state_size, routes)
    else:
        out = into
        for array in out.values():
            array.fill(0)
    if b:
        out["cur_cat"][:] = [without_outcome(e.cat) for e in current]
        out["cur_num"][:] = [e.num for e in current]
    # each stream's (states (rows, K, S), rel (rows, K, 3), length (rows,)): views of the inputs
    targets: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if routes:
        for j, i in enumerate(F.SHARED):
            targets[i] = (out["states"][:, j], out["rel"][:, j], out["length"][:, j])
        targets[_ROUTE] = (out["route_states"], out["route_rel"], out["route_length"])
    else:
        for i in range(len(STREAMS)):
            targets[i] = (out["states"][:, i], out["rel"][:, i], out["length"][:, i])
    stale: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []  # slot's row, cat, num
    shared = [i for i, s in enumerate(STREAMS) if len(histories[s]) == 1 < b]
    for i, s in enumerate(STREAMS):
        states, rel, length = targets[i]
        rows = current[:1] if i in shared else current
        if len(rows) > len(states):
            raise IssuerSeqError(f"the route graph reads one {s} history, got {len(rows)}")
        for row, (event, known) in enumerate(zip(rows, histories[s], strict=True)):
            window = (
                known if isinstance(known, Window) else window_of(known, event.t - lag_s, ks[s])
            )
            n = min(len(window), ks[s])
            length[row] = n
            if n == 0:
                continue
            first = len(window) - n
            # who computed each state, as a list: numpy compares object arrays ~10x slower
            by = window.encoder[first:].tolist()
            if by.count(encoder) == n:
                states[row, k - n :] = window.state[first:]
            else:
                for j in range(n):
                    if by[j] == encoder:
                        states[row, k - n + j] = window.state[first + j]
                    else:
                        cat, num = window.cat[:, first + j], window.num[:, first + j]
                        stale.append((states[row, k - n + j], cat, num))
            relative(event, window, n, out=rel[row, k - n :])
    if stale:
        computed = encode(
            np.array([x[1] for x in stale], dtype=np.int64),
            np.array([x[2] for x in stale], dtype=np.float32),
        )
        for (slot, _, _), value in zip(stale, computed, strict=True):
            slot[:] = value
    for i in shared:
        states, rel, length = targets[i]
        if len(states) > 1:  # the query graph's rows: a copy each
            states[1:], rel[1:], length[1:] = states[0], rel[0], length[0]
    if not routes:
        for name, ids in decline_ids(declines, b).items():
            out[name][:] = ids
    return out
