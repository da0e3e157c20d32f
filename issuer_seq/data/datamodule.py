"""The Lightning DataModule: split rows in, row-tensor batches out.

Gathering the named inputs happens in the LightningModule (`on_after_batch_transfer`) on the
device where the store lives, so loaders only hand out (B,) row tensors. Under DDP each
process takes its own shard of the rows (Lightning's sampler injection does not apply to
batch samplers).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from issuer_seq.data.batches import row_loader
from issuer_seq.data.store import TEST, TRAIN, VAL, EventStore


class IssuerSeqDataModule(pl.LightningDataModule):
    def __init__(
        self,
        store: EventStore,
        batch_size: int = 512,
        eval_batch_size: int = 2048,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.store = store
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.split_rows = {
            TRAIN: _subsample(store.rows(TRAIN), max_train_examples, rng),
            VAL: _subsample(store.rows(VAL), max_eval_examples, rng),
            TEST: _subsample(store.rows(TEST), max_eval_examples, rng),
        }

    def _shard(self, rows: np.ndarray) -> np.ndarray:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return rows
        return rows[trainer.global_rank :: trainer.world_size]

    def train_dataloader(self) -> torch.utils.data.DataLoader[torch.Tensor]:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        rows = self._shard(self.split_rows[TRAIN])
        return row_loader(rows, self.batch_size, shuffle=True, seed=self.seed + epoch)

    def val_dataloader(self) -> torch.utils.data.DataLoader[torch.Tensor]:
        return row_loader(self._shard(self.split_rows[VAL]), self.eval_batch_size, shuffle=False)


def _subsample(rows: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` rows, drawn at random but kept in time order."""
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(rng.choice(rows, size=limit, replace=False))
