"""Attempt times: the one place a request's or a tool's `ts` becomes UTC.

The log's times are UTC (docs/data_contract.md); a value without a zone is read as UTC, as
`issuer-seq validate` does. Numbers are epoch seconds, never guessed to be milliseconds, and
booleans are not numbers. Error messages never repeat the rejected value.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

# Epoch seconds outside these bounds are almost surely milliseconds or garbage.
TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)


def to_utc(value: Any) -> datetime:
    """ISO 8601 text or datetime (naive = UTC), or epoch seconds -> aware UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | datetime):
        raise ValueError("ts must be an ISO 8601 string or epoch seconds")
    try:
        if isinstance(value, str | datetime):
            ts = (
                datetime.fromisoformat(value.replace("Z", "+00:00"))
                if isinstance(value, str)
                else value
            )
            if ts.tzinfo is None or ts.utcoffset() is None:
                ts = ts.replace(tzinfo=UTC)
        else:
            if not math.isfinite(value):
                raise ValueError("ts must be finite")
            ts = datetime.fromtimestamp(float(value), UTC)
        ts = ts.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        # the parser's message would repeat the value, and rejected values are not echoed
        raise ValueError(
            "ts is not a valid time (ISO 8601, e.g. 2026-03-02T09:30:00Z, or epoch seconds)"
        ) from None
    if not TS_MIN <= ts <= TS_MAX:
        raise ValueError("ts must lie between 1970-01-01 and 2100-01-01 (UTC)")
    return ts


def epoch_seconds(value: Any) -> int:
    """Whole epoch seconds, floored (the unit of the store and the rules); see `to_utc`.

    Numbers and datetimes (validated requests carry aware ones) take a fast path without the
    bounds check: this runs for every event a request encodes.
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return math.floor(value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return math.floor(aware.timestamp())
    return math.floor(to_utc(value).timestamp())
