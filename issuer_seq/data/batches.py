"""Batches gathered on the device from the columnar store.

`DeviceStore` holds the store's arrays as torch tensors (on the CPU or the GPU); a batch is
a LongTensor of example rows, and `gather` turns it into the network's named inputs and the
labels with a handful of index operations. There are no per-example Python objects, and on
a GPU the whole gather runs there.

Named inputs (shapes; B = batch, K = the stream's history length):
- `cur_<f>`: the current attempt, (B,), for every categorical f (int64; outcome features are
  NONE) and numeric f (float32) of features.py;
- `<s>_<f>` for each stream s of features.STREAMS (`card`, `issuer`, `route`,
  `card_merchant`): the stream's history events, (B, K), right-aligned (most recent last),
  padding 0; plus the relative features `<s>_log_minutes_since`, `<s>_same_merchant`,
  `<s>_same_payment` (B, K) float32 and `<s>_length` (B,) int64;
- `decline_response_code`, `decline_advice_code`: (B,) int64, the decline the retry head is
  asked about (for training: the row's own outcome).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from issuer_seq import features as F
from issuer_seq.data.index import HistoryIndex
from issuer_seq.data.store import EventStore
from issuer_seq.features import STREAMS


def input_names() -> list[str]:
    """Every named input of the network, in a fixed order (the ONNX graph's inputs)."""
    names = [f"cur_{f}" for f in (*F.CATEGORICAL, *F.NUMERIC)]
    for s in STREAMS:
        names += [f"{s}_{f}" for f in (*F.CATEGORICAL, *F.NUMERIC, *F.RELATIVE)]
        names.append(f"{s}_length")
    names += ["decline_response_code", "decline_advice_code"]
    return names


@dataclass
class _StreamTensors:
    order: Tensor
    end: Tensor
    length: Tensor
    k: int


class DeviceStore:
    """The store's arrays as tensors on one device, and the batch gather."""

    def __init__(self, store: EventStore, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        as_t = self._tensor
        self.t = as_t(store.t)
        self.merchant = as_t(store.merchant)
        self.payment = as_t(store.payment)
        # every event's ids and numbers as one (N, C) and one (N, F) matrix: a stream's
        # window is then one index operation per kind, not one per feature
        self.cat_matrix = as_t(np.stack([store.cat[f] for f in F.CATEGORICAL], axis=1))
        self.num_matrix = as_t(np.stack([store.num[f] for f in F.NUMERIC], axis=1))
        self.labels = {
            "approved": as_t(store.approved),
            "retry_bucket": as_t(store.retry_bucket),
            "retry_success": as_t(store.retry_success),
            "retry_weight": as_t(store.retry_weight),
        }
        self.streams = {s: self._stream(store.index(s)) for s in STREAMS}
        self.fused = None if store.fused is None else as_t(store.fused)

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _stream(self, index: HistoryIndex) -> _StreamTensors:
        return _StreamTensors(
            self._tensor(index.order), self._tensor(index.end), self._tensor(index.length), index.k
        )

    def to(self, device: torch.device | str) -> DeviceStore:
        """Move every array (once per fit: then gathering happens on that device)."""
        device = torch.device(device)
        if device == self.device:
            return self
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(device))
        for k in self.labels:
            self.labels[k] = self.labels[k].to(device)
        for s in self.streams.values():
            s.order, s.end, s.length = s.order.to(device), s.end.to(device), s.length.to(device)
        self.device = device
        return self

    def gather(
        self,
        rows: Tensor,
        windows: Mapping[str, tuple[Tensor, Tensor]] | None = None,
        streams: Sequence[str] = STREAMS,
    ) -> dict[str, Tensor]:
        """Named inputs and labels of the examples `rows` (B,) int64 on this device.

        `windows`: stream -> (end, length) (B,) replacing the rows' own windows in that stream
        (`HistoryIndex.at`): the route stream of a candidate route the rows were not sent
        through; `streams`: the streams gathered (default: all)."""
        windows = windows or {}
        rows = rows.to(self.device, non_blocking=True)
        batch: dict[str, Tensor] = {}
        own = self.cat_matrix[rows]  # (B, C)
        for i, f in enumerate(F.CATEGORICAL):
            batch[f"cur_{f}"] = (
                torch.full_like(own[:, i], F.NONE) if f in F.OUTCOME_FEATURES else own[:, i]
            )
        for f, column in zip(F.NUMERIC, self.num_matrix[rows].unbind(1), strict=True):
            batch[f"cur_{f}"] = column
        t_now = self.t[rows]
        m_now = self.merchant[rows]
        p_now = self.payment[rows]
        for s in streams:
            st = self.streams[s]
            offsets = torch.arange(-st.k, 0, device=self.device)  # (K,)
            end, length = windows.get(s, (st.end[rows], st.length[rows]))  # (B,) each
            mask = offsets[None, :] >= -length[:, None]  # (B, K)
            pos = (end[:, None] + offsets[None, :]).clamp(0, len(st.order) - 1)
            ev = torch.where(mask, st.order[pos], torch.zeros_like(pos))  # (B, K)
            cat = self.cat_matrix[ev] * mask[..., None]  # (B, K, C)
            num = self.num_matrix[ev] * mask[..., None]  # (B, K, F)
            for i, f in enumerate(F.CATEGORICAL):
                batch[f"{s}_{f}"] = cat[..., i]
            for i, f in enumerate(F.NUMERIC):
                batch[f"{s}_{f}"] = num[..., i]
            rel = F.relative_features(
                torch,
                t_now[:, None] - self.t[ev],
                self.merchant[ev],
                m_now[:, None],
                self.payment[ev],
                p_now[:, None],
            )  # (B, K, 3)
            rel = rel * mask[..., None]
            for i, f in enumerate(F.RELATIVE):
                batch[f"{s}_{f}"] = rel[..., i]
            batch[f"{s}_length"] = length
        batch["decline_response_code"] = own[:, F.CATEGORICAL.index("response_code")]
        batch["decline_advice_code"] = own[:, F.CATEGORICAL.index("advice_code")]
        batch["cause"] = own[:, F.CATEGORICAL.index("cause")]  # a label: the attempt's outcome
        if self.fused is not None:
            batch["fused"] = self.fused[rows]
        for k, v in self.labels.items():
            batch[k] = v[rows]
        return batch


class RowBatches(torch.utils.data.Dataset[Tensor]):
    """Rows of one split; indexed by a list of positions, it returns their rows at once."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> Tensor:  # type: ignore[override]
        return self.rows[positions]


def row_loader(
    rows: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0
) -> torch.utils.data.DataLoader[Tensor]:
    """A loader yielding (B,) row tensors: one indexing op per batch, no per-example collate."""
    dataset = RowBatches(rows)
    generator = torch.Generator().manual_seed(seed)
    base: torch.utils.data.Sampler[int] = (
        torch.utils.data.RandomSampler(dataset, generator=generator)
        if shuffle
        else torch.utils.data.SequentialSampler(dataset)
    )
    sampler = torch.utils.data.BatchSampler(base, batch_size=batch_size, drop_last=False)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)
