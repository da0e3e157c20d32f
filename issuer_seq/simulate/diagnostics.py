"""Is the signal in the histories? Checks of a simulated log against its latent truth.

For each hidden state the simulator keeps (issuer outage, issuer risk regime, card funds),
compare how well it is ranked (AUROC) by
- a *history* feature: what the recent events of the same issuer or card show, strictly
  before the attempt, and
- a *static* feature: the long-run rate over the whole log of the issuer (for issuer
  states) or of the issuer x card type (for card states; per-card rates are themselves
  history), a generous stand-in for what a static model knows, since it peeks at the future.
If histories carry the signal, the history feature wins. A log with routes adds two rows:
an acquirer's outage (the route's recent technical declines vs the route's long-run rate)
and an issuer-by-route episode (the issuer's recent risk-rule declines through that route vs
the issuer x route long-run rate). `scripts/check_signal.py` prints the table; a test holds
it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from issuer_seq.rules import Cause, causes


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged)."""
    label = label.astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recent_count(
    key: np.ndarray, t: np.ndarray, event: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (#events, #attempts) of the same key in [t - window, t). Rows sorted by t."""
    order = np.lexsort((t, key))
    k, tt, ev = key[order], t[order], event[order].astype(np.int64)
    span = np.int64(1) << 40
    keys = k.astype(np.int64) * span + tt
    cum = np.concatenate([[0], np.cumsum(ev)])
    hi = np.searchsorted(keys, keys, side="left")
    lo = np.searchsorted(keys, keys - window, side="left")
    events = np.empty(len(t), dtype=np.int64)
    total = np.empty(len(t), dtype=np.int64)
    events[order] = cum[hi] - cum[lo]
    total[order] = hi - lo
    return events, total


def history_signal(data_dir: str | Path) -> dict[str, dict[str, float]]:
    """AUROC of history vs static features for each latent state of the simulator."""
    d = Path(data_dir)
    tx = pd.read_parquet(d / "transactions.parquet")
    truth = pd.read_parquet(d / "truth.parquet")
    df = tx.merge(truth, on="txn_id").sort_values("ts", kind="stable")
    t = (df["ts"].astype("int64") // 1_000_000).to_numpy()
    issuer = pd.factorize(df["issuer_id"])[0]
    card = pd.factorize(df["card_id"])[0]
    card_type = pd.factorize(df["card_type"])[0]
    cause = causes(df["response_code"].to_numpy(str), df["network"].to_numpy(str))
    technical = cause == Cause.TECHNICAL.value
    generic = cause == Cause.GENERIC.value
    funds = cause == Cause.FUNDS.value

    def rate(key: np.ndarray, event: np.ndarray, window: int) -> np.ndarray:
        ev, n = recent_count(key, t, event, window)
        return (ev + 0.01) / (n + 1.0)

    def static(key: np.ndarray, event: np.ndarray) -> np.ndarray:
        return pd.Series(event.astype(float)).groupby(key).transform("mean").to_numpy()

    out = {}
    outage = df["latent_outage"].to_numpy() > 0
    out["issuer_outage"] = {
        "history_auroc": auroc(rate(issuer, technical, 1800), outage),
        "static_auroc": auroc(static(issuer, technical), outage),
        "positive_share": float(outage.mean()),
    }
    tight = df["latent_risk_regime"].to_numpy() > 0
    out["issuer_risk_regime"] = {
        "history_auroc": auroc(rate(issuer, generic, 6 * 3600), tight),
        "static_auroc": auroc(static(issuer, generic), tight),
        "positive_share": float(tight.mean()),
    }
    hazard = df["latent_funds_hazard"].to_numpy()
    low_funds = hazard > np.quantile(hazard, 0.9)
    out["card_low_funds"] = {
        "history_auroc": auroc(rate(card, funds, 30 * 86400), low_funds),
        "static_auroc": auroc(static(issuer * 3 + card_type, funds), low_funds),
        "positive_share": float(low_funds.mean()),
    }
    if "route" not in df.columns or "latent_route_outage" not in df.columns:
        return out
    route = pd.factorize(df["route"])[0]
    down = df["latent_route_outage"].to_numpy() > 0
    out["route_outage"] = {
        "history_auroc": auroc(rate(route, technical, 1800), down),
        "static_auroc": auroc(static(route, technical), down),
        "positive_share": float(down.mean()),
    }
    issuer_route = issuer * (route.max() + 1) + route
    episode = df["latent_route_episode"].to_numpy() > 0
    out["issuer_route_episode"] = {
        "history_auroc": auroc(rate(issuer_route, generic, 86400), episode),
        "static_auroc": auroc(static(issuer_route, generic), episode),
        "positive_share": float(episode.mean()),
    }
    return out
