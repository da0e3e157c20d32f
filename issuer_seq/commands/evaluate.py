"""`issuer-seq evaluate`: models and retry policies on the test split -> evaluation.json."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from issuer_seq.baselines.saved_lightgbm import LIGHTGBM_DIR
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.baselines import fit_baselines
from issuer_seq.evaluate.recommend import decide
from issuer_seq.evaluate.routing import recalibration_verdicts
from issuer_seq.evaluate.run import evaluate
from issuer_seq.recalibration import RouteRecalibrationSettings, settings_from

log = logging.getLogger(__name__)


def read_bench(path: Path) -> dict[str, Any]:
    """A bench.json (issuer-seq bench's) as a dict."""
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IssuerSeqError(f"{path} is not JSON: {e}") from e
    if not isinstance(out, dict):
        raise IssuerSeqError(f"{path} holds no JSON object")
    return out


def _bench(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The bench.json the recommendation cites: cfg.bench_json, else <run_dir>/bench.json when
    it exists (None: latency not measured)."""
    given = cfg.get("bench_json")
    path = Path(given) if given else run_dir / "bench.json"
    if not path.exists():
        if given:
            raise IssuerSeqError(f"bench_json={given} does not exist")
        return None
    return read_bench(path)


def latency_budget(cfg: DictConfig) -> float | None:
    """cfg.latency_budget_ms: the single-request p99 (ms) above which a model is not
    recommended (None: no budget)."""
    budget = cfg.get("latency_budget_ms")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
        raise IssuerSeqError(
            f"latency_budget_ms={budget!r}: give a positive number of milliseconds, or null"
        )
    return float(budget)


def redecide(evaluation_path: Path, bench_path: Path, budget_ms: float | None) -> dict[str, Any]:
    """Decide evaluation.json's recommendation again from the accuracy part it stores and a
    bench.json measured after it (as the demo's), and rewrite the file. Returns the new one."""
    evaluation = json.loads(evaluation_path.read_text())
    recommendation = decide(evaluation["recommendation"], read_bench(bench_path), budget_ms)
    evaluation["recommendation"] = recommendation
    evaluation_path.write_text(json.dumps(evaluation, indent=2))
    return recommendation


def _num(x: float | None) -> float:
    """evaluation.json's null (no finite estimate) as NaN for printing."""
    return float("nan") if x is None else x


def run(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    b = cfg.baselines
    result = evaluate(
        Path(cfg.data_dir),
        run_dir,
        baselines=partial(
            fit_baselines,
            models=[str(m) for m in b.models],
            retry_model=bool(b.retry_model),
            trials=b.trials,
            threads=b.threads,
            lightgbm_dir=run_dir / LIGHTGBM_DIR,
        )
        if b.models
        else None,
        ablations={str(k): Path(v) for k, v in (cfg.get("ablations") or {}).items()},
        variants={str(k): Path(v) for k, v in (cfg.get("variants") or {}).items()},
        bench=_bench(cfg, run_dir),
        latency_budget_ms=latency_budget(cfg),
        routes_file=Path(cfg.routes_file) if cfg.get("routes_file") else None,
        threads=b.threads,
        recalibration=settings_from(cfg.get("recalibration")),
        route_recalibration=settings_from(
            cfg.get("route_recalibration"), RouteRecalibrationSettings
        ),
    )
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    lines = [f"{'model':<22} {'AUROC':>7} {'AP(dec)':>8} {'logloss':>8} {'ECE':>7} {'oracle%':>8}"]
    for name, m in result["approval"].items():
        share = m.get("oracle_share")
        lines.append(
            f"{name:<22} {m['auroc']:>7.4f} {m['ap_decline']:>8.4f} {m['logloss']:>8.4f} "
            f"{m['ece']:>7.4f} {'' if share is None else f'{100 * share:>7.1f}%':>8}"
        )
    recal = result.get("recalibration")
    if recal:
        lines.append(
            f"recalibrated to the last {recal['settings']['window_h']:g} h of outcomes "
            f"(refitted every {recal['settings']['step_h']:g} h):"
        )
        for name in ("transformer", "lightgbm"):
            if name in recal:
                r = recal[name]
                lines.append(
                    f"  {name:<20} {r['auroc']:>7.4f} {'':>8} {r['logloss']:>8.4f} "
                    f"{r['ece']:>7.4f}  (log loss {r['logloss_change']:+.4f}, "
                    f"ECE {r['ece_change']:+.4f})"
                )
    policies = result.get("retry", {}).get("policies", {})
    if policies:
        lines.append(
            f"{'retry policy':<22} {'value':>10} {'recovered':>11} {'rate':>6} {'viol.':>6}"
        )
        for name, r in policies.items():
            lines.append(
                f"{name:<22} {r['value']:>10.2f} {r['expected_recovered_amount']:>11.2f} "
                f"{r['recovery_rate'] or 0:>6.3f} {r['violations']:>6d}"
            )
    routing = result.get("routing", {})
    if routing.get("mode") == "off_policy_only":
        lines.append(f"{'routing (off-policy)':<26} {'SNIPS value':>12} {'DR value':>10}")
        value = {
            (r["policy"], r["estimator"]): r["estimate"]
            for r in routing["ope"]
            if r["reward"] == "value"
        }
        for name in routing["policies"]:
            snips, dr = (value[(name, e)] for e in ("snips", "dr"))
            lines.append(f"{name:<26} {_num(snips):>12.4f} {_num(dr):>10.4f}")
        lines.append(f"routing: {routing['note']} (value per attempt)")
    elif routing.get("applicable"):
        lines.append(f"{'routing policy':<26} {'value':>10} {'approvals':>10} {'oracle%':>8}")
        for name, r in routing["policies"].items():
            share = r["share_of_oracle_uplift"]["value"]
            lines.append(
                f"{name:<26} {r['value']['value']:>10.1f} {r['approvals']['value']:>10.1f} "
                f"{'' if share is None else f'{100 * share:>7.1f}%':>8}"
            )
        lines.extend(recalibration_verdicts(routing))
    elif routing:
        lines.append(f"routing: {routing['note']}")
    lines.append(f"recommendation: {result['recommendation']['text']}")
    log.info("\n".join(lines))
    log.info("wrote %s", run_dir / "evaluation.json")
    return result
