"""State stores: the recent events of every card and issuer, behind one small protocol.

- `MemoryStore`: in process, bounded: at most `max_keys` cards/issuers per stream, least
  recently used evicted first; each keeps its latest `keep` events (`History`). The embedded
  default.
- `RedisStore`: the same in Redis sorted sets, so that several scorer replicas share state.

A store raises whatever its client raises; the scorer re-raises that as `StateUnavailable`.

Events may arrive out of time order (late outcomes, a backfill of old ones); both keep the
`keep` latest by time (ties: the later arrivals), so an old event never pushes out a newer
one, and `recent` returns them sorted by time (ties in arrival order). `window` is what a request
reads: the last k events before a cut-off, as columns (serve/inputs.py `Window`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from issuer_seq.serve.inputs import Event, Window, window_of


class StateUnavailable(Exception):
    """The state store failed (unreachable, timed out, refused): raised by the scorer in
    place of whatever the store raised (its `__cause__`), so that callers can tell a store
    outage from a model failure."""


#: events kept per key beyond a stream's window: late outcomes arrive out of time order
KEEP_EXTRA = 64


def keep_lengths(ks: Mapping[str, int]) -> dict[str, int]:
    """Events kept per key of each stream: its window K, plus `KEEP_EXTRA`."""
    return {stream: k + KEEP_EXTRA for stream, k in ks.items()}


class StateStore(Protocol):
    def append(self, stream: str, key: str, event: Event) -> None: ...

    def recent(self, stream: str, key: str) -> list[Event]: ...

    def window(self, stream: str, key: str, cutoff: int, k: int) -> Window: ...


class History:
    """One key's latest `keep` events, kept in time order, with their encoded features
    as columns beside them, so that a request's window is a slice (no sort, no loop).

    Rows live in [lo, hi) of arrays with room for 2 x keep: appending in time order writes at
    hi, dropping the oldest moves lo, and the rows move back to the front, into new arrays,
    once per `keep` appends. A late event is inserted at its place in time (after events of
    the same second, as a stable sort puts it), also into new arrays; when full, the oldest
    event is dropped (by time, ties: the first to arrive), as `RedisStore` trims its sorted
    sets. So no append writes into rows it did not add, and a `window` is views, not copies.
    Not thread-safe: `MemoryStore` locks.
    """

    def __init__(self, keep: int, first: Event, capacity: int = 4) -> None:
        self.keep = keep
        self.lo = self.hi = 0
        cap = max(1, min(capacity, 2 * keep))
        self.t = np.zeros(cap, np.int64)
        self.merchant = np.empty(cap, object)
        self.payment = np.empty(cap, object)
        # a row per event in every column (a window's states are then one contiguous block)
        # ids fit int32 (vocabularies are small); the inputs are int64, copied exactly
        self.cat = np.zeros((cap, len(first.cat)), np.int32)  # (cap, C)
        self.num = np.zeros((cap, len(first.num)), np.float32)  # (cap, F)
        # each event's cached state (cap, S), sized by the first state appended (an event
        # without one, or with one of another size: zeros and no encoder, recomputed when
        # read), and the id of the encoder that computed it
        self.state = np.zeros((cap, 0), np.float32)
        self.encoder = np.empty(cap, object)
        self.events: list[Event] = []  # the same rows, oldest first

    def __len__(self) -> int:
        return self.hi - self.lo

    def _columns(self) -> tuple[np.ndarray, ...]:
        return self.t, self.merchant, self.payment, self.cat, self.num, self.state, self.encoder

    def _move(self, cap: int, gap: int | None = None) -> None:
        """Rows to [0, n) of new arrays of `cap` rows (grown, or the same size compacted);
        with `gap`, row `gap` is left free for an insert, the rows from it on one further."""
        n, lo, hi = len(self), self.lo, self.hi
        at = n if gap is None else gap - lo
        moved = []
        for a in self._columns():
            new = (
                np.empty(cap, object)
                if a.dtype == object
                else np.zeros_like(a, shape=(cap, *a.shape[1:]))
            )
            new[:at] = a[lo : lo + at]
            new[at + 1 : n + 1] = a[lo + at : hi]
            moved.append(new)
        self.t, self.merchant, self.payment, self.cat, self.num, self.state, self.encoder = moved
        self.lo, self.hi = 0, n

    def append(self, event: Event) -> None:
        cap = len(self.t)
        if self.hi == cap:  # no room at the end: compact, or grow up to 2 x keep
            self._move(cap if len(self) <= cap // 2 else min(2 * cap, 2 * self.keep))
        lo, hi = self.lo, self.hi
        if hi == lo or event.t >= self.t[hi - 1]:  # in time order: the usual case
            i = hi
        else:  # late: after the events of the same or an earlier second, in new arrays
            i = lo + int(np.searchsorted(self.t[lo:hi], event.t, side="right"))
            self._move(len(self.t), gap=i)
            i -= lo
        self.t[i] = event.t
        self.merchant[i] = event.merchant
        self.payment[i] = event.payment
        self.cat[i] = event.cat
        self.num[i] = event.num
        size = self.state.shape[1]
        if event.state is not None and size == 0:  # the first state: its size
            size = len(event.state)
            self.state = np.zeros((len(self.t), size), np.float32)
        if event.state is not None and len(event.state) == size:
            self.state[i] = event.state
            self.encoder[i] = event.encoder
        else:
            self.state[i] = 0.0
            self.encoder[i] = None
        self.events.insert(i - self.lo, event)
        self.hi += 1
        if len(self) > self.keep:  # drop the oldest: row lo, the first in time order
            self.lo += 1
            del self.events[0]

    def window(self, cutoff: int, k: int) -> Window:
        """The last k events with t < cutoff: views, which later appends leave as they are
        (an append writes past them, or moves the rows to new arrays)."""
        lo, hi = self.lo, self.hi
        if hi > lo and self.t[hi - 1] < cutoff:  # all of them: the usual case, no search
            end = hi
        else:
            end = lo + int(np.searchsorted(self.t[lo:hi], cutoff, side="left"))
        start = max(lo, end - k)
        return Window(
            self.t[start:end],
            self.merchant[start:end],
            self.payment[start:end],
            self.cat[start:end].T,
            self.num[start:end].T,
            self.state[start:end],
            self.encoder[start:end],
        )


class MemoryStore:
    """Thread-safe, bounded in-memory histories."""

    def __init__(self, keep: dict[str, int], max_keys: int = 1_000_000) -> None:
        self.keep = dict(keep)
        self.max_keys = max_keys
        self._data: dict[str, OrderedDict[str, History]] = {s: OrderedDict() for s in keep}
        self._lock = threading.Lock()

    def append(self, stream: str, key: str, event: Event) -> None:
        with self._lock:
            table = self._data[stream]
            history = table.get(key)
            if history is None:
                history = table[key] = History(self.keep[stream], event)
                while len(table) > self.max_keys:
                    table.popitem(last=False)
            else:
                table.move_to_end(key)
            history.append(event)

    def recent(self, stream: str, key: str) -> list[Event]:
        with self._lock:
            table = self._data[stream]
            history = table.get(key)
            if history is None:
                return []
            table.move_to_end(key)
            return list(history.events)

    def window(self, stream: str, key: str, cutoff: int, k: int) -> Window:
        with self._lock:
            table = self._data[stream]
            history = table.get(key)
            if history is None:
                return window_of([], cutoff, k)
            table.move_to_end(key)
            return history.window(cutoff, k)

    def __len__(self) -> int:
        return sum(len(t) for t in self._data.values())


def _text(value: bytes | str) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Histories in Redis sorted sets (`<prefix>:t:<stream>:<key>`), trimmed to the `keep`
    latest by time, with a TTL."""

    def __init__(
        self,
        client: Any,
        keep: dict[str, int],
        prefix: str = "issuer_seq",
        ttl_s: int | None = 90 * 86_400,
    ) -> None:
        self.client = client
        self.keep = dict(keep)
        self.prefix = prefix
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, keep: dict[str, int], **kwargs: Any) -> RedisStore:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=1.0), keep, **kwargs)

    def _key(self, stream: str, key: str) -> str:
        # "t": time-ordered sorted sets
        return f"{self.prefix}:t:{stream}:{key}"

    @staticmethod
    def _member(event: Event, arrival_ns: int) -> str:
        """Arrival time in ns, zero-padded (ties in time sort by arrival, and a resent
        outcome is a second event, as in `MemoryStore`), then the event."""
        return f"{arrival_ns:020d}|{json.dumps(event.to_json())}"

    def append(self, stream: str, key: str, event: Event) -> None:
        """Score: the event's time; trimmed to the `keep` latest by time, TTL refreshed."""
        k = self._key(stream, key)
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(k, {self._member(event, time.time_ns()): event.t})
        pipe.zremrangebyrank(k, 0, -self.keep[stream] - 1)
        if self.ttl_s:
            pipe.expire(k, self.ttl_s)
        pipe.execute()

    def recent(self, stream: str, key: str) -> list[Event]:
        raw = self.client.zrange(self._key(stream, key), 0, -1)
        return [Event.from_json(json.loads(_text(r).split("|", 1)[1])) for r in raw]

    def window(self, stream: str, key: str, cutoff: int, k: int) -> Window:
        return window_of(self.recent(stream, key), cutoff, k)
