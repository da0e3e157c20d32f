"""`issuer-seq bench`: latency and throughput of the scorers, measured side by side.

The same requests go through every arm: the last attempts of the log's test split, replayed
in time order, each scored end to end (history lookup + features + inference + decision)
and then observed, so every arm sees the same history. The transformer's arms share the
scorer's state and feature code and differ only in the model runtime: ONNX Runtime fp32,
ONNX Runtime int8 (if the bundle ships it) and PyTorch eager; model-size variants (other
bundles of the same network, e.g. `tiny`) get an ONNX fp32 arm `transformer_<name>` each, with
their own scorer and state. The LightGBM baseline's arm is
its own end-to-end scorer (baselines/online.py: the SQL aggregates from in-memory state,
LightGBM on one row). Arms take turns in blocks of requests, everything on one CPU thread.
Percentiles are over individual requests after a warm-up; throughput is measured per batch
size. Then, for the ONNX arms and LightGBM, the time of each stage of a request, and a
cProfile of the fp32 scorer: where the time goes.
"""

from __future__ import annotations

import cProfile
import os
import platform
import pstats
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from issuer_seq.baselines.online import LightGBMScorer, OnlineFeatures
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.evaluate.stacking import apply_stack
from issuer_seq.routing.policies import choose_route
from issuer_seq.serve.inputs import encode_event
from issuer_seq.serve.scorer import Scorer
from issuer_seq.timestamps import epoch_seconds

DECISION_THRESHOLD = 0.5  # route to a fallback acquirer below this approval probability


class TorchSession:
    """ONNX Runtime's `run` signature over the PyTorch network (the eager arm)."""

    def __init__(self, run_dir: Path) -> None:
        import torch

        from issuer_seq.train.trained_run import TrainedRun

        self.torch = torch
        self.net = TrainedRun.load(run_dir).net

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            p, r = self.net({k: self.torch.from_numpy(v) for k, v in feeds.items()})
        return [p.numpy(), r.numpy()]


class StackedScorer:
    """The stacked arm (evaluate/stacking.py) served: the transformer's scorer and LightGBM's,
    one after the other on every request, combined by the stack's weights."""

    def __init__(
        self, transformer: Scorer, lightgbm: LightGBMScorer, stack: Mapping[str, Any]
    ) -> None:
        self.scorers = {"transformer": transformer, "lightgbm": lightgbm}
        self.stack = stack

    def score_batch(self, attempts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        p = {name: np.asarray(s.score_batch(attempts)) for name, s in self.scorers.items()}
        return apply_stack(self.stack, p)

    def score(self, attempt: Mapping[str, Any]) -> float:
        return float(self.score_batch([attempt])[0])

    def observe(self, outcome: Mapping[str, Any]) -> None:
        for s in self.scorers.values():
            s.observe(outcome)


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": len(ms),
    }


class ArmScorer(Protocol):
    """What the bench needs of a scorer: the transformer's `Scorer` and `LightGBMScorer`."""

    def score(self, attempt: Mapping[str, Any]) -> float: ...

    def score_batch(self, attempts: Sequence[Mapping[str, Any]]) -> np.ndarray: ...

    def observe(self, outcome: Mapping[str, Any]) -> None: ...


