"""manifest.json: everything a scorer needs to feed the graph, and proof of what was checked.

The feature schema (inputs in order with dtype and shape, vocabularies, numeric transforms,
special ids) is what the scorer reads to build inputs; the checksums let it verify the
bundle it loaded. Format changes that break readers bump serve/bundle.py FORMAT_VERSION.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

import issuer_seq
from issuer_seq import features as F
from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.signature import TensorSpec
from issuer_seq.serve.bundle import MANIFEST

#: how each numeric input is computed (features.numeric / features.relative_features);
#: `ts` is the attempt's time in whole UTC epoch seconds
NUMERIC_TRANSFORMS: dict[str, str] = {
    "log_amount": "log1p(max(amount, 0)), amount in major units",
    "attempt": "min(attempt, 10) - 1 (attempt 1 = first try -> 0)",
    "hour_sin": "sin(2*pi*h/24), h = (ts mod 86400) / 3600, the UTC hour with its fraction",
    "hour_cos": "cos(2*pi*h/24)",
    "local_hour_sin": (
        "sin(2*pi*l/24), l = ((ts + o) mod 86400) / 3600, o = the issuer country's UTC offset "
        "(features.UTC_OFFSET_HOURS, 0 if unlisted) in seconds"
    ),
    "local_hour_cos": "cos(2*pi*l/24)",
    "dow_sin": "sin(2*pi*d/7), d = UTC weekday, Monday = 0",
    "dow_cos": "cos(2*pi*d/7)",
    "day_of_month": "(UTC day of month - 1) / 30",
    "log_minutes_since": (
        "history only: log1p(max(ts_now - ts_event, 0) / 60), minutes from the event to the "
        "attempt being scored"
    ),
    "same_merchant": (
        "history only: 1.0 if the event's merchant_id is the scored attempt's, else 0.0"
    ),
    "same_payment": (
        "history only: 1.0 if the event's payment_id is the scored attempt's (an earlier "
        "attempt of the same payment), else 0.0; 0.0 when the scored attempt has no payment_id"
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under `root` but the manifest: relative POSIX path -> sha256 and size."""
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    }


def versions() -> dict[str, str]:
    import onnxconverter_common
    import onnxscript

    return {
        "issuer_seq": issuer_seq.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxconverter_common": onnxconverter_common.__version__,
        "numpy": np.__version__,
    }


def feature_schema(
    inputs: list[TensorSpec], outputs: list[TensorSpec], vocab: dict[str, dict[str, int]]
) -> dict[str, Any]:
    missing = [f for f in (*F.NUMERIC, *F.RELATIVE) if f not in NUMERIC_TRANSFORMS]
    if missing:
        # A new feature must be described for the scorers that build it from raw events.
        raise IssuerSeqError(f"manifest.NUMERIC_TRANSFORMS does not describe {missing}")
    return {
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
        "special_ids": {"PAD": F.PAD, "OOV": F.OOV, "NONE": F.NONE},
        "categorical": {
            name: {"size": F.N_SPECIAL + len(vocab[name]), "vocab": vocab[name]}
            for name in F.CATEGORICAL
        },
        "hidden_on_current": sorted(F.OUTCOME_FEATURES),
        "numeric": {f: NUMERIC_TRANSFORMS[f] for f in F.NUMERIC},
        "relative": {f: NUMERIC_TRANSFORMS[f] for f in F.RELATIVE},
        "conventions": [
            "categorical values map through `vocab`; unknown values -> OOV (1), absent "
            "(null advice code) -> NONE (2), empty history slot -> PAD (0)",
            "cur_<f> for the outcome features in `hidden_on_current` is always NONE (2)",
            "histories are right-aligned: the most recent event last, padding on the left; "
            "padded slots are 0 in every input; <stream>_length counts the real events",
            "a history event is strictly earlier than ts - lag_s (whole UTC seconds)",
            "decline_response_code / decline_advice_code: the decline a retry is considered "
            "for (ids of response_code / advice_code); they feed p_retry only",
        ],
    }


def json_safe(value: Any) -> Any:
    """NaN and infinities (an AUROC on one class) as null: strict JSON for every reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the checksums of the files now in `root`, write manifest.json last, return it."""
    manifest = json_safe(manifest | {"files": file_hashes(root)})
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return manifest


def verify_bundle(root: Path) -> list[str]:
    """Problems found re-hashing a bundle against its manifest (empty: intact)."""
    manifest = json.loads((root / MANIFEST).read_text())
    problems = []
    listed = manifest["files"]
    for rel, entry in listed.items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256(p) != entry["sha256"]:
            problems.append(f"{rel}: sha256 differs")
    extra = set(file_hashes(root)) - set(listed)
    problems += [f"{rel}: not in the manifest" for rel in sorted(extra)]
    return problems
