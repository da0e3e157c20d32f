"""The columnar event store: a validated log as flat, typed arrays, with labels and splits.

Built once per log: each event's categorical ids and numeric features (features.py), its
labels, the time split it belongs to, and a history index per stream (features.STREAMS: the
card, the issuer, the route, the card at the current merchant). Everything is (N,) arrays in time
order, so examples are just row numbers and batches gather from the arrays (numpy here;
torch tensors on any device in batches.py).

Labels (from the future, never inputs):
- `approved`: the attempt's response code is "00".
- for a declined attempt followed by a retry of the same payment (attempt + 1): the delay
  bucket of the retry (nearest grid point at or below the delay; retries sooner than the
  first grid point, such as an immediate 3-D Secure retry, are not on the grid and get no
  retry label), whether it was approved, and the logged policy's propensity when the log
  has a `policy_propensity` column (else 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq import features as F
from issuer_seq.data.index import HistoryIndex, build_history_index
from issuer_seq.delays import DEFAULT_GRID, bucket_of, grid_seconds
from issuer_seq.errors import IssuerSeqError
from issuer_seq.schema import APPROVED_CODE, ValidatedLog

log = logging.getLogger(__name__)

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class StoreConfig:
    k_card: int = 32  # as conf/data/default.yaml
    k_issuer: int = 32
    k_route: int = 32
    k_card_merchant: int = 8
    lag_s: int = 0
    split: tuple[float, float, float] = (0.70, 0.15, 0.15)
    delay_grid: tuple[str, ...] = DEFAULT_GRID

    def k(self, stream: str) -> int:
        """The history length of a stream of features.STREAMS."""
        return int(getattr(self, F.HISTORY_DIMS[stream]))

    @property
    def ks(self) -> dict[str, int]:
        return {s: self.k(s) for s in F.STREAMS}

    @property
    def history(self) -> dict[str, int]:
        """The history lengths by their names (`k_card`, ...): a manifest's `history`."""
        return {dim: self.k(s) for s, dim in F.HISTORY_DIMS.items()}

    def to_json(self) -> dict[str, Any]:
        """As a trained run's model_spec.json keeps it (`store`)."""
        return self.history | {
            "lag_s": self.lag_s,
            "split": list(self.split),
            "delay_grid": list(self.delay_grid),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreConfig:
        """From `to_json`'s mapping or a Hydra `data` config (other keys are ignored)."""
        missing = [dim for dim in F.HISTORY_DIMS.values() if dim not in data]
        if missing:
            raise IssuerSeqError(
                f"history lengths {', '.join(missing)} missing: this run predates the "
                f"{', '.join(F.STREAMS)} streams; train it again"
            )
        return cls(
            **{dim: int(data[dim]) for dim in F.HISTORY_DIMS.values()},
            lag_s=int(data["lag_s"]),
            split=tuple(float(x) for x in data["split"]),  # type: ignore[arg-type]
            delay_grid=tuple(str(g) for g in data["delay_grid"]),
        )


@dataclass
class EventStore:
    t: np.ndarray  # (N,) int64 epoch seconds
    card: np.ndarray  # (N,) int64 codes
    issuer: np.ndarray  # (N,) int64 codes
    merchant: np.ndarray  # (N,) int64 codes
    payment: np.ndarray  # (N,) int64 codes of payment_id
    cat: dict[str, np.ndarray]  # name -> (N,) int64 ids
    num: dict[str, np.ndarray]  # name -> (N,) float32
    approved: np.ndarray  # (N,) float32
    retry_bucket: np.ndarray  # (N,) int64 grid index, -1 without a retry label
    retry_success: np.ndarray  # (N,) float32
    retry_weight: np.ndarray  # (N,) float32: 1 / propensity of the logged retry, 0 if none
    split: np.ndarray  # (N,) int8
    split_bounds: tuple[str, str]  # ISO timestamps where val and test begin
    card_index: HistoryIndex
    issuer_index: HistoryIndex
    route_index: HistoryIndex
    card_merchant_index: HistoryIndex
    vocab: F.Vocab
    config: StoreConfig
    txn_id: np.ndarray  # (N,) as in the log
    extra: dict[str, Any] = field(default_factory=dict)
    # (N, F) float32: the trees' aggregates fed to the network (baselines/fused.py), or None
    fused: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.t)

    def rows(self, split: int) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def index(self, stream: str) -> HistoryIndex:
        """The history index of a stream of features.STREAMS."""
        return getattr(self, f"{stream}_index")  # type: ignore[no-any-return]


