"""Which of LightGBM's SQL feature groups carry its lead, and how far back they reach.

python scripts/ablate_trees.py DATA_DIR [--threads N] [--k-card K]

Fits the baseline LightGBM (default parameters) on every SQL feature, then without each
group below, and prints the test AUROC and log loss of each fit. It also counts the test
attempts whose card's previous attempt at the same merchant lies more than K card events
back (K: the transformer's card history length), which the transformer cannot see.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from issuer_seq.baselines.dataset import approval_frame, by_split, split_of
from issuer_seq.baselines.protocol import labels
from issuer_seq.baselines.sql_features import sql_features
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.data.store import TEST
from issuer_seq.evaluate.metrics import approval_metrics
from issuer_seq.schema import load_log

#: group -> pattern of the feature columns it drops
GROUPS: dict[str, str] = {
    "issuer windows of 24 h to 30 d": r"^issuer_.*_(24h|7d|30d)$",
    "every issuer window": r"^issuer_.*_(10m|1h|24h|7d|30d)$",
    "card windows of 7 d and 30 d": r"^card_.*_(7d|30d)$",
    "card x merchant over the whole history": r"^cm_",
}


def ablate(data_dir: Path, threads: int | None, k_card: int) -> dict[str, object]:
    frame = load_log(data_dir).frame.reset_index(drop=True)  # time-sorted
    features = sql_features(frame, threads=threads)
    data = approval_frame(frame, features)
    split = split_of(frame)
    parts = by_split(data, split)
    test = np.flatnonzero(split == TEST)
    y = labels(data)[test]
    fits: dict[str, dict[str, float]] = {}
    for name, pattern in [("none", None), *GROUPS.items()]:
        dropped = [c for c in features.columns if pattern and re.search(pattern, c)]
        model = LightGBMModel(exclude=dropped, n_jobs=threads).fit(parts["train"], parts["val"])
        m = approval_metrics(model.predict_proba(data)[test], y)
        fits[name] = {
            "columns_dropped": len(dropped),
            "auroc": round(m["auroc"], 4),
            "logloss": round(m["logloss"], 4),
        }

    position = frame.groupby("card_id").cumcount().to_numpy()
    previous = frame.assign(_pos=position).groupby(["card_id", "merchant_id"])["_pos"].shift()
    gap = position[test] - previous.to_numpy()[test]  # NaN: no earlier attempt there
    return {
        "dropped_group": fits,
        "test_attempts": int(len(test)),
        "same_merchant_before": round(float(np.mean(~np.isnan(gap))), 3),
        f"same_merchant_beyond_{k_card}_events": round(float(np.mean(gap > k_card)), 3),
        "card_events_before_median": float(np.median(position[test])),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--k-card", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(ablate(args.data_dir, args.threads, args.k_card), indent=2))
