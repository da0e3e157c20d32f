"""Point-in-time history indices: which earlier events each example may see.

For a grouping (card or issuer) and each event i, its history is the K most recent events of
the same group with `t < t_i - lag` (strictly earlier; events at the same second are not
history). Instead of materializing (N, K) index matrices, the index stores, per event, the
end position and length of that window in the group-sorted order: memory O(N), and a batch
gathers its (B, K) windows on the fly (numpy here, torch on any device in batches.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HistoryIndex:
    """Histories of one stream. All arrays (N,) int64 over events in store order."""

    order: np.ndarray  # events sorted by (group, t, row)
    end: np.ndarray  # position in `order` one past the last history event
    length: np.ndarray  # number of history events, <= k
    k: int
    lag_s: int
    keys: np.ndarray  # group * span + (t - t0) in `order`, sorted
    span: int
    t0: int

    def at(self, group: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(end, length) (B,) of the window of `group` as of times `t` (B,): its last K
        events with `t' < t - lag`, as `end` and `length` hold them for the stream's own
        events. What the route stream of a candidate route is, for an attempt sent through
        another route."""
        group = np.asarray(group, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        if len(self.keys) == 0:
            zero = np.zeros(len(t), dtype=np.int64)
            return zero, zero
        first = group * self.span
        # a time before the log or after it: none of the group's events, or all of them
        since = np.clip(t - self.lag_s - self.t0, 0, self.span)
        end = np.searchsorted(self.keys, first + since, side="left")
        start = np.searchsorted(self.keys, first, side="left")
        return end.astype(np.int64), np.minimum(end - start, self.k).astype(np.int64)

    def windows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) event ids of the histories of `rows`, oldest first, and their validity mask.

        Histories are right-aligned: the most recent event is at position K-1; padding
        (mask False) is on the left, with event id 0 as a harmless placeholder.
        """
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.arange(self.k, dtype=np.int64) - self.k  # -K .. -1
        pos = self.end[rows, None] + offsets[None, :]
        mask = offsets[None, :] >= -self.length[rows, None]
        events = self.order[np.clip(pos, 0, len(self.order) - 1)]
        return np.where(mask, events, 0), mask


def build_history_index(group: np.ndarray, t: np.ndarray, k: int, lag_s: int = 0) -> HistoryIndex:
    """Vectorized: one sort and two binary searches, no per-row Python.

    group: (N,) int64 codes (card or issuer); t: (N,) int64 epoch seconds.
    """
    if k < 1:
        raise ValueError(f"history length k must be >= 1, got {k}")
    if lag_s < 0:
        raise ValueError(f"lag must be >= 0 seconds, got {lag_s}")
    group = np.asarray(group, dtype=np.int64)
    t = np.asarray(t, dtype=np.int64)
    n = len(t)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return HistoryIndex(empty, empty, empty, k, lag_s, empty, 1, 0)
    order = np.lexsort((np.arange(n), t, group))
    t0 = int(t.min()) - lag_s - 1
    span = int(t.max()) - t0 + 1
    if (int(group.max()) + 1) * span >= 2**62:
        raise ValueError("too many groups x time span for int64 keys")
    keys = group[order] * span + (t[order] - t0)
    # Queries in key order make the binary searches cache-friendly (2-4x faster at 1M rows).
    end = np.empty(n, dtype=np.int64)
    start = np.empty(n, dtype=np.int64)
    end[order] = np.searchsorted(keys, keys - lag_s, side="left")
    start[order] = np.searchsorted(keys, group[order] * span, side="left")
    length = np.minimum(end - start, k)
    return HistoryIndex(
        order.astype(np.int64),
        end.astype(np.int64),
        length.astype(np.int64),
        k,
        lag_s,
        keys.astype(np.int64),
        span,
        t0,
    )
