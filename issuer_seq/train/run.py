"""The training entry: fit -> finalize (best checkpoint, calibration, metrics) -> save.

Writes to `run_dir`: `checkpoints/` (best and last), `config.yaml` (resolved), `metrics.json`,
and the calibrated network for export and evaluation (`model.pt` + `model_spec.json`; see
`trained_run.py`). Returns the validation log loss, which sweeps minimize. The Hydra config
stays in `commands/train.py`, which builds the parts and passes them here.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_utilities.core import rank_zero
from pytorch_lightning.loggers import Logger
from sklearn.metrics import log_loss
from torchmetrics.classification import BinaryAUROC

from issuer_seq.baselines.base_rate import base_rate
from issuer_seq.baselines.protocol import LABEL
from issuer_seq.baselines.saved_lightgbm import fit_lightgbm
from issuer_seq.data.batches import DeviceStore, input_names
from issuer_seq.data.datamodule import IssuerSeqDataModule
from issuer_seq.data.store import TEST, TRAIN, VAL, EventStore, summarize_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.progress import stage
from issuer_seq.train.calibrate import calibrate, fit_scaling
from issuer_seq.train.infer import infer, observed_retries
from issuer_seq.train.module import IssuerSeqModule, LogLoss, approval_metrics
from issuer_seq.train.trained_run import TrainedRun

log = logging.getLogger(__name__)


class Throughput(pl.Callback):
    """Training samples/s over train batches only (validation pauses the clock)."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._last: float | None = None

    def _pause(self, *args: Any) -> None:
        self._last = None

    on_train_epoch_start = on_validation_start = _pause

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.samples += len(batch) if not isinstance(batch, dict) else len(batch["approved"])
        self._last = now

    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Without the notices Lightning prints on every run that no user of this entry can act
    on: an advert for its cloud logger (the Trainer's tip), the advice to add DataLoader
    workers (a batch is one indexing op on a row tensor; the gather runs in the module, on the
    device), the note that `on_after_batch_transfer` of the module wins over the DataModule
    (that is the design: the module gathers), a deprecation inside Lightning's own code and,
    for a run that ends before its first validation, the checkpoint's note that the metric
    is missing (`fit` says so in words a user can act on)."""
    tip = _DropTip()
    rank_zero.log.addFilter(tip)
    try:
        with warnings.catch_warnings():
            for message in (
                r".*does not have many workers",
                r"You have overridden `on_after_batch_transfer`",
                r".*isinstance\(treespec, LeafSpec\)` is deprecated",
                r"`ModelCheckpoint\(monitor='val/logloss'\)` could not find",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        rank_zero.log.removeFilter(tip)


def _early_stopping(options: Mapping[str, Any]) -> pl.callbacks.EarlyStopping:
    unknown = set(options) - {"patience", "min_delta"}
    if unknown:
        raise IssuerSeqError(f"early_stopping takes patience and min_delta, not {sorted(unknown)}")
    patience = int(options.get("patience", 2))
    min_delta = float(options.get("min_delta", 0.0))
    if patience < 1 or min_delta < 0:
        raise IssuerSeqError(
            f"early_stopping needs patience >= 1 and min_delta >= 0, got {patience}, {min_delta}"
        )
    # check_finite: a NaN validation loss stops the run rather than training on.
    return pl.callbacks.EarlyStopping(
        monitor="val/logloss",
        mode="min",
        patience=patience,
        min_delta=min_delta,
        check_finite=True,
        # after each validation, not at each training epoch's end: a run stopped by
        # trainer.max_steps before its epoch's validation has no val/logloss there
        check_on_train_epoch_end=False,
    )


@dataclass
class Fitted:
    trainer: pl.Trainer
    best_checkpoint: Path
    seconds: float
    samples_per_s: float  # over all processes


def fit(
    module: IssuerSeqModule,
    datamodule: IssuerSeqDataModule,
    run_dir: Path,
    trainer_options: Mapping[str, Any],
    logger: Logger | None = None,
    resume: bool = False,
    early_stopping: Mapping[str, Any] | None = None,
) -> Fitted:
    """Lightning's fit, checkpointing the best (validation log loss) and the last epoch into
    `run_dir/checkpoints`; `resume` continues from the last. `trainer_options`: keyword
    arguments of `pl.Trainer` (conf/trainer/, `max_time` the wall-time cap included);
    `early_stopping`: `patience` and `min_delta` of a stop on validation log loss (None: run
    every epoch)."""
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/logloss", mode="min"
    )
    # Every epoch's end, improved or not (save_last=True above would write it only when the
    # best is saved, and resume=true would go back to the best epoch).
    latest = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    throughput = Throughput()
    callbacks: list[pl.Callback] = [checkpoint, latest, throughput]
    if early_stopping is not None:
        callbacks.append(_early_stopping(early_stopping))
    with _quiet_lightning():
        trainer = pl.Trainer(
            **trainer_options,
            logger=logger if logger is not None else False,
            callbacks=callbacks,
            default_root_dir=str(run_dir),
            use_distributed_sampler=False,
        )
    ckpt_path = None
    if resume:
        last = ckpt_dir / "last.ckpt"
        if not last.exists():
            raise IssuerSeqError(f"resume=true but {last} does not exist")
        ckpt_path = str(last)
        log.info("resuming from %s", last)
    elif ckpt_dir.exists():
        # A fresh run into a used run_dir: old checkpoints would make Lightning write
        # best-v1.ckpt beside them and leave a stale best.ckpt behind.
        stale = sorted(ckpt_dir.glob("*.ckpt"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d checkpoint(s) of an earlier run in %s", len(stale), ckpt_dir)
    started = time.perf_counter()
    with _quiet_lightning():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if not checkpoint.best_model_path:
        log.warning(
            "no validation ran before the run ended (trainer.max_steps or max_time): "
            "keeping the last weights, which validation never compared"
        )
    return Fitted(
        trainer=trainer,
        best_checkpoint=Path(checkpoint.best_model_path or ckpt_dir / "last.ckpt"),
        seconds=time.perf_counter() - started,
        samples_per_s=throughput.rate() * trainer.world_size,
    )


def split_metrics(net: IssuerSeqNet, store: DeviceStore, rows: torch.Tensor) -> dict[str, Any]:
    """Calibrated approval metrics and retry-head metrics of one split."""
    out = infer(net, store, rows)
    p = out["p_approve"]
    approval = approval_metrics("", sync=False)
    approval.update(p, out["approved"].long())
    result = {"approval": {k: float(v) for k, v in approval.compute().items()}}
    observed = observed_retries(out)
    retry: dict[str, float | int] = {"observed": int(len(observed["retry"]))}
    if len(observed["retry"]) and 0 < float(observed["success"].mean()) < 1:
        pr = torch.sigmoid(observed["retry"] / net.retry_temperature.cpu())
        loss = LogLoss(sync_on_compute=False)
        loss.update(pr, observed["success"])
        auroc = BinaryAUROC(sync_on_compute=False)
        auroc.update(pr, observed["success"].long())
        retry.update(logloss=float(loss.compute()), auroc=float(auroc.compute()))
    result["retry"] = retry
    return result


def base_rate_metrics(store: EventStore, datamodule: IssuerSeqDataModule) -> dict[str, Any]:
    """The issuer x MCC base rate on the same val/test rows: the bar the model must clear.

    `val_calibrated`: on validation, the base rate calibrated there as the network is (a
    temperature and a shift of its logit, fitted on those rows): the network's shift gives
    it validation's approval level, which the training split's rates may miss, so the bar
    on validation gets it too (train/calibrate.py)."""
    p = torch.from_numpy(base_rate(store, store.rows(TRAIN))).double()
    approved = torch.from_numpy(store.approved)
    val = datamodule.split_rows[VAL]
    logit = torch.logit(p, eps=1e-6)
    t, shift = fit_scaling(logit[val], approved[val], shift=True)
    out = {}
    for name, rows, q in (
        ("val", val, p),
        ("test", datamodule.split_rows[TEST], p),
        ("val_calibrated", val, torch.sigmoid(logit / t + shift)),
    ):
        m = approval_metrics("", sync=False)
        m.update(q[rows].float(), approved[rows].long())
        out[name] = {k: float(v) for k, v in m.compute().items()}
    return out


def finalize(
    net: IssuerSeqNet,
    store: DeviceStore,
    datamodule: IssuerSeqDataModule,
    fitted: Fitted,
) -> dict[str, Any]:
    """Load the best checkpoint into `net`, calibrate it on validation; the run's metrics
    (`metrics.json` but its `dataset`). Runs on the device that trained (on a GPU, seconds
    rather than minutes), and leaves `net` and `store` on the CPU."""
    state = torch.load(fitted.best_checkpoint, map_location="cpu", weights_only=False)
    net.load_state_dict(
        {k[len("net.") :]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    )
    best_epoch = int(state["epoch"])
    device = fitted.trainer.strategy.root_device
    net.to(device).eval()
    store.to(device)
    val_rows = torch.from_numpy(datamodule.split_rows[VAL])
    test_rows = torch.from_numpy(datamodule.split_rows[TEST])
    calibration = calibrate(net, store, val_rows)
    val = split_metrics(net, store, val_rows)
    test = split_metrics(net, store, test_rows)
    net.cpu()
    store.to("cpu")
    trainer = fitted.trainer
    stopper = trainer.early_stopping_callback
    return {
        "approval": {"val": val["approval"], "test": test["approval"]},
        "base_rate": base_rate_metrics(datamodule.store, datamodule),
        "retry": {"val": val["retry"], "test": test["retry"]},
        "calibration": calibration,
        "training": {
            "best_checkpoint": fitted.best_checkpoint.name,
            "best_epoch": best_epoch,  # 0-based, the epoch whose weights are model.pt's
            "epochs": int(trainer.current_epoch),
            # 0-based epoch at which validation stopped the run; None: it ran to its limit
            "early_stopped_epoch": (
                int(stopper.stopped_epoch)
                if stopper is not None and stopper.stopped_epoch
                else None
            ),
            "steps": int(trainer.global_step),
            "fit_seconds": round(fitted.seconds, 1),
            "train_samples_per_s": round(fitted.samples_per_s, 1),
            "parameters": sum(p.numel() for p in net.parameters()),
        },
    }


def train(
    module: IssuerSeqModule,
    datamodule: IssuerSeqDataModule,
    run_dir: Path,
    net_kwargs: Mapping[str, Any],
    config: str,
    trainer_options: Mapping[str, Any],
    logger: Logger | None = None,
    resume: bool = False,
    early_stopping: Mapping[str, Any] | None = None,
    trees_check: Callable[[np.ndarray, float], dict[str, Any]] | None = None,
) -> float:
    """Fit `module` on `datamodule`'s splits, finalize and save the run into `run_dir`; the
    calibrated validation log loss. `net_kwargs`: the network's constructor arguments but the
    vocabulary sizes and delay count (model_spec.json's `net`); `config`: the resolved
    configuration as YAML (config.yaml); `trees_check`: (validation rows, the model's
    validation log loss) -> metrics.json's `versus_trees` (`versus_trees` bound to the log)."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    store: EventStore = datamodule.store
    summary = summarize_store(store)
    log.info("dataset: %s", json.dumps({k: summary[k] for k in ("train", "val", "test")}))
    if len(store.rows(VAL)) == 0 or len(store.rows(TEST)) == 0:
        raise IssuerSeqError("the log is too short for a train/val/test split by time")

    fitted = fit(module, datamodule, run_dir, trainer_options, logger, resume, early_stopping)
    if not fitted.trainer.is_global_zero:
        return float("nan")
    net = module.net
    metrics = finalize(net, module.store, datamodule, fitted)
    metrics["dataset"] = summary
    metrics["versus_base_rate"] = versus_base_rate(metrics)
    if trees_check is not None:
        val_logloss = float(metrics["approval"]["val"]["logloss"])
        with stage(log, "the LightGBM check on validation"):
            metrics["versus_trees"] = trees_check(datamodule.split_rows[VAL], val_logloss)
    spec = {
        "net": dict(net_kwargs) | {"n_delays": len(store.config.delay_grid)},
        "net_version": IssuerSeqNet.VERSION,
        "vocab": store.vocab.to_json(),
        "store": store.config.to_json(),
        "inputs": input_names(),
        "calibration": metrics["calibration"],
    }
    TrainedRun(path=run_dir, net=net, spec=spec, metrics=metrics, config=config).save()
    _print_summary(metrics, run_dir, time.perf_counter() - started)
    return float(metrics["approval"]["val"]["logloss"])


def versus_base_rate(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The calibrated model against the issuer x MCC base rate, calibrated alike, on the same
    validation rows; logs a warning when the model does not beat it (a log too small or too
    plain to learn from), so no run ends in a silently worse-than-base-rate model."""
    model = float(metrics["approval"]["val"]["logloss"])
    base = float(metrics["base_rate"]["val_calibrated"]["logloss"])
    beats = model < base
    if not beats:
        log.warning(
            "the model does not beat the issuer x MCC base rate on validation: log loss "
            "%.4f against the base rate's %.4f (both calibrated on validation). For this log "
            "prefer the base rate or the trees (issuer-seq evaluate compares all three on test "
            "and recommends one).",
            model,
            base,
        )
    return {
        "split": "val",
        "logloss": model,
        "base_rate_logloss": base,
        "beats_base_rate": beats,
    }


#: what the warning adds for a network without the trees' aggregates (docs/training.md)
FUSE_HINT = (
    " model.fuse=true (the trees' aggregates as inputs too) narrowed this gap on every world"
    " of the suite it ran on, without closing it (docs/training.md, 'Fusion, measured')."
)


def versus_trees(
    frame: pd.DataFrame,
    split: np.ndarray,
    val_rows: np.ndarray,
    model_logloss: float,
    max_train_rows: int | None = None,
    threads: int | None = None,
    fused: bool = False,
) -> dict[str, Any]:
    """The calibrated model against LightGBM on the same validation rows (`val_rows` of the
    log `frame`; `split`: its TRAIN / VAL / TEST per row): LightGBM with its tuned defaults,
    no search, fitted on the training split's SQL features (its latest `max_train_rows`) and
    early-stopped on validation, as the bench fits it. Logs a warning when the model does not
    beat it, which for a network that does not read the trees' aggregates (`fused` false)
    names `model.fuse=true`. A fit that fails is reported, and warned about, never fatal: the
    check is advice."""
    started = time.perf_counter()
    try:
        trees, data, info = fit_lightgbm(
            frame, max_train_rows=max_train_rows, threads=threads, split=split
        )
        rows = data.loc[val_rows]
        y = rows[LABEL].to_numpy()
        lightgbm = float(log_loss(y, trees.predict_proba(rows), labels=[0, 1]))
    except Exception as exc:  # noqa: BLE001 - the run is saved whatever the trees do
        log.warning("the LightGBM check on validation failed: %r", exc)
        return {"split": "val", "error": repr(exc)}
    beats = model_logloss < lightgbm
    if not beats:
        log.warning(
            "the model does not beat LightGBM on validation: log loss %.4f against %.4f "
            "(tuned defaults, no search). For this log the trees are likely the better model; "
            "issuer-seq evaluate compares them on test, with their latency, and recommends one.%s",
            model_logloss,
            lightgbm,
            "" if fused else FUSE_HINT,
        )
    return {
        "split": "val",
        "rows": int(len(val_rows)),
        "logloss": model_logloss,
        "lightgbm_logloss": round(lightgbm, 6),
        "beats_lightgbm": beats,
        "lightgbm": {k: info[k] for k in ("train_rows", "features")}
        | {"trees": trees.best_iteration},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _print_summary(metrics: dict[str, Any], run_dir: Path, seconds: float) -> None:
    t = metrics["approval"]["test"]
    r = metrics["retry"]["test"]
    b = metrics["base_rate"]["test"]
    tr = metrics["training"]
    log.info(
        "\n".join(
            [
                f"training finished in {seconds:.0f} s ({tr['epochs']} epochs, "
                f"{tr['steps']} steps, {tr['train_samples_per_s']:.0f} samples/s, "
                f"{tr['parameters']:,} parameters)",
                f"test approval: AUROC {t['auroc']:.4f}  AP(decline) {t['ap_decline']:.4f}  "
                f"log loss {t['logloss']:.4f}  Brier {t['brier']:.4f}  ECE {t['ece']:.4f}",
                f"base rate (issuer x MCC): AUROC {b['auroc']:.4f}  log loss {b['logloss']:.4f}",
                f"test retry head: {r}",
                f"calibration: {metrics['calibration']}",
                f"artifacts: {run_dir}/metrics.json, checkpoints/, config.yaml, model.pt",
            ]
        )
    )
