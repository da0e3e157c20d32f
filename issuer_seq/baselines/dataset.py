"""Frames the baselines learn from: approval examples, retry examples, time splits.

Features are built once over the whole log (histories reach back across split boundaries,
as in production and as in the transformer's store) and only then split by time, with the
store's own `time_split`, so every model is scored on exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from issuer_seq.baselines.protocol import LABEL, TXN_ID, WEIGHT
from issuer_seq.data.store import TEST, TRAIN, VAL, retry_labels, time_split
from issuer_seq.delays import DEFAULT_GRID, grid_seconds
from issuer_seq.rules import causes
from issuer_seq.schema import APPROVED_CODE

SPLITS: tuple[tuple[str, int], ...] = (("train", TRAIN), ("val", VAL), ("test", TEST))

#: the decline a retry model is asked about (known when the retry is decided)
DECLINE_COLUMNS: tuple[str, ...] = ("decline_response_code", "decline_advice_code", "decline_cause")
DELAY_S = "delay_s"
DELAY_BUCKET = "delay_bucket"


def epoch_us(log_frame: pd.DataFrame) -> np.ndarray:
    return log_frame["ts"].astype("int64").to_numpy()  # datetime64[us, UTC] -> microseconds


def split_of(
    log_frame: pd.DataFrame, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
) -> np.ndarray:
    """(N,) int8 TRAIN / VAL / TEST per row, exactly as the transformer's store splits."""
    split, _, _ = time_split(epoch_us(log_frame) // 1_000_000, fractions)
    return split


def approval_frame(log_frame: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Features of every attempt plus its label and id."""
    out = features.copy()
    out[LABEL] = (log_frame["response_code"].to_numpy(dtype=object) == APPROVED_CODE).astype(
        np.float64
    )
    out[TXN_ID] = log_frame["txn_id"].to_numpy()
    return out


def by_split(frame: pd.DataFrame, split: np.ndarray) -> dict[str, pd.DataFrame]:
    """{'train': ..., 'val': ..., 'test': ...}, each keeping the log's row numbers as index."""
    return {name: frame.loc[split == code] for name, code in SPLITS}


def decline_frame(
    log_frame: pd.DataFrame, features: pd.DataFrame, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """Retry-model inputs of attempts `rows` (default: every decline), without a delay.

    The declined attempt's own history features (strictly before it) plus the decline itself:
    its response code, advice code and cause, which are known when a retry is decided.
    """
    code = log_frame["response_code"].to_numpy(dtype=object)
    if rows is None:
        rows = np.flatnonzero(code != APPROVED_CODE)
    sub = log_frame.iloc[rows]
    out = features.iloc[rows].copy()
    out["decline_response_code"] = sub["response_code"].astype("string").to_numpy()
    out["decline_advice_code"] = sub["advice_code"].astype("string").to_numpy()
    out["decline_cause"] = causes(sub["response_code"].to_numpy(str), sub["network"].to_numpy(str))
    for c in DECLINE_COLUMNS:
        out[c] = out[c].astype("string").astype("category")
    out[TXN_ID] = sub["txn_id"].to_numpy()
    return out


def with_delay(frame: pd.DataFrame, delay_s: float, bucket: int) -> pd.DataFrame:
    """A copy of a decline frame asking about a retry after `delay_s` (grid bucket `bucket`)."""
    out = frame.copy()
    out[DELAY_S] = float(delay_s)
    out[DELAY_BUCKET] = float(bucket)
    return out


def retry_frame(
    log_frame: pd.DataFrame, features: pd.DataFrame, grid: Sequence[str] = DEFAULT_GRID
) -> pd.DataFrame:
    """One row per observed retry on the grid: the decline's inputs, the delay, the outcome.

    Labels are the store's (`data.store.retry_labels`): a declined attempt whose payment has
    a next attempt at least one grid step later; LABEL is whether that retry was approved,
    WEIGHT is 1 / the logging policy's propensity of the retry (1 without one). The index
    is the decline's row number in the log (so `split[frame.index]` is the decline's split).
    """
    grid_s = grid_seconds(grid)
    t_us = epoch_us(log_frame)
    bucket, success, weight = retry_labels(log_frame, t_us, grid_s)
    rows = np.flatnonzero(bucket >= 0)
    out = decline_frame(log_frame, features, rows)
    nxt = next_attempt(log_frame)[rows]
    out[DELAY_S] = (t_us[nxt] - t_us[rows]) / 1e6
    out[DELAY_BUCKET] = bucket[rows].astype(np.float64)
    out[LABEL] = success[rows].astype(np.float64)
    out[WEIGHT] = weight[rows].astype(np.float64)
    return out


def next_attempt(log_frame: pd.DataFrame) -> np.ndarray:
    """(N,) row of the same payment's next attempt (`attempt + 1`), -1 when there is none."""
    payment = pd.factorize(log_frame["payment_id"])[0]
    attempt = log_frame["attempt"].to_numpy(np.int64)
    order = np.lexsort((attempt, payment))
    nxt = np.full(len(log_frame), -1, dtype=np.int64)
    same = (payment[order][1:] == payment[order][:-1]) & (
        attempt[order][1:] == attempt[order][:-1] + 1
    )
    nxt[order[:-1][same]] = order[1:][same]
    return nxt
