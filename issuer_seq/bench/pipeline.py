"""Training input pipeline benchmark: gathering from the store vs pre-built tensors.

Both arms train the same network with the same Lightning loop for the same number of steps;
one gathers each batch from the columnar store on the device (the real pipeline), the other
is fed batches gathered beforehand and kept in memory (the upper bound a pipeline can reach).
The ratio of their samples/s is the pipeline's efficiency (target: at least 0.9, docs/targets.md).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from issuer_seq.data.batches import DeviceStore, row_loader
from issuer_seq.data.store import TRAIN, EventStore
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.train.module import IssuerSeqModule


class _Timer(pl.Callback):
    """Wall time of the training batches after `warmup` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.steps += 1

    def seconds(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - self.start


def _fit(
    module: IssuerSeqModule,
    loader: Any,
    steps: int,
    warmup: int,
    accelerator: str,
    precision: str,
) -> float:
    timer = _Timer(warmup)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=steps + warmup,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.steps / timer.seconds()


def bench_pipeline(
    store: EventStore,
    net_kwargs: Mapping[str, Any],
    steps: int = 30,
    warmup: int = 5,
    batch_size: int = 512,
    accelerator: str = "cpu",
    precision: str = "32-true",
    seed: int = 0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Samples/s of the real pipeline and of pre-built in-memory batches, and their ratio."""
    torch.manual_seed(seed)
    device = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
    net = IssuerSeqNet(store.vocab.sizes(), len(store.config.delay_grid), **net_kwargs)
    rows = store.rows(TRAIN)
    n_batches = steps + warmup
    rng = np.random.default_rng(seed)
    rows = rng.choice(rows, size=min(len(rows), n_batches * batch_size), replace=False)

    def module() -> IssuerSeqModule:
        return IssuerSeqModule(
            copy.deepcopy(net),
            DeviceStore(store),
            optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
            warmup_steps=1,
        )

    gatherer = DeviceStore(store, device)
    prebuilt: list[dict[str, Tensor]] = [
        gatherer.gather(torch.from_numpy(rows[i : i + batch_size]))
        for i in range(0, len(rows), batch_size)
    ]
    # Alternate the arms and take medians: on a shared machine the speed drifts over time.
    real_runs, memory_runs = [], []
    for _ in range(rounds):
        loader = row_loader(rows, batch_size, shuffle=True, seed=seed)
        real_runs.append(_fit(module(), loader, steps, warmup, accelerator, precision))
        memory = torch.utils.data.DataLoader(prebuilt, batch_size=None)  # type: ignore[arg-type]
        memory_runs.append(_fit(module(), memory, steps, warmup, accelerator, precision))
    real, memory_rate = float(np.median(real_runs)), float(np.median(memory_runs))
    return {
        "batch_size": batch_size,
        "steps": steps,
        "device": device,
        "rounds": rounds,
        "real_pipeline_samples_per_s": round(real * batch_size, 1),
        "prebuilt_tensors_samples_per_s": round(memory_rate * batch_size, 1),
        "ratio": round(real / memory_rate, 3),
    }
