"""The design targets (docs/targets.md) checked against one bench run's measurements.

Each measurement has one target in conf/bench.yaml `targets`, named after it, giving one
bound: `at_least` or `at_most`, the goal. An `at_most` target may also give a `ceiling`, the
value it must never exceed even where the goal is missed (`within_ceiling`). A measurement
the run did not take (e.g. the LightGBM arm disabled) leaves its target neither met nor
missed: `met` is None.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from issuer_seq.errors import IssuerSeqError

BOUNDS: dict[str, Callable[[float, float], bool]] = {
    "at_least": operator.ge,
    "at_most": operator.le,
}


def validate_targets(targets: Mapping[str, Mapping[str, float]], measured: Iterable[str]) -> None:
    """Raise unless every measurement has a target giving exactly one known bound: a typo in
    the config must fail before the benchmarks run, not read as a target silently dropped."""
    names = list(measured)
    if missing := [name for name in names if name not in targets]:
        raise IssuerSeqError(f"targets: none given for {', '.join(missing)}")
    for name, target in targets.items():
        if name not in names:
            raise IssuerSeqError(
                f"targets.{name}: the bench measures no such thing ({', '.join(names)})"
            )
        bounds = [k for k in target if k in BOUNDS]
        if len(bounds) != 1 or set(target) - {*BOUNDS, "ceiling"}:
            raise IssuerSeqError(
                f"targets.{name}: give one bound, at_least or at_most (and at most a ceiling)"
            )
        if "ceiling" in target and (
            bounds[0] != "at_most" or float(target["ceiling"]) < float(target["at_most"])
        ):
            raise IssuerSeqError(f"targets.{name}: a ceiling goes with at_most, at or above it")


def check_targets(
    targets: Mapping[str, Mapping[str, float]], measured: Mapping[str, float | None]
) -> dict[str, dict[str, Any]]:
    """{target: {"measured": value, <bound>: bound, "met": True, False or None}}, plus
    `ceiling` and `within_ceiling` where the target gives a ceiling."""
    validate_targets(targets, measured)
    checked: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        kind = next(k for k in target if k in BOUNDS)
        bound, value = target[kind], measured[name]
        met = None if value is None else bool(BOUNDS[kind](float(value), float(bound)))
        checked[name] = {"measured": value, kind: bound, "met": met}
        if "ceiling" in target:
            ceiling = target["ceiling"]
            within = None if value is None else float(value) <= float(ceiling)
            checked[name] |= {"ceiling": ceiling, "within_ceiling": within}
    return checked


def describe(name: str, check: Mapping[str, Any]) -> str:
    """One line of the bench's summary: the measurement, its bound, met or missed."""
    kind = next(k for k in check if k in BOUNDS)
    bound = f"{kind.replace('_', ' ')} {check[kind]:g}"
    if "ceiling" in check:
        bound += f", never above {check['ceiling']:g}"
    if check["met"] is None:
        return f"target {name} ({bound}): not measured"
    verdict = "met" if check["met"] else "missed"
    if "ceiling" in check and not check["met"]:
        verdict += ", within the ceiling" if check["within_ceiling"] else ", above the ceiling"
    return f"target {name}: {check['measured']:.3g} ({bound}): {verdict}"
