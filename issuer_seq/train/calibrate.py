"""Post-hoc temperature scaling, fitted on the validation split and stored in the network."""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import Tensor

from issuer_seq.data.batches import DeviceStore
from issuer_seq.model.network import IssuerSeqNet


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


@torch.no_grad()
def collect_logits(
    net: IssuerSeqNet, store: DeviceStore, rows: Tensor, batch_size: int = 4096
) -> dict[str, Tensor]:
    """Uncalibrated logits and labels of `rows`, in eval mode."""
    was_training = net.training
    net.eval()
    parts: dict[str, list[Tensor]] = {
        k: [] for k in ("approval", "approved", "retry", "success", "weight")
    }
    for start in range(0, len(rows), batch_size):
        batch = store.gather(rows[start : start + batch_size])
        approval, retry = net.logits(batch)
        observed = batch["retry_bucket"] >= 0
        parts["approval"].append(approval.float().cpu())
        parts["approved"].append(batch["approved"].cpu())
        idx = batch["retry_bucket"].clamp(min=0)[:, None]
        parts["retry"].append(retry.gather(1, idx).squeeze(1)[observed].float().cpu())
        parts["success"].append(batch["retry_success"][observed].cpu())
        parts["weight"].append(batch["retry_weight"][observed].cpu())
    net.train(was_training)
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}


def calibrate(net: IssuerSeqNet, store: DeviceStore, val_rows: Tensor) -> dict[str, float]:
    """Fit both temperatures on validation rows and write them into the network's buffers."""
    out = collect_logits(net, store, val_rows)
    t_approval = fit_temperature(out["approval"], out["approved"])
    t_retry = fit_temperature(out["retry"], out["success"])
    net.approval_temperature.fill_(t_approval)
    net.retry_temperature.fill_(t_retry)
    return {"approval_temperature": t_approval, "retry_temperature": t_retry}
