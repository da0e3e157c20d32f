"""The graph's signature: one named, typed tensor per feature, in the training run's order.

Every input name of `data/batches.py` (`<stream>_<feature>`) maps to a dtype and a shape:

    cur_<f>, decline_<f>, <s>_length        (batch,)             int64 ids / lengths
    cur_<numeric>                           (batch,)             float32
    card_<f>                                (batch, k_card)      history, right-aligned
    issuer_<f>                              (batch, k_issuer)
    card_merchant_<f>                       (batch, k_card_merchant)
    fused                                   (batch, n_fused)     float32, a fused network's
                                            aggregates (baselines/fused.py `fused_inputs`)

The symbolic dims are what the ONNX graph, the manifest and the Triton config share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from issuer_seq import features as F
from issuer_seq.errors import IssuerSeqError

BATCH = "batch"
HISTORY_DIMS = F.HISTORY_DIMS  # stream -> the symbolic dim its (B, K) inputs share
OUTPUTS: tuple[str, ...] = ("p_approve", "p_retry")
FUSED = "fused"  # the input of a network that reads the trees' aggregates (model.fuse)

Kind = Literal["categorical", "numeric", "relative", "length", "fused"]
Dtype = Literal["int64", "float32"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` holds symbolic dim names or fixed sizes."""

    name: str
    dtype: Dtype
    shape: tuple[str | int, ...]
    stream: str = ""  # cur, decline, or a history stream ("" for outputs)
    feature: str = ""
    kind: Kind | None = None
    vocab: str | None = None  # the vocabulary a categorical id comes from

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        for key in ("stream", "feature", "kind", "vocab"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


def input_spec(name: str) -> TensorSpec:
    """The spec of one input name; an unknown name is an error (a run from another schema).

    A name may split more than one way (`card_merchant_country` is the card stream's
    `merchant_country`; `card_merchant_mcc` the card_merchant stream's `mcc`): the split
    whose feature exists is the one.
    """
    for stream in ("cur", "decline", *HISTORY_DIMS):
        if name.startswith(f"{stream}_"):
            spec = _spec(name, stream, name[len(stream) + 1 :])
            if spec is not None:
                return spec
    raise IssuerSeqError(f"model input {name!r} is not part of this feature schema")


def _spec(name: str, stream: str, feature: str) -> TensorSpec | None:
    if stream == "decline":
        # The decline the retry head is asked about: ids of the same vocabularies.
        if feature in ("response_code", "advice_code"):
            return TensorSpec(name, "int64", (BATCH,), stream, feature, "categorical", feature)
        return None
    if feature == "length" and stream in HISTORY_DIMS:
        return TensorSpec(name, "int64", (BATCH,), stream, feature, "length")
    shape: tuple[str, ...] = (BATCH,) if stream == "cur" else (BATCH, HISTORY_DIMS[stream])
    if feature in F.CATEGORICAL:
        return TensorSpec(name, "int64", shape, stream, feature, "categorical", feature)
    if feature in F.NUMERIC:
        return TensorSpec(name, "float32", shape, stream, feature, "numeric")
    if feature in F.RELATIVE and stream != "cur":
        return TensorSpec(name, "float32", shape, stream, feature, "relative")
    return None


def fused_spec(n_fused: int) -> TensorSpec:
    """The `fused` input: the attempt's aggregates as baselines/fused.py gives them."""
    return TensorSpec(FUSED, "float32", (BATCH, n_fused), feature=FUSED, kind="fused")


def input_specs(names: list[str], n_fused: int = 0) -> list[TensorSpec]:
    """The specs of `names`, then the `fused` input when the network reads `n_fused` > 0
    aggregates."""
    return [input_spec(n) for n in names] + ([fused_spec(n_fused)] if n_fused else [])


def output_specs(n_delays: int) -> list[TensorSpec]:
    return [
        TensorSpec("p_approve", "float32", (BATCH,)),
        TensorSpec("p_retry", "float32", (BATCH, n_delays)),
    ]
