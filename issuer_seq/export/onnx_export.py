"""The calibrated network -> ONNX with the dynamo exporter (torch.export, then ONNX).

The graph has one named, typed input per feature (signature.py) and the outputs p_approve
(batch,) and p_retry (batch, G), with the batch and each stream's history length symbolic.
The TorchScript exporter traces at one shape and can bake it in; torch.export records
the shape constraints instead, and parity.py runs the graph at other shapes to prove it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.cases import resize_histories, take, window_sizes
from issuer_seq.export.quiet import quiet_libraries
from issuer_seq.export.signature import BATCH, HISTORY_DIMS, TensorSpec
from issuer_seq.export.validation import Feeds
from issuer_seq.model.network import IssuerSeqNet

DEFAULT_OPSET = 18
_ONNX_DTYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}


class PositionalNet(nn.Module):
    """The network with positional inputs: a graph takes a flat list, the network a dict."""

    def __init__(self, net: IssuerSeqNet, names: list[str]) -> None:
        super().__init__()
        self.net = net
        self.names = list(names)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(dict(zip(self.names, inputs, strict=True)))


def example_feeds(feeds: Feeds, specs: list[TensorSpec]) -> Feeds:
    """Export example: torch.export specializes dims of size 0 or 1, so use at least 2."""
    n = len(next(iter(feeds.values())))
    feeds = take(feeds, np.arange(max(n, 2)) % n)
    sizes = {stream: max(2, k) for stream, k in window_sizes(feeds, specs).items()}
    return resize_histories(feeds, specs, sizes)


def example_inputs(feeds: Feeds, specs: list[TensorSpec]) -> tuple[Tensor, ...]:
    feeds = example_feeds(feeds, specs)
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs)


def dynamic_shapes(specs: list[TensorSpec]) -> tuple[tuple[dict[int, Dim], ...]]:
    """One Dim per symbolic name, shared by every input using it (card inputs share k_card)."""
    dims = {name: Dim(name, min=1) for name in (BATCH, *HISTORY_DIMS.values())}
    per_input = tuple(
        {axis: dims[d] for axis, d in enumerate(s.shape) if isinstance(d, str)} for s in specs
    )
    return (per_input,)  # one entry: the wrapper's *inputs


def export_onnx(
    net: IssuerSeqNet,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    example: Feeds,
    path: Path,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Write the single-file graph to `path`, check it, and return it."""
    wrapper = PositionalNet(net, [s.name for s in inputs]).eval()
    with torch.no_grad(), quiet_libraries(), warnings.catch_warnings():
        # Dims sharing a Dim (every card input's k_card) trigger one rename warning each;
        # check_signature below verifies the names that matter.
        warnings.filterwarnings("ignore", message=".*The axis name")
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        torch.onnx.export(
            wrapper,
            example_inputs(example, inputs),
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes(inputs),
            external_data=False,  # one self-contained file: checksummed and copied as is
            verbose=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    check_signature(model, inputs, outputs)
    return model


def graph_signature(
    model: onnx.ModelProto,
) -> dict[str, list[tuple[str, int, tuple[str | int, ...]]]]:
    """(name, elem type, dims) of the graph's inputs and outputs; dims symbolic or fixed."""

    def describe(values: list[onnx.ValueInfoProto]) -> list[tuple[str, int, tuple[str | int, ...]]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
            out.append((v.name, t.elem_type, dims))
        return out

    return {
        "inputs": describe(list(model.graph.input)),
        "outputs": describe(list(model.graph.output)),
    }


def check_signature(
    model: onnx.ModelProto, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> None:
    """The graph must take and give exactly the specs (the exporter may rename or drop)."""
    got = graph_signature(model)
    for kind, specs in (("inputs", inputs), ("outputs", outputs)):
        want = [(s.name, _ONNX_DTYPES[s.dtype], s.shape) for s in specs]
        if got[kind] != want:
            diff = next(
                (f"{w} != {g}" for w, g in zip(want, got[kind], strict=False) if w != g),
                f"{len(want)} expected, {len(got[kind])} in the graph",
            )
            raise IssuerSeqError(f"the exported graph's {kind} differ from the schema: {diff}")
