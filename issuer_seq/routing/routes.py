"""The routes a log knows and which of them each merchant holds, as arrays over a route axis.

Every routing array in this package has one column per route of the table, in the table's
order: (N, R) for N attempts and R routes. A merchant holds a subset of the routes in a
static priority order (its first one is where a rule-based router sends everything);
`candidates` marks the held ones, `priority` ranks them (0 = first) and gives every other
route `NOT_HELD`.

The table is read from the simulator's `meta.json` (`routes`: a list of {name, region, fee};
`merchant_routes`: {merchant_id: [route names in priority order]}) or built directly. JSON
keys are text, so merchants are looked up by `str(merchant_id)`, the same for int64 and string
ids.

numpy only: the scorer and the evaluation can share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from issuer_seq.errors import IssuerSeqError

#: priority rank of a route a merchant does not hold (sorts after every held route)
NOT_HELD = np.iinfo(np.int64).max


@dataclass(frozen=True)
class RouteTable:
    """Route names and fees, and each merchant's routes in priority order.

    names: (R,) route names; fees: (R,) cost of sending one attempt through each route, in the
    amount's currency units (it takes the place of `RetryEconomics.attempt_fee` when choosing
    a route: see `policies.route_values`); merchant_routes: merchant id (as text) -> its
    route names, first priority first.
    """

    names: tuple[str, ...]
    fees: np.ndarray
    merchant_routes: Mapping[str, tuple[str, ...]]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _rows: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if not names:
            raise IssuerSeqError("route table: no routes")
        if len(set(names)) != len(names):
            raise IssuerSeqError(f"route table: duplicate route names in {list(names)}")
        fees = np.asarray(self.fees, dtype=np.float64)
        if fees.shape != (len(names),):
            raise IssuerSeqError(
                f"route table: {len(names)} routes but fees has shape {fees.shape}"
            )
        if not np.all(np.isfinite(fees)) or np.any(fees < 0):
            raise IssuerSeqError("route table: every route's fee must be finite and >= 0")
        index = {n: i for i, n in enumerate(names)}
        rows: dict[str, np.ndarray] = {}
        for merchant, held in self.merchant_routes.items():
            held = tuple(str(r) for r in held)
            if not held:
                raise IssuerSeqError(f"route table: merchant {merchant} holds no route")
            unknown = sorted(set(held) - set(index))
            if unknown:
                raise IssuerSeqError(
                    f"route table: merchant {merchant} holds unknown routes {unknown} "
                    f"(known: {list(names)})"
                )
            if len(set(held)) != len(held):
                raise IssuerSeqError(f"route table: merchant {merchant} lists a route twice")
            rank = np.full(len(names), NOT_HELD, dtype=np.int64)
            rank[[index[r] for r in held]] = np.arange(len(held))
            rows[str(merchant)] = rank
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "fees", fees)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_rows", rows)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RouteTable:
        """The table of a simulator's `meta.json` (its `routes` and `merchant_routes`)."""
        for key in ("routes", "merchant_routes"):
            if key not in meta:
                raise IssuerSeqError(f"meta.json has no '{key}': the log has no route table")
        routes = meta["routes"]
        try:
            names = tuple(str(r["name"]) for r in routes)
            fees = np.array([float(r["fee"]) for r in routes])
        except (KeyError, TypeError, ValueError) as e:
            raise IssuerSeqError("meta.json 'routes' must be a list of {name, region, fee}") from e
        merchant_routes = {str(m): tuple(v) for m, v in meta["merchant_routes"].items()}
        return cls(names=names, fees=fees, merchant_routes=merchant_routes)

    @property
    def n_routes(self) -> int:
        return len(self.names)

    def index(self, routes: Sequence[str] | np.ndarray) -> np.ndarray:
        """(N,) int64 column of each route name; an unknown name is an error naming it."""
        arr = np.asarray(routes, dtype=object)
        uniq, inverse = np.unique(arr.astype(str), return_inverse=True)
        unknown = [u for u in uniq if u not in self._index]
        if unknown:
            raise IssuerSeqError(
                f"unknown routes {unknown[:5]} (the table knows {list(self.names)})"
            )
        return np.array([self._index[u] for u in uniq], dtype=np.int64)[inverse]

    def priority(self, merchant_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """(N, R) int64 rank of each route in each attempt's merchant's priority (0 = first),
        `NOT_HELD` where the merchant lacks the route. An unknown merchant is an error."""
        keys = np.asarray(merchant_ids, dtype=object).astype(str)
        uniq, inverse = np.unique(keys, return_inverse=True)
        missing = [u for u in uniq if u not in self._rows]
        if missing:
            raise IssuerSeqError(
                f"{len(missing)} merchants have no routes in the route table, e.g. {missing[:5]}"
            )
        table = np.stack([self._rows[u] for u in uniq]) if len(uniq) else self._empty()
        return table[inverse]

    def candidates(self, merchant_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """(N, R) bool: does each attempt's merchant hold each route?"""
        return self.priority(merchant_ids) != NOT_HELD

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.n_routes), dtype=np.int64)
