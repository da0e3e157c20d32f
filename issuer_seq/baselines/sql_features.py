"""Point-in-time aggregate features in SQL (DuckDB here; the SQL is portable).

What a team running gradient-boosted trees builds by hand, done carefully: per card and per
issuer, counts, approval rates and decline causes over trailing windows, the issuer's volume
and approval rate through the attempt's route and the route's over every issuer, recency of
approvals and declines, the last response code, amount statistics, and the current
attempt's own (static) features. See docs/baselines.md for the list.

The queries live in `sql/*.sql` (package data). `render_sql` fills in their few template fields
(one block per trailing window, the lag), `sql_features` runs the result over a validated
log frame. History windows end strictly before the attempt's second (minus `lag_s`): the
same point-in-time rule as the transformer's store (docs/data.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from string import Template

import duckdb
import numpy as np
import pandas as pd

from issuer_seq.errors import IssuerSeqError
from issuer_seq.rules import causes

#: label -> seconds. Labels become column suffixes (`card_n_10m`) and SQL window names.
WINDOWS: dict[str, int] = {"10m": 600, "1h": 3_600, "24h": 86_400, "7d": 604_800, "30d": 2_592_000}

#: decline causes counted per window (rules.Cause values; `other` is too rare to count)
CAUSES: tuple[str, ...] = ("funds", "limit", "generic", "technical", "sca", "data", "hard")

#: the current attempt's own categorical columns
CURRENT_CATEGORICAL: tuple[str, ...] = (
    "mcc",
    "issuer_country",
    "merchant_country",
    "currency",
    "network",
    "card_type",
    "initiator",
    "issuer_id",
    "route",
)

#: output columns that are categorical (pandas `category`); every other column is numeric
CATEGORICAL: tuple[str, ...] = (
    *CURRENT_CATEGORICAL,
    "card_last_response_code",
    "card_last_cause",
    "card_last_advice_code",
    "cm_last_response_code",
    "prev_response_code",
    "prev_cause",
    "prev_advice_code",
)

_INPUT_COLUMNS: tuple[str, ...] = (
    "card_id",
    "issuer_id",
    "merchant_id",
    "payment_id",
    "attempt",
    "amount",
    "mcc",
    "issuer_country",
    "merchant_country",
    "currency",
    "network",
    "card_type",
    "initiator",
    "is_recurring",
    "three_ds",
    "response_code",
    "advice_code",
)


@cache
def _sql(name: str) -> Template:
    text = resources.files("issuer_seq.baselines").joinpath("sql", name).read_text("utf-8")
    return Template(text)


def render_sql(windows: Mapping[str, int] = WINDOWS, lag_s: int = 0) -> str:
    """The feature query for these trailing windows (label -> seconds) and lag."""
    if not windows:
        raise IssuerSeqError("at least one trailing window is needed")
    for label, seconds in windows.items():
        if not label.isidentifier() and not ("_" + label).isidentifier():
            raise IssuerSeqError(f"window label {label!r} must be letters, digits, underscores")
        if int(seconds) <= 0:
            raise IssuerSeqError(f"window {label!r} must be positive, got {seconds}")
    if lag_s < 0:
        raise IssuerSeqError(f"lag_s must be >= 0, got {lag_s}")
    lag_end = lag_s + 1  # `t' <= t - lag - 1` is `t' < t - lag` in whole seconds
    card = "\n".join(_sql("card_window.sql").substitute(label=w) for w in windows)
    issuer = "\n".join(_sql("issuer_window.sql").substitute(label=w) for w in windows)
    issuer_route = "\n".join(_sql("issuer_route_window.sql").substitute(label=w) for w in windows)
    route = "\n".join(_sql("route_window.sql").substitute(label=w) for w in windows)
    partitions = {
        "card": "card_id",
        "issuer": "issuer_id",
        "issuer_route": "issuer_id, route",
        "route": "route",
    }
    definitions = ",\n".join(
        _sql("window.sql").substitute(
            name=f"{entity}_{label}",
            partition=partition,
            start=lag_s + int(seconds),
            lag_end=lag_end,
        )
        for entity, partition in partitions.items()
        for label, seconds in windows.items()
    )
    longest = max(windows, key=lambda w: windows[w])
    return _sql("features.sql").substitute(
        card_columns=card.rstrip("\n"),
        issuer_columns=issuer.rstrip("\n"),
        issuer_route_columns=issuer_route.rstrip("\n"),
        route_columns=route.rstrip("\n"),
        window_definitions=definitions,
        lag=lag_s,
        lag_end=lag_end,
        longest=longest,
    )


def events_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The `events` input of features.sql: the log's columns plus `_rn`, `t`, `ts`, `cause`,
    and `route` (None everywhere in a log without routes: one route)."""
    missing = [c for c in (*_INPUT_COLUMNS, "ts") if c not in frame.columns]
    if missing:
        raise IssuerSeqError(f"sql_features needs a validated log; missing columns {missing}")
    ts = frame["ts"]
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    ts = ts.astype("datetime64[us]")
    events = frame.loc[:, list(_INPUT_COLUMNS)].reset_index(drop=True)
    events.insert(0, "_rn", np.arange(len(frame), dtype=np.int64))
    events.insert(1, "t", ts.to_numpy().astype(np.int64) // 1_000_000)
    # The SQL extracts the calendar day from a plain UTC timestamp, so no session time zone
    # can shift it.
    events.insert(2, "ts", ts.to_numpy())
    # Cause per (code, network) pair once: a few dozen pairs for a million rows.
    pairs = events[["response_code", "network"]].astype(str).drop_duplicates()
    pairs["cause"] = causes(pairs["response_code"].to_numpy(str), pairs["network"].to_numpy(str))
    events = events.merge(pairs.astype(str), on=["response_code", "network"], how="left")
    events["advice_code"] = (
        events["advice_code"].astype(object).where(events["advice_code"].notna(), None)
    )
    if "route" in frame.columns:
        route = frame["route"].reset_index(drop=True).astype(object)
        events["route"] = route.where(route.notna(), None).to_numpy()
    else:
        events["route"] = np.full(len(events), None, dtype=object)
    return events


def sql_features(
    frame: pd.DataFrame,
    windows: Mapping[str, int] = WINDOWS,
    lag_s: int = 0,
    threads: int | None = None,
) -> pd.DataFrame:
    """Point-in-time features of every attempt of a validated log frame (sorted by ts).

    Returns one row per input row, in the same order (a RangeIndex): numeric columns as
    float64 (NaN where an aggregate has no events, e.g. a rate over an empty window or the
    time since a decline the card never had), and the `CATEGORICAL` columns as pandas
    `category` (categories are this frame's values; models align them to their training
    categories). `threads` caps DuckDB's threads (default: all cores).
    """
    events = events_table(frame)
    con = duckdb.connect()
    try:
        if threads is not None:
            con.execute(f"SET threads TO {int(threads)}")
        con.register("events", events)
        out = con.execute(render_sql(windows, lag_s)).df()
    finally:
        con.close()
    if len(out) != len(frame) or not np.array_equal(out["_rn"].to_numpy(), np.arange(len(out))):
        raise IssuerSeqError("feature query returned rows out of order (duplicate payment ids?)")
    out = out.drop(columns=[c for c in out.columns if c.startswith("_")])
    for c in out.columns:
        if c in CATEGORICAL:
            out[c] = out[c].astype("string").astype("category")
        elif out[c].dtype == object or isinstance(out[c].dtype, pd.StringDtype):
            raise IssuerSeqError(f"feature column {c!r} is text but not declared categorical")
        else:
            # One numeric dtype: counts, rates and recencies alike; NaN marks "no event".
            out[c] = pd.to_numeric(out[c]).astype("float64")
    return out
