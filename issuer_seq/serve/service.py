"""The service behind the HTTP routes: loading, readiness, deadlines and the fallback.

Model calls run in a thread pool (ONNX Runtime releases the GIL) under `asyncio.wait_for`:
when the call is slower than `deadline_ms`, cannot read the state store, raises, or returns
something that is not a probability, the request is answered by the rules of `fallback.py`
instead, and the answer, the log and the metrics name which (`deadline`, `state_unavailable`,
`model_error`, `invalid_output`). A slow call keeps its worker until it finishes, so the
number of calls queued or running is capped (`max_pending`): past it, requests skip the
model at once rather than queue behind it.

Readiness: the bundle is verified (every file's checksum), loaded and warmed up in a
background thread while the server already answers liveness; ready flips to true only after
that, and back to false first thing on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from issuer_seq.errors import IssuerSeqError
from issuer_seq.recalibration import RecalibrationSettings, RouteRecalibrationSettings
from issuer_seq.retry_policy import DEFAULT_ECONOMICS
from issuer_seq.routing.policies import RouteChoice, choose_route, route_values
from issuer_seq.serve.advice import RULES_STREAM, RetryAdvice
from issuer_seq.serve.bundle import read_manifest
from issuer_seq.serve.fallback import FallbackPolicy
from issuer_seq.serve.inputs import (
    Event,
    Raw,
    encode_event,
    history_lengths,
    stream_key,
)
from issuer_seq.serve.metrics import Metrics
from issuer_seq.serve.scorer import Scorer
from issuer_seq.serve.state import (
    MemoryStore,
    RedisStore,
    StateStore,
    StateUnavailable,
    keep_lengths,
)
from issuer_seq.serve.v2 import V2Model
from issuer_seq.timestamps import epoch_seconds as to_epoch

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServeSettings:
    """Flat, typed settings of `issuer-seq serve` (conf/serve.yaml documents each)."""

    artifact_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    model_file: str | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    allow_fallback: bool = False
    threads: int = 1
    workers: int = 2
    hot_path: bool = True
    state: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "issuer_seq"
    redis_ttl_days: int = 90
    memory_max_keys: int = 1_000_000
    deadline_ms: float = 50.0
    store_timeout_ms: float = 20.0
    outcomes_timeout_ms: float = 2_000.0
    max_batch: int = 256
    max_pending: int = 32
    max_body_bytes: int = 16 * 1024 * 1024
    warmup_runs: int = 3
    fallback_prior_weight: float = 5.0
    route_epsilon: float = 0.0
    shutdown_delay_s: float = 3.0
    drain_timeout_s: float = 20.0
    access_log: bool = False
    log_level: str = "info"
    loop: str = "auto"
    http: str = "auto"
    debug_model_delay_ms: float = 0.0
    recalibration: RecalibrationSettings | None = None
    route_recalibration: RouteRecalibrationSettings | None = None


class Overloaded(Exception):
    """`max_pending` model calls are already queued or running."""


class InvalidOutput(Exception):
    """The model answered, but not with probabilities (NaN, out of range)."""


def probabilities(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all() or (x < 0).any() or (x > 1).any():
        raise InvalidOutput(f"model output is not a probability: {x.ravel()[:4]}")
    return x


def make_store(settings: ServeSettings, ks: Mapping[str, int]) -> StateStore:
    keep = keep_lengths(ks)
    if settings.state == "memory":
        return MemoryStore(keep, max_keys=settings.memory_max_keys)
    if settings.state == "redis":
        return RedisStore.from_url(
            settings.redis_url,
            keep,
            prefix=settings.redis_prefix,
            ttl_s=settings.redis_ttl_days * 86_400 or None,
        )
    raise IssuerSeqError(f"state must be 'memory' or 'redis', got {settings.state!r}")


def warmup_attempt() -> dict[str, Any]:
    """A plausible attempt for warm-up runs; its ids are in no history."""
    return {
        "ts": datetime.now(UTC),
        "card_id": "__warmup__",
        "issuer_id": "__warmup__",
        "merchant_id": "__warmup__",
        "network": "visa",
        "card_type": "debit",
        "issuer_country": "DE",
        "mcc": "5411",
        "merchant_country": "DE",
        "amount": 10.0,
        "currency": "EUR",
        "initiator": "CIT",
        "is_recurring": False,
        "three_ds": False,
        "attempt": 1,
    }


def freeze_heap() -> int:
    """Move every object alive now (the modules, the app, the model's session: those of the
    start-up) out of reach of the garbage collector's full collections; returns how many.

    A full collection walks every tracked object with the GIL held: on the service's start-up
    heap (about 100,000 objects) that is 50 to 80 ms on 2 shared cores, every request waiting,
    and enough to send the one it hits to the fallback (`deadline`). Frozen, the objects are
    never collected (none of them is garbage), and later collections walk only what the
    requests and outcomes left."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class Service:
    def __init__(
        self,
        settings: ServeSettings,
        scorer: Scorer | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.manifest = read_manifest(settings.artifact_dir)
        m = self.manifest
        self.model_name = str(m["model"]["name"])
        self.model_version = str(m["model"]["version"])
        ks = history_lengths(m["history"])
        self.store: StateStore = scorer.store if scorer is not None else make_store(settings, ks)
        self.fallback = FallbackPolicy.from_manifest(m, settings.fallback_prior_weight)
        self.v2 = V2Model(m, settings.max_batch)
        self.metrics = Metrics()
        self._model_info = {
            "name": self.model_name,
            "version": self.model_version,
            "file": str(settings.model_file or m["model"]["file"]),
            "weights_sha256": str(m["model"].get("weights_sha256", ""))[:12],
        }
        self.metrics.model.info(self._model_info)
        self.on_fatal = on_fatal
        self.scorer: Scorer | None = None
        self._preloaded = scorer
        self.ready = False
        self.stopping = False
        self.load_error: str | None = None
        if settings.workers < 0:
            raise IssuerSeqError(
                f"workers must be >= 0 (0: on the event loop), got {settings.workers}"
            )
        # workers=0: model calls run on the event loop itself (no pool, no thread hop)
        self.model_pool = (
            ThreadPoolExecutor(settings.workers, thread_name_prefix="model")
            if settings.workers
            else None
        )
        # Store reads of the fallback and outcome writes: apart from the model's workers, so
        # that a slow model cannot hold up the answer that replaces it.
        self.io_pool = ThreadPoolExecutor(2, thread_name_prefix="store")
        self._pending = 0
        self._lock = threading.Lock()
        self._last_warning: dict[str, float] = {}
        if not 0.0 <= settings.route_epsilon <= 1.0:
            raise IssuerSeqError(f"route_epsilon must lie in [0, 1], got {settings.route_epsilon}")
        # /v1/route's exploration draws (route_epsilon > 0), one generator for the process
        self.route_rng = np.random.default_rng()
        self._route_lock = threading.Lock()
        self._loader: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._loader = threading.Thread(target=self._load, name="load-model", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        s = self.settings
        try:
            started = time.perf_counter()
            scorer = self._preloaded or Scorer(
                s.artifact_dir,
                store=self.store,
                providers=s.providers,
                allow_fallback=s.allow_fallback,
                threads=s.threads,
                model_file=s.model_file,
                recalibration=s.recalibration,
                route_recalibration=s.route_recalibration,
            )
            self._warm_up(scorer)
            if scorer.recalibration is not None:
                follow = scorer.recalibration.intercept
                self.metrics.recalibration_intercept.set_function(lambda: follow.value)
                self.metrics.recalibration_outcomes.set_function(lambda: follow.fitted_on)
                log.info(
                    "recalibration to recent outcomes: an intercept refitted every %g h to "
                    "the last %g h of outcomes of what this process scores (none below %d)",
                    s.recalibration.step_h,
                    s.recalibration.window_h,
                    s.recalibration.min_outcomes,
                )
            if scorer.route_recalibration is not None:
                pairs = scorer.route_recalibration.intercepts
                self.metrics.route_recalibration_pairs.set_function(lambda: len(pairs.values))
                self.metrics.route_recalibration_outcomes.set_function(lambda: pairs.fitted_on)
                log.info(
                    "route recalibration: an intercept per issuer x route refitted every %g h "
                    "to the last %g h of its outcomes (prior sd %g, min evidence %g)",
                    s.route_recalibration.step_h,
                    s.route_recalibration.window_h,
                    s.route_recalibration.prior_sd,
                    s.route_recalibration.min_evidence,
                )
            frozen = freeze_heap()
            providers = scorer.session.get_providers()
            self.metrics.model.info({**self._model_info, "providers": ",".join(providers)})
            self.scorer = scorer
            if not self.stopping:
                self.ready = True
                self.metrics.ready.set(1)
            log.info(
                "ready: %s v%s from %s on %s (verified, loaded and warmed up in %.1f s; "
                "%d objects of the start-up frozen out of garbage collection)",
                self.model_name,
                self.model_version,
                s.artifact_dir,
                providers,
                time.perf_counter() - started,
                frozen,
            )
        except Exception as exc:  # any failure to load means this server must not serve
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the bundle: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal()

    def _warm_up(self, scorer: Scorer) -> None:
        """A few dummy inferences: the first runs of a session allocate and are slow."""
        attempt = warmup_attempt()
        event = encode_event(scorer.vocab, {**attempt, "response_code": None})
        for b in (1, min(8, self.settings.max_batch)):
            fused = scorer.fused_rows([attempt] * b)
            inputs = scorer.inputs([event] * b, {s: [[]] * b for s in scorer.ks}, fused=fused)
            for _ in range(max(1, self.settings.warmup_runs)):
                probabilities(scorer.run(inputs)[0])
        try:
            self.store.recent("card", "__warmup__")
        except Exception as exc:  # the fallback covers a store outage; say so, do not block
            self.metrics.store_errors.labels("read").inc()
            log.warning("state store not reachable at start-up: %s", exc)

    def stop_ready(self) -> None:
        """Readiness goes first on shutdown, so load balancers stop sending new requests."""
        self.stopping = True
        self.ready = False
        self.metrics.ready.set(0)

    def close(self) -> None:
        self.stop_ready()
        if self._loader is not None:
            # A process that exits while ONNX Runtime builds a session aborts (C++ terminate):
            # a signal during start-up must still end with status 0.
            self._loader.join(timeout=60)
        # Requests have drained by now; a hung model call must not hold the exit.
        if self.model_pool is not None:
            self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)

    def not_ready_reason(self) -> str | None:
        if self.ready:
            return None
        if self.stopping:
            return "shutting down"
        if self.load_error:
            return f"load failed: {self.load_error}"
        return "loading: verifying, loading and warming up the bundle"

    # -- guarded calls --------------------------------------------------------------------
    def warn(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        """A warning at most every 10 s per kind: a broken model must not flood the logs
        (the fallback counter in /metrics has every one)."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) >= 10.0:
            self._last_warning[key] = now
            log.warning(message, *args, exc_info=exc_info)

    def _release(self, _: object) -> None:
        with self._lock:
            self._pending -= 1
        self.metrics.pending.dec()

    async def call_model(self, operation: str, fn: Callable[[Scorer], T]) -> tuple[T | None, str]:
        """fn(scorer) within the deadline: (result, "") or (None, fallback reason), the reason
        naming what failed: the deadline, the state store or the model.

        In a worker of the pool; with `workers=0` on the event loop itself, where a call cannot
        be cut short: one over the deadline is answered late and counted (`late_answers`)."""
        scorer = self.scorer
        if scorer is None:
            return None, "not_ready"
        try:
            if self.model_pool is None:
                return self._inline(operation, fn, scorer), ""
            return await self._pooled(operation, fn, scorer), ""
        except TimeoutError:
            self.warn(
                f"{operation}:deadline",
                "%s: no answer within the deadline (%.0f ms)",
                operation,
                self.settings.deadline_ms,
            )
            return None, "deadline"
        except Overloaded:
            return None, "overloaded"
        except StateUnavailable as exc:
            self.metrics.store_errors.labels("read").inc()
            self.warn(f"{operation}:store", "%s: the state store failed: %s", operation, exc)
            return None, "state_unavailable"
        except InvalidOutput as exc:
            self.warn(f"{operation}:invalid", "%s: %s", operation, exc)
            return None, "invalid_output"
        except Exception:
            self.warn(f"{operation}:error", "%s: the model call failed", operation, exc_info=True)
            return None, "model_error"

    def _timed(self, operation: str, fn: Callable[[Scorer], T], scorer: Scorer) -> T:
        started = time.perf_counter()
        try:
            if self.settings.debug_model_delay_ms:
                time.sleep(self.settings.debug_model_delay_ms / 1000.0)
            return fn(scorer)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.model_latency.labels(operation).observe(elapsed)
            if self.model_pool is None and elapsed * 1000.0 > self.settings.deadline_ms:
                self.metrics.late_answers.labels(operation).inc()
                self.warn(
                    f"{operation}:late",
                    "%s: answered in %.0f ms, over the deadline (%.0f ms; workers=0 runs model "
                    "calls on the event loop, where they cannot be cut short)",
                    operation,
                    elapsed * 1000.0,
                    self.settings.deadline_ms,
                )

    def _inline(self, operation: str, fn: Callable[[Scorer], T], scorer: Scorer) -> T:
        self.metrics.pending.inc()
        try:
            return self._timed(operation, fn, scorer)
        finally:
            self.metrics.pending.dec()

    async def _pooled(self, operation: str, fn: Callable[[Scorer], T], scorer: Scorer) -> T:
        assert self.model_pool is not None
        with self._lock:
            if self._pending >= self.settings.max_pending:
                raise Overloaded
            self._pending += 1
        self.metrics.pending.inc()
        future = self.model_pool.submit(self._timed, operation, fn, scorer)
        # Runs when the job ends, or at once if it is cancelled while still queued.
        future.add_done_callback(self._release)
        return await asyncio.wait_for(
            asyncio.wrap_future(future), self.settings.deadline_ms / 1000.0
        )

    async def in_store_pool(self, fn: Callable[[], T], timeout_ms: float) -> T:
        future = self.io_pool.submit(fn)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_ms / 1000.0)

    async def read_store(self, fn: Callable[[], T], default: T) -> T:
        """A store read for the fallback, within `store_timeout_ms`, else `default`."""
        try:
            return await self.in_store_pool(fn, self.settings.store_timeout_ms)
        except Exception as exc:
            self.metrics.store_errors.labels("read").inc()
            self.warn("store:read", "state store read failed in the fallback: %r", exc)
            return default

    def count_fallback(self, operation: str, reason: str) -> None:
        self.metrics.fallbacks.labels(operation, reason).inc()

    # -- fallbacks ------------------------------------------------------------------------
    def _issuer_events(self, issuers: Sequence[str]) -> dict[str, list[Event]]:
        return {key: self.store.recent("issuer", key) for key in issuers}

    async def fallback_scores(self, attempts: Sequence[Mapping[str, Any]]) -> list[float]:
        issuers = sorted({str(a["issuer_id"]) for a in attempts})
        events = await self.read_store(lambda: self._issuer_events(issuers), {})
        return [
            self.fallback.approval(events.get(str(a["issuer_id"]), []), to_epoch(a["ts"]))
            for a in attempts
        ]

    def choose_route(
        self, p_approve: np.ndarray, amount: float, fees: np.ndarray, static: bool = False
    ) -> tuple[RouteChoice, str]:
        """Among candidates in priority order: the route of best expected value (explored
        with probability `route_epsilon`), or with `static` the first (the fallback's rule).
        Returns the choice and the rule that decided."""
        econ = self.scorer.economics if self.scorer is not None else DEFAULT_ECONOMICS
        priority = np.arange(len(fees))[None, :]
        if static:  # the first candidate, whatever the values
            first = np.zeros(1, dtype=np.int64)
            value = route_values(p_approve[None, :], np.array([amount]), fees, econ)
            probs = np.eye(len(fees))[first]
            return RouteChoice(first, first, np.ones(1), probs, value), "static_priority"
        epsilon = self.settings.route_epsilon
        with self._route_lock:  # numpy generators are not thread-safe
            choice = choose_route(
                p_approve[None, :],
                priority,
                np.array([amount]),
                fees,
                econ,
                epsilon=epsilon,
                rng=self.route_rng if epsilon > 0 else None,
            )
        explored = int(choice.route[0]) != int(choice.best[0])
        return choice, "exploration" if explored else "expected_value"

    async def fallback_retry(self, decline: Mapping[str, Any]) -> RetryAdvice:
        key = stream_key(RULES_STREAM, decline)
        history = await self.read_store(lambda: self.store.recent(RULES_STREAM, key), None)
        if history is None:
            # Without the card's history the network rules cannot be checked (a MAC 03
            # block, the reattempt counts): no retry is the answer that cannot break them.
            return self.fallback.no_history()
        t = to_epoch(decline["ts"])
        return self.fallback.retry(
            t,
            str(decline["merchant_id"]),
            Raw.of(decline),
            history,
            str(decline["initiator"]),
            bool(decline["three_ds"]),
        )

    async def fallback_tensors(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """V2 outputs from the rules: issuer rate (ids mapped back to issuers), rule curves."""
        v2 = self.v2
        issuers = v2.raw_value("issuer", feeds["cur_issuer"])
        known = sorted({i for i in issuers if i is not None})
        events = await self.read_store(lambda: self._issuer_events(known), {})
        p_approve = np.array(
            [self.fallback.approval(events.get(i, []) if i else []) for i in issuers],
            dtype=np.float32,
        )
        codes = v2.raw_value("response_code", feeds["decline_response_code"])
        advices = v2.raw_value("advice_code", feeds["decline_advice_code"])
        networks = v2.raw_value("network", feeds["cur_network"])
        rows = []
        for code, advice, network in zip(codes, advices, networks, strict=True):
            if code is None:  # not a decline, or a code the model never saw
                rows.append(np.full(len(self.fallback.grid), self.fallback.retry_prior))
                continue
            raw = Raw(
                network=network or "",
                amount=0.0,
                response_code=code,
                advice_code=advice or "",
                attempt=1,
            )
            allowed, _ = self.fallback.allowed(0, "", raw)
            rows.append(self.fallback.curve(allowed))
        return {"p_approve": p_approve, "p_retry": np.array(rows, dtype=np.float32)}
