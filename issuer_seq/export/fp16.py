"""The fp16 variant for GPUs: float16 weights and compute, float32 inputs and outputs.

Converted with onnxconverter-common (`keep_io_types=True`, so callers feed the same float32
tensors). It is meant for CUDAExecutionProvider and is checked on CUDA hosts only: this
export runs no GPU. What it does check here: the ONNX checker (full), and a CPU smoke run
on the parity sample, in a child process: ONNX Runtime 1.32's CPU provider crashed
(segfault) building a session for such a graph at the default optimization level, so the
smoke run uses ORT_ENABLE_BASIC and a crash cannot take the export down with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import onnx
from onnxconverter_common import float16

FP16_FILE = "model_fp16.onnx"

_SMOKE = """
import json, sys
import numpy as np, onnxruntime as ort
model, sample = sys.argv[1], sys.argv[2]
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
data = np.load(sample)
names = [o.name for o in s.get_outputs()]
out = s.run(names, {i.name: data[i.name] for i in s.get_inputs()})
diff = {n: float(np.max(np.abs(o.astype(np.float64) - data[n]))) for n, o in zip(names, out)}
print(json.dumps(diff))
"""


def convert_fp16(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    with warnings.catch_warnings():
        # The attention mask's -inf becomes -10000 in float16: still exp() == 0 in softmax.
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(dst))


def cpu_smoke(model: Path, sample: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """Max |fp16 - torch| on the parity sample, on the CPU, isolated in a child process."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SMOKE, str(model), str(sample)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"ran": False, "error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"ran": False, "error": tail[-300:]}
    return {
        "ran": True,
        "graph_optimization_level": "ORT_ENABLE_BASIC",
        "max_abs_diff_vs_torch": json.loads(done.stdout.strip().splitlines()[-1]),
    }


def fp16_variant(src: Path, dst: Path, sample: Path) -> dict[str, Any]:
    convert_fp16(src, dst)
    return {
        "file": dst.name,
        "shipped": True,
        "intended_for": "CUDAExecutionProvider",
        "io_types": "float32 inputs and outputs (keep_io_types), float16 inside",
        "onnx_checker": "passed (full_check)",
        "validated_on_gpu": False,
        "note": (
            "checked on CUDA hosts only: this export ran no GPU; check it on the serving "
            "host against parity_sample.npz (export/README.md)"
        ),
        "cpu_smoke": cpu_smoke(dst, sample),
    }
