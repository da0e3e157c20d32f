"""The network as two graphs: the event graph (one event -> its cached state) and the query
graph (the attempt and each stream's cached states -> p_approve, p_retry).

    event_encoder.onnx   event_cat (events, C) int64, event_num (events, F) float32
                         -> state (events, S) float32
    query.onnx           cur_cat (batch, C) int64, cur_num (batch, F) float32; the
                         streams of features.STREAMS (card, issuer, route, card_merchant)
                         stacked on the axis after the batch, each right-aligned to the
                         longest window k: states (batch, 4, k, S), rel (batch, 4, k, 3)
                         float32, length (batch, 4) int64; decline_response_code,
                         decline_advice_code (batch,) int64; a fused network's
                         `fused` (batch, n_fused) float32 -> p_approve, p_retry
    route_query.onnx     one attempt through R candidate routes (/v1/route): cur_cat,
                         cur_num (routes, ...) the attempt through each route; the streams
                         the candidates share (card, issuer, card_merchant) as the query
                         graph's with a batch of 1: states (1, 3, k, S), rel (1, 3, k, 3),
                         length (1, 3); each candidate's route stream: route_states
                         (routes, k, S), route_rel (routes, k, 3), route_length (routes,);
                         `fused` (routes, n_fused) -> p_approve (routes,)

`observe` runs the event graph once per event and stores the state beside the event's raw
fields; `score` gathers the states of each stream's last K events and runs the query graph.
The states' layout (what each column range holds) is the network's `state_layout`, written
to the manifest. Both graphs together are checked against PyTorch's forward on the
validation rows and the edge cases of cases.py, chained as the scorer chains them: the
event graph's states (padding slots zero) feed the query graph. The route graph computes the
shared streams once for every candidate (the network's `route_query`: their queries do not
read the route); it is checked against the query graph on the attempt copied per candidate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from issuer_seq import features as F
from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.onnx_export import check_signature
from issuer_seq.export.parity import worst_ratio
from issuer_seq.export.quiet import quiet_libraries
from issuer_seq.export.signature import (
    BATCH,
    FUSED,
    HISTORY_DIMS,
    OUTPUTS,
    TensorSpec,
    fused_spec,
)
from issuer_seq.export.validation import Feeds
from issuer_seq.features import SHARED, STREAMS
from issuer_seq.model.network import IssuerSeqNet

EVENT_FILE = "event_encoder.onnx"
QUERY_FILE = "query.onnx"
ROUTE_FILE = "route_query.onnx"
ROUTES = "routes"  # the route graph's symbolic dim: one attempt's candidate routes
EVENTS = "events"  # the event graph's symbolic dim
QUERY_K = "k"  # the query graph's: the longest stream's window
N_CAT, N_NUM, N_REL = len(F.CATEGORICAL), len(F.NUMERIC), len(F.RELATIVE)


def event_specs(state_size: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [
        TensorSpec("event_cat", "int64", (EVENTS, N_CAT)),
        TensorSpec("event_num", "float32", (EVENTS, N_NUM)),
    ]
    return inputs, [TensorSpec("state", "float32", (EVENTS, state_size))]


def query_specs(
    state_size: int, n_delays: int, n_fused: int = 0
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [
        TensorSpec("cur_cat", "int64", (BATCH, N_CAT)),
        TensorSpec("cur_num", "float32", (BATCH, N_NUM)),
    ]
    n = len(STREAMS)
    inputs += [
        TensorSpec("states", "float32", (BATCH, n, QUERY_K, state_size)),
        TensorSpec("rel", "float32", (BATCH, n, QUERY_K, N_REL)),
        TensorSpec("length", "int64", (BATCH, n)),
        TensorSpec("decline_response_code", "int64", (BATCH,)),
        TensorSpec("decline_advice_code", "int64", (BATCH,)),
    ]
    if n_fused:
        inputs.append(fused_spec(n_fused))
    outputs = [
        TensorSpec("p_approve", "float32", (BATCH,)),
        TensorSpec("p_retry", "float32", (BATCH, n_delays)),
    ]
    return inputs, outputs


def route_specs(state_size: int, n_fused: int = 0) -> tuple[list[TensorSpec], list[TensorSpec]]:
    n, k = len(SHARED), QUERY_K
    inputs = [
        TensorSpec("cur_cat", "int64", (ROUTES, N_CAT)),
        TensorSpec("cur_num", "float32", (ROUTES, N_NUM)),
        TensorSpec("states", "float32", (1, n, k, state_size)),
        TensorSpec("rel", "float32", (1, n, k, N_REL)),
        TensorSpec("length", "int64", (1, n)),
        TensorSpec("route_states", "float32", (ROUTES, k, state_size)),
        TensorSpec("route_rel", "float32", (ROUTES, k, N_REL)),
        TensorSpec("route_length", "int64", (ROUTES,)),
    ]
    if n_fused:
        inputs.append(TensorSpec(FUSED, "float32", (ROUTES, n_fused)))
    return inputs, [TensorSpec("p_approve", "float32", (ROUTES,))]


class EventGraph(nn.Module):
    def __init__(self, net: IssuerSeqNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: Tensor) -> Tensor:
        event_cat, event_num = inputs
        return self.net.state(event_cat, event_num)


class QueryGraph(nn.Module):
    """Positional inputs in `query_specs` order -> calibrated probabilities."""

    def __init__(self, net: IssuerSeqNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        cur_cat, cur_num, states, rel, length, code, advice, *fused = inputs
        # batch first in the inputs (Triton batches on the first dim), streams first in the
        # network
        logits = self.net.query(
            cur_cat,
            cur_num,
            states.transpose(0, 1),
            rel.transpose(0, 1),
            length.T,
            code,
            advice,
            fused[0] if fused else None,
        )
        return self.net.calibrated(*logits)


class RouteGraph(nn.Module):
    """Positional inputs in `route_specs` order -> calibrated p_approve per route."""

    def __init__(self, net: IssuerSeqNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: Tensor) -> Tensor:
        cur_cat, cur_num, states, rel, length, r_states, r_rel, r_length, *fused = inputs
        logit = self.net.route_query(
            cur_cat,
            cur_num,
            states.transpose(0, 1),
            rel.transpose(0, 1),
            length.T,
            r_states[:, None],
            r_rel[:, None],
            r_length[:, None],
            fused[0] if fused else None,
        )
        return self.net.p_approve(logit)


# -- named feeds (data/batches.py) -> the graphs' feeds ------------------------------------
def stacked(feeds: Feeds, prefix: str, names: tuple[str, ...], dtype: type) -> np.ndarray:
    return np.ascontiguousarray(np.stack([feeds[f"{prefix}_{n}"] for n in names], -1), dtype)


def real_slots(length: np.ndarray, k: int) -> np.ndarray:
    """(B, K) True where a right-aligned window of `length` events has an event."""
    return np.arange(-k, 0)[None, :] >= -length[:, None]


def stream_stack(arrays: list[np.ndarray]) -> np.ndarray:
    """(B, K_s, ...) per stream -> (B, N, K, ...), K the longest, each right-aligned with
    zeros on the left: the network's `stack_streams`, batch first."""
    k = max(a.shape[1] for a in arrays)
    out = np.zeros((arrays[0].shape[0], len(arrays), k, *arrays[0].shape[2:]), arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[:, i, k - a.shape[1] :] = a
    return out


def query_feeds(feeds: Feeds, states: dict[str, np.ndarray]) -> Feeds:
    """The query graph's feeds of named feeds, given each stream's states (B, K, S)."""
    out = {
        "cur_cat": stacked(feeds, "cur", F.CATEGORICAL, np.int64),
        "cur_num": stacked(feeds, "cur", F.NUMERIC, np.float32),
        "states": stream_stack([states[s] for s in STREAMS]),
        "rel": stream_stack([stacked(feeds, s, F.RELATIVE, np.float32) for s in STREAMS]),
        "length": np.stack([feeds[f"{s}_length"] for s in STREAMS], axis=1),
    }
    out["decline_response_code"] = feeds["decline_response_code"]
    out["decline_advice_code"] = feeds["decline_advice_code"]
    if FUSED in feeds:
        out[FUSED] = feeds[FUSED]
    return out


def candidate_copies(feeds: Feeds, row: int, route_ids: np.ndarray) -> Feeds:
    """Query graph feeds of row `row` of query graph `feeds` sent through each of `route_ids`
    (the route id of `cur_cat`), candidate i reading the route stream of row row + 1 + i
    (wrapping): one stream of its own each, as the scorer reads each route's."""
    b, r = len(feeds["cur_cat"]), len(route_ids)
    copies = {k: np.repeat(v[row : row + 1], r, axis=0) for k, v in feeds.items()}
    copies["cur_cat"][:, F.ROUTE] = route_ids
    others = (row + 1 + np.arange(r)) % b
    route = STREAMS.index("route")
    for name in ("states", "rel", "length"):
        copies[name][:, route] = feeds[name][others, route]
    return copies


def route_inputs(inputs: Feeds) -> Feeds:
    """The route graph's feeds from the query graph's of one attempt through R candidate
    routes (a row per route, as `candidate_copies` makes them): the attempt through each
    route, the shared streams of its first row (the same in every row) and each row's route
    stream. The scorer fills the same directly (`build_query_inputs(..., routes=True)`)."""
    shared, route = list(SHARED), STREAMS.index("route")
    out = {
        "cur_cat": inputs["cur_cat"],
        "cur_num": inputs["cur_num"],
        "states": inputs["states"][:1, shared],
        "rel": inputs["rel"][:1, shared],
        "length": inputs["length"][:1, shared],
        "route_states": np.ascontiguousarray(inputs["states"][:, route]),
        "route_rel": np.ascontiguousarray(inputs["rel"][:, route]),
        "route_length": np.ascontiguousarray(inputs["length"][:, route]),
    }
    if "fused" in inputs:
        out["fused"] = inputs["fused"]
    return out


def chained(event_session: Any, query_session: Any, feeds: Feeds) -> dict[str, np.ndarray]:
    """What the scorer computes: every real history event through the event graph (padding
    slots zero), then the query graph. Named feeds in, p_approve and p_retry out."""
    values = query_session.run(list(OUTPUTS), chained_feeds(event_session, feeds))
    return dict(zip(OUTPUTS, values, strict=True))


def chained_feeds(event_session: Any, feeds: Feeds) -> Feeds:
    """The query graph's feeds of named feeds, the states computed by the event graph."""
    states = {}
    for s in STREAMS:
        cat = stacked(feeds, s, F.CATEGORICAL, np.int64)
        num = stacked(feeds, s, F.NUMERIC, np.float32)
        b, k = cat.shape[:2]
        real = real_slots(feeds[f"{s}_length"], k)
        size = event_session.get_outputs()[0].shape[-1]
        out = np.zeros((b, k, size), np.float32)
        if real.any():
            (out[real],) = event_session.run(
                ["state"], {"event_cat": cat[real], "event_num": num[real]}
            )
        states[s] = out
    return query_feeds(feeds, states)


# -- export ---------------------------------------------------------------------------------
def _export(
    module: nn.Module,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    example: tuple[Tensor, ...],
    path: Path,
    opset: int,
) -> onnx.ModelProto:
    names = (BATCH, EVENTS, QUERY_K, ROUTES, *HISTORY_DIMS.values())
    dims = {name: Dim(name, min=1) for name in names}
    shapes = tuple(
        {axis: dims[d] for axis, d in enumerate(s.shape) if isinstance(d, str)} for s in inputs
    )
    with torch.no_grad(), quiet_libraries(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*The axis name")
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=(shapes,),  # one entry: the wrapper's *inputs
            external_data=False,
            verbose=False,
        )
    fuse_for_onnxruntime(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    check_signature(model, inputs, outputs)
    return model


def fuse_for_onnxruntime(path: Path) -> None:
    """Rewrite the graph at `path` with onnxscript's fusions for ONNX Runtime: each GELU's
    five nodes (Div, Erf, Add, Mul, Mul) become one `com.microsoft.Gelu`, the same function
    (a served query is mostly ONNX Runtime's cost per node)."""
    import onnx_ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _ = optimize_for_ort(onnx_ir.load(path))
    onnx_ir.save(model, path)


@dataclass
class FactoredGraphs:
    event: onnx.ModelProto
    query: onnx.ModelProto
    route: onnx.ModelProto
    event_specs: tuple[list[TensorSpec], list[TensorSpec]]
    query_specs: tuple[list[TensorSpec], list[TensorSpec]]
    route_specs: tuple[list[TensorSpec], list[TensorSpec]]


def export_factored(
    net: IssuerSeqNet, example: Feeds, out: Path, n_delays: int, opset: int
) -> FactoredGraphs:
    """Write event_encoder.onnx, query.onnx and route_query.onnx to `out` from named example
    feeds (>= 2 rows, K >= 2 per stream: torch.export specializes dims of size 0 or 1; the
    route graph's shared batch of 1 is meant to be fixed)."""
    if not all(net.use.values()):
        raise IssuerSeqError(
            "the factored graphs need every stream; an ablated network (use_card or "
            "use_issuer or use_route false) is for comparisons, not serving"
        )
    size = net.state_size()
    ev_specs, q_specs = event_specs(size), query_specs(size, n_delays, net.n_fused)
    cat = stacked(example, "card", F.CATEGORICAL, np.int64).reshape(-1, N_CAT)
    num = stacked(example, "card", F.NUMERIC, np.float32).reshape(-1, N_NUM)
    event = _export(
        EventGraph(net),
        *ev_specs,
        (torch.from_numpy(cat), torch.from_numpy(num)),
        out / EVENT_FILE,
        opset,
    )
    with torch.no_grad():
        states = {
            s: net.state(
                torch.from_numpy(stacked(example, s, F.CATEGORICAL, np.int64)),
                torch.from_numpy(stacked(example, s, F.NUMERIC, np.float32)),
            ).numpy()
            for s in STREAMS
        }
    feeds = query_feeds(example, states)
    query = _export(
        QueryGraph(net),
        *q_specs,
        tuple(torch.from_numpy(feeds[s.name]) for s in q_specs[0]),
        out / QUERY_FILE,
        opset,
    )
    r_specs = route_specs(size, net.n_fused)
    two = route_inputs(candidate_copies(feeds, 0, np.array([1, 2], np.int64)))
    route = _export(
        RouteGraph(net),
        *r_specs,
        tuple(torch.from_numpy(two[s.name]) for s in r_specs[0]),
        out / ROUTE_FILE,
        opset,
    )
    return FactoredGraphs(event, query, route, ev_specs, q_specs, r_specs)


def manifest_entry(
    net: IssuerSeqNet, graphs: FactoredGraphs, parity: dict[str, Any]
) -> dict[str, Any]:
    size = net.state_size()
    return {
        "event": {
            "file": EVENT_FILE,
            "inputs": [s.to_json() for s in graphs.event_specs[0]],
            "outputs": [s.to_json() for s in graphs.event_specs[1]],
        },
        "query": {
            "file": QUERY_FILE,
            "inputs": [s.to_json() for s in graphs.query_specs[0]],
            "outputs": [s.to_json() for s in graphs.query_specs[1]],
        },
        "route": {
            "file": ROUTE_FILE,
            "inputs": [s.to_json() for s in graphs.route_specs[0]],
            "outputs": [s.to_json() for s in graphs.route_specs[1]],
        },
        "state": {
            "size": size,
            "dtype": "float32",
            "bytes_per_event": 4 * size,
            "layout": {k: list(v) for k, v in net.state_layout().items()},
        },
        "parity": parity,
    }


class ChainedSession:
    """The two graphs as one session (`run(outputs, named feeds)`), chained as the scorer
    chains them, so that parity.check_parity checks them together on its cases."""

    def __init__(self, event_session: Any, query_session: Any) -> None:
        self.event = event_session
        self.query = query_session

    def run(self, outputs: list[str], feeds: Feeds) -> list[np.ndarray]:
        values = chained(self.event, self.query, feeds)
        return [values[name] for name in outputs]


@torch.no_grad()
def check_event_parity(
    net: IssuerSeqNet, session: Any, feeds: Feeds, rtol: float, atol: float
) -> dict[str, Any]:
    """The event graph alone against PyTorch's `state`, on the real history events of
    `feeds` and on 1 and 7 of them. Raises IssuerSeqError beyond the tolerance."""
    cats, nums = [], []
    for s in STREAMS:
        real = real_slots(feeds[f"{s}_length"], feeds[f"{s}_cause"].shape[1])
        cats.append(stacked(feeds, s, F.CATEGORICAL, np.int64)[real])
        nums.append(stacked(feeds, s, F.NUMERIC, np.float32)[real])
    cat, num = np.concatenate(cats), np.concatenate(nums)
    report: dict[str, Any] = {}
    for name, n in (("events_1", 1), ("events_7", 7), ("events_all", len(cat))):
        if n > len(cat):
            continue
        ref = net.state(torch.from_numpy(cat[:n]), torch.from_numpy(num[:n])).numpy()
        (got,) = session.run(["state"], {"event_cat": cat[:n], "event_num": num[:n]})
        worst = worst_ratio(got, ref, rtol, atol)
        report[name] = {"events": n, "max_ratio": worst}
        if worst > 1.0:
            raise IssuerSeqError(
                f"the event graph disagrees with PyTorch on {name}: {worst:.3g}x the "
                f"tolerance (rtol={rtol}, atol={atol})"
            )
    return report


def check_route_parity(
    event_session: Any,
    query_session: Any,
    route_session: Any,
    feeds: Feeds,
    route_ids: np.ndarray,
    rtol: float,
    atol: float,
) -> dict[str, Any]:
    """The route graph against the query graph on the attempt copied once per candidate
    route (`candidate_copies`), for each row of named `feeds` through `route_ids`, and for
    the first row with empty histories. Raises IssuerSeqError beyond the tolerance."""
    query = chained_feeds(event_session, feeds)
    empty = {k: v[:1].copy() for k, v in query.items()}
    for name in ("states", "rel", "length"):
        empty[name][:] = 0
    worst, cases = 0.0, 0
    for q in (query, empty):
        for row in range(len(q["cur_cat"])):
            copies = candidate_copies(q, row, route_ids)
            (got,) = route_session.run(["p_approve"], route_inputs(copies))
            want = query_session.run(["p_approve"], copies)[0]
            worst = max(worst, worst_ratio(got, want, rtol, atol))
            cases += 1
    if worst > 1.0:
        raise IssuerSeqError(
            f"the route graph disagrees with the query graph: {worst:.3g}x the tolerance "
            f"(rtol={rtol}, atol={atol})"
        )
    return {"cases": cases, "routes": len(route_ids), "max_ratio": worst}
