"""HTTP latency of the real service on loopback: its overhead, and a fixed request rate.

`issuer-seq serve` is started as a subprocess on 127.0.0.1 (a free port), waited for until
ready, and warmed with the histories the requests read (`POST /v1/outcomes`). Then two
measurements on the bench's replayed requests (`POST /v1/score`, one attempt each):

- *Overhead* (closed loop): one request at a time over one keep-alive connection, beside the
  same bundle's scorer in this process, warmed with the same histories. The two take turns
  in blocks of requests (`single_request_latency` of bench/scorers.py), each observing every
  request after scoring it, so both score the same requests against the same state; the
  difference of their percentiles is what HTTP adds: the client's encoding, loopback, the
  server's parsing, validation, routing and serialization.
- *Fixed rate* (open loop): request i leaves at `start + i / rate` whether or not earlier
  ones have been answered, so a slow server shows as latency rather than as a lower request
  rate. Latency is measured from the scheduled send time (queueing in the client counts).

Errors are non-2xx answers and failed requests; answers from the fail-open fallback are
200s, counted apart. The server is stopped with SIGTERM (its graceful drain) at the end.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import logging
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from issuer_seq.bench.scorers import ArmScorer, single_request_latency
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import ROUTE_STREAM
from issuer_seq.serve.inputs import stream_key
from issuer_seq.serve.scorer import Scorer

#: the fields of the service's `Attempt` / `Outcome` (serve/schemas.py)
ATTEMPT_FIELDS = (
    "ts",
    "card_id",
    "issuer_id",
    "merchant_id",
    "network",
    "card_type",
    "issuer_country",
    "mcc",
    "merchant_country",
    "amount",
    "currency",
    "initiator",
    "is_recurring",
    "three_ds",
    "attempt",
    "txn_id",
    "payment_id",
)
OUTCOME_FIELDS = (*ATTEMPT_FIELDS, "response_code", "advice_code")


def _plain(value: Any) -> Any:
    """A log value as JSON: numpy scalars as Python ones, times as ISO 8601, NA as null."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ == "NAType":
        return None
    return value