def _query(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {**rec, "response_code": None, "advice_code": None}


def single_request_latency(
    scorers: Mapping[str, ArmScorer],
    requests: Sequence[Mapping[str, Any]],
    warmup: int,
    block: int = 100,
    block_warmup: int = 5,
) -> dict[str, dict[str, float]]:
    """Replay: time score + decision per request, then observe it; every arm, same requests.

    Each arm has its own state, so arms need not move in lockstep: they take turns in blocks
    of `block` requests (the order rotating from block to block), each replaying the block
    into its own state. Blocks keep each arm's caches its own, as in a service that runs one
    model, and spread changes in the machine's load (other jobs on shared cores) over every
    arm alike. The first `warmup` requests and the first `block_warmup` of each block (caches
    just after the switch) are not timed; the timed requests are the same for every arm.
    """
    names = list(scorers)
    times: dict[str, list[float]] = {name: [] for name in names}
    spans = [(0, min(warmup, len(requests)))]
    spans += [(i, min(i + block, len(requests))) for i in range(warmup, len(requests), block)]
    for b, (lo, hi) in enumerate(spans):
        k = b % len(names)
        for name in names[k:] + names[:k]:
            scorer = scorers[name]
            for i in range(lo, hi):
                rec = requests[i]
                query = _query(rec)
                start = time.perf_counter()
                p = scorer.score(query)
                _route = p < DECISION_THRESHOLD  # the decision the caller takes
                elapsed = time.perf_counter() - start
                if b > 0 and i - lo >= block_warmup:
                    times[name].append(elapsed)
                scorer.observe(rec)
    return {name: percentiles(t) for name, t in times.items()}


def route_scores(
    scorer: ArmScorer, attempt: Mapping[str, Any], routes: Sequence[str]
) -> np.ndarray:
    """P(approved) of the attempt through each route: the transformer's `score_routes` (the
    route graph: the shared streams computed once), else the candidates as a batch."""
    score_routes = getattr(scorer, "score_routes", None)
    if score_routes is not None:
        return np.asarray(score_routes(attempt, routes))
    return np.asarray(scorer.score_batch([{**attempt, "route": r} for r in routes]))


def route_latency(
    scorers: Mapping[str, ArmScorer],
    requests: Sequence[Mapping[str, Any]],
    routes: Sequence[str],
    counts: Sequence[int] = (2, 4, 6),
    warmup: int = 20,
) -> dict[str, Any]:
    """What /v1/route runs in process, per arm and number of candidate routes: the attempt
    scored through each candidate, then the choice by expected value (routing/policies.py);
    beside it, in the same loop on the same requests, a single score (`score`). Candidates
    are the first n of `routes` (repeated when the log has fewer routes: the cost is the
    same). Each arm in turn, its state as the replay left it."""
    fees = np.linspace(0.02, 0.1, max(counts))
    out: dict[str, Any] = {"routes": list(routes), "arms": {}}
    for name, scorer in scorers.items():
        times: dict[str, list[float]] = {"score": [], **{str(n): [] for n in counts}}
        for i, rec in enumerate(requests):
            query = _query(rec)
            start = time.perf_counter()
            scorer.score(query)
            elapsed = {"score": time.perf_counter() - start}
            for n in counts:
                names = [routes[j % len(routes)] for j in range(n)]
                start = time.perf_counter()
                p = route_scores(scorer, query, names)
                amount = np.array([float(rec["amount"])])
                choose_route(p[None, :], np.arange(n)[None, :], amount, fees[:n])
                elapsed[str(n)] = time.perf_counter() - start
            if i >= warmup:
                for key, dt in elapsed.items():
                    times[key].append(dt)
        out["arms"][name] = {key: percentiles(t) for key, t in times.items()}
    return out


def batch_throughput(
    scorers: Mapping[str, ArmScorer],
    requests: Sequence[Mapping[str, Any]],
    sizes: Sequence[int],
    seconds: float,
) -> dict[str, dict[str, float]]:
    """Scores per second of `score_batch` at each batch size (state as left by the replay)."""
    out: dict[str, dict[str, float]] = {name: {} for name in scorers}
    queries = [_query(r) for r in requests]
    for size in sizes:
        for name, scorer in scorers.items():
            done, start, i = 0, time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                batch = [queries[(i + j) % len(queries)] for j in range(size)]
                scorer.score_batch(batch)
                done += size
                i += size
            out[name][str(size)] = round(done / (time.perf_counter() - start), 1)
    return out


def observe_latency(
    scorers: Mapping[str, ArmScorer], outcomes: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """`observe` of each outcome, timed per arm (in time order, after the scoring benches:
    the arms' states move on from where the requests read them). The transformer's runs the
    event graph and stores the state; LightGBM's updates its aggregates' state."""
    out = {}
    for name, scorer in scorers.items():
        times = []
        for rec in outcomes:
            t0 = time.perf_counter()
            scorer.observe(rec)
            times.append(time.perf_counter() - t0)
        out[name] = percentiles(times)
    return out


def state_costs(scorer: Scorer, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a cached state costs: its bytes (in memory, and as a Redis member with its raw
    fields) and how fast the event graph recomputes states in bulk (a new bundle's warm-up,
    or a store filled before): events/s in batches of 1,024, one thread."""
    from dataclasses import replace

    from issuer_seq.serve.state import RedisStore

    encoded = [encode_event(scorer.vocab, r) for r in events[:20_000]]
    if not encoded:
        return {"note": "no events"}
    cat = np.array([e.cat for e in encoded], dtype=np.int64)
    num = np.array([e.num for e in encoded], dtype=np.float32)
    start = time.perf_counter()
    for i in range(0, len(cat), 1024):
        states = scorer.encode_states(cat[i : i + 1024], num[i : i + 1024])
    seconds = time.perf_counter() - start
    sample = [replace(e, state=states[0], encoder=scorer.encoder) for e in encoded[:200]]
    member = np.mean([len(RedisStore._member(e, 0)) for e in sample])
    bare = np.mean([len(RedisStore._member(e, 0)) for e in encoded[:200]])
    return {
        "state_floats": scorer.state_size,
        "state_bytes": 4 * scorer.state_size,
        "redis_member_bytes": round(float(member), 1),
        "redis_member_bytes_without_state": round(float(bare), 1),
        "recompute_events": len(cat),
        "recompute_events_per_s": round(len(cat) / seconds, 1),
        "recompute_seconds_per_million_events": round(seconds / len(cat) * 1e6, 1),
    }


def _stage_summary(stages: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    total = sum(float(np.mean(v)) for v in stages.values())
    return {
        name: {**percentiles(v), "share_of_mean": round(float(np.mean(v)) / total, 3)}
        for name, v in stages.items()
    }


def transformer_stages(scorer: Scorer, requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Where a transformer request's time goes: `Scorer.score`'s steps, timed one by one."""
    stages: dict[str, list[float]] = {
        "history_lookup": [],
        "features": [],
        "onnx_run": [],
        "decision": [],
    }
    for rec in requests:
        query = _query(rec)
        t0 = time.perf_counter()
        current = [encode_event(scorer.vocab, query)]
        t1 = time.perf_counter()
        windows = scorer.windows([query], current)
        t2 = time.perf_counter()
        inputs = scorer.feeds(current, windows, fused=scorer.fused_rows([query]))
        t3 = time.perf_counter()
        p = scorer.run(inputs)[0]
        t4 = time.perf_counter()
        _route = float(p[0]) < DECISION_THRESHOLD
        t5 = time.perf_counter()
        times = (t2 - t1, (t1 - t0) + (t3 - t2), t4 - t3, t5 - t4)
        for name, dt in zip(stages, times, strict=True):
            stages[name].append(dt)
    return _stage_summary(stages)


def lightgbm_stages(
    scorer: LightGBMScorer, requests: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The same for the LightGBM scorer: state lookup + features, coding, trees, decision."""
    stages: dict[str, list[float]] = {
        "lookup_and_features": [],
        "encode": [],
        "lightgbm_predict": [],
        "decision": [],
    }
    for rec in requests:
        query = _query(rec)
        t0 = time.perf_counter()
        values, cats = scorer.features.row(query)
        t1 = time.perf_counter()
        x = scorer.encode(values, cats)
        t2 = time.perf_counter()
        p = scorer.predict(x[None, :])
        t3 = time.perf_counter()
        _route = float(p[0]) < DECISION_THRESHOLD
        t4 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name].append(dt)
    return _stage_summary(stages)


def profile_scorer(
    scorer: ArmScorer, requests: Sequence[Mapping[str, Any]], top: int = 12
) -> list[dict[str, Any]]:
    """cProfile of `score` over the requests: the functions with the most own time.

    Profiling slows Python-level calls more than native ones; read the shares, not the times.
    """
    profiler = cProfile.Profile()
    queries = [_query(r) for r in requests]
    profiler.enable()
    for q in queries:
        scorer.score(q)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    n = max(len(queries), 1)
    return [
        {
            "function": f"{Path(file).name}:{line}({name})" if file != "~" else name,
            "calls_per_request": round(v[1] / n, 2),
            "own_us_per_request": round(v[2] / n * 1e6, 2),
            "own_share": round(v[2] / total, 3),
        }
        for (file, line, name), v in rows
    ]


def machine() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "threads": 1,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        pass
    return info


def warm_events(
    earlier: Sequence[Mapping[str, Any]],
    requests: Sequence[Mapping[str, Any]],
    issuer_keep: int = 256,
) -> list[Mapping[str, Any]]:
    """What the requests' sequences read: their cards' past and their issuers' latest events."""
    request_cards = {r["card_id"] for r in requests}
    request_issuers = {r["issuer_id"] for r in requests}
    warm = [r for r in earlier if r["card_id"] in request_cards]
    by_issuer: dict[Any, list[Mapping[str, Any]]] = {}
    for r in earlier:
        if r["issuer_id"] in request_issuers:
            by_issuer.setdefault(r["issuer_id"], []).append(r)
    warm_ids = {id(r) for r in warm}
    warm += [r for rs in by_issuer.values() for r in rs[-issuer_keep:] if id(r) not in warm_ids]
    warm.sort(key=lambda r: r["ts"])
    return warm


def lightgbm_warm_events(
    earlier: Sequence[Mapping[str, Any]],
    requests: Sequence[Mapping[str, Any]],
    keep_s: int,
) -> list[Mapping[str, Any]]:
    """What the aggregates read: the cards' past and the issuers' last `keep_s` (30 d + slack)."""
    cards = {r["card_id"] for r in requests}
    issuers = {r["issuer_id"] for r in requests}
    since = epoch_seconds(requests[0]["ts"]) - keep_s if requests else 0
    return [
        r
        for r in earlier
        if r["card_id"] in cards or (r["issuer_id"] in issuers and epoch_seconds(r["ts"]) >= since)
    ]


def bench_scorers(
    bundle: Path,
    run_dir: Path,
    records: Sequence[Mapping[str, Any]],
    n_requests: int = 2000,
    warmup: int = 200,
    batch_sizes: Sequence[int] = (1, 16, 64, 256),
    throughput_seconds: float = 2.0,
    lightgbm: LightGBMModel | None = None,
    variants: Mapping[str, Path] | None = None,
    stack: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Latency and throughput of every arm on the same requests (the log's last attempts).

    `variants`: name -> bundle of a model-size variant, measured as ONNX fp32 arm
    `transformer_<name>` (its model, as named in evaluation.json). `stack`: the stacked arm's
    combination (evaluation.json `approval.stacked.stack`), measured as arm `stacked` (both
    scorers in turn) when LightGBM is measured too. The transformer / LightGBM
    p99 ratios are in `vs_lightgbm`; the target that bounds them is judged by bench/targets.py."""
    import torch

    torch.set_num_threads(1)
    requests = list(records[-n_requests:])
    earlier = records[: len(records) - len(requests)]
    warm = warm_events(earlier, requests)

    manifest = Scorer(bundle).manifest
    whole = manifest["model"]["file"]
    makers: dict[str, Callable[[], Scorer]] = {
        "onnx_fp32": lambda: Scorer(bundle, threads=1),  # the event and query graphs
        "onnx_fp32_whole": lambda: Scorer(bundle, threads=1, model_file=whole),
    }
    int8 = manifest["variants"].get("int8", {})
    if int8.get("shipped"):
        makers["onnx_int8"] = lambda: Scorer(bundle, threads=1, model_file=int8["file"])

    def eager() -> Scorer:
        scorer = Scorer(bundle, threads=1, model_file=whole)
        scorer.session = TorchSession(run_dir)
        return scorer

    makers["pytorch_eager"] = eager
    models = {name: "transformer" for name in makers}
    for name, path in (variants or {}).items():
        arm = f"transformer_{name}"
        makers[arm] = partial(Scorer, path, threads=1)
        models[arm] = arm
    transformers: dict[str, Scorer] = {}
    for name, make in tqdm(makers.items(), desc="warm", unit="arm"):
        scorer = make()
        for rec in warm:
            scorer.observe(rec)
        transformers[name] = scorer
    scorers: dict[str, ArmScorer] = dict(transformers)
    lgb_scorer = None
    lgb_warm: list[Mapping[str, Any]] = []
    if lightgbm is not None:
        lag_s = int(manifest["history"].get("lag_s", 0))
        lgb_scorer = LightGBMScorer(lightgbm, OnlineFeatures(lag_s=lag_s))
        lgb_warm = lightgbm_warm_events(earlier, requests, lgb_scorer.features.keep_s)
        for rec in lgb_warm:
            lgb_scorer.observe(rec)
        scorers["lightgbm"] = lgb_scorer
        models["lightgbm"] = "lightgbm"
        if stack is not None:
            both = StackedScorer(
                Scorer(bundle, threads=1),
                LightGBMScorer(lightgbm, OnlineFeatures(lag_s=lag_s)),
                stack,
            )
            for name, events in (("transformer", warm), ("lightgbm", lgb_warm)):
                for rec in events:
                    both.scorers[name].observe(rec)
            scorers["stacked"] = both
            models["stacked"] = "stacked"
    latency = single_request_latency(scorers, requests, warmup)
    throughput = batch_throughput(scorers, requests, batch_sizes, throughput_seconds)
    results: dict[str, Any] = {
        name: {
            "model": models[name],
            "single_request": latency[name],
            "batch_scores_per_s": throughput[name],
        }
        for name in scorers
    }
    base = results["onnx_fp32"]["single_request"]["p99_ms"]
    for r in results.values():
        r["p99_vs_onnx_fp32"] = round(r["single_request"]["p99_ms"] / base, 3)
    timed = requests[warmup:]
    onnx = [name for name in ("onnx_fp32", "onnx_int8") if name in transformers]
    stages = {name: transformer_stages(transformers[name], timed) for name in onnx}
    # the ONNX runtimes of the run's model and the variants: what the latency target is about
    onnx += [name for name, model in models.items() if model.startswith("transformer_")]
    out: dict[str, Any] = {
        "requests": len(requests),
        "warmup": warmup,
        "warm_state_events": len(warm),
        "order": "arms take turns in blocks of 100 requests (rotating), the first 5 of each "
        "block untimed; each arm on one CPU thread",
        "arms": results,
        "stages": stages,
        "profile_onnx_fp32": profile_scorer(transformers["onnx_fp32"], timed[:500]),
    }
    if lgb_scorer is not None:
        observing: dict[str, ArmScorer] = {"onnx_fp32": transformers["onnx_fp32"]}
        observing["lightgbm"] = lgb_scorer
    else:
        observing = {"onnx_fp32": transformers["onnx_fp32"]}
    out["observe"] = observe_latency(observing, requests)
    routes = sorted({str(r["route"]) for r in records if r.get("route") is not None}) or ["route"]
    out["route"] = route_latency(observing, timed[:500], routes)
    out["state"] = state_costs(transformers["onnx_fp32"], warm)
    if lgb_scorer is not None:
        stages["lightgbm"] = lightgbm_stages(lgb_scorer, timed)
        lgb_p99 = results["lightgbm"]["single_request"]["p99_ms"]
        ratios = {
            name: round(results[name]["single_request"]["p99_ms"] / lgb_p99, 3) for name in onnx
        }
        out["lightgbm_warm_state_events"] = len(lgb_warm)
        out["vs_lightgbm"] = {
            "transformer_p99_over_lightgbm_p99": ratios,
            # the best shipped ONNX runtime (of the run's model or of a size variant, whose
            # accuracy the report shows beside it): what the latency target bounds
            "best": min(ratios.values()),
        }
    return out
