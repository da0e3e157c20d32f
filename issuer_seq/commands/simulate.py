"""`issuer-seq simulate`: write a synthetic transaction log with its ground truth."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from omegaconf import DictConfig

from issuer_seq.delays import grid_seconds
from issuer_seq.errors import IssuerSeqError
from issuer_seq.rules import NetworkRules
from issuer_seq.simulate import SimConfig, WorldParams, simulate
from issuer_seq.simulate.routes import Acquirer, RouteParams

log = logging.getLogger(__name__)


def sim_config(cfg: DictConfig) -> SimConfig:
    """Flat, typed simulator settings from the composed config."""
    for key in ("n_cards", "n_issuers", "n_merchants", "days", "chunk_cards"):
        if int(cfg[key]) <= 0:
            raise IssuerSeqError(f"{key} must be a positive integer, got {cfg[key]}")
    grid = tuple(str(g) for g in cfg.delay_grid)
    grid_seconds(grid)
    world = WorldParams(
        n_cards=int(cfg.n_cards),
        n_issuers=int(cfg.n_issuers),
        n_merchants=int(cfg.n_merchants),
        days=int(cfg.days),
        **{k: float(v) for k, v in cfg.world.items()},
    )
    return SimConfig(
        world=world,
        seed=int(cfg.seed),
        start=str(cfg.start),
        chunk_cards=int(cfg.chunk_cards),
        delay_grid=grid,
        rules=NetworkRules(**{k: int(v) for k, v in cfg.rules.items()}),
        routes=route_params(cfg.get("routes")),
    )


_INT_ROUTE_KEYS = ("n_routes", "min_per_merchant", "max_per_merchant")


def route_params(routes: DictConfig | None) -> RouteParams | None:
    """The `routes:` block as RouteParams; None (one route) for `routes: null`."""
    if routes is None:
        return None
    try:
        acquirers = tuple(
            Acquirer(name=str(a["name"]), region=str(a["region"]), fee=float(a["fee"]))
            for a in routes.get("acquirers", [])
        )
        rest = {k: v for k, v in routes.items() if k != "acquirers"}
        typed: dict[str, Any] = {
            k: int(v) if k in _INT_ROUTE_KEYS else float(v) for k, v in rest.items()
        }
        return RouteParams(acquirers=acquirers, **typed)
    except (KeyError, TypeError, ValueError) as exc:
        raise IssuerSeqError(f"bad routes config: {exc}") from exc


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    meta = simulate(sim_config(cfg), cfg.data_dir)
    log.info(
        "wrote %s/{transactions,truth}.parquet and meta.json: %d attempts in %.1f s",
        cfg.data_dir,
        meta["rows"],
        time.perf_counter() - started,
    )
    summary = {k: meta[k] for k in ("rows", "approval_rate", "mit_share", "retry_share")}
    summary["top_decline_codes"] = dict(list(meta["decline_code_mix"].items())[:8])
    if meta.get("routes"):
        summary["route_share"] = meta["route_share"]
        summary["route_approval_rate"] = meta["route_approval_rate"]
    log.info(json.dumps(summary, indent=2))
    return meta
