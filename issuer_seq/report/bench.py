"""`issuer-seq bench`: latency and throughput of the scorers, measured side by side.

The same requests go through every arm: the last attempts of the log's test split, replayed
in time order, each scored end to end (history lookup + features + inference + decision)
and then observed, so every arm sees the same state. Arms share the scorer's state and
feature code and differ only in the model runtime: ONNX Runtime fp32, ONNX Runtime int8 (if
the bundle ships it) and PyTorch eager. Everything runs on one CPU thread. Percentiles are
over individual requests after a warm-up; throughput is measured per batch size.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from issuer_seq.serve.scorer import Scorer

DECISION_THRESHOLD = 0.5  # route to a fallback acquirer below this approval probability


class TorchSession:
    """ONNX Runtime's `run` signature over the PyTorch network (the eager arm)."""

    def __init__(self, run_dir: Path) -> None:
        import torch

        from issuer_seq.evaluate.run import load_network

        self.torch = torch
        self.net, _ = load_network(run_dir)

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            p, r = self.net({k: self.torch.from_numpy(v) for k, v in feeds.items()})
        return [p.numpy(), r.numpy()]


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": len(ms),
    }


def single_request_latency(
    scorer: Scorer,
    warm: Sequence[Mapping[str, Any]],
    requests: Sequence[Mapping[str, Any]],
    warmup: int,
) -> dict[str, float]:
    """Replay: warm the state, then time score + decision per request, observing each after."""
    for rec in warm:
        scorer.observe(rec)
    times = []
    for i, rec in enumerate(requests):
        query = {**rec, "response_code": None, "advice_code": None}
        start = time.perf_counter()
        p = scorer.score(query)
        _route = p < DECISION_THRESHOLD  # the decision the caller takes
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        scorer.observe(rec)
    return percentiles(times)


def batch_throughput(
    scorer: Scorer, requests: Sequence[Mapping[str, Any]], sizes: Sequence[int], seconds: float
) -> dict[str, float]:
    """Scores per second of `score_batch` at each batch size (state as left by the replay)."""
    out = {}
    queries = [{**r, "response_code": None, "advice_code": None} for r in requests]
    for size in sizes:
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            batch = [queries[(i + j) % len(queries)] for j in range(size)]
            scorer.score_batch(batch)
            done += size
            i += size
        out[str(size)] = round(done / (time.perf_counter() - start), 1)
    return out


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


def bench_scorers(
    bundle: Path,
    run_dir: Path,
    records: Sequence[Mapping[str, Any]],
    n_requests: int = 2000,
    warmup: int = 200,
    batch_sizes: Sequence[int] = (1, 16, 64, 256),
    throughput_seconds: float = 2.0,
) -> dict[str, Any]:
    """Latency and throughput of every arm on the same requests (the log's last attempts)."""
    import torch

    torch.set_num_threads(1)
    requests = list(records[-n_requests:])
    request_cards = {r["card_id"] for r in requests}
    request_issuers = {r["issuer_id"] for r in requests}
    earlier = records[: len(records) - len(requests)]
    # Warm the state with what the requests' histories need: their cards' and issuers' past.
    warm = [r for r in earlier if r["card_id"] in request_cards]
    by_issuer: dict[Any, list[Mapping[str, Any]]] = {}
    for r in earlier:
        if r["issuer_id"] in request_issuers:
            by_issuer.setdefault(r["issuer_id"], []).append(r)
    keep = 256
    warm_ids = {id(r) for r in warm}
    warm += [r for rs in by_issuer.values() for r in rs[-keep:] if id(r) not in warm_ids]
    warm.sort(key=lambda r: r["ts"])

    arms: dict[str, Callable[[], Scorer]] = {
        "onnx_fp32": lambda: Scorer(bundle, threads=1),
    }
    manifest = Scorer(bundle).manifest
    int8 = manifest["variants"].get("int8", {})
    if int8.get("shipped"):
        arms["onnx_int8"] = lambda: Scorer(bundle, threads=1, model_file=int8["file"])

    def eager() -> Scorer:
        scorer = Scorer(bundle, threads=1)
        scorer.session = TorchSession(run_dir)
        return scorer

    arms["pytorch_eager"] = eager
    results: dict[str, Any] = {}
    for name, make in tqdm(arms.items(), desc="bench", unit="arm"):
        scorer = make()
        latency = single_request_latency(scorer, warm, requests, warmup)
        results[name] = {
            "single_request": latency,
            "batch_scores_per_s": batch_throughput(
                scorer, requests, batch_sizes, throughput_seconds
            ),
        }
    base = results["onnx_fp32"]["single_request"]["p99_ms"]
    for r in results.values():
        r["p99_vs_onnx_fp32"] = round(r["single_request"]["p99_ms"] / base, 3)
    return {
        "requests": len(requests),
        "warmup": warmup,
        "warm_state_events": len(warm),
        "arms": results,
    }
