"""The LightningModule: losses, metrics and optimization around the plain network.

Batches arrive as row tensors; `on_after_batch_transfer` gathers the named inputs on the
device where the store lives (the GPU, when training there).

Losses: BCE on approval, plus a masked BCE of the retry head at the observed delay only
(weighted by 1 / the logged policy's propensity when `retry_propensity_weighting`), plus,
with `cause_loss_weight` > 0, the cross-entropy of the attempt's outcome cause (approved,
funds, generic, technical, ...) predicted from the heads' input by a linear head that only
training has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as tF
import torchmetrics
from torch import Tensor, nn

from issuer_seq.data.batches import DeviceStore
from issuer_seq.model.network import IssuerSeqNet

OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]


def approval_metrics(prefix: str, sync: bool = True) -> torchmetrics.MetricCollection:
    """AUROC, AP of the decline class, log loss, Brier, ECE (15 bins) of p_approve.

    `sync=False` computes on this process's data alone (after DDP training, on rank 0).
    """
    kw = {"sync_on_compute": sync}
    return torchmetrics.MetricCollection(
        {
            "auroc": torchmetrics.classification.BinaryAUROC(**kw),
            "ap_decline": DeclineAveragePrecision(**kw),
            "logloss": LogLoss(**kw),
            "brier": torchmetrics.MeanSquaredError(**kw),
            "ece": torchmetrics.classification.BinaryCalibrationError(n_bins=15, norm="l1", **kw),
        },
        prefix=prefix,
    )


class DeclineAveragePrecision(torchmetrics.classification.BinaryAveragePrecision):
    """Average precision with declines as the positive class (the rare, costly one)."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(1 - preds, 1 - target.long())


class LogLoss(torchmetrics.Metric):
    """Mean binary cross-entropy of probabilities (clipped like scikit-learn)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        p = preds.double().clamp(1e-15, 1 - 1e-15)
        t = target.double()
        self.total += -(t * p.log() + (1 - t) * (1 - p).log()).sum()
        self.count += t.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class IssuerSeqModule(pl.LightningModule):
    def __init__(
        self,
        net: IssuerSeqNet,
        store: DeviceStore,
        optimizer: OptimizerFactory,
        warmup_steps: int = 200,
        retry_loss_weight: float = 0.25,
        retry_propensity_weighting: bool = True,
        max_retry_weight: float = 20.0,
        cause_loss_weight: float = 0.0,
        latest_answer_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.store = store
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.retry_loss_weight = retry_loss_weight
        self.retry_propensity_weighting = retry_propensity_weighting
        self.max_retry_weight = max_retry_weight
        self.cause_loss_weight = cause_loss_weight
        if latest_answer_lr_scale <= 0:
            raise ValueError(f"latest_answer_lr_scale must be > 0, got {latest_answer_lr_scale}")
        self.latest_answer_lr_scale = latest_answer_lr_scale
        self._joint: Tensor | None = None
        if cause_loss_weight > 0:
            # the outcome's cause from what both heads read (their input, kept by a hook):
            # a richer label than approved or not, on every example; not part of the network
            joint = net.approval_head[0].in_features
            self.cause_head = nn.Linear(joint, net.causes.shape[0])
            self._hook = net.approval_head.register_forward_pre_hook(self._keep_joint)
        self.val_metrics = approval_metrics("val/")
        self.val_retry_metrics = torchmetrics.MetricCollection(
            {"logloss": LogLoss(), "auroc": torchmetrics.classification.BinaryAUROC()},
            prefix="val/retry_",
        )
        self._retry_seen = False

    # -- data -----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.store.to(self.device)

    def on_validation_start(self) -> None:
        self.store.to(self.device)

    def on_fit_end(self) -> None:
        if self.cause_loss_weight > 0:
            self._hook.remove()  # the network leaves training as it came

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Tensor]:
        if isinstance(batch, dict):  # already gathered (pre-built tensors)
            return batch
        return self.store.gather(batch)

    # -- losses ---------------------------------------------------------------------------
    def _keep_joint(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._joint = args[0]

    def losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        approval_logit, retry_logits = self.net.logits(batch)
        approval_loss = tF.binary_cross_entropy_with_logits(approval_logit, batch["approved"])
        bucket = batch["retry_bucket"]
        observed = bucket >= 0
        retry_logit = retry_logits.gather(1, bucket.clamp(min=0)[:, None]).squeeze(1)  # (B,)
        weight = observed.float()
        if self.retry_propensity_weighting:
            weight = weight * batch["retry_weight"].clamp(max=self.max_retry_weight)
        per = tF.binary_cross_entropy_with_logits(
            retry_logit, batch["retry_success"], reduction="none"
        )
        retry_loss = (per * weight).sum() / weight.sum().clamp(min=1.0)
        return approval_loss, retry_loss, approval_logit, retry_logit, observed

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        approval_loss, retry_loss, *_ = self.losses(batch)
        loss = approval_loss + self.retry_loss_weight * retry_loss
        logged = {"train/approval_loss": approval_loss, "train/retry_loss": retry_loss}
        if self.cause_loss_weight > 0:
            assert self._joint is not None
            cause_loss = tF.cross_entropy(self.cause_head(self._joint), batch["cause"])
            loss = loss + self.cause_loss_weight * cause_loss
            logged["train/cause_loss"] = cause_loss
            self._joint = None
        self.log_dict(
            {"train/loss": loss, **logged}, prog_bar=True, batch_size=len(batch["approved"])
        )
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        approval_loss, _, approval_logit, retry_logit, observed = self.losses(batch)
        p = self.net.p_approve(approval_logit)
        self.val_metrics.update(p, batch["approved"].long())
        if observed.any():
            pr = torch.sigmoid(retry_logit[observed] / self.net.retry_temperature)
            self.val_retry_metrics.update(pr, batch["retry_success"][observed].long())
            self._retry_seen = True
        self.log("val/loss", approval_loss, batch_size=len(p), prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        if self._retry_seen:
            values.update(self.val_retry_metrics.compute())
        self.val_retry_metrics.reset()
        self._retry_seen = False
        self.log_dict(values, prog_bar=True, sync_dist=True)

    # -- optimization ---------------------------------------------------------------------
    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over every parameter, the network's direct path from the card's
        latest answer (IssuerSeqNet.approval_logit) in a group of its own at
        `latest_answer_lr_scale` x the rate: Adam moves a weight by about the rate per step,
        and the few hundred steps of a small log would move the logit of an answer seen a few
        dozen times by less than the few units it needs."""
        latest = list(self.net.latest_answer.parameters())
        rest = [q for q in self.parameters() if all(q is not w for w in latest)]
        optimizer = self.optimizer_factory([{"params": rest}, {"params": latest}])
        optimizer.param_groups[1]["lr"] *= self.latest_answer_lr_scale
        return optimizer

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer()
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.warmup_steps, max(total // 10, 1))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
