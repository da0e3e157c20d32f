"""Post-hoc calibration, fitted on the validation split and stored in the network: Platt
scaling of the approval logit (a temperature and a shift), temperature scaling of the retry
curve's."""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import Tensor

from issuer_seq.data.batches import DeviceStore
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.train.infer import infer, observed_retries


def fit_scaling(logits: Tensor, targets: Tensor, shift: bool = False) -> tuple[float, float]:
    """The T > 0 (and, with `shift`, the b) minimizing the log loss of sigmoid(logits / T + b);
    b is 0 without `shift`."""
    logits, targets = logits.double().detach(), targets.double().detach()
    if len(logits) == 0:
        return 1.0, 0.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=shift)
    opt = torch.optim.LBFGS(
        [log_t, b] if shift else [log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        z = logits / log_t.exp() + b
        loss = tF.binary_cross_entropy_with_logits(z, targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0)), float(b.detach())


def fit_temperature(logits: Tensor, targets: Tensor) -> float:
    """The T > 0 minimizing the log loss of sigmoid(logits / T)."""
    return fit_scaling(logits, targets)[0]


def calibrate(net: IssuerSeqNet, store: DeviceStore, val_rows: Tensor) -> dict[str, float]:
    """Fit the calibration on validation rows and write it into the network's buffers.

    The approval's shift follows the level of the log's most recent days before the test
    split (or before serving), where approval may have moved since the training split: a
    pay cycle, a season, days of the month the training split never saw. The retry curve,
    fitted on the observed retries alone (a few percent of the rows), keeps one parameter."""
    out = infer(net, store, val_rows)
    t_approval, shift = fit_scaling(out["approval"], out["approved"], shift=True)
    retries = observed_retries(out)
    t_retry = fit_temperature(retries["retry"], retries["success"])
    net.approval_temperature.fill_(t_approval)
    net.approval_shift.fill_(shift)
    net.retry_temperature.fill_(t_retry)
    return {
        "approval_temperature": t_approval,
        "approval_shift": shift,
        "retry_temperature": t_retry,
    }
