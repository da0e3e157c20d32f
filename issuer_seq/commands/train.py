"""`issuer-seq train`: fit the transformer; returns the validation log loss (for sweeps).

The one place the training config is read: it seeds, builds the store, instantiates the
network, optimizer and logger from their config groups, and hands typed parts to
`issuer_seq.train.run.train`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from issuer_seq.baselines.fused import N_FUSED, fused_frame_inputs
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.datamodule import IssuerSeqDataModule
from issuer_seq.data.store import TRAIN, EventStore, StoreConfig, build_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.progress import stage
from issuer_seq.schema import ValidatedLog, load_log
from issuer_seq.train import run as training
from issuer_seq.train.module import IssuerSeqModule

log = logging.getLogger(__name__)


def _plain(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def train(cfg: DictConfig, store: EventStore | None = None) -> float:
    """Train as `cfg` (conf/train.yaml composed) says; `store` (built from cfg.data_dir with
    cfg.data) saves rebuilding it. The calibrated validation log loss."""
    if not float(cfg.latest_answer_lr_scale) > 0:
        raise IssuerSeqError(
            f"latest_answer_lr_scale must be > 0, got {cfg.latest_answer_lr_scale}"
        )
    # Seeded before the network is built: its initial weights come from this seed.
    pl.seed_everything(int(cfg.seed), workers=True)
    vlog = None
    if store is None:
        vlog = load_log(cfg.data_dir)
        store = build_store(vlog, StoreConfig.from_json(cfg.data))
    options = _plain(cfg.model)
    fuse = bool(options.pop("fuse", False))
    net_kwargs = {k: v for k, v in options.items() if k != "_target_"}
    if fuse:  # the trees' aggregates as an input (baselines/fused.py)
        net_kwargs["n_fused"] = N_FUSED
        if store.fused is None:
            frame = (vlog or load_log(cfg.data_dir)).frame
            with stage(log, "the fused aggregates"):
                store.fused = fused_frame_inputs(frame, lag_s=store.config.lag_s)
    net: IssuerSeqNet = hydra.utils.get_class(options["_target_"])(
        vocab_sizes=store.vocab.sizes(), n_delays=len(store.config.delay_grid), **net_kwargs
    )
    if fuse:
        assert store.fused is not None
        net.set_fused_moments(torch.from_numpy(store.fused[store.rows(TRAIN)]))
    module = IssuerSeqModule(
        net,
        DeviceStore(store),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        warmup_steps=int(cfg.warmup_steps),
        retry_loss_weight=float(cfg.retry_loss_weight),
        retry_propensity_weighting=bool(cfg.retry_propensity_weighting),
        cause_loss_weight=float(cfg.cause_loss_weight),
        latest_answer_lr_scale=float(cfg.latest_answer_lr_scale),
    )
    datamodule = IssuerSeqDataModule(
        store,
        batch_size=int(cfg.data.batch_size),
        eval_batch_size=int(cfg.data.eval_batch_size),
        max_train_examples=cfg.data.max_train_examples,
        max_eval_examples=cfg.data.max_eval_examples,
        seed=int(cfg.seed),
    )
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else None
    if logger is not None:
        logger.log_hyperparams(_plain(cfg))
    return training.train(
        module,
        datamodule,
        run_dir=Path(cfg.run_dir),
        net_kwargs=net_kwargs,
        config=OmegaConf.to_yaml(cfg, resolve=True),
        trainer_options=_plain(cfg.trainer),
        logger=logger,
        resume=bool(cfg.resume),
        early_stopping=None if cfg.early_stopping is None else _plain(cfg.early_stopping),
        trees_check=trees_check(cfg, vlog, store),
    )


def trees_check(
    cfg: DictConfig, vlog: ValidatedLog | None, store: EventStore
) -> Callable[[np.ndarray, float], dict[str, Any]] | None:
    """`versus_trees` bound to the log and `cfg.versus_trees`; None when disabled."""
    check = cfg.get("versus_trees")
    if check is None or not check.enabled:
        return None
    frame = (vlog or load_log(cfg.data_dir)).frame
    return partial(
        training.versus_trees,
        frame,
        store.split,
        max_train_rows=check.max_train_rows,
        threads=check.threads,
        fused=bool(cfg.model.get("fuse", False)),
    )


def run(cfg: DictConfig) -> float:
    return train(cfg)
