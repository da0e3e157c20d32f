"""The issuer x MCC historical approval rate: the simplest honest baseline.

Fitted on the training split: the approval rate of each (issuer, MCC) pair, shrunk towards
the issuer's rate, which is shrunk towards the global rate (Beta priors of `strength`
pseudo-attempts), so that rare pairs do not get extreme rates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from issuer_seq.data.store import EventStore


def base_rate(store: EventStore, fit_rows: np.ndarray, strength: float = 20.0) -> np.ndarray:
    """p_approve for every event of the store from rates fitted on `fit_rows`. (N,)"""
    issuer = store.issuer
    mcc = store.cat["mcc"]
    y = store.approved.astype(np.float64)
    fit = pd.DataFrame({"issuer": issuer[fit_rows], "mcc": mcc[fit_rows], "y": y[fit_rows]})
    global_rate = float(fit["y"].mean())
    by_issuer = fit.groupby("issuer")["y"].agg(["sum", "count"])
    issuer_rate = (by_issuer["sum"] + strength * global_rate) / (by_issuer["count"] + strength)
    by_pair = fit.groupby(["issuer", "mcc"])["y"].agg(["sum", "count"])
    prior = issuer_rate.reindex(by_pair.index.get_level_values("issuer")).to_numpy()
    pair_rate = (by_pair["sum"].to_numpy() + strength * prior) / (
        by_pair["count"].to_numpy() + strength
    )
    pair = pd.Series(pair_rate, index=by_pair.index)
    keys = pd.MultiIndex.from_arrays([issuer, mcc], names=["issuer", "mcc"])
    p = pair.reindex(keys).to_numpy()
    fallback = issuer_rate.reindex(issuer).to_numpy()
    p = np.where(np.isnan(p), fallback, p)
    return np.where(np.isnan(p), global_rate, p)
