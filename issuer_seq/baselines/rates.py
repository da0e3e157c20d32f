"""Reference predictors that learn (almost) nothing: the issuer x MCC rate and the oracle.

`IssuerMccRate` is `base_rate.base_rate` (the store-based version the transformer's training
reports) over a feature frame: the same shrinkage, so both give the same numbers on the same
rows. `Oracle` returns the simulator's true `p_approve`: the floor no model can beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from issuer_seq.baselines.protocol import EPS, LABEL, TXN_ID
from issuer_seq.errors import IssuerSeqError


class IssuerMccRate:
    """Approval rate per (issuer, MCC) in training, shrunk to the issuer's, then the global.

    Beta priors of `strength` pseudo-attempts, so that rare pairs do not get extreme rates.
    """

    def __init__(self, strength: float = 20.0) -> None:
        self.strength = strength
        self.global_rate = float("nan")
        self.issuer_rate: pd.Series | None = None
        self.pair_rate: pd.Series | None = None

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self:
        s = self.strength
        fit = pd.DataFrame(
            {
                "issuer": train["issuer_id"].astype("string").to_numpy(dtype=object),
                "mcc": train["mcc"].astype("string").to_numpy(dtype=object),
                "y": train[LABEL].to_numpy(dtype=np.float64),
            }
        )
        self.global_rate = float(fit["y"].mean())
        by_issuer = fit.groupby("issuer")["y"].agg(["sum", "count"])
        self.issuer_rate = (by_issuer["sum"] + s * self.global_rate) / (by_issuer["count"] + s)
        by_pair = fit.groupby(["issuer", "mcc"])["y"].agg(["sum", "count"])
        prior = self.issuer_rate.reindex(by_pair.index.get_level_values("issuer")).to_numpy()
        rate = (by_pair["sum"].to_numpy() + s * prior) / (by_pair["count"].to_numpy() + s)
        self.pair_rate = pd.Series(rate, index=by_pair.index)
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.pair_rate is None or self.issuer_rate is None:
            raise RuntimeError("fit the model first")
        issuer = frame["issuer_id"].astype("string").to_numpy(dtype=object)
        mcc = frame["mcc"].astype("string").to_numpy(dtype=object)
        keys = pd.MultiIndex.from_arrays([issuer, mcc], names=["issuer", "mcc"])
        p = self.pair_rate.reindex(keys).to_numpy()
        fallback = self.issuer_rate.reindex(issuer).to_numpy()
        p = np.where(np.isnan(p), fallback, p)
        p = np.where(np.isnan(p), self.global_rate, p)
        return np.clip(p.astype(np.float64), EPS, 1 - EPS)


class Oracle:
    """The simulator's true probability per `txn_id` (synthetic data only; never a feature)."""

    def __init__(self, truth: pd.Series) -> None:
        self.truth = truth

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, column: str = "p_approve") -> Oracle:
        path = Path(data_dir) / "truth.parquet"
        if not path.exists():
            raise IssuerSeqError(f"{path}: no truth (only simulated logs have an oracle)")
        truth = pd.read_parquet(path, columns=[TXN_ID, column])
        return cls(truth.set_index(TXN_ID)[column])

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self:
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        p = self.truth.reindex(frame[TXN_ID].to_numpy()).to_numpy(dtype=np.float64)
        if np.isnan(p).any():
            raise IssuerSeqError(f"truth is missing for {int(np.isnan(p).sum())} attempt(s)")
        return np.clip(p, EPS, 1 - EPS)
