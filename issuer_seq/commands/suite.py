"""`issuer-seq suite`: the default recipe against LightGBM and the oracle on a suite of worlds.

For each world of the suite (conf/suite/, parameters drawn by issuer_seq/suite/worlds.py):
generate its data under `<data_root>/<world>` (skipped when the data there was generated
with the same parameters), train with `issuer-seq train`'s configuration plus
`suite.train_overrides` (the same code as the train command), evaluate as `issuer-seq
evaluate` does (the transformer, LightGBM with its default search, the base rate and the
oracle), then score the test split with the transformer and the saved LightGBM model for a
paired bootstrap of their differences, and (`ceiling=true`) fit LightGBM to the world's truth:
the oracle share a model of the SQL features can reach (issuer_seq/evaluate/ceiling.py).
`<out_dir>/suite.json` and `suite.md` are rewritten after every world, so an interrupted
suite keeps what it finished. Held-back worlds run only with `include_held_back=true` and are
reported apart.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from issuer_seq.baselines.dataset import approval_frame
from issuer_seq.baselines.protocol import LABEL
from issuer_seq.baselines.saved_lightgbm import LIGHTGBM_DIR
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.commands import evaluate as evaluate_command
from issuer_seq.commands.train import train
from issuer_seq.data.store import TEST, EventStore
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.ceiling import truth_ceiling
from issuer_seq.evaluate.paired import differences
from issuer_seq.evaluate.run import load_truth, predict
from issuer_seq.progress import bar, stage
from issuer_seq.schema import load_log
from issuer_seq.suite.report import (
    markdown,
    of_ceiling,
    world_metrics,
    world_recalibrated,
    world_routing,
)
from issuer_seq.suite.worlds import WorldSpec, draw_suite, generate
from issuer_seq.train.trained_run import TrainedRun

log = logging.getLogger(__name__)

#: written beside a world's data: the spec it was generated from (the cache check)
WORLD_FILE = "suite_world.json"


def _strings(items: Any) -> list[str]:
    return [str(x) for x in (items or [])]


def ensure_data(spec: WorldSpec, data_dir: Path, start: str) -> tuple[dict[str, Any], bool]:
    """The world's meta.json, generating the data unless `data_dir` holds this very world.
    Returns (meta, generated)."""
    marker = data_dir / WORLD_FILE
    wanted = spec.to_json() | {"start": start}
    if marker.exists() and (data_dir / "transactions.parquet").exists():
        if json.loads(marker.read_text()) == wanted:
            return json.loads((data_dir / "meta.json").read_text()), False
    marker.unlink(missing_ok=True)
    meta = generate(spec, data_dir, start=start)
    marker.write_text(json.dumps(wanted, indent=2))
    return meta, True


def scoring_inputs(
    data_dir: Path, run_dir: Path, threads: int | None
) -> tuple[TrainedRun, EventStore, pd.DataFrame]:
    """The trained run, its store of the log (the examples evaluate scored) and the SQL
    features of every attempt (an `approval_frame` in the store's row order)."""
    vlog = load_log(data_dir)
    frame = vlog.frame.reset_index(drop=True)  # time-sorted: the store's row order
    run = TrainedRun.load(run_dir)
    features = sql_features(frame, threads=threads)
    store = run.build_store(vlog, features if run.store_config.lag_s == 0 else None)
    return run, store, approval_frame(frame, features)


def paired_test(
    run: TrainedRun, store: EventStore, data: pd.DataFrame, resamples: int
) -> dict[str, dict[str, Any]]:
    """Transformer vs the LightGBM model evaluate saved, on the test split, with a paired
    bootstrap of the rows (as scripts/segments.py does)."""
    test = store.rows(TEST)
    p_transformer, _ = predict(run.net, store, test)
    rows = data.iloc[test]
    p_lightgbm = LightGBMModel.load(run.path / LIGHTGBM_DIR).predict_proba(rows)
    y = rows[LABEL].to_numpy()
    return differences(y, np.asarray(p_transformer), np.asarray(p_lightgbm), resamples)


def world_ceiling(
    data_dir: Path, store: EventStore, data: pd.DataFrame, threads: int | None
) -> dict[str, Any]:
    """LightGBM fitted to the world's truth (issuer_seq/evaluate/ceiling.py), or why not."""
    truth = load_truth(data_dir, store, [])
    if truth is None:
        log.warning("%s: no truth.parquet, so no ceiling", data_dir)
        return {"skipped": "no truth"}
    return truth_ceiling(data, store, truth["p_approve"].to_numpy(), threads)


def run_world(cfg: DictConfig, spec: WorldSpec) -> dict[str, Any]:
    """Data, training, evaluation and the paired comparison of one world."""
    s = cfg.suite
    data_dir = Path(cfg.data_root) / spec.name
    run_dir = Path(cfg.run_root) / spec.name
    paths = [f"data_dir={data_dir}", f"run_dir={run_dir}", f"seed={cfg.seed}"]
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    with stage(log, f"{spec.name}: data ({spec.generator})"):
        meta, generated = ensure_data(spec, data_dir, str(cfg.start))
    seconds["generate"] = round(time.perf_counter() - t0, 1) if generated else 0.0

    t0 = time.perf_counter()
    with stage(log, f"{spec.name}: train"):
        train(compose("train", overrides=[*paths, *_strings(s.train_overrides)]))
    seconds["train"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    with stage(log, f"{spec.name}: evaluate"):
        # Only this world's run: no size variants or ablation runs found on disk.
        overrides = [*paths, "~variants", "~ablations", *_strings(s.evaluate_overrides)]
        eval_cfg = compose("evaluate", overrides=overrides)
        evaluation = evaluate_command.run(eval_cfg)
    seconds["evaluate"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    with stage(log, f"{spec.name}: paired bootstrap"):
        threads = eval_cfg.baselines.threads
        trained, store, data = scoring_inputs(data_dir, run_dir, threads)
        paired = paired_test(trained, store, data, int(s.bootstrap_resamples))
    seconds["bootstrap"] = round(time.perf_counter() - t0, 1)

    ceiling: dict[str, Any] = {"skipped": "ceiling=false"}
    if cfg.ceiling:
        with stage(log, f"{spec.name}: ceiling (LightGBM fitted to the truth)"):
            ceiling = world_ceiling(data_dir, store, data, threads)
        seconds["ceiling"] = ceiling.get("seconds", 0.0)
    metrics = world_metrics(evaluation)

    return {
        "generator": spec.generator,
        "seed": spec.seed,
        "held_back": spec.held_back,
        "params": spec.params,
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "data": {k: meta[k] for k in ("rows", "approval_rate", "mit_share", "retry_share")},
        "test_examples": evaluation["split"]["test_examples"],
        "metrics": metrics,
        "recalibrated": world_recalibrated(evaluation),
        "routing": world_routing(evaluation),
        "ceiling": ceiling | of_ceiling(metrics, ceiling),
        "transformer_minus_lightgbm": paired,
        "seconds": seconds,
    }


def _only(specs: list[WorldSpec], todo: list[WorldSpec], names: list[str]) -> list[WorldSpec]:
    """The worlds of `todo` named in `only`, in the suite's order. A name the suite lacks, or
    a held-back world without include_held_back=true, is an error, never skipped silently."""
    known = {w.name for w in specs}
    unknown = sorted(set(names) - known)
    if unknown:
        raise IssuerSeqError(f"only: no world named {unknown} in the suite ({sorted(known)})")
    held = sorted(set(names) - {w.name for w in todo})
    if held:
        raise IssuerSeqError(f"only: {held} held back; they run only with include_held_back=true")
    return [w for w in todo if w.name in names]


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    s = cfg.suite
    sizes = OmegaConf.to_container(s.sizes) if s.get("sizes") else None
    specs = draw_suite(OmegaConf.to_container(s.worlds), int(s.draw_seed), sizes)  # type: ignore[arg-type]
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "worlds.json").write_text(json.dumps([w.to_json() for w in specs], indent=2))
    held = [w.name for w in specs if w.held_back]
    todo = [w for w in specs if bool(cfg.include_held_back) or not w.held_back]
    only = cfg.get("only")  # one name (`only=sim_a`) or a list (`only=[sim_a,sim_b]`)
    if only is not None:
        only = [str(only)] if isinstance(only, str) else _strings(only)
        todo = _only(specs, todo, only)
    log.info(
        "suite: %d worlds to run (%s); held back%s: %s; parameters in %s",
        len(todo),
        ", ".join(w.name for w in todo),
        "" if cfg.include_held_back else " (not run)",
        ", ".join(held) or "none",
        out_dir / "worlds.json",
    )
    choice = HydraConfig.get().runtime.choices.get("suite") if HydraConfig.initialized() else None
    result: dict[str, Any] = {
        "suite": str(choice or "custom"),
        "draw_seed": int(s.draw_seed),
        "include_held_back": bool(cfg.include_held_back),
        "only": only,
        "held_back_names": held,
        "train_overrides": _strings(s.train_overrides),
        "evaluate_overrides": _strings(s.evaluate_overrides),
        "bootstrap_resamples": int(s.bootstrap_resamples),
        "ceiling": bool(cfg.ceiling),
        "worlds": {},
        "held_back_worlds": {},
        "seconds": 0.0,
    }
    if cfg.dry_run:
        log.info("dry run: wrote %s", out_dir / "worlds.json")
        return result

    def write() -> None:
        result["seconds"] = round(time.perf_counter() - started, 1)
        (out_dir / "suite.json").write_text(json.dumps(result, indent=2))
        (out_dir / "suite.md").write_text(markdown(result))

    for spec in bar(todo, desc="suite", total=len(todo)):
        part = "held_back_worlds" if spec.held_back else "worlds"
        result[part][spec.name] = run_world(cfg, spec)
        write()
    write()
    log.info("\n%s", markdown(result))
    log.info("wrote %s and %s", out_dir / "suite.json", out_dir / "suite.md")
    return result
