"""ONNX Runtime against PyTorch: the exported graph must give the network's probabilities.

Elementwise, |onnx - torch| <= atol + rtol * |torch| on both outputs, on the validation
rows and on every edge case (cases.py); a non-finite value fails. The worst deviation is
reported as its ratio to the tolerance (<= 1 passes), and a failure names it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.cases import Case, window_sizes
from issuer_seq.export.signature import HISTORY_DIMS, OUTPUTS, TensorSpec
from issuer_seq.export.validation import Feeds, ValidationData
from issuer_seq.model.network import IssuerSeqNet

PROVIDER = "CPUExecutionProvider"
Outputs = dict[str, np.ndarray]


@dataclass
class Deviation:
    case: str
    output: str
    index: list[int]
    onnx: float
    torch: float
    abs_diff: float
    ratio: float  # abs_diff / (atol + rtol * |torch|); inf for a non-finite value

    def describe(self) -> str:
        where = f"case {self.case!r}, {self.output}[{', '.join(map(str, self.index))}]"
        return (
            f"{where}: onnx {self.onnx:.7g} vs torch {self.torch:.7g} "
            f"(|diff| {self.abs_diff:.3g}, {self.ratio:.3g}x the tolerance)"
        )


def onnx_session(
    path: Path, provider: str = PROVIDER, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A session on exactly `provider`: ORT silently falls back, so check it is active."""
    session = ort.InferenceSession(str(path), options, providers=[provider])
    if session.get_providers()[0] != provider:
        raise IssuerSeqError(f"ONNX Runtime did not activate {provider} for {path}")
    return session


def onnx_outputs(session: ort.InferenceSession, feeds: Feeds) -> Outputs:
    values = session.run(list(OUTPUTS), feeds)
    return dict(zip(OUTPUTS, values, strict=True))


@torch.no_grad()
def torch_outputs(net: IssuerSeqNet, feeds: Feeds) -> Outputs:
    net.eval()
    p_approve, p_retry = net({k: torch.from_numpy(v) for k, v in feeds.items()})
    return {"p_approve": p_approve.numpy(), "p_retry": p_retry.numpy()}


def tolerance_ratios(got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Elementwise |got - ref| / (atol + rtol |ref|): at most 1 within the tolerance, inf
    where either value is not finite."""
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    finite = np.isfinite(r) & np.isfinite(g)
    return np.where(finite, np.abs(g - r) / (atol + rtol * np.abs(r)), np.inf)


def worst_ratio(got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> float:
    """The largest of `tolerance_ratios` (0 for empty arrays)."""
    ratios = tolerance_ratios(got, ref, rtol, atol)
    return float(ratios.max()) if ratios.size else 0.0


def worst_deviation(case: str, ref: Outputs, got: Outputs, rtol: float, atol: float) -> Deviation:
    """The element of either output furthest outside the tolerance (or closest to it)."""
    worst: Deviation | None = None
    for name in OUTPUTS:
        r = ref[name].astype(np.float64)
        g = got[name].astype(np.float64)
        if r.shape != g.shape:
            raise IssuerSeqError(
                f"ONNX output {name} has shape {g.shape} in case {case!r}, PyTorch {r.shape}"
            )
        diff = np.abs(g - r)
        ratio = tolerance_ratios(g, r, rtol, atol)
        i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        d = Deviation(
            case,
            name,
            [int(x) for x in i],
            float(g[i]),
            float(r[i]),
            float(diff[i]),
            float(ratio[i]),
        )
        if worst is None or d.ratio > worst.ratio:
            worst = d
    assert worst is not None
    return worst


def _merge(parts: list[Outputs]) -> Outputs:
    return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS}


def check_parity(
    net: IssuerSeqNet,
    session: ort.InferenceSession,
    specs: list[TensorSpec],
    data: ValidationData,
    cases: list[Case],
    rtol: float,
    atol: float,
    batch_size: int,
) -> tuple[dict[str, Any], Outputs, np.ndarray]:
    """Run both on the validation rows and the cases; raise unless every element agrees.

    Returns the report (for the manifest), the graph's validation outputs and the
    `approved` labels of those rows (for the variant decisions).
    """
    report: dict[str, Any] = {"provider": PROVIDER, "rtol": rtol, "atol": atol, "cases": {}}
    got_parts, ref_parts, labels = [], [], []
    for feeds, approved in data.batches(batch_size):
        got_parts.append(onnx_outputs(session, feeds))
        ref_parts.append(torch_outputs(net, feeds))
        labels.append(approved)
        k = window_sizes(feeds, specs)
    runs = [("validation", _merge(ref_parts), _merge(got_parts), len(data.rows), k, "")]
    for case in cases:
        ref, got = torch_outputs(net, case.feeds), onnx_outputs(session, case.feeds)
        n = len(ref["p_approve"])
        runs.append((case.name, ref, got, n, window_sizes(case.feeds, specs), case.note))
    worst: Deviation | None = None
    for name, ref, got, n, k, note in runs:
        dev = worst_deviation(name, ref, got, rtol, atol)
        report["cases"][name] = {
            "rows": n,
            "history": {HISTORY_DIMS[stream]: size for stream, size in k.items()},
            "max_abs_diff": {o: float(np.max(np.abs(got[o] - ref[o]))) for o in OUTPUTS},
            "max_ratio": dev.ratio,
        } | ({"note": note} if note else {})
        if worst is None or dev.ratio > worst.ratio:
            worst = dev
    assert worst is not None
    report["worst"] = asdict(worst)
    report["passed"] = worst.ratio <= 1.0
    if not report["passed"]:
        raise IssuerSeqError(
            f"ONNX Runtime ({PROVIDER}) disagrees with PyTorch beyond rtol={rtol}, "
            f"atol={atol}; worst deviation: {worst.describe()}"
        )
    return report, _merge(got_parts), np.concatenate(labels)


def write_sample(path: Path, net: IssuerSeqNet, feeds: Feeds) -> int:
    """Inputs (by input name) and PyTorch's outputs (p_approve, p_retry) of a few rows.

    Any host can replay them to check its runtime and provider, e.g. the fp16 graph on a GPU.
    """
    np.savez_compressed(path, **feeds, **torch_outputs(net, feeds))
    return len(feeds[next(iter(feeds))])
