"""Where the transformer's test log loss differs from LightGBM's, segment by segment.

python scripts/segments.py DATA_DIR RUN_DIR [--threads N]

RUN_DIR is a finished `issuer-seq evaluate` run: its calibrated network and the LightGBM
model evaluate saved (`baselines/lightgbm`). Both score the test split; for each segment
(first attempts and retries; retries by the cause of the payment's previous decline and by
the time since it; customer- and merchant-initiated) the script prints each model's mean
log loss and the segment's share of the overall difference (its rows' summed difference /
all test rows). Segments come from the log alone, so a user's own log works too.

It also prints both models' log loss and AUROC on the whole test split and, from a
paired bootstrap (`--bootstrap N` resamples of the test attempts, scipy.stats.bootstrap; 0
skips it), 95% intervals of the differences transformer - LightGBM: whether a lead is
larger than the test split's sampling noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.baselines.dataset import approval_frame
from issuer_seq.baselines.saved_lightgbm import LIGHTGBM_DIR
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.store import TEST
from issuer_seq.evaluate.paired import differences, log_loss
from issuer_seq.evaluate.run import predict
from issuer_seq.schema import APPROVED_CODE, load_log
from issuer_seq.train.trained_run import TrainedRun

#: retries by the time since the payment's previous attempt: (label, from seconds, to seconds)
DELAYS = (
    ("under 10 min", 0, 600),
    ("10 min to 3 h", 600, 3 * 3600),
    ("3 h to 1 d", 3 * 3600, 86_400),
    ("1 d to 3 d", 86_400, 3 * 86_400),
    ("3 d and more", 3 * 86_400, np.inf),
)


def segments(
    data_dir: Path, run_dir: Path, threads: int | None, resamples: int = 0
) -> dict[str, dict[str, Any]]:
    vlog = load_log(data_dir)
    frame = vlog.frame.reset_index(drop=True)  # time-sorted: the store's row order
    run = TrainedRun.load(run_dir)
    net, store = run.net, run.build_store(vlog)
    test = store.rows(TEST)
    p_transformer, _ = predict(net, store, test)
    features = sql_features(frame, threads=threads)
    rows = approval_frame(frame, features).iloc[test]
    p_lightgbm = LightGBMModel.load(run_dir / LIGHTGBM_DIR).predict_proba(rows)

    y = (frame["response_code"].to_numpy(dtype=object)[test] == APPROVED_CODE).astype(float)
    loss = {"transformer": log_loss(p_transformer, y), "lightgbm": log_loss(p_lightgbm, y)}
    attempt = frame["attempt"].to_numpy()[test]
    retry = attempt > 1
    prev_cause = features["prev_cause"].astype("string").fillna("none").to_numpy(object)[test]
    since = features["secs_since_prev_attempt"].to_numpy(dtype=float, na_value=np.nan)[test]
    initiator = frame["initiator"].to_numpy(dtype=object)[test]

    masks: dict[str, np.ndarray] = {
        "all": np.ones(len(test), bool),
        "first attempts": ~retry,
        "retries": retry,
    }
    for cause in sorted(set(prev_cause[retry])):
        masks[f"retries after {cause}"] = retry & (prev_cause == cause)
    for label, lo, hi in DELAYS:
        masks[f"retries {label} later"] = retry & (since >= lo) & (since < hi)
    for who in ("CIT", "MIT"):
        masks[who] = initiator == who

    out: dict[str, dict[str, Any]] = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        diff = loss["transformer"][mask] - loss["lightgbm"][mask]
        out[name] = {
            "rows": int(mask.sum()),
            "share_of_rows": round(float(mask.mean()), 4),
            "transformer_logloss": round(float(loss["transformer"][mask].mean()), 4),
            "lightgbm_logloss": round(float(loss["lightgbm"][mask].mean()), 4),
            "gap_contribution": round(float(diff.sum() / len(test)), 5),
        }
    out["difference"] = differences(y, p_transformer, p_lightgbm, resamples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples; 0: none")
    args = parser.parse_args()
    result = segments(args.data_dir, args.run_dir, args.threads, args.bootstrap)
    difference = result.pop("difference")
    print(pd.DataFrame(result).T.to_string())
    for name, d in difference.items():
        lo, hi = d.get("ci95", (None, None))
        interval = "" if lo is None else f" (95% interval {lo:+.5f} to {hi:+.5f})"
        print(
            f"{name}: transformer {d['transformer']:.5f}, lightgbm {d['lightgbm']:.5f},"
            f" difference {d['difference']:+.5f}{interval}"
        )
    result["difference"] = difference
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
