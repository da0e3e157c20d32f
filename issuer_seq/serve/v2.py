"""The Open Inference Protocol (KServe V2) view of the bundle: metadata, tensor in and out.

Inputs are the graph's named tensors exactly as the manifest lists them (export/README.md),
so a V2 client (tritonclient's HTTP client, KServe, gateways) can call this service or a
Triton server with the same request. Everything that would make ONNX Runtime fail or read
out of bounds is refused here with a message: a missing or unknown tensor, a wrong datatype,
a shape that does not match the data or the other tensors, an id outside its vocabulary, a
history length beyond its window, a non-finite float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from issuer_seq import features as F
from issuer_seq.errors import IssuerSeqError
from issuer_seq.serve.inputs import history_lengths

OUTPUTS = ("p_approve", "p_retry")
_V2_DTYPE = {"int64": "INT64", "float32": "FP32"}
_NP_DTYPE = {"int64": np.int64, "float32": np.float32}


class V2InputError(IssuerSeqError):
    """The request's tensors do not fit the model (answered with 400)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64" | "float32"
    dims: tuple[str | int, ...]  # symbolic ("batch", "k_card") or fixed
    kind: str  # categorical | numeric | relative | length
    vocab_size: int | None  # categorical ids must lie in [0, vocab_size)
    stream: str

    @property
    def datatype(self) -> str:
        return _V2_DTYPE[self.dtype]


def _flatten(data: list[Any], out: list[Any], depth: int = 0) -> None:
    """Row-major flattening of nested lists; JSON depth is bounded by the tensor rank."""
    if depth > 4:
        raise V2InputError("data is nested deeper than any tensor of this model")
    for item in data:
        if isinstance(item, list):
            _flatten(item, out, depth + 1)
        else:
            out.append(item)


