"""Validation rows of the run's log, as the graph's numpy feeds (and the approval labels).

The store is rebuilt with the run's own vocabularies and store settings, so the time split
gives the same validation rows the run was calibrated on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import VAL
from issuer_seq.errors import IssuerSeqError
from issuer_seq.export.signature import FUSED
from issuer_seq.schema import load_log
from issuer_seq.train.trained_run import TrainedRun

Feeds = dict[str, np.ndarray]


@dataclass
class ValidationData:
    store: DeviceStore
    names: list[str]  # the graph's inputs, in order
    rows: np.ndarray  # (N,) validation rows used, in time order
    full_rows: np.ndarray  # rows of `rows` whose windows (every stream) are all full

    def feeds(self, rows: np.ndarray) -> tuple[Feeds, np.ndarray]:
        """The inputs of `rows` and their `approved` labels (B,)."""
        batch = self.store.gather(torch.from_numpy(np.asarray(rows, dtype=np.int64)))
        # gather also returns labels; only the network's inputs go into the graph
        feeds = {n: batch[n].numpy() for n in self.names}
        return feeds, batch["approved"].numpy()

    def batches(self, batch_size: int) -> Iterator[tuple[Feeds, np.ndarray]]:
        for start in range(0, len(self.rows), batch_size):
            yield self.feeds(self.rows[start : start + batch_size])


def load_validation(
    run: TrainedRun, data_dir: str | None, max_rows: int, seed: int
) -> ValidationData:
    """Rebuild the run's store from `data_dir` (default: the run's own) and pick rows."""
    source = Path(data_dir or run.data_dir)
    if not source.exists():
        raise IssuerSeqError(
            f"export checks the model on its validation data, but {source} (the training "
            "log) does not exist; pass data_dir=... pointing at that log"
        )
    config = run.store_config
    store = run.build_store(load_log(source))  # the fused aggregates too, when it reads them
    rows = store.rows(VAL)
    if len(rows) < 2:
        raise IssuerSeqError(f"{source} has {len(rows)} validation rows: too few to check export")
    if len(rows) > max_rows:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
    full = np.logical_and.reduce([store.index(s).length[rows] >= k for s, k in config.ks.items()])
    names = list(run.spec["inputs"]) + ([FUSED] if run.net.n_fused else [])
    return ValidationData(DeviceStore(store), names, rows, rows[full])
