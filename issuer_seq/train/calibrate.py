"""Post-hoc temperature scaling, fitted on the validation split and stored in the network."""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import Tensor

from issuer_seq.data.batches import DeviceStore
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.train.infer import infer, observed_retries


def fit_temperature(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> float:
    """The T > 0 minimizing the (weighted) log loss of sigmoid(logits / T)."""
    logits, targets = logits.double().detach(), targets.double().detach()
    if len(logits) == 0:
        return 1.0
    w = torch.ones_like(logits) if weights is None else weights.double().detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        per = tF.binary_cross_entropy_with_logits(logits / log_t.exp(), targets, reduction="none")
        loss = (per * w).sum() / w.sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibrate(net: IssuerSeqNet, store: DeviceStore, val_rows: Tensor) -> dict[str, float]:
    """Fit both temperatures on validation rows and write them into the network's buffers."""
    out = infer(net, store, val_rows)
    t_approval = fit_temperature(out["approval"], out["approved"])
    retries = observed_retries(out)
    t_retry = fit_temperature(retries["retry"], retries["success"])
    net.approval_temperature.fill_(t_approval)
    net.retry_temperature.fill_(t_retry)
    return {"approval_temperature": t_approval, "retry_temperature": t_retry}
