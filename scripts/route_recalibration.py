"""Route recalibration settings valued side by side on one trained run.

python scripts/route_recalibration.py DATA_DIR RUN_DIR [--min-evidence 0 3.84 10.83]
    [--prior-sd 0.2] [--bootstrap 200] [--out FILE.json]

RUN_DIR is a finished `issuer-seq evaluate` run (LightGBM's saved model is used when there).
The models' per-route approval of the test split, and of the day before it for the warm-up,
is computed once (`evaluate`'s `routing_inputs`); then `evaluate`'s routing section runs once
per setting of `min_evidence` (docs/routing.md, "Route choice recalibrated per issuer x
route"). For each setting it prints each model's share of the oracle's uplift over static
routing recalibrated, the paired change against the model's own routing, and the shares by
condition (`by_condition`: during an acquirer outage, an issuer's episode, or steady), so a
setting is chosen on where it gains and where it loses. Needs the truth (a synthetic log).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from issuer_seq.data.store import TEST
from issuer_seq.evaluate.routing import evaluate_routing
from issuer_seq.evaluate.run import load_truth, routing_inputs
from issuer_seq.recalibration import RouteRecalibrationSettings
from issuer_seq.schema import load_log
from issuer_seq.train.trained_run import TrainedRun


def compare(
    data_dir: Path,
    run_dir: Path,
    settings: list[RouteRecalibrationSettings],
    n_bootstrap: int,
) -> list[dict[str, Any]]:
    """One routing section per setting, the per-route predictions computed once."""
    run = TrainedRun.load(run_dir)
    vlog = load_log(data_dir)
    store = run.build_store(vlog, None)
    grid = [str(g) for g in run.spec["store"]["delay_grid"]]
    truth = load_truth(data_dir, store, grid)
    if truth is None:
        raise SystemExit(f"{data_dir} has no truth.parquet: the settings cannot be valued")
    test = store.rows(TEST)
    window = max(s.window_h for s in settings)
    inputs = routing_inputs(vlog, data_dir, run, store, test, truth, warmup_h=window)
    if not inputs["predictors"]:
        raise SystemExit(f"{data_dir}: the log has no routes and propensities")
    return [evaluate_routing(**inputs, recalibration=s, n_bootstrap=n_bootstrap) for s in settings]


def summary(section: dict[str, Any]) -> dict[str, Any]:
    """The figures that tell settings apart: shares overall (with intervals), the paired
    changes against the models' own routing, and the shares by condition."""
    policies = section["policies"]
    out: dict[str, Any] = {
        "settings": section["route_recalibration"],
        "share_of_oracle_uplift": {
            name: p["share_of_oracle_uplift"] for name, p in policies.items()
        },
        "versus": {
            name: p["versus"]["share_of_oracle_uplift_change"]
            for name, p in policies.items()
            if "versus" in p
        },
        "by_condition": {
            name: {"part": c["oracle_uplift_share"]} | c["share_of_oracle_uplift"]
            for name, c in section["by_condition"].items()
        },
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--min-evidence", type=float, nargs="+", default=[0.0, 3.84, 10.83])
    parser.add_argument("--prior-sd", type=float, default=RouteRecalibrationSettings.prior_sd)
    parser.add_argument("--bootstrap", type=int, default=200, help="payment resamples")
    parser.add_argument("--out", type=Path, default=None, help="write the summaries as JSON")
    args = parser.parse_args()
    settings = [
        RouteRecalibrationSettings(prior_sd=args.prior_sd, min_evidence=m)
        for m in args.min_evidence
    ]
    rows = [summary(s) for s in compare(args.data_dir, args.run_dir, settings, args.bootstrap)]
    for row in rows:
        print(f"min_evidence {row['settings']['min_evidence']:g}:")
        for name, share in row["share_of_oracle_uplift"].items():
            c = row["versus"].get(name)
            against = ""
            if c is not None:
                against = f"  change {c['value']:+.1%} [{c['low']:+.1%}, {c['high']:+.1%}]"
            print(f"  {name:26s} {share['value']:7.1%}{against}")
        for name, shares in row["by_condition"].items():
            cells = ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if v is not None)
            print(f"  {name}: {cells}")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
