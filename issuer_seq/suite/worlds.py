"""The suite's worlds: generator parameters drawn over wide, documented ranges.

Each world is drawn from its own seeded generator (`[draw_seed, index]`), so a world's
parameters depend only on the draw seed and its position, never on how many worlds the
suite holds; the draw is deterministic and written out (`worlds.json`) so a user sees every
world's parameters. Sizes (cards, days, issuers, merchants) are drawn like the rates and may
be overridden for a reduced suite. docs/suite.md has the ranges as a table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from issuer_seq.errors import IssuerSeqError

GENERATORS = ("simulate", "ledger")


@dataclass(frozen=True)
class Range:
    """A parameter drawn uniformly in [low, high] (on a log scale when `log`)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def draw(self, rng: np.random.Generator) -> float | int:
        u = rng.random()
        if self.log:
            x = float(np.exp(np.log(self.low) + u * (np.log(self.high) - np.log(self.low))))
        else:
            x = self.low + u * (self.high - self.low)
        return int(round(x)) if self.integer else round(x, 4)

    def holds(self, x: float) -> bool:
        return self.low <= x <= self.high


#: Sizes shared by both generators.
SIZES: dict[str, Range] = {
    "n_cards": Range(3_000, 30_000, log=True, integer=True),
    "days": Range(30, 90, integer=True),
    "n_issuers": Range(50, 400, log=True, integer=True),
    "n_merchants": Range(500, 5_000, log=True, integer=True),
}

#: `issuer-seq simulate` world keys (conf/simulate.yaml `world:`), drawn per world.
SIMULATE_RANGES: dict[str, Range] = {
    **SIZES,
    "outages_per_issuer_day": Range(0.02, 0.3, log=True),
    "outage_median_minutes": Range(10.0, 90.0, log=True),
    "tight_regimes_per_issuer_day": Range(0.02, 0.3, log=True),
    "tight_regime_median_hours": Range(4.0, 48.0, log=True),
    "funds_tightness_shift": Range(-0.8, 0.8),
    "biweekly_pay_share": Range(0.0, 0.7),
    "sca_strictness_scale": Range(0.3, 2.5, log=True),
    "cit_sessions_per_day": Range(0.2, 0.8, log=True),
    "subscriptions_per_card": Range(0.5, 5.0, log=True),
}

#: The ledger generator's knobs (issuer_seq/suite/ledger.py `LedgerParams`).
LEDGER_RANGES: dict[str, Range] = {
    **SIZES,
    "outage_immigrants_per_issuer_day": Range(0.01, 0.08, log=True),
    "outage_branching": Range(0.2, 0.8),
    "outage_mean_minutes": Range(15.0, 90.0, log=True),
    "rule_changes_per_issuer_day": Range(0.02, 0.15, log=True),
    "rule_spell_mean_hours": Range(8.0, 72.0, log=True),
    "savings_median": Range(40.0, 250.0, log=True),
    "weekly_pay_share": Range(0.0, 0.4),
    "biweekly_pay_share": Range(0.0, 0.4),
    "sca_soft_decline": Range(0.1, 0.6),
    "cit_per_day": Range(0.25, 0.8, log=True),
    "subscriptions_per_card": Range(0.5, 5.0, log=True),
}

RANGES: dict[str, dict[str, Range]] = {"simulate": SIMULATE_RANGES, "ledger": LEDGER_RANGES}


@dataclass(frozen=True)
class WorldSpec:
    """One world of the suite: its generator, seed, parameters and whether it is held back."""

    name: str
    generator: str
    seed: int
    held_back: bool
    params: dict[str, float | int] = field(default_factory=dict)

    def key(self) -> str:
        """A digest of what determines the world's data (the cache key)."""
        text = json.dumps(
            {"generator": self.generator, "seed": self.seed, "params": self.params},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"key": self.key()}


def draw_world(
    name: str,
    generator: str,
    index: int,
    draw_seed: int,
    held_back: bool,
    sizes: Mapping[str, int] | None = None,
) -> WorldSpec:
    """World number `index` of the suite drawn with `draw_seed`; `sizes` overrides the drawn
    sizes (a reduced suite). Its data seed is `draw_seed * 1000 + index`."""
    if generator not in RANGES:
        raise IssuerSeqError(
            f"world {name!r}: unknown generator {generator!r} (one of {GENERATORS})"
        )
    rng = np.random.default_rng([draw_seed, index])
    params = {key: r.draw(rng) for key, r in RANGES[generator].items()}
    for key, value in (sizes or {}).items():
        if key not in SIZES:
            raise IssuerSeqError(f"sizes: unknown key {key!r} (one of {sorted(SIZES)})")
        if int(value) <= 0:
            raise IssuerSeqError(f"sizes.{key} must be a positive integer, got {value}")
        params[key] = int(value)
    return WorldSpec(name, generator, draw_seed * 1000 + index, held_back, params)


def draw_suite(
    worlds: Sequence[Mapping[str, Any]], draw_seed: int, sizes: Mapping[str, int] | None = None
) -> list[WorldSpec]:
    """The suite's worlds from its definition: a list of {name, generator, held_back}."""
    names = [str(w["name"]) for w in worlds]
    if len(set(names)) != len(names):
        raise IssuerSeqError(f"suite worlds: duplicate names in {names}")
    return [
        draw_world(
            str(w["name"]),
            str(w["generator"]),
            i,
            draw_seed,
            bool(w.get("held_back", False)),
            sizes,
        )
        for i, w in enumerate(worlds)
    ]


def generate(spec: WorldSpec, data_dir: Path, start: str = "2026-01-05") -> dict[str, Any]:
    """Write the world's transactions.parquet, truth.parquet and meta.json under `data_dir`."""
    if spec.generator == "ledger":
        from issuer_seq.suite.ledger import LedgerParams
        from issuer_seq.suite.ledger import generate as ledger_generate

        return ledger_generate(LedgerParams(seed=spec.seed, start=start, **spec.params), data_dir)
    from issuer_seq.simulate import SimConfig, WorldParams, simulate

    world = WorldParams(**spec.params)  # type: ignore[arg-type]
    return simulate(SimConfig(world=world, seed=spec.seed, start=start), data_dir, progress=False)