def time_split(t: np.ndarray, fractions: tuple[float, float, float]) -> tuple[np.ndarray, int, int]:
    """Split by time at the quantiles of the events' timestamps: (split (N,), t_val, t_test).

    Boundaries are timestamps, so events at the same second land in the same split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise IssuerSeqError(
            f"split fractions must be three non-negative numbers summing to 1: {fractions}"
        )
    t_sorted = np.sort(t)
    n = len(t)
    t_val = int(t_sorted[min(int(n * fractions[0]), n - 1)])
    t_test = int(t_sorted[min(int(n * (fractions[0] + fractions[1])), n - 1)])
    split = np.where(t < t_val, TRAIN, np.where(t < t_test, VAL, TEST)).astype(np.int8)
    return split, t_val, t_test


def retry_labels(
    frame: pd.DataFrame, t_us: np.ndarray, grid_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (bucket of the next attempt's delay or -1, its success, its 1/propensity).

    t_us: (N,) int64 epoch microseconds, so that a retry 299.5 s later is below 5 minutes.
    """
    n = len(frame)
    payment = pd.factorize(frame["payment_id"])[0]
    attempt = frame["attempt"].to_numpy(np.int64)
    order = np.lexsort((attempt, payment))
    nxt = np.full(n, -1, dtype=np.int64)
    same = (payment[order][1:] == payment[order][:-1]) & (
        attempt[order][1:] == attempt[order][:-1] + 1
    )
    nxt[order[:-1][same]] = order[1:][same]
    declined = frame["response_code"].to_numpy(dtype=object) != APPROVED_CODE
    has = declined & (nxt >= 0)
    bucket = np.full(n, -1, dtype=np.int64)
    delay_s = (t_us[nxt[has]] - t_us[has]) / 1e6
    bucket[has] = bucket_of(delay_s, grid_s)
    success = np.zeros(n, dtype=np.float32)
    next_ok = frame["response_code"].to_numpy(dtype=object)[nxt[has]] == APPROVED_CODE
    success[has] = np.where(bucket[has] >= 0, next_ok, False)
    weight = np.zeros(n, dtype=np.float32)
    if "policy_propensity" in frame.columns:
        prop = frame["policy_propensity"].to_numpy(np.float64)[nxt[has]]
        prop = np.where(np.isfinite(prop) & (prop > 0), prop, 1.0)
    else:
        prop = np.ones(int(has.sum()))
    weight[has] = 1.0 / prop
    weight[bucket < 0] = 0.0
    return bucket, success, weight


def build_store(
    vlog: ValidatedLog, config: StoreConfig = StoreConfig(), vocab: F.Vocab | None = None
) -> EventStore:
    """Encode a validated log (time-sorted) into an EventStore.

    `vocab`, when given (a trained model's), is used as is; otherwise it is fitted on the
    training split.
    """
    frame = vlog.frame
    t_us = frame["ts"].astype("int64").to_numpy()  # datetime64[us, UTC] -> microseconds
    t = t_us // 1_000_000
    split, t_val, t_test = time_split(t, config.split)
    raw = F.raw_categorical(frame)
    if vocab is None:
        vocab = F.fit_vocab(raw, np.flatnonzero(split == TRAIN))
    cat = {name: F.encode_series(vocab, name, raw[name]) for name in F.CATEGORICAL}
    offset = F.utc_offset_s(frame["issuer_country"].to_numpy())
    num = F.numeric(frame["amount"].to_numpy(), frame["attempt"].to_numpy(), t, offset)
    groups = {
        s: cat["route"] if s == F.ROUTE_STREAM else _group_codes(frame, columns)
        for s, columns in F.STREAM_KEYS.items()
    }
    merchant = pd.factorize(frame["merchant_id"])[0].astype(np.int64)
    payment = pd.factorize(frame["payment_id"])[0].astype(np.int64)
    grid_s = grid_seconds(config.delay_grid)
    bucket, success, weight = retry_labels(frame, t_us, grid_s)
    extra_cols = [c for c in ("policy_propensity",) if c in frame.columns]
    return EventStore(
        t=t,
        card=groups["card"],
        issuer=groups["issuer"],
        merchant=merchant,
        payment=payment,
        cat=cat,
        num=num,
        approved=(frame["response_code"].to_numpy(dtype=object) == APPROVED_CODE).astype(
            np.float32
        ),
        retry_bucket=bucket,
        retry_success=success,
        retry_weight=weight,
        split=split,
        split_bounds=(_iso(t_val), _iso(t_test)),
        **{
            f"{s}_index": build_history_index(g, t, config.k(s), config.lag_s)
            for s, g in groups.items()
        },
        vocab=vocab,
        config=config,
        txn_id=frame["txn_id"].to_numpy(),
        extra={"source": vlog.source, "extra_columns": extra_cols},
    )


def _group_codes(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """(N,) int64 codes of the rows' values of `columns` (one code per distinct tuple)."""
    code = np.zeros(len(frame), dtype=np.int64)
    for c in columns:
        values, uniques = pd.factorize(frame[c])
        code = code * len(uniques) + values
    return pd.factorize(code)[0].astype(np.int64) if len(columns) > 1 else code


def _iso(t: int) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").isoformat()


def summarize_store(store: EventStore) -> dict[str, Any]:
    """Examples per split, history fill, label rates: what a user checks before training."""
    out: dict[str, Any] = {
        "examples": int(len(store)),
        "split_starts": {"val": store.split_bounds[0], "test": store.split_bounds[1]},
        **store.config.history,
        "lag_s": store.config.lag_s,
    }
    for s, name in enumerate(SPLIT_NAMES):
        rows = store.rows(s)
        declined = store.approved[rows] == 0
        labelled = store.retry_bucket[rows] >= 0
        if len(rows) == 0:
            out[name] = {"examples": 0}
            continue
        out[name] = {
            "examples": int(len(rows)),
            "approval_rate": _r(store.approved[rows].mean()),
            **{
                f"{s}_history_fill": _r((store.index(s).length[rows] / k).mean())
                for s, k in store.config.ks.items()
            },
            "empty_card_history": _r((store.card_index.length[rows] == 0).mean()),
            "declines": int(declined.sum()),
            "retry_labels": int(labelled.sum()),
            "retry_success_rate": _r(store.retry_success[rows][labelled].mean())
            if labelled.any()
            else None,
        }
    return out


def _r(x: float) -> float:
    return round(float(x), 4)
