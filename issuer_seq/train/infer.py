"""Batched inference over rows of the store: the one loop behind calibration, the training
run's split metrics and the evaluation's scores."""

from __future__ import annotations

import torch
from torch import Tensor

from issuer_seq.data.batches import DeviceStore
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.progress import bar

OUTPUTS = ("approval", "retry", "p_approve", "p_retry")


@torch.no_grad()
def infer(
    net: IssuerSeqNet,
    store: DeviceStore,
    rows: Tensor,
    batch_size: int = 4096,
    progress: str | None = None,
) -> dict[str, Tensor]:
    """Per row of `rows` (N,), in eval mode, on the CPU (`progress`: a bar's label):

    - `approval` (N,), `retry` (N, G): the uncalibrated logits (what calibration fits);
    - `p_approve` (N,), `p_retry` (N, G): the calibrated probabilities, exactly as the
      network's forward computes them (the retry inputs being each row's own outcome);
    - `approved`, `retry_bucket`, `retry_success`, `retry_weight` (N,): the labels.
    """
    was_training = net.training
    net.eval()
    parts: dict[str, list[Tensor]] = {k: [] for k in (*OUTPUTS, *store.labels)}
    starts = range(0, len(rows), batch_size)
    for start in starts if progress is None else bar(starts, progress):
        batch = store.gather(rows[start : start + batch_size])
        approval, retry = net.logits(batch)
        # per batch, as forward() does: the same floating-point operations, the same numbers
        out = {
            "approval": approval,
            "retry": retry,
            "p_approve": net.p_approve(approval),
            "p_retry": torch.sigmoid(retry / net.retry_temperature),
        }
        for k, v in out.items():
            parts[k].append(v.float().cpu())
        for k in store.labels:
            parts[k].append(batch[k].cpu())
    net.train(was_training)
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}


def observed_retries(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """Of `infer`'s output, the rows whose retry was observed: `retry` (M,), the logit at the
    observed delay, with `success` and `weight` (M,)."""
    bucket = out["retry_bucket"]
    if len(bucket) == 0:
        return {k: torch.zeros(0) for k in ("retry", "success", "weight")}
    observed = bucket >= 0
    logit = out["retry"].gather(1, bucket.clamp(min=0)[:, None]).squeeze(1)  # (N,)
    return {
        "retry": logit[observed],
        "success": out["retry_success"][observed],
        "weight": out["retry_weight"][observed],
    }
