"""Per-event feature transforms, numpy only: one definition for training and serving.

An *event* is one attempt as it appears in a history (with its outcome) or as the current
attempt (without). Every event gets the same categorical ids and numeric values whether it
is encoded in bulk for training (data/) or one at a time by the scorer (serve/), because both
call the functions here. The few features that depend on the moment of scoring (time since
the event, same merchant as the current attempt) are computed at batch time by
`relative_features`, written against the array API shared by numpy and torch.

Feature schema (names are the ONNX input names and the manifest's keys):
- categorical (int64 ids; 0 = padding, 1 = out of vocabulary, 2 = "none / current"):
  see CATEGORICAL.
- numeric (float32): see NUMERIC (per event) and RELATIVE (per history event vs the query).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is for bulk encoding only; the scorer runs on numpy alone
    import pandas as pd

from issuer_seq.rules import causes

PAD, OOV, NONE = 0, 1, 2
N_SPECIAL = 3

#: categorical event features -> how their raw value is derived from the log's columns
CATEGORICAL: tuple[str, ...] = (
    "response_code",  # NONE for the current attempt (its outcome is what we predict)
    "cause",  # rules.Cause of the response code; NONE for the current attempt
    "advice_code",  # NONE when absent or for the current attempt
    "mcc",
    "merchant_country",
    "issuer_country",
    "currency",
    "network",
    "card_type",
    "initiator",
    "is_recurring",
    "three_ds",
    "cross_border",
    "issuer",  # issuer_id, the most frequent ones (others share the OOV id)
    "route",  # the acquirer connection; NONE in a log without routes (one route)
)
#: the column of `route` in CATEGORICAL order (what a route query changes per candidate)
ROUTE: int = CATEGORICAL.index("route")
#: categorical features hidden on the current attempt (they are outcomes)
OUTCOME_FEATURES: frozenset[str] = frozenset({"response_code", "cause", "advice_code"})

NUMERIC: tuple[str, ...] = (
    "log_amount",
    "attempt",
    "hour_sin",
    "hour_cos",
    "local_hour_sin",
    "local_hour_cos",
    "dow_sin",
    "dow_cos",
    "day_of_month",
)
RELATIVE: tuple[str, ...] = ("log_minutes_since", "same_merchant", "same_payment")

#: history streams -> the log columns whose values group their events. The card's attempts
#: at the current merchant are a stream of their own: they reach back further than the
#: card's last k_card attempts (a card's earlier result at a merchant is the best single
#: predictor of its next one there). The route's stream is the last attempts sent through
#: the attempt's acquirer connection, whatever the card or issuer: an acquirer's outage or
#: risk filter shows there first. It is grouped by the route's vocabulary id (the `route` feature),
#: so a log without routes has one route stream, every attempt's, and routes out of the
#: vocabulary share one. The streams of one window length are neighbours (training runs
#: neighbours of one length as one computation).
STREAM_KEYS: Mapping[str, tuple[str, ...]] = {
    "card": ("card_id",),
    "issuer": ("issuer_id",),
    "route": ("route",),
    "card_merchant": ("card_id", "merchant_id"),
}
#: the stream grouped by an encoded categorical feature, not by the log's raw values
ROUTE_STREAM: str = "route"
STREAMS: tuple[str, ...] = tuple(STREAM_KEYS)
#: the streams an attempt's candidate routes share (the network's queries over them do not
#: read the attempt's route), and their positions in STREAMS
SHARED_STREAMS: tuple[str, ...] = tuple(s for s in STREAMS if s != ROUTE_STREAM)
SHARED: tuple[int, ...] = tuple(STREAMS.index(s) for s in SHARED_STREAMS)
#: stream -> the name of its history length: the config key, the manifest's `history` key
#: and the ONNX graph's symbolic dim
HISTORY_DIMS: Mapping[str, str] = {s: f"k_{s}" for s in STREAMS}

MAX_ISSUER_VOCAB = 5_000

#: Standard-time UTC offset (hours) of each issuer country's main time zone (the most
#: populous one for countries spanning several). Issuers' risk rules and cardholders'
#: habits follow local time; countries not listed count as UTC. Daylight saving is ignored:
#: an hour's error twice a year, and the same on both the training and the serving path.
UTC_OFFSET_HOURS: Mapping[str, float] = {
    "US": -5, "CA": -5, "MX": -6, "BR": -3, "AR": -3, "CL": -4, "CO": -5, "PE": -5,
    "GB": 0, "IE": 0, "PT": 0, "IS": 0,
    "DE": 1, "FR": 1, "ES": 1, "IT": 1, "NL": 1, "BE": 1, "LU": 1, "AT": 1, "CH": 1,
    "PL": 1, "CZ": 1, "SK": 1, "HU": 1, "SE": 1, "NO": 1, "DK": 1, "HR": 1, "SI": 1,
    "MT": 1, "NG": 1,
    "FI": 2, "EE": 2, "LV": 2, "LT": 2, "RO": 2, "BG": 2, "GR": 2, "CY": 2, "UA": 2,
    "IL": 2, "ZA": 2, "EG": 2,
    "TR": 3, "RU": 3, "SA": 3, "KE": 3, "AE": 4, "PK": 5, "IN": 5.5, "BD": 6,
    "TH": 7, "VN": 7, "ID": 7, "MY": 8, "SG": 8, "PH": 8, "CN": 8, "HK": 8, "TW": 8,
    "JP": 9, "KR": 9, "AU": 10, "NZ": 12,
}  # fmt: skip


@dataclass(frozen=True)
class Vocab:
    """Value -> id maps per categorical feature, fitted on the training split."""

    maps: Mapping[str, Mapping[str, int]]

    def size(self, name: str) -> int:
        return N_SPECIAL + len(self.maps[name])

    def sizes(self) -> dict[str, int]:
        return {name: self.size(name) for name in CATEGORICAL}

    def to_json(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.maps.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, int]]) -> Vocab:
        return cls({k: dict(v) for k, v in data.items()})


def raw_categorical(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """The text value of every categorical feature for each row of a validated log.

    Values stay pandas Series (hash-factorized later) because converting millions of
    objects to numpy strings is the slowest part of encoding a log.
    """
    import pandas as pd

    code = frame["response_code"]
    network = frame["network"]
    uniq = frame[["response_code", "network"]].drop_duplicates()
    cause_of = dict(
        zip(
            zip(uniq["response_code"], uniq["network"], strict=True),
            causes(uniq["response_code"].to_numpy(str), uniq["network"].to_numpy(str)),
            strict=True,
        )
    )
    pairs = pd.MultiIndex.from_arrays([code, network])
    cause = pd.Series(pairs.map(lambda p: str(cause_of[p])), index=frame.index)
    return {
        "response_code": code,
        "cause": cause,
        "advice_code": frame["advice_code"],
        "mcc": frame["mcc"],
        "merchant_country": frame["merchant_country"],
        "issuer_country": frame["issuer_country"],
        "currency": frame["currency"],
        "network": network,
        "card_type": frame["card_type"],
        "initiator": frame["initiator"],
        "is_recurring": frame["is_recurring"].astype(bool),
        "three_ds": frame["three_ds"].astype(bool),
        "cross_border": frame["issuer_country"] != frame["merchant_country"],
        "issuer": frame["issuer_id"],
        "route": frame["route"]
        if "route" in frame.columns
        else pd.Series(None, index=frame.index, dtype=object),
    }


def _text(value: object) -> str:
    """The vocabulary key of a raw value: booleans as 'True'/'False', ids as text, null as ''."""
    if type(value) is str:  # most values (the checks below cost a served request ~6 us)
        return value
    if value is None or type(value).__name__ == "NAType":  # pd.NA, without importing pandas
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


def fit_vocab(raw: Mapping[str, pd.Series], rows: np.ndarray) -> Vocab:
    """Vocabularies from the rows of the training split; ids ordered by frequency."""
    maps: dict[str, dict[str, int]] = {}
    for name in CATEGORICAL:
        counts = raw[name].iloc[rows].value_counts(sort=True, dropna=True)
        keys = [k for k in map(_text, counts.index) if k != ""]
        if name == "issuer":
            keys = keys[:MAX_ISSUER_VOCAB]
        maps[name] = {k: N_SPECIAL + i for i, k in enumerate(keys)}
    return Vocab(maps)


def encode_series(vocab: Vocab, name: str, values: pd.Series) -> np.ndarray:
    """Bulk encoding: factorize, then look up each distinct value once. (N,) int64."""
    import pandas as pd

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = np.array(
        [_lookup(vocab.maps[name], _text(u)) for u in uniques] + [NONE], dtype=np.int64
    )
    return lookup[codes]  # code -1 (null) picks the trailing NONE


def encode(vocab: Vocab, name: str, values: Sequence[object] | np.ndarray) -> np.ndarray:
    """Encoding of a few raw values (the scorer's path). (N,) int64."""
    mapping = vocab.maps[name]
    return np.array([_lookup(mapping, _text(v)) for v in values], dtype=np.int64)


def _lookup(mapping: Mapping[str, int], key: str) -> int:
    if key == "":
        return NONE
    return mapping.get(key, OOV)


def utc_offset_s(issuer_country: Sequence[object] | np.ndarray) -> np.ndarray:
    """(N,) int64 seconds to add to UTC for the issuer country's local time (0 if unknown)."""
    values = np.asarray(issuer_country, dtype=object)
    uniques, inverse = np.unique(values.astype(str), return_inverse=True)
    table = np.array([UTC_OFFSET_HOURS.get(u, 0.0) * 3_600 for u in uniques], dtype=np.int64)
    return table[inverse.reshape(-1)]


def numeric(
    amount: np.ndarray, attempt: np.ndarray, ts_s: np.ndarray, utc_offset: np.ndarray
) -> dict[str, np.ndarray]:
    """Numeric event features from amount, attempt number, UTC epoch seconds and the issuer
    country's UTC offset in seconds (`utc_offset_s`). (N,) float32.

    Hours (UTC and the cardholder's local time) and the weekday are cyclic (sin, cos); the
    day of the month carries pay cycles.
    """
    ts_s = np.asarray(ts_s, dtype=np.int64)
    hour = (ts_s % 86_400) / 3_600.0
    local_hour = ((ts_s + np.asarray(utc_offset, dtype=np.int64)) % 86_400) / 3_600.0
    dow = ((ts_s // 86_400) + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    days = ts_s.astype("datetime64[s]").astype("datetime64[D]")
    dom = (days - days.astype("datetime64[M]")).astype(np.int64)  # 0-based day of month
    out = {
        "log_amount": np.log1p(np.maximum(np.asarray(amount, dtype=np.float64), 0.0)),
        "attempt": np.minimum(np.asarray(attempt, dtype=np.float64), 10.0) - 1.0,
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "local_hour_sin": np.sin(2 * np.pi * local_hour / 24),
        "local_hour_cos": np.cos(2 * np.pi * local_hour / 24),
        "dow_sin": np.sin(2 * np.pi * dow / 7),
        "dow_cos": np.cos(2 * np.pi * dow / 7),
        "day_of_month": dom / 30.0,
    }
    return {k: v.astype(np.float32) for k, v in out.items()}


def numeric_one(amount: float, attempt: int, ts_s: int, utc_offset: int) -> tuple[float, ...]:
    """`numeric` of one event, with the standard library: the same float64 arithmetic in the
    same order, so the values rounded to float32 are `numeric`'s (tests/test_features.py).
    A request encodes one event, for which numpy's cost per call is most of the time."""
    hour = (ts_s % 86_400) / 3_600.0
    local_hour = ((ts_s + utc_offset) % 86_400) / 3_600.0
    dow = ((ts_s // 86_400) + 3) % 7
    dom = datetime.fromtimestamp(ts_s, UTC).day - 1
    return (
        math.log1p(max(float(amount), 0.0)),
        min(float(attempt), 10.0) - 1.0,
        math.sin(2 * math.pi * hour / 24),
        math.cos(2 * math.pi * hour / 24),
        math.sin(2 * math.pi * local_hour / 24),
        math.cos(2 * math.pi * local_hour / 24),
        math.sin(2 * math.pi * dow / 7),
        math.cos(2 * math.pi * dow / 7),
        dom / 30.0,
    )


def relative_features(
    xp: Any,
    dt_s: Any,
    hist_merchant: Any,
    query_merchant: Any,
    hist_payment: Any,
    query_payment: Any,
) -> Any:
    """(..., K) time since each history event, same-merchant and same-payment flags, stacked
    on a last axis.

    `xp` is numpy or torch: the scorer and the training batches compute the same values.
    dt_s: seconds from the history event to the query (>= 0); merchants and payments as
    comparable codes (or precomputed booleans compared with True).
    Returns (..., K, 3) float32 in RELATIVE order.
    """
    minutes = xp.clip(dt_s, 0, None) / 60.0
    since = xp.log1p(minutes)
    same_merchant = hist_merchant == query_merchant
    same_payment = hist_payment == query_payment
    if xp is np:
        return np.stack([since, same_merchant, same_payment], axis=-1).astype(np.float32)
    return xp.stack([since.float(), same_merchant.float(), same_payment.float()], dim=-1)
