"""`export_bundle`: a training run in, a checked serving bundle out.

    <artifact_dir>/model.onnx                 fp32 graph (CPU or GPU), named feature inputs
                   event_encoder.onnx         the factored pair (factored.py): event ->
                   query.onnx                 cached state; cached states -> probabilities
                   model_int8.onnx            dynamic int8, only if accurate enough
                   model_fp16.onnx            float16 inside, float32 I/O (CUDA hosts)
                   parity_sample.npz          inputs + PyTorch outputs of 64 validation rows
                   triton/issuer_seq/...      Triton model repository
                   manifest.json              schema, checks, variants, sha256 of the rest

The bundle is built in a sibling folder and moved into place only when every check passed,
so a failed export never leaves a bundle that looks complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from issuer_seq.baselines.fused import FUSED_COLUMNS, N_FUSED
from issuer_seq.baselines.sql_features import WINDOWS
from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.cases import EDGE_ROWS, edge_cases
from issuer_seq.export.factored import (
    EVENT_FILE,
    QUERY_FILE,
    QUERY_K,
    ROUTE_FILE,
    ChainedSession,
    check_event_parity,
    check_route_parity,
    export_factored,
    manifest_entry,
)
from issuer_seq.export.fp16 import FP16_FILE, fp16_variant
from issuer_seq.export.manifest import MANIFEST, feature_schema, versions, write_manifest
from issuer_seq.export.onnx_export import DEFAULT_OPSET, example_feeds, export_onnx
from issuer_seq.export.parity import PROVIDER, check_parity, onnx_session, write_sample
from issuer_seq.export.quantize import INT8_FILE, Int8Criteria, int8_variant
from issuer_seq.export.signature import HISTORY_DIMS, input_specs, output_specs
from issuer_seq.export.triton import (
    EVENT_MODEL_NAME,
    MODEL_NAME,
    QUERY_MODEL_NAME,
    TritonSettings,
    write_repository,
)
from issuer_seq.export.validation import ValidationData, load_validation
from issuer_seq.serve.bundle import FORMAT_VERSION
from issuer_seq.train.trained_run import TrainedRun

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SAMPLE_FILE = "parity_sample.npz"
TRITON_DIR = "triton"
EXPORT_EXAMPLE_ROWS = 8


@dataclass(frozen=True)
class ExportSettings:
    run_dir: Path
    artifact_dir: Path
    data_dir: Path | None = None  # None: the log the run was trained on
    model_version: int = 1
    opset: int = DEFAULT_OPSET
    parity_rows: int = 20_000  # validation rows for parity and the int8 decision
    batch_size: int = 1024
    rtol: float = 1e-3
    atol: float = 1e-5
    int8: Int8Criteria | None = field(default_factory=Int8Criteria)  # None: no int8
    fp16: bool = True
    triton: TritonSettings = field(default_factory=TritonSettings)
    seed: int = 0


def export_bundle(settings: ExportSettings) -> dict[str, Any]:
    """Export, check and write the bundle; returns its manifest. Raises IssuerSeqError."""
    if settings.model_version < 1:
        raise IssuerSeqError("model_version must be >= 1 (Triton's version folder)")
    target = Path(settings.artifact_dir)
    _check_target(target)  # before minutes of work, not after
    run = TrainedRun.load(settings.run_dir)
    data_dir = str(settings.data_dir) if settings.data_dir else None
    log.info("rebuilding the validation rows of %s", data_dir or run.data_dir)
    data = load_validation(run, data_dir, settings.parity_rows, settings.seed)
    staging = _staging_dir(target)
    try:
        manifest = _build(run, data, staging, settings)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _build(run: TrainedRun, data: ValidationData, out: Path, s: ExportSettings) -> dict[str, Any]:
    inputs = input_specs(run.spec["inputs"], run.net.n_fused)
    outputs = output_specs(int(run.spec["net"]["n_delays"]))
    model_path = out / MODEL_FILE

    log.info("exporting %s with the dynamo exporter (opset %d)", run.path, s.opset)
    example, _ = data.feeds(data.rows[:EXPORT_EXAMPLE_ROWS])
    model = export_onnx(run.net, inputs, outputs, example, model_path, s.opset)

    cases = edge_cases(data, inputs, run.history)
    log.info(
        "parity on %d validation rows and %s", len(data.rows), ", ".join(c.name for c in cases)
    )
    parity, fp32_out, labels = check_parity(
        run.net, onnx_session(model_path), inputs, data, cases, s.rtol, s.atol, s.batch_size
    )
    parity["onnx_checker"] = "passed (full_check)"
    log.info("parity passed: worst %.3g of the tolerance", parity["worst"]["ratio"])
    sample_rows = write_sample(out / SAMPLE_FILE, run.net, data.feeds(data.rows[:64])[0])

    log.info("exporting the factored graphs (%s, %s, %s)", EVENT_FILE, QUERY_FILE, ROUTE_FILE)
    n_delays = int(run.spec["net"]["n_delays"])
    graphs = export_factored(run.net, example_feeds(example, inputs), out, n_delays, s.opset)
    event_session, query_session = onnx_session(out / EVENT_FILE), onnx_session(out / QUERY_FILE)
    factored_parity, _, _ = check_parity(
        run.net,
        ChainedSession(event_session, query_session),
        inputs,
        data,
        cases,
        s.rtol,
        s.atol,
        s.batch_size,
    )
    head, _ = data.feeds(data.rows[:EDGE_ROWS])
    factored_parity["event_graph"] = check_event_parity(
        run.net, event_session, head, s.rtol, s.atol
    )
    routes = np.arange(1, run.vocab.sizes()["route"], dtype=np.int64)  # every known route
    factored_parity["route_graph"] = check_route_parity(
        event_session,
        query_session,
        onnx_session(out / ROUTE_FILE),
        head,
        routes,
        s.rtol,
        s.atol,
    )
    log.info(
        "factored parity passed: worst %.3g of the tolerance", factored_parity["worst"]["ratio"]
    )

    variants: dict[str, Any] = {}
    if s.int8 is not None:
        variants["int8"] = int8_variant(
            model_path, out / INT8_FILE, data, s.batch_size, fp32_out, labels, s.int8
        )
    else:
        variants["int8"] = {"file": None, "shipped": False, "reason": "disabled (int8.enabled)"}
    log.info("int8: %s", variants["int8"]["reason"])
    if s.fp16:
        variants["fp16"] = fp16_variant(model_path, out / FP16_FILE, out / SAMPLE_FILE)
    else:
        variants["fp16"] = {"file": None, "shipped": False, "reason": "disabled (fp16.enabled)"}

    write_repository(
        out / TRITON_DIR, model_path, s.model_version, inputs, outputs, run.history, s.triton
    )
    longest = {QUERY_K: max(run.history[dim] for dim in HISTORY_DIMS.values())}
    for name, file, (g_inputs, g_outputs) in (
        (EVENT_MODEL_NAME, EVENT_FILE, graphs.event_specs),
        (QUERY_MODEL_NAME, QUERY_FILE, graphs.query_specs),
    ):
        write_repository(
            out / TRITON_DIR,
            out / file,
            s.model_version,
            g_inputs,
            g_outputs,
            run.history | longest,
            s.triton,
            name,
        )
    store = run.spec["store"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {
            "name": MODEL_NAME,
            "version": s.model_version,
            "file": MODEL_FILE,
            "weights_sha256": run.weights_sha256,
            "source_run": str(run.path.resolve()),
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "opset": _opset(model),
        "runtime": {
            "provider": PROVIDER,
            "inputs_by_name": True,
            "outputs": ["p_approve", "p_retry"],
        },
        "schema": feature_schema(inputs, outputs, run.spec["vocab"]),
        "history": run.history | {"lag_s": int(store["lag_s"]), "alignment": "right"},
        "delay_grid": list(store["delay_grid"]),
        "calibration": run.spec["calibration"],
        "network": run.spec["net"],
        "training_metrics": run.metrics,
        "parity": parity,
        "variants": variants,
        "factored": manifest_entry(run.net, graphs, factored_parity),
        "fused": fused_entry(run.net.n_fused),
        "sample": {
            "file": SAMPLE_FILE,
            "rows": sample_rows,
            "contents": "inputs by input name; PyTorch's p_approve and p_retry",
        },
        "triton": {
            "repository": TRITON_DIR,
            "model": MODEL_NAME,
            "version": s.model_version,
            "config": f"{TRITON_DIR}/{MODEL_NAME}/config.pbtxt",
            "max_batch_size": s.triton.max_batch_size,
            "factored_models": [EVENT_MODEL_NAME, QUERY_MODEL_NAME],
        },
        "versions": versions(),
    }
    return write_manifest(out, manifest)


def fused_entry(n_fused: int) -> dict[str, Any] | None:
    """What a scorer computes for a fused network's `fused` input (None: it reads none)."""
    if not n_fused:
        return None
    if n_fused != N_FUSED:
        raise IssuerSeqError(
            f"the network reads {n_fused} fused inputs, this version computes {N_FUSED}: "
            "retrain the model"
        )
    return {
        "columns": list(FUSED_COLUMNS),
        "windows_s": dict(WINDOWS),
        "size": N_FUSED,
        "transform": "sign(x) log(1 + |x|) of each column (NaN: 0), then a 0/1 NaN flag "
        "per column (baselines/fused.py fused_inputs)",
        "source": "baselines/online.py OnlineFeatures.row, kept in the scorer's memory",
    }


def _opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the graph actually declares (what runtimes must support)."""
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def _check_target(artifact_dir: Path) -> None:
    """Only an empty folder or an earlier bundle may be replaced."""
    if artifact_dir.exists() and not _is_replaceable(artifact_dir):
        raise IssuerSeqError(
            f"artifact_dir {artifact_dir} exists and is not an export bundle (no {MANIFEST}); "
            "refusing to overwrite it"
        )


def _staging_dir(artifact_dir: Path) -> Path:
    """A sibling folder (same file system, so publishing is a rename)."""
    target = artifact_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes it 0700) so the bundle gets the usual permissions
    staging = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _is_replaceable(path: Path) -> bool:
    return path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).is_file())


def _publish(staging: Path, artifact_dir: Path) -> None:
    _check_target(artifact_dir)  # again: it may have changed during the export
    target = artifact_dir.resolve()
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