def as_json(record: Mapping[str, Any], fields: Sequence[str] = ATTEMPT_FIELDS) -> dict[str, Any]:
    return {f: _plain(record[f]) for f in fields if f in record}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(
    bundle: Path, log_path: Path, overrides: Sequence[str] = (), ready_timeout_s: float = 120.0
) -> Iterator[str]:
    """`issuer-seq serve` on 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "issuer_seq.cli",
        "serve",
        f"artifact_dir={bundle}",
        "host=127.0.0.1",
        f"port={port}",
        "shutdown_delay_s=0",  # nothing routes to it: no need to wait for load balancers
        *overrides,
    ]
    with log_path.open("wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise IssuerSeqError(
                    f"the service exited with {proc.returncode} before it was ready "
                    f"(log: {log_path})"
                )
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise IssuerSeqError(
                    f"the service was not ready in {ready_timeout_s} s ({log_path})"
                )
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def warm_histories(
    earlier: Sequence[Mapping[str, Any]],
    queries: Sequence[Mapping[str, Any]],
    ks: Mapping[str, int],
) -> list[Mapping[str, Any]]:
    """The last K events of each query's history in every stream (its card, its issuer, its
    route, its card at its merchant), in time order: all of history that a score reads."""

    def key(stream: str, attempt: Mapping[str, Any]) -> tuple[str, str]:
        # the route's own text (the scorer keys its stream by the route's vocabulary id,
        # which merges unknown routes: a superset is kept here)
        if stream == ROUTE_STREAM:
            return stream, str(attempt.get("route"))
        return stream, stream_key(stream, attempt)

    wanted_keys = {key(s, q) for q in queries for s in ks}
    seen: dict[tuple[str, str], int] = {}
    keep: list[Mapping[str, Any]] = []
    for rec in reversed(earlier):
        wanted = False
        for s, k in ks.items():
            key_s = key(s, rec)
            if key_s in wanted_keys and seen.get(key_s, 0) < k:
                seen[key_s] = seen.get(key_s, 0) + 1
                wanted = True
        if wanted:
            keep.append(rec)
    return keep[::-1]


def post_outcomes(url: str, outcomes: Sequence[Mapping[str, Any]], batch: int = 256) -> int:
    observed = 0
    with httpx.Client(base_url=url, timeout=60.0) as client:
        for i in range(0, len(outcomes), batch):
            body = {"outcomes": [as_json(o, OUTCOME_FIELDS) for o in outcomes[i : i + batch]]}
            answer = client.post("/v1/outcomes", json=body)
            if answer.status_code != 200:
                raise IssuerSeqError(f"/v1/outcomes answered {answer.status_code}: {answer.text}")
            observed += int(answer.json()["observed"])
    return observed


async def _open_loop(
    url: str, bodies: Sequence[dict[str, Any]], rate: float, timeout_s: float
) -> tuple[list[float], list[int], int]:
    """(latency from the scheduled send time, status (0: failed), fallback answers)."""
    n = len(bodies)
    latencies = [math.nan] * n
    statuses = [0] * n
    fallbacks = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            nonlocal fallbacks
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                answer = await client.post("/v1/score", json=bodies[i])
                statuses[i] = answer.status_code
                if answer.status_code == 200 and answer.json().get("fallback"):
                    fallbacks += 1
            except httpx.HTTPError:
                statuses[i] = 0
            latencies[i] = time.perf_counter() - scheduled

        await asyncio.gather(*(one(i) for i in range(n)))
    return latencies, statuses, fallbacks


@contextmanager
def client_gc_watch() -> Iterator[dict[str, float]]:
    """Freeze the client process's heap for the measurement, and time its garbage
    collections meanwhile.

    The client runs in the bench's own process, which may hold millions of objects (the demo
    has trained and evaluated in it). A full collection of such a heap pauses the event loop
    for about a second: the requests scheduled meanwhile go out late, at once, and queue at
    the server, which is the client's doing, not the service's. `gc.freeze()` moves the heap
    to the permanent generation, so collections during the run only see what the run
    allocates. What the client's collections still cost is reported beside the latencies.
    """
    stats = {
        "heap_objects_frozen": 0.0,
        "collections": 0.0,
        "pause_ms_total": 0.0,
        "pause_ms_max": 0.0,
    }
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
            return
        pause = (time.perf_counter() - began[0]) * 1e3
        stats["collections"] += 1
        stats["pause_ms_total"] += pause
        stats["pause_ms_max"] = max(stats["pause_ms_max"], pause)

    gc.collect()
    gc.freeze()
    stats["heap_objects_frozen"] = gc.get_freeze_count()
    gc.callbacks.append(watch)
    try:
        yield stats
    finally:
        gc.callbacks.remove(watch)
        gc.unfreeze()
        for key in ("pause_ms_total", "pause_ms_max"):
            stats[key] = round(stats[key], 3)


class ServiceArm:
    """The service as a bench arm (bench/scorers.py `ArmScorer`), over one keep-alive
    connection: `score` is one round trip, the body encoded, sent, answered and decoded, as a
    caller sees it; `observe` appends the outcome (`POST /v1/outcomes`, not timed).

    The client is the standard library's `http.client`: httpx's own work per request costs
    about 1 ms more on 2 shared cores (docs/serving.md), which is the client's, not the
    service's."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self.connection = self._connect()
        self.sent = 0
        self.errors = 0
        self.fallbacks = 0
        self.reconnects = 0

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def post(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        """(status, body); a connection found closed (an idle keep-alive the server ended)
        is opened anew once."""
        data = json.dumps(body).encode()
        try:
            return self._round_trip(path, data)
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = self._connect()
            self.reconnects += 1
            return self._round_trip(path, data)

    def _round_trip(self, path: str, data: bytes) -> tuple[int, bytes]:
        self.connection.request("POST", path, data, {"content-type": "application/json"})
        answer = self.connection.getresponse()
        return answer.status, answer.read()

    def score_batch(self, attempts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self._score({"attempts": [as_json(a) for a in attempts]}, len(attempts))

    def score(self, attempt: Mapping[str, Any]) -> float:
        return float(self._score({"attempt": as_json(attempt)}, 1)[0])

    def _score(self, body: Mapping[str, Any], n: int) -> np.ndarray:
        self.sent += 1
        try:
            status, data = self.post("/v1/score", body)
        except (OSError, http.client.HTTPException):
            status, data = 0, b""
        if status != 200:
            self.errors += 1
            return np.full(n, np.nan)
        answer = json.loads(data)
        self.fallbacks += bool(answer["fallback"])
        return np.asarray(answer["p_approve"], dtype=np.float64)

    def observe(self, outcome: Mapping[str, Any]) -> None:
        status, data = self.post("/v1/outcomes", {"outcomes": [as_json(outcome, OUTCOME_FIELDS)]})
        if status != 200:
            raise IssuerSeqError(f"/v1/outcomes answered {status}: {data[:500]!r}")

    def close(self) -> None:
        self.connection.close()


def http_overhead(
    url: str,
    bundle: Path,
    requests: Sequence[Mapping[str, Any]],
    warm: Sequence[Mapping[str, Any]],
    warmup: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Closed loop: the service, one request at a time over keep-alive, beside the bundle's
    scorer in this process (one thread, warmed with the same `warm` histories as the
    service); both score, then observe, the same requests in turns of blocks of 100."""
    scorer = Scorer(bundle, threads=1)
    for rec in warm:
        scorer.observe(rec)
    service = ServiceArm(url, timeout_s)
    arms: dict[str, ArmScorer] = {"in_process": scorer, "http": service}
    try:
        with client_gc_watch() as client_gc:
            latency = single_request_latency(arms, requests, warmup)
    finally:
        service.close()
    http, in_process = latency["http"], latency["in_process"]
    return {
        "endpoint": "POST /v1/score (one attempt per request)",
        "client": "http.client, one keep-alive connection, one request at a time; latency "
        "from encoding the body to decoding the answer",
        "order": "the service and the scorer in process take turns in blocks of 100 requests "
        "(rotating), the first 5 of each block untimed; both observe every request",
        "http": http,
        "in_process": in_process,
        "p50_over_in_process_ms": round(http["p50_ms"] - in_process["p50_ms"], 4),
        "p99_over_in_process_ms": round(http["p99_ms"] - in_process["p99_ms"], 4),
        "sent": service.sent,
        "errors": service.errors,
        "fallbacks": service.fallbacks,
        "reconnects": service.reconnects,
        "client_gc": {k: v if k.startswith("pause") else int(v) for k, v in client_gc.items()},
    }


def bench_http(
    bundle: Path,
    requests: Sequence[Mapping[str, Any]],
    earlier: Sequence[Mapping[str, Any]],
    ks: Mapping[str, int],
    log_path: Path,
    rate_per_s: float = 50.0,
    seconds: float = 10.0,
    warmup: int = 20,
    overhead_requests: int = 1000,
    overrides: Sequence[str] = (),
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Loopback HTTP latency of `issuer-seq serve`: at a fixed request rate (open loop), then
    one request at a time beside the scorer in process (closed loop, `overhead_requests` of
    `requests`; 0: not measured)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    n = max(1, int(round(rate_per_s * seconds)))
    queries = [requests[i % len(requests)] for i in range(warmup + n)]
    bodies = [{"attempt": as_json(q)} for q in queries]
    closed = list(requests[: min(overhead_requests, len(requests))])
    with running_server(bundle, log_path, overrides) as url:
        warm = warm_histories(earlier, [*queries, *closed], ks)
        observed = post_outcomes(url, warm)
        # A short warm-up at the same rate (connections, first calls), not counted.
        asyncio.run(_open_loop(url, bodies[:warmup], rate_per_s, timeout_s))
        with client_gc_watch() as client_gc:
            started = time.perf_counter()
            latencies, statuses, fallbacks = asyncio.run(
                _open_loop(url, bodies[warmup:], rate_per_s, timeout_s)
            )
            elapsed = time.perf_counter() - started
        # Last: it appends the requests to the histories, which the open loop only reads.
        overhead = (
            http_overhead(url, bundle, closed, warm, min(warmup, len(closed)), timeout_s)
            if closed
            else {"note": "not measured (http.overhead_requests=0)"}
        )
    ms = np.asarray(latencies) * 1e3
    errors = sum(not 200 <= s < 300 for s in statuses)
    return {
        "endpoint": "POST /v1/score (one attempt per request)",
        "rate_per_s": rate_per_s,
        "seconds": seconds,
        "sent": n,
        "ok": n - errors,
        "errors": errors,
        "error_rate": round(errors / n, 4),
        "fallbacks": fallbacks,
        "p50_ms": round(float(np.nanpercentile(ms, 50)), 3),
        "p95_ms": round(float(np.nanpercentile(ms, 95)), 3),
        "p99_ms": round(float(np.nanpercentile(ms, 99)), 3),
        "max_ms": round(float(np.nanmax(ms)), 3),
        "wall_s": round(elapsed, 2),
        "warm_state_events": observed,
        "warmup_requests": warmup,
        "server": ["host=127.0.0.1", "shutdown_delay_s=0", *overrides],
        "client": "httpx.AsyncClient, open loop, latency from the scheduled send time",
        "client_gc": {k: v if k.startswith("pause") else int(v) for k, v in client_gc.items()},
        "overhead": overhead,
    }
