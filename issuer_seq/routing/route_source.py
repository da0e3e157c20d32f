"""Where a log's route table comes from: a user's routes file, the simulator's meta.json, or
the log itself (docs/routing.md, "Logs without truth").

A real log has a `route` column but no meta.json. The routes, each route's fee per attempt
and each merchant's routes in priority order then come from a routes file (YAML or JSON):

    routes:                    # every route the log uses
      - name: eu_acquirer
        fee: 0.05              # per attempt, in the amount's units; absent or null: 0
      - name: global_a
    merchant_routes:           # optional: merchant id -> its routes, first priority first
      m1: [eu_acquirer, global_a]

and a merchant the file does not list (or every merchant, without a file) has its routes
inferred from the log: the routes it sent attempts through, first priority the one the logging
policy chose most often before the test split (then most often in it, then by name). Which
routes a merchant holds is a fact of its contracts, not an outcome, so reading it from the test
split's route names reveals no approval; the priority, which the static policy follows, is read
from the history first. The order of precedence: the routes file, else meta.json's `routes`
and `merchant_routes`, else the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from issuer_seq.errors import IssuerSeqError
from issuer_seq.routing.routes import NOT_HELD, RouteTable

FILE_KEYS = ("routes", "merchant_routes")
#: `ResolvedRoutes.source` of a table read from the simulator's meta.json
META_SOURCE = "meta.json"


@dataclass(frozen=True)
class RoutesFile:
    """A parsed routes file. fees: None for a route the file gives no fee;
    merchant_routes: only the merchants the file lists."""

    path: Path
    names: tuple[str, ...]
    fees: tuple[float | None, ...]
    merchant_routes: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class ResolvedRoutes:
    """The route table of an evaluation, where it came from and what was assumed
    (`notes`: inferred merchants, fees taken as 0), for the section to say."""

    table: RouteTable
    source: str
    notes: tuple[str, ...]


def _fee(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IssuerSeqError(f"{where} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise IssuerSeqError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def read_routes_file(path: str | Path) -> RoutesFile:
    """Parse a routes file (module docstring); a malformed one is an error naming the field."""
    p = Path(path)
    if not p.exists():
        raise IssuerSeqError(f"routes file {p} does not exist")
    try:  # YAML reads JSON too
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise IssuerSeqError(f"routes file {p} is neither YAML nor JSON: {e}") from e
    where = f"routes file {p}"
    if not isinstance(doc, dict):
        raise IssuerSeqError(f"{where}: expected a mapping with 'routes' (and 'merchant_routes')")
    unknown = sorted(set(map(str, doc)) - set(FILE_KEYS))
    if unknown:
        raise IssuerSeqError(f"{where}: unknown keys {unknown} (expected {list(FILE_KEYS)})")
    routes = doc.get("routes")
    if not isinstance(routes, list) or not routes:
        raise IssuerSeqError(f"{where}: 'routes' must be a non-empty list of {{name, fee}}")
    names: list[str] = []
    fees: list[float | None] = []
    for i, r in enumerate(routes):
        if not isinstance(r, dict):
            raise IssuerSeqError(f"{where}: routes[{i}] must be a mapping with 'name' and 'fee'")
        extra = sorted(set(map(str, r)) - {"name", "fee", "region"})
        if extra:
            raise IssuerSeqError(f"{where}: routes[{i}] has unknown keys {extra}")
        name = r.get("name")
        if name is None or str(name).strip() == "":
            raise IssuerSeqError(f"{where}: routes[{i}].name is missing or empty")
        if str(name) in names:
            raise IssuerSeqError(f"{where}: routes[{i}].name {name!r} is listed twice")
        names.append(str(name))
        fees.append(_fee(r.get("fee"), f"{where}: routes[{i}].fee"))
    merchants = doc.get("merchant_routes") or {}
    if not isinstance(merchants, dict):
        raise IssuerSeqError(f"{where}: 'merchant_routes' must map merchant ids to route lists")
    held: dict[str, tuple[str, ...]] = {}
    for m, lst in merchants.items():
        field = f"{where}: merchant_routes[{str(m)!r}]"
        if not isinstance(lst, list) or not lst:
            raise IssuerSeqError(f"{field} must be a non-empty list of route names")
        lst = [str(x) for x in lst]
        bad = [x for x in lst if x not in names]
        if bad:
            raise IssuerSeqError(f"{field} names routes {bad} that 'routes' lacks ({names})")
        if len(set(lst)) != len(lst):
            raise IssuerSeqError(f"{field} lists a route twice")
        held[str(m)] = tuple(lst)
    return RoutesFile(p, tuple(names), tuple(fees), held)


def infer_merchant_routes(
    merchant_id: np.ndarray, route: np.ndarray, before: np.ndarray
) -> dict[str, tuple[str, ...]]:
    """merchant id (as text) -> the routes it sent attempts through, ordered by how often the
    logging policy chose each in the rows marked `before` (the history), then in the others,
    then by name. All three arrays (N,)."""
    df = pd.DataFrame(
        {
            "m": np.asarray(merchant_id, dtype=object).astype(str),
            "r": np.asarray(route, dtype=object).astype(str),
            "before": np.asarray(before, dtype=bool),
        }
    )
    counts = df.groupby(["m", "r"], sort=False)["before"].agg(["sum", "size"]).reset_index()
    counts["after"] = counts["size"] - counts["sum"]
    counts = counts.sort_values(["m", "sum", "after", "r"], ascending=[True, False, False, True])
    return {m: tuple(g["r"]) for m, g in counts.groupby("m", sort=False)}


def resolve_routes(
    history: pd.DataFrame,
    test: pd.DataFrame,
    meta: Mapping[str, Any] | None = None,
    routes_file: str | Path | None = None,
) -> ResolvedRoutes:
    """The route table of `test`'s evaluation (module docstring for the precedence), with
    `history` (the log before the test split) and `test` carrying `merchant_id` and `route`."""
    meta = meta or {}
    if routes_file is None and meta.get("routes"):
        return ResolvedRoutes(RouteTable.from_meta(meta), META_SOURCE, ())
    notes: list[str] = []
    if routes_file is not None:
        spec = read_routes_file(routes_file)
        source = f"routes file {spec.path}"
        names = spec.names
        no_fee = [n for n, f in zip(names, spec.fees, strict=True) if f is None]
        fees = [0.0 if f is None else f for f in spec.fees]
        if no_fee:
            notes.append(f"routes without a fee in {spec.path.name} cost 0 per attempt: {no_fee}")
        given = dict(spec.merchant_routes)
    else:
        source = "the log (no routes file, no meta.json)"
        names = tuple(sorted(set(map(str, history["route"])) | set(map(str, test["route"]))))
        fees = [0.0] * len(names)
        notes.append(
            "no fees known (no routes file): every route costs 0 per attempt, so value is "
            "p_approve x amount x margin; give evaluate a routes_file to count fees"
        )
        given = {}
    merchant = np.concatenate(
        [history["merchant_id"].to_numpy(object), test["merchant_id"].to_numpy(object)]
    )
    route = np.concatenate([history["route"].to_numpy(object), test["route"].to_numpy(object)])
    before = np.arange(len(merchant)) < len(history)
    listed = np.isin(merchant.astype(str), list(given))
    unknown = sorted({str(r) for r in route} - set(names))
    if unknown:
        raise IssuerSeqError(
            f"{source}: the log's routes {unknown[:5]} are not in it ({list(names)})"
        )
    inferred = infer_merchant_routes(merchant[~listed], route[~listed], before[~listed])
    if inferred:
        notes.append(
            f"routes of {len(inferred)} merchants inferred from the log: the routes each sent "
            "attempts through, first priority the one the logging policy chose most often "
            "before the test split"
        )
    table = RouteTable(names=names, fees=np.asarray(fees), merchant_routes=given | inferred)
    return ResolvedRoutes(table, source, tuple(notes))


def check_logged_routes(
    table: RouteTable, merchant_id: np.ndarray, route: np.ndarray, source: str
) -> np.ndarray:
    """(N,) column of each attempt's logged route; an error naming them where the route is not
    in the table or not one its merchant holds (off-policy estimates need the logged route
    among the policies' candidates)."""
    names = set(table.names)
    unknown = sorted({str(r) for r in route} - names)
    if unknown:
        raise IssuerSeqError(
            f"the test attempts' routes {unknown[:5]} are not in the route table of {source} "
            f"({list(table.names)})"
        )
    col = table.index(route)
    prio = table.priority(merchant_id)
    lacking = prio[np.arange(len(col)), col] == NOT_HELD
    if lacking.any():
        i = int(np.flatnonzero(lacking)[0])
        raise IssuerSeqError(
            f"{int(lacking.sum())} test attempts went through a route their merchant does not "
            f"hold in the route table of {source}, e.g. merchant {merchant_id[i]!s} through "
            f"{route[i]!s}"
        )
    return col
