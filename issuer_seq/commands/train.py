"""`issuer-seq train`: fit the transformer; returns the validation log loss (for sweeps)."""

from __future__ import annotations

from omegaconf import DictConfig

from issuer_seq.train.run import train


def run(cfg: DictConfig) -> float:
    return train(cfg)
