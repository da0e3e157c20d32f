"""The real-time scorer: a verified bundle, ONNX Runtime sessions, histories in a store.

The factored graphs (export/factored.py): `observe` runs the event graph once per outcome
and keeps the event's state beside its raw fields; `score` and `advise_retry` gather each
stream's cached states and run the query graph; `score_routes` runs the route graph (the
shared streams once, a route stream per candidate). States are bound to the encoder that
computed them (`encoder`, from the event graph's sha256): a state of another bundle, or none
(a store filled before, a backfill), is recomputed from the event's fields when read, never
zero.
`model_file` (a variant of the whole network, e.g. model_int8.onnx) runs that one graph
on every event's features instead. With `recalibration` the approval probabilities carry an
intercept that follows the outcomes of what this scorer scored (issuer_seq/recalibration.py);
with `route_recalibration`, one intercept per issuer x route, added to the attempt's route's
(`score`) or each candidate's (`score_routes`, and so route choice) logit.

A fused network (manifest `fused`, trained with model.fuse=true) also reads the trees'
aggregates of each attempt: the scorer keeps them as LightGBM's online scorer does
(baselines/online.py `OnlineFeatures`, the code that computes them for training too), in
this process's memory beside the histories, and `observe` feeds both. They are not shared
through Redis, so a fused bundle serves with the memory store only.

numpy + onnxruntime only (a test imports it in a fresh interpreter and checks that torch is
never loaded). Thread-safe: ONNX Runtime sessions are safe to call concurrently, and the
state stores lock (or are Redis).

    scorer = Scorer.load("export/default")
    p = scorer.score(attempt)                 # approval probability of the attempt
    ps = scorer.score_routes(attempt, routes) # ... through each candidate route
    advice = scorer.advise_retry(decline)     # retry curve, recommended delay, deciding rule
    scorer.observe(outcome)                   # append the attempt with its outcome
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from issuer_seq import features as F
from issuer_seq.delays import grid_seconds
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import ROUTE_STREAM, SHARED_STREAMS, STREAMS
from issuer_seq.recalibration import (
    FollowOutcomes,
    FollowRouteOutcomes,
    RecalibrationSettings,
    RouteRecalibrationSettings,
)
from issuer_seq.retry_policy import (
    DEFAULT_ECONOMICS,
    NOW_3DS_DELAY_S,
    RETRY_NOW_WITH_3DS,
    Action,
    RetryEconomics,
    choose_retry,
)
from issuer_seq.routing.policies import choose_route
from issuer_seq.rules import APPROVED_CODE, DEFAULT_RULES, Cause, NetworkRules, cause_of
from issuer_seq.serve.advice import (
    RULES_STREAM,
    RetryAdvice,
    allowed_retries,
    three_ds_now_allowed,
)
from issuer_seq.serve.bundle import BundleError, verify_bundle
from issuer_seq.serve.inputs import (
    Event,
    Window,
    build_inputs,
    build_query_inputs,
    encode_event,
    history_lengths,
    query_buffers,
    route_key,
    stream_key,
    with_pending,
    with_route,
)
from issuer_seq.serve.state import MemoryStore, StateStore, StateUnavailable, keep_lengths

if TYPE_CHECKING:
    from issuer_seq.baselines.online import OnlineFeatures

log = logging.getLogger(__name__)

OUTPUTS = ["p_approve", "p_retry"]
#: the most candidate routes whose route-graph inputs a thread keeps bound (`Scorer.feeds`)
BOUND_ROUTES = 8


def make_session(model: Path, providers: Sequence[str], threads: int, allow_fallback: bool) -> Any:
    """An ONNX Runtime session on exactly the providers asked for (or a loud degradation)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing and not allow_fallback:
        raise IssuerSeqError(
            f"execution provider(s) {missing} not available in this onnxruntime "
            f"(available: {available}); install onnxruntime-gpu for CUDA, or allow fallback"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model), options, providers=wanted)
    active = session.get_providers()
    if providers[0] not in active:
        if not allow_fallback:
            raise IssuerSeqError(f"asked for {providers[0]} but the session runs on {active}")
        log.warning("DEGRADED: asked for %s, running on %s", providers[0], active)
    return session


