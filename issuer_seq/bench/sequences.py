"""Time point-in-time history building: our index vs the straightforward pandas groupby.

Used by `scripts/bench_sequences.py DATA_DIR` and by `issuer-seq bench`.

Both sides compute, for every row and for the card and the issuer stream, the row numbers of
the K most recent earlier rows of the same group (`ts` strictly earlier, in whole seconds as
the store uses; lag 0), oldest first. Ours is `build_history_index` (median of 3 runs): the
pipeline keeps these O(N) indices and gathers each batch's windows on the fly, so that is
the build it pays for (`speedup`); materializing all (N, K) windows through
`HistoryIndex.windows` is timed too (`speedup_materialized`), and is what the identity check
compares. The reference is what a data scientist writes first: `groupby` + `apply` and,
in each group, a Python loop over its rows with a binary search (`np.searchsorted`) in
the group's sorted times. The histories must be identical (exit 1 if not).

Progress and notes go to stderr. The target for `speedup` (docs/targets.md) is at least 20 (a
benchmark, not a test).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.data.index import HistoryIndex, build_history_index

STREAMS = ("card_id", "issuer_id")
CHUNK = 8_192
#: without --rows, fall back to this many rows when pandas would need longer than BUDGET_S
FALLBACK_ROWS = 200_000
BUDGET_S = 60.0
#: the estimate times the reference on every PROBE_EVERY-th group (its cost adds up by group)
PROBE_EVERY = 10


def ours(
    df: pd.DataFrame, t: np.ndarray, ks: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per stream, the (N, K) history event ids and validity mask of every row, as `windows`
    returns them (right-aligned, oldest first, left padding with id 0 and mask False)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n = len(t)
    for col, k in ks.items():
        group = pd.factorize(df[col])[0].astype(np.int64)
        index = build_history_index(group, t, k, lag_s=0)
        events = np.empty((n, k), dtype=np.int64)  # (N, K)
        mask = np.empty((n, k), dtype=bool)  # (N, K)
        for lo in range(0, n, CHUNK):
            rows = np.arange(lo, min(lo + CHUNK, n), dtype=np.int64)
            events[lo : lo + len(rows)], mask[lo : lo + len(rows)] = index.windows(rows)
        out[col] = (events, mask)
    return out


def pandas_reference(df: pd.DataFrame, ks: dict[str, int]) -> dict[str, pd.Series]:
    """Per stream, a Series (aligned to df) holding each row's history row ids, oldest first.

    `df` is time-sorted with a RangeIndex and an int64 column `t` (epoch seconds).
    """
    out: dict[str, pd.Series] = {}
    for col, k in ks.items():

        def per_group(g: pd.DataFrame, k: int = k) -> pd.Series:
            times = g["t"].to_numpy()  # sorted: df is in time order and groupby keeps it
            rows = g.index.to_numpy()
            hist = []
            for i in range(len(times)):
                end = np.searchsorted(times, times[i], side="left")  # first row at that second
                hist.append(rows[max(0, end - k) : end])
            return pd.Series(hist, index=g.index, dtype=object)

        per_row = df.groupby(col, sort=False, group_keys=False)[["t"]].apply(per_group)
        out[col] = per_row.sort_index()
    return out


def same_histories(mine: tuple[np.ndarray, np.ndarray], theirs: pd.Series) -> bool:
    """Equal lengths, padding only on the left, and equal ids row by row (oldest first)."""
    events, mask = mine
    n, k = events.shape
    if len(theirs) != n:
        return False
    lengths = np.fromiter((len(h) for h in theirs), dtype=np.int64, count=n)
    if not np.array_equal(mask, np.arange(k)[None, :] >= (k - lengths)[:, None]):
        return False
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in theirs] + [np.zeros(0, np.int64)])
    return bool(np.array_equal(flat, events[mask]))


def build_indices(df: pd.DataFrame, t: np.ndarray, ks: dict[str, int]) -> list[HistoryIndex]:
    """Only the indices, without materializing windows (reported as `ours_index_s`)."""
    return [
        build_history_index(pd.factorize(df[col])[0].astype(np.int64), t, k)
        for col, k in ks.items()
    ]


def estimate_pandas_s(df: pd.DataFrame, ks: dict[str, int]) -> float:
    """The reference's time on all of `df`, from its time on every PROBE_EVERY-th group.

    Its cost is a sum over groups (a per-group overhead plus a per-row loop), so a sample of
    groups extrapolates better than the first rows would (those hold many small groups).
    """
    total = 0.0
    for col, k in ks.items():
        codes = pd.factorize(df[col])[0]
        sample = df[codes % PROBE_EVERY == 0]
        seconds, _ = _timed(lambda sample=sample, col=col, k=k: pandas_reference(sample, {col: k}))
        total += seconds * len(df) / max(len(sample), 1)
    return total


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_sequences(
    full: pd.DataFrame, k_card: int = 16, k_issuer: int = 32, rows: int | None = None
) -> dict[str, Any]:
    """Time both builds on a validated log frame; `identical` says whether they agree."""
    ks = {"card_id": k_card, "issuer_id": k_issuer}
    note = None
    n = len(full) if rows is None else min(rows, len(full))
    if rows is None and len(full) > FALLBACK_ROWS:
        estimate = estimate_pandas_s(_frame(full, len(full)), ks)
        print(f"pandas estimated at {estimate:.1f} s for {len(full)} rows", file=sys.stderr)
        if estimate > BUDGET_S:
            n = FALLBACK_ROWS
            note = (
                f"pandas would need ~{estimate:.0f} s for all {len(full)} rows; "
                f"timed the first {n} rows (use --rows to choose)"
            )
            print(note, file=sys.stderr)
    df = _frame(full, n)
    t = df["t"].to_numpy()

    index_runs = [_timed(lambda: build_indices(df, t, ks))[0] for _ in range(3)]
    runs = []
    mine: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(3):
        mine = {}  # free the previous run's arrays first
        seconds, mine = _timed(lambda: ours(df, t, ks))
        runs.append(seconds)
    ours_s = statistics.median(runs)
    print(f"ours: {', '.join(f'{s:.3f}' for s in runs)} s", file=sys.stderr)
    pandas_s, theirs = _timed(lambda: pandas_reference(df, ks))
    print(f"pandas: {pandas_s:.2f} s", file=sys.stderr)

    identical = all(same_histories(mine[col], theirs[col]) for col in ks)
    result: dict[str, Any] = {
        "rows": int(n),
        "k_card": k_card,
        "k_issuer": k_issuer,
        # What the pipeline builds: the indices (batches gather their windows on the fly).
        "ours_s": round(statistics.median(index_runs), 4),
        "pandas_s": round(pandas_s, 4),
        "speedup": round(pandas_s / statistics.median(index_runs), 2),
        "identical": identical,
        # For comparison: the indices plus every row's (N, K) windows written out in full.
        "ours_materialized_s": round(ours_s, 4),
        "speedup_materialized": round(pandas_s / ours_s, 2),
    }
    if note:
        result["note"] = note
    return result


def _frame(full: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The first `rows` rows (time order) with integer seconds `t`, as the store computes them."""
    df = full.iloc[:rows][list(STREAMS)].reset_index(drop=True)
    df["t"] = full["ts"].iloc[:rows].astype("int64").to_numpy() // 1_000_000
    return df
