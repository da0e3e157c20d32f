"""How fast a routing policy moves an issuer's attempts off a route once the issuer starts
declining through it (an issuer-by-route episode of the simulator).

Definition. For an episode (issuer, route, start, end), the eligible attempts are the issuer's
attempts, in time order, at merchants whose first-priority route it is (`scope="first"`, the
default: the attempts a static router sends there, so a change in the mix of merchants cannot
move the share, and the static policy never reacts) or at every merchant holding the route
(`scope="held"`); a policy's share of one attempt is the probability it gives the route,
pi(route | i) (1 or 0 for a deterministic policy: using the probability rather than a draw
keeps the metric free of sampling noise).

- pre-episode share s0: the mean share over the last `n_pre` eligible attempts before start;
- the policy has reacted at the first eligible attempt k with start <= ts_k < end from which
  the share stays below `drop` * s0 for `n_hold` consecutive eligible attempts (k included),
  all before end;
- reaction hours = (ts_k - start) / 3600.

An episode is `reacted`; `never` (no such run before the episode ended: censored at the
episode's length); `not_exposed` (s0 = 0: the policy was not using the route, there is
nothing to move away from); or `no_history` (no eligible attempt before start). The median
reaction counts `never` as longer than any reaction (infinite), over the reacted and never
episodes, so a policy that never moves off half its episodes has an infinite median.

An episode raises an issuer's declines through a route; it need not make another route
better (the rise may be small, the others may cost more). Compare policies on the episodes
the oracle reacts to: there, moving away is right and the oracle's reaction is the floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.errors import IssuerSeqError
from issuer_seq.routing.policies import as_seconds
from issuer_seq.routing.routes import NOT_HELD

REACTED, NEVER, NOT_EXPOSED, NO_HISTORY = "reacted", "never", "not_exposed", "no_history"
EPISODE_COLUMNS = ("issuer_id", "route", "start", "end")
SCOPES = ("first", "held")


def _first_run(below: np.ndarray, n_hold: int) -> int:
    """Index of the first run of `n_hold` True values in a row, -1 if none."""
    if len(below) < n_hold:
        return -1
    runs = np.convolve(below.astype(np.int64), np.ones(n_hold, dtype=np.int64), mode="valid")
    hits = np.flatnonzero(runs == n_hold)
    return int(hits[0]) if len(hits) else -1


def episode_reactions(
    episodes: pd.DataFrame,
    issuer_ids: Any,
    ts: Any,
    probs: np.ndarray,
    priority: np.ndarray,
    route_names: Sequence[str],
    n_pre: int = 50,
    n_hold: int = 10,
    drop: float = 0.5,
    scope: str = "first",
) -> pd.DataFrame:
    """One row per episode: its columns, then pre_share, n_during (eligible attempts in the
    episode), status, reaction_hours (NaN unless reacted) and episode_hours.

    issuer_ids, ts: (N,) the attempts in time order; probs: (N, R) the policy's distribution
    over the route table's columns (`route_names`); priority: (N, R) the merchants' route
    ranks (`RouteTable.priority`); scope: "first" or "held" (module docstring).
    """
    missing = [c for c in EPISODE_COLUMNS if c not in episodes.columns]
    if missing:
        raise IssuerSeqError(f"episodes lack columns {missing} (need {list(EPISODE_COLUMNS)})")
    if n_pre < 1 or n_hold < 1 or not 0.0 < drop <= 1.0:
        raise IssuerSeqError("n_pre and n_hold must be >= 1 and drop in (0, 1]")
    t = as_seconds(ts)
    pi = np.asarray(probs, dtype=np.float64)
    prio = np.asarray(priority)
    if pi.shape != prio.shape or pi.shape != (len(t), len(route_names)):
        raise IssuerSeqError(
            f"probs {pi.shape} and priority {prio.shape} must be ({len(t)}, {len(route_names)})"
        )
    if scope not in SCOPES:
        raise IssuerSeqError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    eligible = prio == 0 if scope == "first" else prio != NOT_HELD
    if np.any(np.diff(t) < 0):
        raise IssuerSeqError("attempts must be in time order (sort by ts first)")
    issuer = np.asarray(issuer_ids, dtype=object).astype(str)
    if issuer.shape != t.shape:
        raise IssuerSeqError(f"issuer_ids has {len(issuer)} rows, ts {len(t)}")
    column = {name: i for i, name in enumerate(route_names)}
    unknown = sorted(set(episodes["route"].astype(str)) - set(column))
    if unknown:
        raise IssuerSeqError(f"episodes name unknown routes {unknown} (known: {list(column)})")
    order = np.argsort(issuer, kind="stable")  # each issuer's attempts, still in time order
    keys, first = np.unique(issuer[order], return_index=True)
    by_issuer = dict(zip(keys, np.split(order, first[1:]), strict=True))
    start = as_seconds(episodes["start"]) if len(episodes) else np.zeros(0)
    end = as_seconds(episodes["end"]) if len(episodes) else np.zeros(0)
    if np.any(end < start):
        raise IssuerSeqError("an episode ends before it starts")
    rows = []
    empty = np.zeros(0, dtype=np.int64)
    for j, (iss, route) in enumerate(
        zip(episodes["issuer_id"].astype(str), episodes["route"].astype(str), strict=True)
    ):
        r = column[route]
        idx = by_issuer.get(iss, empty)
        idx = idx[eligible[idx, r]]
        share, when = pi[idx, r], t[idx]
        before = share[when < start[j]][-n_pre:]
        during = (when >= start[j]) & (when < end[j])
        row = {
            "pre_share": float(before.mean()) if len(before) else np.nan,
            "n_during": int(during.sum()),
            "reaction_hours": np.nan,
            "episode_hours": (end[j] - start[j]) / 3600.0,
        }
        if not len(before):
            row["status"] = NO_HISTORY
        elif row["pre_share"] <= 0:
            row["status"] = NOT_EXPOSED
        else:
            k = _first_run(share[during] < drop * row["pre_share"], n_hold)
            if k < 0:
                row["status"] = NEVER
            else:
                row["status"] = REACTED
                row["reaction_hours"] = (when[during][k] - start[j]) / 3600.0
        rows.append(row)
    out = pd.DataFrame(
        rows,
        columns=["pre_share", "n_during", "status", "reaction_hours", "episode_hours"],
    )
    return pd.concat([episodes.reset_index(drop=True), out], axis=1)


def median_reaction_hours(reactions: pd.DataFrame) -> float:
    """Median reaction over the reacted and never episodes, never counted as infinite;
    NaN when there is neither."""
    counted = reactions[reactions["status"].isin([REACTED, NEVER])]
    if counted.empty:
        return float("nan")
    hours = np.where(counted["status"] == REACTED, counted["reaction_hours"], np.inf)
    return float(np.median(hours))
