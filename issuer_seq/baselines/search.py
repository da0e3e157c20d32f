"""A small hyperparameter search selected by validation log loss.

The search space is a plain dict, name -> list of values (what a Hydra config holds), e.g.
`{"num_leaves": [31, 127], "learning_rate": [0.05, 0.1]}`. Trials are points of its grid;
when the grid is larger than `n_trials`, a seeded sample of it. Each trial's model is fitted
(and, for trees, early-stopped) on the training frame against the validation frame, and the
one with the lowest validation log loss wins. The test split is never looked at.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from issuer_seq.baselines.protocol import Baseline, labels, log_loss, weights
from issuer_seq.errors import IssuerSeqError
from issuer_seq.progress import bar

log = logging.getLogger(__name__)


@dataclass
class Trial:
    params: dict[str, Any]
    val_logloss: float
    fit_s: float


@dataclass
class SearchResult:
    model: Baseline  # the best trial's fitted model
    params: dict[str, Any]
    val_logloss: float
    trials: list[Trial] = field(default_factory=list)


def grid_points(
    space: Mapping[str, Sequence[Any]], n_trials: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Points of the grid of `space` (all, or a seeded sample of `n_trials`), in grid order."""
    names = list(space)
    for name in names:
        if isinstance(space[name], str) or len(space[name]) == 0:
            raise IssuerSeqError(f"search space {name!r} must be a non-empty list of values")
    points = [
        dict(zip(names, values, strict=True)) for values in itertools.product(*space.values())
    ]
    if n_trials is not None and n_trials < len(points):
        pick = np.random.default_rng(seed).choice(len(points), n_trials, replace=False)
        points = [points[i] for i in sorted(pick)]
    return points


def search(
    make: Callable[[dict[str, Any]], Baseline],
    space: Mapping[str, Sequence[Any]],
    train: pd.DataFrame,
    val: pd.DataFrame,
    n_trials: int | None = None,
    seed: int = 0,
    weighted: bool = False,
    name: str = "search",
) -> SearchResult:
    """Fit `make(params)` for each trial; keep the model with the lowest validation log loss.

    `weighted` scores the validation log loss with the frame's WEIGHT column (retry frames).
    `name` labels the progress: a bar over the trials and a log line per trial.
    """
    points = grid_points(space, n_trials, seed) if space else [{}]
    y_val, w_val = labels(val), weights(val, weighted)
    best: SearchResult | None = None
    trials: list[Trial] = []
    for i, params in enumerate(bar(points, name), 1):
        started, cpu = time.perf_counter(), time.process_time()
        model = make(dict(params)).fit(train, val)
        loss = log_loss(y_val, model.predict_proba(val), w_val)
        trials.append(Trial(dict(params), loss, time.perf_counter() - started))
        log.info(
            "%s: trial %d/%d %s: validation log loss %.5f (%.1f s, CPU %.1f s)",
            name,
            i,
            len(points),
            params,
            loss,
            trials[-1].fit_s,
            time.process_time() - cpu,
        )
        if best is None or loss < best.val_logloss:
            best = SearchResult(model, dict(params), loss)
    assert best is not None
    best.trials = trials
    return best
