"""A Triton Inference Server model repository: the fp32 graph, and the factored pair.

    triton/issuer_seq/config.pbtxt                 the whole network (named feature inputs)
    triton/issuer_seq/<version>/model.onnx
    triton/issuer_seq_event/...                    the event graph: events -> cached states
    triton/issuer_seq_query/...                    the query graph: states -> probabilities

The event and query models are two models, not an ensemble: between them sits the state
store (the caller keeps each event's state and gathers a stream's last K), which an
ensemble's fixed tensor routing cannot do. The event graph's first dim (events) is its
batch dim here.

With max_batch_size > 0 Triton adds the batch dim itself, so `dims` leave it out: a (B,)
input is dims [1] reshaped to [] (Triton's way to say "batch only"), a card history input
(B, K) is dims [k_card]. History lengths are fixed at the trained K here, although the
graph accepts any: the dynamic batcher only merges requests of equal shapes, so a fixed K
keeps every request batchable, and a wrong K is rejected by Triton instead of batched alone.

The config is built as the ModelConfig protobuf Triton itself parses, so a misspelt field
fails here, not when the server loads the model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.signature import BATCH, TensorSpec

MODEL_NAME = "issuer_seq"
EVENT_MODEL_NAME = "issuer_seq_event"
QUERY_MODEL_NAME = "issuer_seq_query"
_BATCH_DIMS = (BATCH, "events")  # the query's batch, the event graph's events
_TRITON_DTYPES = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}


@dataclass(frozen=True)
class TritonSettings:
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (16, 64)
    max_queue_delay_us: int = 500
    cpu_instances: int = 1
    gpu_instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise IssuerSeqError("triton.max_batch_size must be >= 1 (the graph is batched)")
        too_big = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if too_big:
            raise IssuerSeqError(
                f"triton.preferred_batch_sizes {too_big} outside 1..{self.max_batch_size}"
            )
        if self.cpu_instances < 0 or self.gpu_instances < 0:
            raise IssuerSeqError("triton instance counts must be >= 0")


def triton_dims(spec: TensorSpec, sizes: dict[str, int]) -> tuple[list[int], list[int] | None]:
    """Triton dims (batch left out) and the reshape to the graph's shape, if one is needed."""
    if spec.shape[0] not in _BATCH_DIMS:
        raise ValueError(f"{spec.name}: Triton batching needs the batch dim first")
    rest = [d if isinstance(d, int) else sizes[d] for d in spec.shape[1:]]
    if not rest:
        return [1], []
    return rest, None


def model_config(
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    sizes: dict[str, int],
    settings: TritonSettings,
    name: str = MODEL_NAME,
) -> mc.ModelConfig:
    """`sizes` fixes the symbolic dims other than the batch (k_card, k_issuer)."""
    config = mc.ModelConfig(
        name=name, platform="onnxruntime_onnx", max_batch_size=settings.max_batch_size
    )
    for specs, field in ((inputs, config.input), (outputs, config.output)):
        for spec in specs:
            tensor = field.add()
            tensor.name = spec.name
            tensor.data_type = _TRITON_DTYPES[spec.dtype]
            dims, reshape = triton_dims(spec, sizes)
            tensor.dims.extend(dims)
            if reshape is not None:
                tensor.reshape.SetInParent()  # present and empty: the graph's (B,)
                tensor.reshape.shape.extend(reshape)
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    for kind, count in (
        (mc.ModelInstanceGroup.KIND_CPU, settings.cpu_instances),
        (mc.ModelInstanceGroup.KIND_GPU, settings.gpu_instances),
    ):
        if count > 0:
            group = config.instance_group.add()
            group.kind = kind
            group.count = count
    return config


def write_repository(
    root: Path,
    model: Path,
    version: int,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    sizes: dict[str, int],
    settings: TritonSettings,
    name: str = MODEL_NAME,
) -> list[Path]:
    """Write model `name` of the repository under `root`; returns the files written."""
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    config = model_dir / "config.pbtxt"
    text = text_format.MessageToString(model_config(inputs, outputs, sizes, settings, name))
    config.write_text(text)
    copy = model_dir / str(version) / "model.onnx"
    shutil.copyfile(model, copy)
    return [config, copy]
