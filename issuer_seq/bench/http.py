"""HTTP latency of the real service at a fixed request rate on loopback.

`issuer-seq serve` is started as a subprocess on 127.0.0.1 (a free port), waited for until
ready, warmed with the histories the requests read (`POST /v1/outcomes`), and then sent the
bench's replayed requests (`POST /v1/score`, one attempt each) on an open-loop schedule:
request i leaves at `start + i / rate` whether or not earlier ones have been answered, so a
slow server shows as latency rather than as a lower request rate. Latency is measured from
the scheduled send time (queueing in the client counts). Errors are non-2xx answers and
failed requests; answers from the fail-open fallback are 200s, counted apart. The server is
stopped with SIGTERM (its graceful drain) at the end.
"""

from __future__ import annotations

import asyncio
import gc
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

import httpx
import numpy as np

from issuer_seq.errors import IssuerSeqError
from issuer_seq.serve.inputs import stream_key

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
    card at its merchant), in time order: all of history that a score reads."""
    wanted_keys = {(s, stream_key(s, q)) for q in queries for s in ks}
    seen: dict[tuple[str, str], int] = {}
    keep: list[Mapping[str, Any]] = []
    for rec in reversed(earlier):
        wanted = False
        for s, k in ks.items():
            key = (s, stream_key(s, rec))
            if key in wanted_keys and seen.get(key, 0) < k:
                seen[key] = seen.get(key, 0) + 1
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


def bench_http(
    bundle: Path,
    requests: Sequence[Mapping[str, Any]],
    earlier: Sequence[Mapping[str, Any]],
    ks: Mapping[str, int],
    log_path: Path,
    rate_per_s: float = 50.0,
    seconds: float = 10.0,
    warmup: int = 20,
    overrides: Sequence[str] = (),
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Loopback HTTP latency of `issuer-seq serve` at a fixed request rate."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    n = max(1, int(round(rate_per_s * seconds)))
    queries = [requests[i % len(requests)] for i in range(warmup + n)]
    bodies = [{"attempt": as_json(q)} for q in queries]
    with running_server(bundle, log_path, overrides) as url:
        warm = warm_histories(earlier, queries, ks)
        observed = post_outcomes(url, warm)
        # A short warm-up at the same rate (connections, first calls), not counted.
        asyncio.run(_open_loop(url, bodies[:warmup], rate_per_s, timeout_s))
        with client_gc_watch() as client_gc:
            started = time.perf_counter()
            latencies, statuses, fallbacks = asyncio.run(
                _open_loop(url, bodies[warmup:], rate_per_s, timeout_s)
            )
            elapsed = time.perf_counter() - started
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
    }
