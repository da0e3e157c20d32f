"""`issuer-seq export`: a training run -> a checked ONNX serving bundle (export/README.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from issuer_seq.export import ExportSettings, export_bundle
from issuer_seq.export.quantize import Int8Criteria
from issuer_seq.export.triton import TritonSettings

log = logging.getLogger(__name__)


def settings(cfg: DictConfig) -> ExportSettings:
    """Flat, typed export settings from the composed config."""
    return ExportSettings(
        run_dir=Path(cfg.run_dir),
        artifact_dir=Path(cfg.artifact_dir),
        data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
        model_version=int(cfg.model_version),
        opset=int(cfg.opset),
        parity_rows=int(cfg.parity.rows),
        batch_size=int(cfg.parity.batch_size),
        rtol=float(cfg.parity.rtol),
        atol=float(cfg.parity.atol),
        int8=Int8Criteria(
            max_auroc_drop=float(cfg.int8.max_auroc_drop),
            max_logloss_rise=float(cfg.int8.max_logloss_rise),
        )
        if cfg.int8.enabled
        else None,
        fp16=bool(cfg.fp16.enabled),
        triton=TritonSettings(
            max_batch_size=int(cfg.triton.max_batch_size),
            preferred_batch_sizes=tuple(int(b) for b in cfg.triton.preferred_batch_sizes),
            max_queue_delay_us=int(cfg.triton.max_queue_delay_us),
            cpu_instances=int(cfg.triton.cpu_instances),
            gpu_instances=int(cfg.triton.gpu_instances),
        ),
        seed=int(cfg.seed),
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    manifest = export_bundle(settings(cfg))
    parity, variants = manifest["parity"], manifest["variants"]
    files = ", ".join(manifest["files"])
    fp16 = "shipped, checked on CUDA hosts only" if variants["fp16"]["shipped"] else "disabled"
    log.info(
        "\n".join(
            [
                f"bundle written to {cfg.artifact_dir}: {files}, manifest.json",
                f"parity ({parity['provider']}, rtol {parity['rtol']}, atol {parity['atol']}): "
                f"passed on {len(parity['cases'])} cases, worst "
                f"{parity['worst']['ratio']:.3g}x the tolerance ({parity['worst']['case']})",
                f"int8: {'shipped' if variants['int8']['shipped'] else 'not shipped'} "
                f"({variants['int8']['reason']})",
                f"fp16: {fp16}",
            ]
        )
    )
    return manifest
