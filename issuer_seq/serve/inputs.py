"""Raw attempts -> encoded events -> the network's named inputs, with numpy alone.

This is the serving twin of data/store.py + data/batches.py and uses the same feature
functions (features.py), so that a log replayed through the scorer gives exactly the inputs
the training batches give (tests/test_serve.py replays one).

An attempt is a mapping with the log's columns (see docs/data_contract.md): `ts` (ISO 8601
string, epoch seconds, or datetime), `card_id`, `issuer_id`, `merchant_id`, `network`,
`card_type`, `issuer_country`, `mcc`, `merchant_country`, `amount`, `currency`, `initiator`,
`is_recurring`, `three_ds`, `attempt`, and for outcomes `response_code` / `advice_code`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from issuer_seq import features as F
from issuer_seq.rules import cause_of

STREAMS = ("card", "issuer")
_CAT_INDEX = {f: i for i, f in enumerate(F.CATEGORICAL)}


@dataclass(frozen=True)
class Event:
    """One attempt as the histories keep it: time, merchant, encoded features."""

    t: int  # epoch seconds (floored, as the store does)
    merchant: str
    cat: tuple[int, ...]  # ids in features.CATEGORICAL order (outcomes included)
    num: tuple[float, ...]  # values in features.NUMERIC order
    # What the network rules need, raw: (network, amount, response_code, advice_code, attempt)
    raw: tuple[str, float, str, str, int] | None = None

    def to_json(self) -> list[Any]:
        return [self.t, self.merchant, list(self.cat), list(self.num), self.raw]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Event:
        raw = tuple(data[4]) if len(data) > 4 and data[4] is not None else None
        return cls(int(data[0]), str(data[1]), tuple(data[2]), tuple(data[3]), raw)  # type: ignore[arg-type]


def epoch_seconds(ts: Any) -> int:
    """ISO 8601 string, datetime (naive = UTC) or number -> floored epoch seconds."""
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return int(np.floor(ts))
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return int(np.floor(ts.timestamp()))
    raise ValueError(f"unsupported timestamp {ts!r}")


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
    }


def encode_event(vocab: F.Vocab, attempt: Mapping[str, Any]) -> Event:
    """Encode one attempt (with or without its outcome)."""
    raw = raw_values(attempt)
    cat = tuple(int(F.encode(vocab, f, [raw[f]])[0]) for f in F.CATEGORICAL)
    t = epoch_seconds(attempt["ts"])
    num = F.numeric(
        np.array([attempt["amount"]]),
        np.array([attempt["attempt"]]),
        np.array([t]),
        F.utc_offset_s([attempt["issuer_country"]]),
    )
    code = attempt.get("response_code")
    return Event(
        t=t,
        merchant=str(attempt["merchant_id"]),
        cat=cat,
        num=tuple(float(num[f][0]) for f in F.NUMERIC),
        raw=(
            str(attempt["network"]),
            float(attempt["amount"]),
            "" if code is None else str(code),
            str(attempt.get("advice_code") or ""),
            int(attempt["attempt"]),
        ),
    )


def build_inputs(
    current: Sequence[Event],
    histories: Mapping[str, Sequence[Sequence[Event]]],
    ks: Mapping[str, int],
    lag_s: int = 0,
    declines: Sequence[Event] | None = None,
) -> dict[str, np.ndarray]:
    """Named inputs for a batch of B current attempts.

    histories[s][b]: the stream's known events for attempt b, oldest first (any number; only
    those strictly before t - lag are used, the K most recent of them). declines[b]: the
    decline the retry head is asked about (None: NONE ids, as for plain scoring).
    """
    b = len(current)
    out: dict[str, np.ndarray] = {}
    cur_cat = np.array([e.cat for e in current], dtype=np.int64).reshape(b, len(F.CATEGORICAL))
    cur_num = np.array([e.num for e in current], dtype=np.float32).reshape(b, len(F.NUMERIC))
    for i, f in enumerate(F.CATEGORICAL):
        out[f"cur_{f}"] = np.full(b, F.NONE) if f in F.OUTCOME_FEATURES else cur_cat[:, i]
    for i, f in enumerate(F.NUMERIC):
        out[f"cur_{f}"] = cur_num[:, i]
    for s in STREAMS:
        k = ks[s]
        cat = np.zeros((b, k, len(F.CATEGORICAL)), dtype=np.int64)  # (B, K, C)
        num = np.zeros((b, k, len(F.NUMERIC)), dtype=np.float32)  # (B, K, F)
        rel = np.zeros((b, k, len(F.RELATIVE)), dtype=np.float32)  # (B, K, 2)
        length = np.zeros(b, dtype=np.int64)
        for row, (event, known) in enumerate(zip(current, histories[s], strict=True)):
            cutoff = event.t - lag_s
            window = [e for e in known if e.t < cutoff][-k:]
            n = len(window)
            length[row] = n
            if n == 0:
                continue
            cat[row, k - n :] = [e.cat for e in window]
            num[row, k - n :] = [e.num for e in window]
            dt = event.t - np.array([e.t for e in window], dtype=np.int64)
            same = np.array([e.merchant == event.merchant for e in window])
            rel[row, k - n :] = F.relative_features(np, dt, same, True)
        for i, f in enumerate(F.CATEGORICAL):
            out[f"{s}_{f}"] = cat[:, :, i]
        for i, f in enumerate(F.NUMERIC):
            out[f"{s}_{f}"] = num[:, :, i]
        for i, f in enumerate(F.RELATIVE):
            out[f"{s}_{f}"] = rel[:, :, i]
        out[f"{s}_length"] = length
    for f in ("response_code", "advice_code"):
        ids = [F.NONE if d is None else d.cat[_CAT_INDEX[f]] for d in (declines or [None] * b)]
        out[f"decline_{f}"] = np.array(ids, dtype=np.int64)
    return out
