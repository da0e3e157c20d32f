"""State stores: the bounded in-memory default and Redis (a real redis-server on loopback)."""

from __future__ import annotations

import threading
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.serve.inputs import Event, window_of
from issuer_seq.serve.state import MemoryStore, RedisStore, StateStore


def _event(t: int, merchant: str = "m") -> Event:
    return Event(t=t, merchant=merchant, cat=(3, 4), num=(0.5,))


def _stores(redis_url: str) -> list[StateStore]:
    keep = {"card": 3, "issuer": 5}
    redis_store = RedisStore.from_url(redis_url, keep, prefix=f"t{time.monotonic_ns()}")
    return [MemoryStore(keep), redis_store]


def test_keeps_the_last_events_in_time_order(redis_url: str) -> None:
    for store in _stores(redis_url):
        for t in (5, 1, 9, 7, 3):  # out of order, as late outcomes arrive
            store.append("card", "c1", _event(t))
        # the 3 latest by time: a late old event never pushes out a newer one
        assert [e.t for e in store.recent("card", "c1")] == [5, 7, 9]
        assert store.recent("card", "unknown") == []
        store.append("issuer", "c1", _event(2, "x"))
        assert store.recent("issuer", "c1") == [_event(2, "x")]  # streams are separate


def test_memory_store_evicts_least_recently_used_keys() -> None:
    store = MemoryStore({"card": 2}, max_keys=2)
    store.append("card", "a", _event(1))
    store.append("card", "b", _event(2))
    store.recent("card", "a")  # a is now more recent than b
    store.append("card", "c", _event(3))
    assert store.recent("card", "b") == [] and store.recent("card", "a") == [_event(1)]


def test_stores_are_safe_under_concurrent_writers(redis_url: str) -> None:
    for store in _stores(redis_url):

        def write(worker: int, store: StateStore = store) -> None:
            for i in range(50):
                store.append("issuer", "i1", _event(worker * 1000 + i))

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        events = store.recent("issuer", "i1")
        assert len(events) == 5 and events == sorted(events, key=lambda e: e.t)


def test_two_replicas_share_state_through_redis(redis_url: str) -> None:
    prefix = f"shared{time.monotonic_ns()}"
    a = RedisStore.from_url(redis_url, {"card": 4}, prefix=prefix)
    b = RedisStore.from_url(redis_url, {"card": 4}, prefix=prefix)
    a.append("card", "c9", _event(10))
    b.append("card", "c9", _event(11))
    assert [e.t for e in a.recent("card", "c9")] == [10, 11]
    assert [e.t for e in b.recent("card", "c9")] == [10, 11]


def test_redis_reads_the_same_events_whether_replies_are_decoded_or_not(redis_url: str) -> None:
    import redis

    prefix = f"decode{time.monotonic_ns()}"
    store = RedisStore.from_url(redis_url, {"card": 4}, prefix=prefix)
    for t in (5, 1, 9):
        store.append("card", "c1", _event(t))
    text = RedisStore(redis.Redis.from_url(redis_url, decode_responses=True), {"card": 4}, prefix)
    assert [e.t for e in text.recent("card", "c1")] == [1, 5, 9]
    assert text.recent("card", "c1") == store.recent("card", "c1")


@settings(max_examples=200, deadline=None)
@given(
    keep=st.integers(1, 9),
    ts=st.lists(st.integers(0, 30), max_size=60),
    cutoff=st.integers(0, 32),
    k=st.integers(0, 10),
)
def test_memory_history_is_the_latest_by_time_and_windows_are_slices(
    keep: int, ts: list[int], cutoff: int, k: int
) -> None:
    """Whatever the arrival order (ties, late events, compaction, growth): `recent` is the
    `keep` latest of everything appended, stably sorted by time (ties: the later arrivals),
    and `window` equals the list path's."""
    store = MemoryStore({"card": keep})
    appended = []
    for i, t in enumerate(ts):
        event = Event(t=t, merchant=f"m{i % 3}", cat=(i, 2 * i + 1), num=(0.25 * i,), raw=None)
        store.append("card", "c", event)
        appended.append(event)
    expected = sorted(appended, key=lambda e: e.t)[-keep:] if ts else []
    assert store.recent("card", "c") == expected
    got, want = store.window("card", "c", cutoff, k), window_of(expected, cutoff, k)
    for name in ("t", "merchant", "cat", "num"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@settings(max_examples=60, deadline=None)
@given(
    keep=st.integers(1, 6),
    ts=st.lists(st.integers(0, 30), min_size=1, max_size=40),
    k=st.integers(1, 8),
)
def test_memory_windows_are_views_no_later_append_changes(keep: int, ts: list[int], k: int) -> None:
    """A window is views of the store's arrays, not copies: whatever comes after it (in-order
    and late events, compaction, growth, eviction of the oldest), it reads what it read when
    it was taken, cached states included, and those states are the list path's."""
    store = MemoryStore({"card": keep})
    taken = []
    for i, t in enumerate(ts):
        state = np.full(3, float(i), np.float32)
        event = Event(t=t, merchant=f"m{i}", cat=(i, 1), num=(0.5 * i,), state=state, encoder="e")
        store.append("card", "c", event)
        window = store.window("card", "c", t + 1, k)
        want = window_of(store.recent("card", "c"), t + 1, k)
        assert len(window) == len(want)
        if len(want):  # (an empty window's state has no width on the list path)
            np.testing.assert_array_equal(window.state, want.state)
        copies = {f: np.array(getattr(window, f), copy=True) for f in ("t", "cat", "state")}
        taken.append((window, copies))
    for window, copies in taken:
        for name, before in copies.items():
            np.testing.assert_array_equal(getattr(window, name), before, err_msg=name)
