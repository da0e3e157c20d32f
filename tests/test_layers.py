"""Imports run one way: each part of the package imports only the parts below it.

Data flows log -> store -> batches -> network -> metrics / export -> bundle -> scorer, and
the scorer never reaches torch, Lightning or the model code (tests/test_scorer.py checks the
running process). Every `import` counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import issuer_seq

PACKAGE = Path(issuer_seq.__file__).parent

# Lower ranks first; a part may import its own modules and those of lower ranks only, so
# parts of one rank never import each other.
RANKS: dict[str, int] = {
    "errors": 0,
    "timestamps": 0,
    "progress": 0,
    "delays": 1,
    "recalibration": 1,  # the intercept that follows recent outcomes: numpy only
    "rules": 1,
    "schema": 2,
    "features": 2,
    "retry_policy": 2,
    "simulate": 3,
    "routing": 3,  # route tables, routing policies and their valuation: numpy and pandas
    "data": 3,
    "model": 3,
    "baselines": 4,
    "suite": 4,  # the suite's worlds: the simulator's and its own ledger generator
    # the scorer reads a fused network's aggregates with the trees' online code (baselines/)
    "serve": 5,
    "train": 5,  # beside serve/: the scorer never reaches torch
    "evaluate": 6,
    "export": 6,
    "bench": 7,  # beside report/: neither needs the other
    "report": 7,
    "commands": 8,
    "cli": 9,
}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            dotted = name.split(".")
            if dotted[0] == "issuer_seq" and len(dotted) > 1:
                parts.add(dotted[1])
    return parts


def test_every_part_has_a_rank() -> None:
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(RANKS), f"give these a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_imports_run_one_way() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part == "__init__":
            continue
        for other in imported_parts(path) - {part}:
            if RANKS[other] >= RANKS[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_scorer_and_training_stay_apart() -> None:
    assert RANKS["serve"] == RANKS["train"]  # so neither may import the other
    assert RANKS["baselines"] < RANKS["serve"]  # the trees never import the scorer


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from issuer_seq.serve.scorer import Scorer\n")
    assert imported_parts(module) == {"serve"}
