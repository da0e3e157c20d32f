"""A tree-based retry model: p(retry approved | decline, delay), for every delay of the grid.

Trained on observed retries (`dataset.retry_frame`): the decline's SQL features (history
strictly before the decline), the decline itself (response code, advice code, cause) and the
delay until the retry (seconds, and its grid bucket). To score a decline it is asked about
each grid delay in turn, so a policy can compare them all (`predict_curve`). The features
are those of the decline's moment: what happens between the decline and the retry is not
known when the delay is chosen.

The logging policy chose delays by cause, initiator and advice code, all of which are
features here, so the plain conditional fit is unbiased for the logged population; set
`use_weights` to weight examples by 1 / propensity (as the transformer's retry head does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import pandas as pd

from issuer_seq.baselines.dataset import with_delay
from issuer_seq.baselines.protocol import Baseline
from issuer_seq.baselines.trees import LightGBMModel
from issuer_seq.delays import DEFAULT_GRID, grid_seconds

#: LightGBM settings for retry frames: tens of thousands of rows rather than a million
RETRY_LIGHTGBM_PARAMS: dict[str, object] = {
    "learning_rate": 0.03,
    "num_leaves": 31,
    "min_child_samples": 50,
    "min_data_per_group": 50,
}

RETRY_SPACE: dict[str, list[object]] = {"num_leaves": [15, 31], "min_child_samples": [50, 200]}


class RetryTrees:
    """Composes any `Baseline` (LightGBM by default) with the retry delay grid."""

    def __init__(self, model: Baseline | None = None, grid: Sequence[str] = DEFAULT_GRID) -> None:
        self.model: Baseline = model if model is not None else LightGBMModel(RETRY_LIGHTGBM_PARAMS)
        self.grid = tuple(grid)
        self.grid_s = grid_seconds(self.grid)

    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> Self:
        """Fit on retry frames (`dataset.retry_frame`) split by the decline's time."""
        self.model.fit(train, val)
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N,) p(retry approved) at each row's own DELAY_S / DELAY_BUCKET."""
        return self.model.predict_proba(frame)

    def predict_curve(self, declines: pd.DataFrame) -> np.ndarray:
        """(N, K) p(retry approved) after each grid delay, for a decline frame (no delay)."""
        curve = np.empty((len(declines), len(self.grid_s)), dtype=np.float64)
        for k, seconds in enumerate(self.grid_s):
            curve[:, k] = self.model.predict_proba(with_delay(declines, float(seconds), k))
        return curve