def route_of(record: Mapping[str, Any]) -> str:
    """The route an attempt names ("" for one without: a log of one route)."""
    route = record.get("route")
    return "" if route is None else str(route)


def outcome_key(attempt: Mapping[str, Any], event: Event) -> tuple[str, str, int, int]:
    """What ties a scored attempt to its outcome: the card, the merchant, the time and the
    attempt number."""
    return (str(attempt["card_id"]), event.merchant, event.t, int(attempt["attempt"]))


class Scorer:
    def __init__(
        self,
        bundle: str | Path,
        store: StateStore | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        allow_fallback: bool = False,
        threads: int = 1,
        model_file: str | None = None,
        rules: NetworkRules = DEFAULT_RULES,
        economics: RetryEconomics = DEFAULT_ECONOMICS,
        recalibration: RecalibrationSettings | None = None,
        route_recalibration: RouteRecalibrationSettings | None = None,
    ) -> None:
        self.root = Path(bundle)
        self.manifest = verify_bundle(self.root)
        m = self.manifest
        self.vocab = F.Vocab.from_json(
            {name: spec["vocab"] for name, spec in m["schema"]["categorical"].items()}
        )
        self.ks = history_lengths(m["history"])
        self.lag_s = int(m["history"].get("lag_s", 0))
        self.grid = [str(g) for g in m["delay_grid"]]
        self.grid_s = grid_seconds(self.grid)
        self.input_names = [spec["name"] for spec in m["schema"]["inputs"]]
        # `is None`, not `or`: an empty store is falsy (len 0), and it must be this one, shared
        # with the service's fallback, not a private copy
        self.store = store if store is not None else MemoryStore(keep_lengths(self.ks))
        self.rules = rules
        self.economics = economics
        self._session_args = (providers, threads, allow_fallback)
        # each thread's inputs bound to a session, by (rows, route graph or not) (`feeds`)
        self._bound_inputs = threading.local()
        self._whole: Any = None  # the whole network's session, made on first use (V2)
        self._whole_lock = threading.Lock()
        factored = m["factored"]
        self.state_size = int(factored["state"]["size"])
        self.encoder = m["files"][factored["event"]["file"]]["sha256"][:16]
        self.event_session = make_session(
            self.root / factored["event"]["file"], providers, threads, allow_fallback
        )
        self.factored = model_file is None
        if self.factored:
            self.session = make_session(
                self.root / factored["query"]["file"], providers, threads, allow_fallback
            )
            self.input_names = [spec["name"] for spec in factored["query"]["inputs"]]
            route = factored["route"]
            self.route_session = make_session(
                self.root / route["file"], providers, threads, allow_fallback
            )
            self.route_names = [spec["name"] for spec in route["inputs"]]
        else:
            self.session = make_session(self.root / model_file, providers, threads, allow_fallback)
        self.online, self._fused_take = self._online_features(m.get("fused"))
        self._online_lock = threading.Lock()
        # approval probabilities recalibrated to recent outcomes (None: as the bundle has them)
        self.recalibration = None if recalibration is None else FollowOutcomes(recalibration)
        # and per issuer x route (None: not)
        self.route_recalibration = (
            None if route_recalibration is None else FollowRouteOutcomes(route_recalibration)
        )

    def _online_features(
        self, fused: Mapping[str, Any] | None
    ) -> tuple[OnlineFeatures | None, np.ndarray]:
        """The trees' online aggregates of a fused network (None for another), and which of
        their columns it reads."""
        if fused is None:
            return None, np.zeros(0, np.int64)
        # the trees' code (and its DuckDB and pandas) only for a bundle that reads it
        from issuer_seq.baselines.fused import FUSED_COLUMNS
        from issuer_seq.baselines.online import OnlineFeatures

        if list(fused["columns"]) != list(FUSED_COLUMNS):
            raise BundleError(
                f"{self.root} reads fused aggregates of another version of issuer_seq "
                "(manifest fused.columns differ from this one's): export the run again"
            )
        if not isinstance(self.store, MemoryStore):
            raise IssuerSeqError(
                f"{self.root} is a fused network: it reads the trees' aggregates, which the "
                "scorer keeps in this process's memory, not in "
                f"{type(self.store).__name__}; serve it with the memory store (state=memory)"
            )
        online = OnlineFeatures(windows=fused["windows_s"], lag_s=self.lag_s)
        where = {c: i for i, c in enumerate(online.columns)}
        return online, np.array([where[c] for c in FUSED_COLUMNS], dtype=np.int64)

    def fused_rows(
        self, attempts: Sequence[Mapping[str, Any]], online: OnlineFeatures | None = None
    ) -> np.ndarray | None:
        """A fused network's `fused` input for attempts about to be sent (B, n_fused), from
        the aggregates kept (or `online`'s); None for a network that reads none."""
        if self.online is None:
            return None
        from issuer_seq.baselines.fused import fused_inputs

        with self._online_lock:
            source = online or self.online
            rows = [source.row(a)[0][self._fused_take] for a in attempts]
        return fused_inputs(np.stack(rows))

    def fused_route_rows(
        self,
        attempt: Mapping[str, Any],
        routes: Sequence[str],
        online: OnlineFeatures | None = None,
    ) -> np.ndarray | None:
        """`fused_rows` of the attempt sent through each of `routes` (R, n_fused): its row
        computed once, the route aggregates per route; None as `fused_rows`."""
        if self.online is None:
            return None
        from issuer_seq.baselines.fused import fused_inputs

        with self._online_lock:
            rows = (online or self.online).route_rows(attempt, routes)
        return fused_inputs(rows[:, self._fused_take])

    @classmethod
    def load(cls, bundle: str | Path, **kwargs: Any) -> Scorer:
        return cls(bundle, **kwargs)

    # -- model ----------------------------------------------------------------------------
    def windows(
        self,
        attempts: Sequence[Mapping[str, Any]],
        current: Sequence[Event],
        streams: Sequence[str] = STREAMS,
    ) -> dict[str, list[Window]]:
        """Each attempt's history per stream of `streams`: its last K events before t - lag.

        Raises StateUnavailable when the store fails."""
        store, lag = self.store, self.lag_s
        try:
            return {
                stream: [
                    store.window(stream, stream_key(stream, a, e), e.t - lag, k)
                    for a, e in zip(attempts, current, strict=True)
                ]
                for stream, k in self.ks.items()
                if stream in streams
            }
        except KeyError:  # a field the attempt lacks (stream_key): the caller's error
            raise
        except Exception as exc:
            raise StateUnavailable(f"reading the histories: {exc!r}") from exc

    def recent(self, stream: str, key: str) -> list[Event]:
        """A key's known events in a stream. Raises StateUnavailable when the store fails."""
        try:
            return self.store.recent(stream, key)
        except Exception as exc:
            raise StateUnavailable(f"reading {stream} {key}: {exc!r}") from exc

    def encode_states(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """The event graph: cat (n, C) int64, num (n, F) float32 -> states (n, S)."""
        feeds = {"event_cat": cat, "event_num": num}
        direct = getattr(self.event_session, "_sess", None)  # as `run`, below
        if direct is not None:
            (states,) = direct.run(["state"], feeds, None)
        else:
            (states,) = self.event_session.run(["state"], feeds)
        return states

    def inputs(
        self,
        current: Sequence[Event],
        histories: Mapping[str, Sequence[Window | Sequence[Event]]],
        declines: Sequence[Event] | None = None,
        fused: np.ndarray | None = None,
        routes: bool = False,
        into: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The feeds of the graph this scorer runs, for B current attempts (`fused`: a fused
        network's aggregates of them, `fused_rows`); with `routes`, the route graph's, for
        one attempt through B routes; `into`: the factored graphs' inputs to fill instead of
        new ones (`feeds`)."""
        if (fused is None) != (self.online is None):
            raise IssuerSeqError(
                "a fused network needs the attempts' fused aggregates, and only it reads them"
            )
        if self.factored:
            out = build_query_inputs(
                current,
                histories,
                self.ks,
                self.encoder,
                self.encode_states,
                self.state_size,
                self.lag_s,
                declines,
                routes,
                into,
            )
        else:
            out = build_inputs(current, histories, self.ks, self.lag_s, declines)
        # `into` itself when given: `run` knows bound inputs by identity
        return out if fused is None else out | {"fused": fused}

    def feeds(
        self,
        current: Sequence[Event],
        histories: Mapping[str, Sequence[Window | Sequence[Event]]],
        declines: Sequence[Event] | None = None,
        fused: np.ndarray | None = None,
        routes: bool = False,
    ) -> dict[str, np.ndarray]:
        """`inputs`, for `run` (with `routes`, `run_routes`). A single attempt's query, and
        the route graph's for up to `BOUND_ROUTES` candidates (the factored graphs, not
        fused), are inputs this thread made once and bound to the session once (ONNX
        Runtime's IOBinding), zeroed and filled in place: no arrays made and no inputs
        converted per request."""
        bound = self._bound(len(current), routes) if fused is None else None
        into = None if bound is None else bound[0]
        return self.inputs(current, histories, declines, fused, routes, into)

    def _bound(self, rows: int, routes: bool) -> tuple[dict[str, np.ndarray], Any] | None:
        """This thread's bound inputs of `rows` attempts (the query graph: 1) or candidates
        (the route graph) and their binding (`feeds`), made on first use; None for other
        sizes, or where the scorer runs no factored ONNX Runtime graph (`model_file`, a fused
        network, a session without IOBinding)."""
        if not (
            self.factored and self.online is None and 0 < rows <= (BOUND_ROUTES if routes else 1)
        ):
            return None
        kept = getattr(self._bound_inputs, "kept", None)
        if kept is None:
            kept = self._bound_inputs.kept = {}
        bound = kept.get((rows, routes))
        if bound is None:
            session = self.route_session if routes else self.session
            if not hasattr(session, "io_binding"):
                return None
            feeds = query_buffers(rows, self.ks, self.state_size, routes)
            binding = session.io_binding()
            for name in self.route_names if routes else self.input_names:
                binding.bind_cpu_input(name, feeds[name])
            for name in ["p_approve"] if routes else OUTPUTS:
                binding.bind_output(name)
            bound = kept[(rows, routes)] = (feeds, binding)
        return bound

    def _binding(self, inputs: Mapping[str, np.ndarray], routes: bool) -> Any:
        """The binding of `inputs` when they are this thread's bound inputs (`feeds`), or None."""
        kept = getattr(self._bound_inputs, "kept", None)
        bound = None if kept is None else kept.get((len(inputs["cur_cat"]), routes))
        return bound[1] if bound is not None and bound[0] is inputs else None

    def run_whole(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The whole network (`model.onnx`, or this scorer's `model_file`) on its named
        feature inputs (manifest.schema.inputs): what the V2 inference endpoint serves."""
        if not self.factored:
            return self.run(feeds)
        with self._whole_lock:
            if self._whole is None:
                path = self.root / self.manifest["model"]["file"]
                self._whole = make_session(path, *self._session_args)
        names = [spec["name"] for spec in self.manifest["schema"]["inputs"]]
        p_approve, p_retry = self._whole.run(OUTPUTS, {n: feeds[n] for n in names})
        return p_approve, p_retry

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The query graph (or this scorer's `model_file`) on `inputs` (those of `feeds`:
        this thread's bound inputs run through their binding)."""
        binding = self._binding(inputs, routes=False)
        if binding is not None:
            self.session.run_with_iobinding(binding)
            p_approve, p_retry = binding.copy_outputs_to_cpu()
            return p_approve, p_retry
        feeds = {name: inputs[name] for name in self.input_names}
        # The feeds are complete by construction (the manifest's names), so skip the Python
        # wrapper's per-call input checks and call ONNX Runtime's session directly: ~0.05 ms,
        # a tenth of a single request's run. Anything else with `run` (bench's PyTorch arm,
        # a future onnxruntime without `_sess`) takes the public call.
        direct = getattr(self.session, "_sess", None)
        if direct is not None:
            p_approve, p_retry = direct.run(OUTPUTS, feeds, None)
        else:
            p_approve, p_retry = self.session.run(OUTPUTS, feeds)
        return p_approve, p_retry

    def score_batch(self, attempts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Approval probabilities of attempts about to be sent. (B,)"""
        current = [encode_event(self.vocab, {**a, "response_code": None}) for a in attempts]
        windows = self.windows(attempts, current)
        p = self.run(self.feeds(current, windows, fused=self.fused_rows(attempts)))[0]
        if self.recalibration is None and self.route_recalibration is None:
            return p
        keys = [outcome_key(a, e) for a, e in zip(attempts, current, strict=True)]
        if self.recalibration is not None:
            p = self.recalibration.adjust(p, [e.t for e in current], keys)
        if self.route_recalibration is not None:
            follow = self.route_recalibration
            p = np.concatenate(
                [
                    follow.adjust(p[i : i + 1], e.t, str(a["issuer_id"]), [route_of(a)], key)
                    for i, (a, e, key) in enumerate(zip(attempts, current, keys, strict=True))
                ]
            )
        return p

    def score(self, attempt: Mapping[str, Any]) -> float:
        return float(self.score_batch([attempt])[0])

    def score_routes(
        self,
        attempt: Mapping[str, Any],
        routes: Sequence[str],
        histories: Mapping[str, Sequence[Window | Sequence[Event]]] | None = None,
        online: OnlineFeatures | None = None,
        pending: Event | None = None,
    ) -> np.ndarray:
        """P(approved) of the attempt sent through each of `routes` (R,): the route graph,
        the attempt's route changed per candidate. The card's, the issuer's and the card at
        the merchant's histories are read once and their vectors computed once, shared; the
        route stream is each candidate's own (its last attempts). A scorer of the whole
        network (`model_file`) runs it on a copy of the attempt per route. `histories`: the
        attempt's history per stream (default: read from the store; its route stream is not
        read); `pending`: an outcome not observed yet that belongs in the route streams (the
        decline a retry follows); `online`: the aggregates a fused network reads through each
        route (default: those kept)."""
        current = encode_event(self.vocab, {**attempt, "response_code": None, "advice_code": None})
        if histories is None:
            histories = self.windows([attempt], [current], SHARED_STREAMS)
        ids = [F._lookup(self.vocab.maps["route"], F._text(r)) for r in routes]
        candidates = [with_route(current, i) for i in ids]
        # the other streams read once, shared by every candidate (the query graph's inputs);
        # the whole network's take a copy per row
        copies = 1 if self.factored else len(ids)
        routed = {s: list(h) * copies for s, h in histories.items() if s != ROUTE_STREAM}
        routed[ROUTE_STREAM] = [self.route_history(c, pending) for c in candidates]
        # a fused network's route aggregates are each candidate's
        fused = self.fused_route_rows(attempt, routes, online)
        if not self.factored:
            p = self.run(self.inputs(candidates, routed, fused=fused))[0]
        else:
            p = self.run_routes(self.feeds(candidates, routed, fused=fused, routes=True))
        # the intercepts known now: a retry's (later) time would refit ahead of the outcomes
        now = current.t if pending is None else pending.t
        if self.recalibration is not None:
            p = self.recalibration.adjust(p, [now] * len(p))
        if self.route_recalibration is not None:
            # an attempt about to be sent waits for its outcome; a retry's is not sent yet
            key = outcome_key(attempt, current) if pending is None else None
            p = self.route_recalibration.adjust(p, now, str(attempt["issuer_id"]), routes, key)
        return p

    def run_routes(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The route graph on `inputs` (`feeds` or `inputs` with `routes=True`): p_approve
        per route."""
        binding = self._binding(inputs, routes=True)
        if binding is not None:
            self.route_session.run_with_iobinding(binding)
            (p_approve,) = binding.copy_outputs_to_cpu()
            return p_approve
        feeds = {name: inputs[name] for name in self.route_names}
        direct = getattr(self.route_session, "_sess", None)  # as `run`
        if direct is not None:
            (p_approve,) = direct.run(["p_approve"], feeds, None)
        else:
            (p_approve,) = self.route_session.run(["p_approve"], feeds)
        return p_approve

    def route_history(self, event: Event, pending: Event | None = None) -> Window | list[Event]:
        """The route stream of `event`'s route as it reads it, with `pending` in it when that
        outcome went through the same route. Raises StateUnavailable when the store fails."""
        key = route_key(event.cat[F.ROUTE])
        if pending is not None:
            known = self.recent(ROUTE_STREAM, key)
            same = pending.cat[F.ROUTE] == event.cat[F.ROUTE]
            return with_pending(known, pending) if same else known
        try:
            return self.store.window(ROUTE_STREAM, key, event.t - self.lag_s, self.ks[ROUTE_STREAM])
        except Exception as exc:
            raise StateUnavailable(f"reading {ROUTE_STREAM} {key}: {exc!r}") from exc

    # -- retries --------------------------------------------------------------------------
    def retry_curve(self, declines: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(a retry after each grid delay is approved), for declined attempts. (B, G)"""
        current = [encode_event(self.vocab, {**d, "response_code": None}) for d in declines]
        outcome = [encode_event(self.vocab, d) for d in declines]
        windows = self.windows(declines, current)
        return self.run(self.feeds(current, windows, outcome, self.fused_rows(declines)))[1]

    def advise_retry(
        self, decline: Mapping[str, Any], routes: Sequence[tuple[str, float]] | None = None
    ) -> RetryAdvice:
        """The retry curve, the best allowed delay (or none), the rule that decided and the
        route to retry on: among `routes` ((name, fee) in priority order), the one of best
        expected value for the retry the advice names; none given: the decline's own."""
        code = str(decline["response_code"])
        network = str(decline["network"])
        if cause_of(code, network) == Cause.APPROVED:
            raise IssuerSeqError(f"response code {code} is an approval: nothing to retry")
        curve = self.retry_curve([decline])[0]  # (G,)
        event = encode_event(self.vocab, decline)
        assert event.raw is not None
        history = self.recent(RULES_STREAM, stream_key(RULES_STREAM, decline, event))
        allowed, rules = allowed_retries(
            event.t,
            event.merchant,
            event.raw,
            history,
            str(decline["initiator"]),
            self.grid_s,
            self.rules,
        )
        p_3ds, can_3ds = self.now_with_3ds(decline, event, history)
        choice = choose_retry(
            curve[None, :],
            allowed[None, :],
            np.array([float(decline["amount"])]),
            np.array([code]),
            np.array([network]),
            self.grid_s,
            p_now_3ds=np.array([p_3ds]),
            sca_3ds_possible=np.array([can_3ds]),
            econ=self.economics,
        )
        action = Action.decode(int(choice.action[0]), self.grid, self.grid_s)
        blocking = sorted({str(r) for r in rules if r != "ok"})
        if allowed.any() or action == RETRY_NOW_WITH_3DS:
            rule = str(choice.reason[0])
        else:
            rule = blocking[0] if blocking else "ok"
        route = None
        if action.delay_s is not None:
            route = decline.get("route")
            if routes:
                route = self.retry_route(decline, event, action, routes)
        return RetryAdvice(
            curve={label: float(p) for label, p in zip(self.grid, curve, strict=True)},
            action=action,
            expected_value=float(choice.value[0]),
            rule=rule,
            allowed={label: bool(a) for label, a in zip(self.grid, allowed, strict=True)},
            route=route,
        )

    def retry_attempt(
        self, decline: Mapping[str, Any], event: Event, delay_s: int, three_ds: bool
    ) -> tuple[dict[str, Any], dict[str, list[Sequence[Event]]], OnlineFeatures | None]:
        """The retry of a declined payment `delay_s` later, as the attempt it would be (the
        payment's next attempt), its histories and, for a fused network, the aggregates it
        reads: the decline in them (added here when its outcome has not been observed
        yet)."""
        assert event.raw is not None
        retry = {
            **decline,
            "ts": event.t + delay_s,
            "attempt": event.raw.attempt + 1,
            "three_ds": three_ds,
            "response_code": None,
            "advice_code": None,
        }
        histories: dict[str, list[Sequence[Event]]] = {}
        observed = True
        for stream in self.ks:
            known = self.recent(stream, stream_key(stream, decline, event))
            with_decline = with_pending(known, event)
            observed = observed and with_decline is known
            histories[stream] = [with_decline]
        online = self.online
        if online is not None and not observed:
            with self._online_lock:
                online = online.with_outcome(decline)
        return retry, histories, online

    def retry_route(
        self,
        decline: Mapping[str, Any],
        event: Event,
        action: Action,
        routes: Sequence[tuple[str, float]],
    ) -> str:
        """The route of best expected value for the retry `action` names (its time, 3-D
        Secure for RETRY_NOW_WITH_3DS), scored through each candidate; ties: priority."""
        assert action.delay_s is not None
        three_ds = action == RETRY_NOW_WITH_3DS or bool(decline["three_ds"])
        retry, histories, online = self.retry_attempt(decline, event, action.delay_s, three_ds)
        names = [name for name, _ in routes]
        p = self.score_routes(retry, names, histories, online, pending=event)
        choice = choose_route(
            p[None, :],
            np.arange(len(names))[None, :],
            np.array([float(decline["amount"])]),
            np.array([fee for _, fee in routes]),
            self.economics,
        )
        return names[int(choice.best[0])]

    def now_with_3ds(
        self, decline: Mapping[str, Any], event: Event, rules_history: Sequence[Event]
    ) -> tuple[float, bool]:
        """The approval probability of the payment re-sent at once with 3-D Secure, and whether
        that retry is on the table: a customer-initiated SCA decline (Visa 1A, Mastercard 65)
        sent without 3-D Secure, the retry allowed by the network rules. (0.0, False) else.

        The retry is scored as the attempt it would be: `NOW_3DS_DELAY_S` after the decline,
        the next attempt of the same payment, with the decline in its histories (added here
        when its outcome has not been observed yet).
        """
        assert event.raw is not None
        initiator, three_ds = str(decline["initiator"]), bool(decline["three_ds"])
        if not three_ds_now_allowed(
            event.t, event.merchant, event.raw, rules_history, initiator, three_ds, self.rules
        ):
            return 0.0, False
        retry, histories, online = self.retry_attempt(decline, event, NOW_3DS_DELAY_S, True)
        fused = self.fused_rows([retry], online)
        feeds = self.feeds([encode_event(self.vocab, retry)], histories, fused=fused)
        return float(self.run(feeds)[0][0]), True

    # -- outcomes -------------------------------------------------------------------------
    def observe(self, outcome: Mapping[str, Any]) -> None:
        """Append an attempt with its outcome to its histories (card, issuer, route, card at
        the merchant). Raises StateUnavailable when the store fails."""
        missing = [c for c in ("response_code", "payment_id") if outcome.get(c) is None]
        if missing:
            raise IssuerSeqError(f"an outcome needs its {' and '.join(missing)}")
        event = encode_event(self.vocab, outcome)
        state = self.encode_states(
            np.array([event.cat], dtype=np.int64), np.array([event.num], dtype=np.float32)
        )[0]
        event = replace(event, state=state, encoder=self.encoder)
        for stream in self.ks:
            key = stream_key(stream, outcome, event)
            try:
                self.store.append(stream, key, event)
            except Exception as exc:
                raise StateUnavailable(f"writing {stream} {key}: {exc!r}") from exc
        if self.online is not None:
            with self._online_lock:
                self.online.observe(outcome)
        approved = str(outcome["response_code"]) == APPROVED_CODE
        if self.recalibration is not None:
            self.recalibration.observed(outcome_key(outcome, event), event.t, approved)
        if self.route_recalibration is not None:
            self.route_recalibration.observed(
                outcome_key(outcome, event),
                event.t,
                str(outcome["issuer_id"]),
                route_of(outcome),
                approved,
            )


__all__ = ["BundleError", "RetryAdvice", "Scorer", "verify_bundle"]
