"""The route aggregates of `sql_features`, for every route at once.

`sql_features` gives each attempt its issuer's volume and approval rate through the attempt's
own (logged) route over each trailing window (`issuer_route_n_<w>`,
`issuer_route_approval_rate_<w>`), and the route's over every issuer (`route_n_<w>`,
`route_approval_rate_<w>`). Scoring an attempt through another route needs the same
aggregates through that route: `route_rates` computes them for every route of a list,
under the same point-in-time rule (history is the attempts with
t - lag - W <= t' < t - lag in whole seconds). Through the logged route they are the SQL's
values (tests/test_routing_scores.py). numpy only: sorted keys and running sums, two
`searchsorted` calls per window and route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from issuer_seq.baselines.sql_features import WINDOWS
from issuer_seq.errors import IssuerSeqError
from issuer_seq.schema import APPROVED_CODE


def route_rates(
    frame: pd.DataFrame,
    routes: Sequence[str],
    windows: Mapping[str, int] = WINDOWS,
    lag_s: int = 0,
) -> dict[str, np.ndarray]:
    """{`issuer_route_n_<w>`, `issuer_route_approval_rate_<w>`, `route_n_<w>`,
    `route_approval_rate_<w>`: (N, R) float64} for every row of a validated log frame and every
    route of `routes` (R,), in that order.

    The rate is NaN where the window holds no attempt of the issuer (or of anyone) through the
    route. Rows
    without a route (a log without the column) are no route's history; a logged route not in
    `routes` is an error naming it.
    """
    routes = [str(r) for r in routes]
    n = len(frame)
    t = frame["ts"].astype("int64").to_numpy() // 1_000_000  # epoch seconds, floored
    issuer = pd.factorize(frame["issuer_id"])[0].astype(np.int64)
    ok = (frame["response_code"].to_numpy(dtype=object) == APPROVED_CODE).astype(np.float64)
    if "route" in frame.columns:
        route = frame["route"].astype(object)
        logged = route.where(route.notna(), None).to_numpy()
        unknown = sorted({str(v) for v in logged if v is not None} - set(routes))
        if unknown:
            raise IssuerSeqError(f"the log has routes {unknown[:5]} not in the list {routes}")
    else:
        logged = np.full(n, None, dtype=object)
    longest = max(windows.values()) if windows else 0
    base = (int(t.min()) if n else 0) - lag_s - longest - 1  # every window start is >= base
    span = (int(t.max()) if n else 0) - base + 1
    # the issuer through the route, and the route over every issuer (one group)
    groups = {"issuer_route": issuer, "route": np.zeros(n, dtype=np.int64)}
    out = {
        f"{family}_{name}_{w}": np.full((n, len(routes)), np.nan)
        for family in groups
        for w in windows
        for name in ("n", "approval_rate")
    }
    for family, group in groups.items():
        key_now = group * span + (t - base)  # (N,) sorts by group, then time
        for r, route in enumerate(routes):
            events = np.flatnonzero(logged == route)
            keys = key_now[events]
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            running = np.concatenate([[0.0], np.cumsum(ok[events][order])])  # (E + 1,)
            hi = np.searchsorted(keys, key_now - lag_s, side="left")  # t' < t - lag
            for w, seconds in windows.items():
                lo = np.searchsorted(keys, key_now - lag_s - int(seconds), side="left")
                count = (hi - lo).astype(np.float64)
                out[f"{family}_n_{w}"][:, r] = count
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[f"{family}_approval_rate_{w}"][:, r] = np.where(
                        count > 0, (running[hi] - running[lo]) / count, np.nan
                    )
    return out
