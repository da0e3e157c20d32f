"""The retry delay grid: parsing, labels and bucketing of observed delays."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from issuer_seq.errors import IssuerSeqError

DEFAULT_GRID: tuple[str, ...] = ("5m", "30m", "2h", "6h", "1d", "2d", "4d", "7d")
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_delay(text: str) -> int:
    """'30m' -> 1800 seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", str(text))
    if not match:
        raise IssuerSeqError(f"bad retry delay {text!r}: use a number and s|m|h|d, e.g. '30m'")
    return int(match.group(1)) * _UNITS[match.group(2)]


def grid_seconds(grid: Sequence[str] = DEFAULT_GRID) -> np.ndarray:
    """(K,) int64 seconds, checked to be strictly increasing."""
    seconds = np.array([parse_delay(g) for g in grid], dtype=np.int64)
    if len(seconds) == 0 or np.any(np.diff(seconds) <= 0):
        raise IssuerSeqError(f"the retry delay grid must be non-empty and increasing: {list(grid)}")
    return seconds


def truth_column(label: str) -> str:
    return f"p_retry_{label}"


def bucket_of(delay_s: np.ndarray, grid_s: np.ndarray) -> np.ndarray:
    """Grid index of the nearest grid point at or below each delay; -1 below the first. (N,)"""
    return np.searchsorted(grid_s, np.asarray(delay_s), side="right").astype(np.int64) - 1