class V2Model:
    def __init__(self, manifest: Mapping[str, Any], max_batch: int, history_factor: int = 4):
        self.name = str(manifest["model"]["name"])
        self.version = str(manifest["model"]["version"])
        schema = manifest["schema"]
        cats = schema["categorical"]
        self.specs = [
            TensorSpec(
                name=s["name"],
                dtype=s["dtype"],
                dims=tuple(s["shape"]),
                kind=s.get("kind", ""),
                vocab_size=int(cats[s["vocab"]]["size"]) if s.get("vocab") in cats else None,
                stream=s.get("stream", ""),
            )
            for s in schema["inputs"]
        ]
        self.outputs = [(o["name"], tuple(o["shape"])) for o in schema["outputs"]]
        self.max_batch = max_batch
        history = manifest["history"]
        # The graph takes any window length (padding is masked); bound it to keep requests small.
        self.max_dim = {
            "batch": max_batch,
        } | {F.HISTORY_DIMS[s]: history_factor * k for s, k in history_lengths(history).items()}
        self.reverse = {
            name: {int(i): text for text, i in spec["vocab"].items()} for name, spec in cats.items()
        }

    # -- metadata -------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        def dims(shape: Sequence[str | int]) -> list[int]:
            return [d if isinstance(d, int) else -1 for d in shape]

        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": dims(s.dims)} for s in self.specs
            ],
            "outputs": [
                {"name": name, "datatype": "FP32", "shape": dims(shape)}
                for name, shape in self.outputs
            ],
        }

    # -- requests -------------------------------------------------------------------------
    def decode(self, tensors: Sequence[Any]) -> dict[str, np.ndarray]:
        """V2 input tensors (objects with name, shape, datatype, data) -> the graph's feeds."""
        by_name: dict[str, Any] = {}
        for t in tensors:
            if t.name in by_name:
                raise V2InputError(f"input {t.name!r} is given twice")
            by_name[t.name] = t
        known = {s.name for s in self.specs}
        unknown = sorted(set(by_name) - known)
        if unknown:
            raise V2InputError(f"unknown input(s) {unknown[:5]}; GET the model metadata")
        missing = [s.name for s in self.specs if s.name not in by_name]
        if missing:
            raise V2InputError(f"missing input(s) {missing[:5]} ({len(missing)} in all)")
        sizes: dict[str, int] = {}
        feeds: dict[str, np.ndarray] = {}
        for spec in self.specs:
            feeds[spec.name] = self._tensor(spec, by_name[spec.name], sizes)
        self._check_values(feeds, sizes)
        return feeds

    def _tensor(self, spec: TensorSpec, t: Any, sizes: dict[str, int]) -> np.ndarray:
        if t.datatype != spec.datatype:
            raise V2InputError(
                f"input {spec.name!r}: datatype {t.datatype}, expected {spec.datatype}"
            )
        shape = [int(d) for d in t.shape]
        if len(shape) != len(spec.dims):
            raise V2InputError(
                f"input {spec.name!r}: shape {shape} has rank {len(shape)}, expected "
                f"{len(spec.dims)} ({list(spec.dims)})"
            )
        for d, want in zip(shape, spec.dims, strict=True):
            if isinstance(want, int):
                if d != want:
                    raise V2InputError(f"input {spec.name!r}: shape {shape}, expected {spec.dims}")
                continue
            limit = self.max_dim.get(want, self.max_batch)
            if not 1 <= d <= limit:
                raise V2InputError(f"input {spec.name!r}: {want} = {d} is outside 1..{limit}")
            if sizes.setdefault(want, d) != d:
                raise V2InputError(
                    f"input {spec.name!r}: {want} = {d}, but other inputs have {sizes[want]}"
                )
        flat: list[Any] = []
        _flatten(t.data, flat)
        if len(flat) != int(np.prod(shape)):
            raise V2InputError(
                f"input {spec.name!r}: {len(flat)} values for shape {shape} "
                f"({int(np.prod(shape))} expected)"
            )
        integer = spec.dtype == "int64"
        for v in flat:
            # bool is an int in Python but not a number in this protocol's INT64/FP32
            if isinstance(v, bool) or not isinstance(v, int if integer else int | float):
                kind = "integers" if integer else "numbers"
                raise V2InputError(f"input {spec.name!r}: data must be {kind}, found {v!r}")
        try:
            arr = np.array(flat, dtype=_NP_DTYPE[spec.dtype]).reshape(shape)
        except (OverflowError, ValueError) as exc:
            raise V2InputError(f"input {spec.name!r}: {exc}") from None
        return arr

    def _check_values(self, feeds: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> None:
        for spec in self.specs:
            x = feeds[spec.name]
            if spec.dtype == "float32" and not np.isfinite(x).all():
                raise V2InputError(f"input {spec.name!r}: values must be finite")
            if spec.vocab_size is not None and ((x < 0) | (x >= spec.vocab_size)).any():
                raise V2InputError(
                    f"input {spec.name!r}: ids must lie in 0..{spec.vocab_size - 1} "
                    "(manifest.schema.categorical)"
                )
            if spec.kind == "length":
                k = sizes.get(F.HISTORY_DIMS.get(spec.stream, ""), 0)
                if ((x < 0) | (x > k)).any():
                    raise V2InputError(f"input {spec.name!r}: lengths must lie in 0..{k}")

    def requested(
        self, outputs: Sequence[Any] | None, parameters: Mapping[str, Any] | None = None
    ) -> list[str]:
        """The outputs asked for (all by default); binary tensor data is not supported, and
        an output asked for twice is a mistake, not two answers."""
        asks = [parameters or {}, *[o.parameters or {} for o in outputs or []]]
        if any(p.get("binary_data_output") or p.get("binary_data") for p in asks):
            raise V2InputError("binary tensor data is not supported: ask for JSON outputs")
        if not outputs:
            return list(OUTPUTS)
        names = [o.name for o in outputs]
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise V2InputError(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise V2InputError(f"output(s) {twice} asked for more than once")
        return names

    @staticmethod
    def encode(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "datatype": "FP32",
                "shape": list(arrays[n].shape),
                "data": arrays[n].astype(np.float32).ravel().tolist(),
            }
            for n in names
        ]

    # -- what the fallback needs from tensors ---------------------------------------------
    def raw_value(self, feature: str, ids: np.ndarray) -> list[str | None]:
        """Vocabulary ids back to raw text (None for the special and unknown ids)."""
        table = self.reverse.get(feature, {})
        return [table.get(int(i)) if int(i) >= F.N_SPECIAL else None for i in ids]
