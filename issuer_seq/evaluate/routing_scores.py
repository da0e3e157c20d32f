"""p_approve of each attempt through each of its merchant's routes: (N, R) matrices that the
routing policies (issuer_seq/routing/) choose from.

Both models score an attempt once per candidate route with only the current attempt's route
changed; everything read from the histories stays as logged (what the attempt's histories
were when it was sent). Columns follow a `RouteTable`'s order, NaN where the merchant lacks
the route, as every routing array (docs/routing.md).

- `transformer_route_matrix`: the vectors of the card's, the issuer's and the card at the
  merchant's streams (which do not read the route) are computed once per batch
  (`IssuerSeqNet.shared_vectors`); per route, for the rows whose merchant holds it, the
  route stream is the candidate's own (its last attempts as of the attempt's time,
  `HistoryIndex.at`), then `IssuerSeqNet.through_route` computes that stream and the head.
- `lightgbm_route_matrix`: the SQL feature rows with the `route` column and the issuer x
  route and route aggregates replaced by the candidate's (baselines/route_rates.py computes
  them for every route at once; the others do not depend on the current attempt's route).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from issuer_seq import features as F
from issuer_seq.baselines.fused import through_route
from issuer_seq.baselines.route_rates import route_rates
from issuer_seq.baselines.sql_features import WINDOWS
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import EventStore
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import ROUTE_STREAM
from issuer_seq.features import SHARED_STREAMS as SHARED
from issuer_seq.model.network import IssuerSeqNet, packed, stack_streams
from issuer_seq.progress import bar
from issuer_seq.routing.routes import RouteTable


def _held(table: RouteTable, merchant_id: np.ndarray, n: int) -> np.ndarray:
    merchant_id = np.asarray(merchant_id, dtype=object)
    if merchant_id.shape != (n,):
        raise IssuerSeqError(
            f"merchant_id has shape {merchant_id.shape}, expected ({n},): one per scored row"
        )
    return table.candidates(merchant_id)  # (N, R)


@torch.no_grad()
def transformer_route_matrix(
    net: IssuerSeqNet,
    store: EventStore,
    rows: np.ndarray,
    table: RouteTable,
    merchant_id: np.ndarray,
    batch_size: int = 4096,
    progress: str | None = None,
    route_rates: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """(N, R) calibrated p_approve of the store's `rows` (N,) through each route of `table`.

    merchant_id (N,): each row's merchant, as the log holds it (it selects the held routes;
    the rest are NaN). The column of a row's logged route is `evaluate.run.predict`'s
    p_approve of that row (the same batches, the same operations). A route the run's vocabulary
    never saw is fed as out-of-vocabulary, as the scorer would feed it. A network that reads
    the fused aggregates needs `route_rates`: `route_rates` of the rows (N, R) per
    column, swapped in per route (baselines/fused.py `through_route`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if net.n_fused and route_rates is None:
        raise IssuerSeqError("this network reads the fused aggregates: pass route_rates")
    held = _held(table, merchant_id, len(rows))
    ids = torch.from_numpy(F.encode(store.vocab, "route", list(table.names)))  # (R,)
    device = DeviceStore(store)
    route_index, t = store.index(ROUTE_STREAM), store.t
    was_training = net.training
    net.eval()
    out = np.full((len(rows), table.n_routes), np.nan)
    starts = range(0, len(rows), batch_size)
    try:
        for start in starts if progress is None else bar(starts, progress):
            batch_rows = rows[start : start + batch_size]
            x = device.gather(torch.from_numpy(batch_rows), streams=SHARED)
            cat = packed(x, "cur", F.CATEGORICAL)  # (B, C)
            num = packed(x, "cur", F.NUMERIC)  # (B, F)
            # the streams that do not read the route, computed once for every route
            vectors, past, by_route = net.shared_vectors(
                cat,
                num,
                stack_streams(
                    [
                        net.state(packed(x, s, F.CATEGORICAL), packed(x, s, F.NUMERIC))
                        for s in SHARED
                    ]
                ),
                stack_streams([packed(x, s, F.RELATIVE) for s in SHARED]),
                torch.stack([x[f"{s}_length"] for s in SHARED]),
            )
            for r in range(table.n_routes):
                take = np.flatnonzero(held[start : start + len(batch_rows), r])
                if len(take) == 0:
                    continue
                pick = torch.from_numpy(take)
                cat_r = cat[pick]
                cat_r[:, F.ROUTE] = ids[r]
                # the route stream of route r as of each attempt's time
                end, n = route_index.at(np.full(len(take), int(ids[r])), t[batch_rows[take]])
                xr = device.gather(
                    torch.from_numpy(batch_rows[take]),
                    {ROUTE_STREAM: (torch.from_numpy(end), torch.from_numpy(n))},
                    streams=[ROUTE_STREAM],
                )
                fused = None
                if net.n_fused:
                    assert route_rates is not None
                    one = {k: v[start + take, r] for k, v in route_rates.items()}
                    fused = torch.from_numpy(through_route(x["fused"][pick].numpy(), one))
                approval = net.through_route(
                    cat_r,
                    num[pick],
                    vectors[:, pick],
                    past[pick],
                    by_route[pick],
                    net.state(
                        packed(xr, ROUTE_STREAM, F.CATEGORICAL), packed(xr, ROUTE_STREAM, F.NUMERIC)
                    ),
                    packed(xr, ROUTE_STREAM, F.RELATIVE),
                    xr[f"{ROUTE_STREAM}_length"],
                    fused,
                )
                p = net.p_approve(approval)
                out[start + take, r] = p.float().cpu().numpy()
    finally:
        net.train(was_training)
    return out


def through_each_route(
    features: pd.DataFrame,
    log_frame: pd.DataFrame,
    rows: np.ndarray,
    table: RouteTable,
    rates: Mapping[str, np.ndarray],
) -> Iterator[tuple[int, np.ndarray, pd.DataFrame]]:
    """Per route r of `table`: (r, take, x), where `take` are the positions in `rows` whose
    merchant holds the route and `x` their SQL feature rows as if sent through it (the `route`
    column and the issuer x route and route aggregates of `rates` swapped in).

    features: `sql_features(log_frame)`; rates: `route_rates(log_frame, table.names)`, both
    of every row of the log."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(features) != len(log_frame):
        raise IssuerSeqError(
            f"features has {len(features)} rows but the log {len(log_frame)}: compute them "
            "from the same log"
        )
    held = _held(table, log_frame["merchant_id"].to_numpy(object)[rows], len(rows))
    base = features.iloc[rows].reset_index(drop=True)
    for r, name in enumerate(table.names):
        take = np.flatnonzero(held[:, r])
        if len(take) == 0:
            continue
        x = base.iloc[take].copy()
        x["route"] = pd.Categorical([name] * len(take), categories=list(table.names))
        for column, values in rates.items():
            if column in x.columns:
                x[column] = values[rows[take], r]
        yield r, take, x


def lightgbm_route_matrix(
    model: LightGBMModel,
    features: pd.DataFrame,
    log_frame: pd.DataFrame,
    rows: np.ndarray,
    table: RouteTable,
    windows: Mapping[str, int] = WINDOWS,
    lag_s: int = 0,
    rates: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """(N, R) p_approve of the log's `rows` (N,) through each route of `table`, by the LightGBM
    approval model.

    features: `sql_features(log_frame, windows, lag_s)` (every row of the log); log_frame: the
    validated log it was computed from (its merchants select the held routes; NaN elsewhere).
    rates: `route_rates(log_frame, table.names, windows, lag_s)` when already computed.
    The column of a row's logged route is `model.predict_proba` of its feature row.
    """
    if rates is None:
        rates = route_rates(log_frame, table.names, windows, lag_s)
    out = np.full((len(rows), table.n_routes), np.nan)
    for r, take, x in through_each_route(features, log_frame, rows, table, rates):
        out[take, r] = model.predict_proba(x)
    return out
