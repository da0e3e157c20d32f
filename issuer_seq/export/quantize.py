"""The int8 variant: dynamic quantization, shipped only if it keeps the approval accuracy.

Dynamic int8 (weights int8, activations quantized at run time: MatMulInteger) is a CPU
speed/size option. It changes the numbers, so it is judged on the validation rows against
the float graph: shipped only if AUROC drops by at most `max_auroc_drop` and the log loss
rises by at most `max_logloss_rise` (relative). Otherwise the manifest says why and the
file is left out.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from issuer_seq.export.parity import onnx_outputs, onnx_session
from issuer_seq.export.quiet import quiet_libraries
from issuer_seq.export.validation import ValidationData

INT8_FILE = "model_int8.onnx"
_EPS = 1e-7


@dataclass(frozen=True)
class Int8Criteria:
    max_auroc_drop: float = 0.002
    max_logloss_rise: float = 0.005  # relative: 0.005 = +0.5%


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan with one class."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(p), return_inverse=True, return_counts=True)
    # tied scores share the mean of the ranks they occupy
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def approval_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(p, y), "logloss": logloss(p, y)}


def decide(
    fp32: dict[str, float], int8: dict[str, float], criteria: Int8Criteria
) -> tuple[bool, str]:
    """Ship int8? And why (or why not), in words for the manifest."""
    drop = fp32["auroc"] - int8["auroc"]
    rise = (int8["logloss"] - fp32["logloss"]) / fp32["logloss"]
    if not (np.isfinite(drop) and np.isfinite(rise)):
        return False, "AUROC or log loss undefined on the validation rows (one class only?)"
    reasons = []
    if drop > criteria.max_auroc_drop:
        reasons.append(f"AUROC drops by {drop:.4f} > {criteria.max_auroc_drop}")
    if rise > criteria.max_logloss_rise:
        reasons.append(f"log loss rises by {rise:.2%} > {criteria.max_logloss_rise:.2%}")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"AUROC drop {drop:.4f}, log loss change {rise:+.2%}: within the criteria"


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of `src` into `dst` (after ORT's recommended pre-pass)."""
    with tempfile.TemporaryDirectory() as tmp, quiet_libraries():
        # shape inference + basic optimization first, as onnxruntime recommends: the
        # quantizer needs tensor shapes to pick the MatMuls it can quantize
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)


def int8_variant(
    src: Path,
    dst: Path,
    data: ValidationData,
    batch_size: int,
    fp32_out: dict[str, np.ndarray],
    labels: np.ndarray,
    criteria: Int8Criteria,
) -> dict[str, Any]:
    """Quantize, score the validation rows, decide; `dst` is removed unless shipped.

    `fp32_out` holds the float graph's outputs on the same rows, `labels` their `approved`.
    """
    quantize_int8(src, dst)
    session = onnx_session(dst)
    parts = [onnx_outputs(session, feeds) for feeds, _ in data.batches(batch_size)]
    p_int8 = np.concatenate([p["p_approve"] for p in parts])
    retry_int8 = np.concatenate([p["p_retry"] for p in parts])
    fp32 = approval_metrics(fp32_out["p_approve"], labels)
    int8 = approval_metrics(p_int8, labels)
    shipped, reason = decide(fp32, int8, criteria)
    if not shipped:
        dst.unlink()
    return {
        "file": dst.name if shipped else None,
        "shipped": shipped,
        "reason": reason,
        "criteria": {
            "max_auroc_drop": criteria.max_auroc_drop,
            "max_logloss_rise": criteria.max_logloss_rise,
        },
        "validation_rows": len(labels),
        "fp32": fp32,
        "int8": int8,
        "max_abs_diff_vs_fp32": {
            "p_approve": float(np.max(np.abs(p_int8 - fp32_out["p_approve"]))),
            "p_retry": float(np.max(np.abs(retry_int8 - fp32_out["p_retry"]))),
        },
        "quantization": "onnxruntime quantize_dynamic, weights QInt8, after quant_pre_process",
        "intended_for": "CPUExecutionProvider",
    }
