"""State stores: the recent events of every card and issuer, behind one small protocol.

- `MemoryStore`: in process, bounded: at most `max_keys` cards/issuers per stream, least
  recently used evicted first; each keeps its last `keep` events. The embedded default.
- `RedisStore`: the same in Redis lists, so that several scorer replicas share state.

Events may arrive out of time order (late outcomes); `recent` returns them sorted by time.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from typing import Any, Protocol

from issuer_seq.serve.inputs import Event


class StateStore(Protocol):
    def append(self, stream: str, key: str, event: Event) -> None: ...

    def recent(self, stream: str, key: str) -> list[Event]: ...


class MemoryStore:
    """Thread-safe, bounded in-memory histories."""

    def __init__(self, keep: dict[str, int], max_keys: int = 1_000_000) -> None:
        self.keep = dict(keep)
        self.max_keys = max_keys
        self._data: dict[str, OrderedDict[str, deque[Event]]] = {s: OrderedDict() for s in keep}
        self._lock = threading.Lock()

    def append(self, stream: str, key: str, event: Event) -> None:
        with self._lock:
            table = self._data[stream]
            events = table.get(key)
            if events is None:
                events = table[key] = deque(maxlen=self.keep[stream])
                while len(table) > self.max_keys:
                    table.popitem(last=False)
            else:
                table.move_to_end(key)
            events.append(event)

    def recent(self, stream: str, key: str) -> list[Event]:
        with self._lock:
            table = self._data[stream]
            events = table.get(key)
            if events is None:
                return []
            table.move_to_end(key)
            return sorted(events, key=lambda e: e.t)

    def __len__(self) -> int:
        return sum(len(t) for t in self._data.values())


class RedisStore:
    """Histories in Redis lists (`<prefix>:<stream>:<key>`), trimmed to `keep`, with a TTL."""

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
        return f"{self.prefix}:{stream}:{key}"

    def append(self, stream: str, key: str, event: Event) -> None:
        k = self._key(stream, key)
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(k, json.dumps(event.to_json()))
        pipe.ltrim(k, -self.keep[stream], -1)
        if self.ttl_s:
            pipe.expire(k, self.ttl_s)
        pipe.execute()

    def recent(self, stream: str, key: str) -> list[Event]:
        raw = self.client.lrange(self._key(stream, key), 0, -1)
        return sorted((Event.from_json(json.loads(r)) for r in raw), key=lambda e: e.t)
