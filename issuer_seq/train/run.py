"""The training entry: log -> store -> Lightning fit -> calibration -> metrics and artifacts.

Writes to `run_dir`: `checkpoints/` (best and last), `config.yaml` (resolved), `metrics.json`,
and the calibrated network for export and evaluation (`model.pt` + `model_spec.json`).
Returns the validation log loss, which sweeps minimize.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import BinaryAUROC

from issuer_seq.baselines.base_rate import base_rate
from issuer_seq.data.batches import DeviceStore, input_names
from issuer_seq.data.datamodule import IssuerSeqDataModule
from issuer_seq.data.store import (
    TEST,
    TRAIN,
    VAL,
    EventStore,
    StoreConfig,
    build_store,
    summarize_store,
)
from issuer_seq.errors import IssuerSeqError
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.schema import load_log
from issuer_seq.train.calibrate import calibrate, collect_logits
from issuer_seq.train.module import IssuerSeqModule, LogLoss, approval_metrics

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


def split_metrics(net: IssuerSeqNet, store: DeviceStore, rows: torch.Tensor) -> dict[str, Any]:
    """Calibrated approval metrics and retry-head metrics of one split."""
    out = collect_logits(net, store, rows)
    p = torch.sigmoid(out["approval"] / net.approval_temperature.cpu())
    approval = approval_metrics("", sync=False)
    approval.update(p, out["approved"].long())
    result = {"approval": {k: float(v) for k, v in approval.compute().items()}}
    retry: dict[str, float | int] = {"observed": int(len(out["retry"]))}
    if len(out["retry"]) and 0 < float(out["success"].mean()) < 1:
        pr = torch.sigmoid(out["retry"] / net.retry_temperature.cpu())
        loss = LogLoss(sync_on_compute=False)
        loss.update(pr, out["success"])
        auroc = BinaryAUROC(sync_on_compute=False)
        auroc.update(pr, out["success"].long())
        retry.update(logloss=float(loss.compute()), auroc=float(auroc.compute()))
    result["retry"] = retry
    return result


def base_rate_metrics(store: EventStore, datamodule: IssuerSeqDataModule) -> dict[str, Any]:
    """The issuer x MCC base rate on the same val/test rows: the bar the model must clear."""
    p = base_rate(store, store.rows(TRAIN))
    out = {}
    for name, split in (("val", VAL), ("test", TEST)):
        rows = datamodule.split_rows[split]
        m = approval_metrics("", sync=False)
        m.update(torch.from_numpy(p[rows]).float(), torch.from_numpy(store.approved[rows]).long())
        out[name] = {k: float(v) for k, v in m.compute().items()}
    return out


def net_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.pop("_target_", None)
    return {str(k): v for k, v in kwargs.items()}


def train(cfg: DictConfig, store: EventStore | None = None) -> float:
    """Fit, calibrate and evaluate; `store` (built from cfg.data_dir) saves rebuilding it."""
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)

    if store is None:
        store = build_store(load_log(cfg.data_dir), StoreConfig.from_json(cfg.data))
    summary = summarize_store(store)
    log.info("dataset: %s", json.dumps({k: summary[k] for k in ("train", "val", "test")}))
    if len(store.rows(VAL)) == 0 or len(store.rows(TEST)) == 0:
        raise IssuerSeqError("the log is too short for a train/val/test split by time")

    n_delays = len(store.config.delay_grid)
    net: IssuerSeqNet = hydra.utils.instantiate(
        cfg.model, vocab_sizes=store.vocab.sizes(), n_delays=n_delays
    )
    device_store = DeviceStore(store)
    module = IssuerSeqModule(
        net,
        device_store,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        warmup_steps=int(cfg.warmup_steps),
        retry_loss_weight=float(cfg.retry_loss_weight),
        retry_propensity_weighting=bool(cfg.retry_propensity_weighting),
    )
    datamodule = IssuerSeqDataModule(
        store,
        batch_size=int(cfg.data.batch_size),
        eval_batch_size=int(cfg.data.eval_batch_size),
        max_train_examples=cfg.data.max_train_examples,
        max_eval_examples=cfg.data.max_eval_examples,
        seed=int(cfg.seed),
    )
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/logloss", mode="min", save_last=True
    )
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    throughput = Throughput()
    trainer = pl.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),  # type: ignore[arg-type]
        logger=logger,
        callbacks=[checkpoint, throughput],
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
    )
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    ckpt_path = None
    if cfg.resume:
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
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - fit_started
    if not trainer.is_global_zero:
        return float("nan")

    best = checkpoint.best_model_path or str(ckpt_dir / "last.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    # Calibrate and score on the device that trained (on a GPU, seconds rather than minutes).
    device = trainer.strategy.root_device
    net.to(device).eval()
    device_store.to(device)
    val_rows = torch.from_numpy(datamodule.split_rows[VAL])
    test_rows = torch.from_numpy(datamodule.split_rows[TEST])
    temperatures = calibrate(net, device_store, val_rows)
    val = split_metrics(net, device_store, val_rows)
    test = split_metrics(net, device_store, test_rows)
    net.cpu()
    device_store.to("cpu")
    reference = base_rate_metrics(store, datamodule)
    metrics = {
        "approval": {"val": val["approval"], "test": test["approval"]},
        "base_rate": reference,
        "retry": {"val": val["retry"], "test": test["retry"]},
        "calibration": temperatures,
        "training": {
            "best_checkpoint": Path(best).name,
            "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "fit_seconds": round(fit_seconds, 1),
            "train_samples_per_s": round(throughput.rate() * trainer.world_size, 1),
            "parameters": sum(p.numel() for p in net.parameters()),
        },
        "dataset": summary,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save(net.state_dict(), run_dir / "model.pt")
    spec = {
        "net": net_kwargs(cfg) | {"n_delays": n_delays},
        "vocab": store.vocab.to_json(),
        "store": store.config.to_json(),
        "inputs": input_names(),
        "calibration": temperatures,
    }
    (run_dir / "model_spec.json").write_text(json.dumps(spec, indent=2))
    _print_summary(metrics, run_dir, time.perf_counter() - started)
    return float(val["approval"]["logloss"])


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
                f"temperatures: {metrics['calibration']}",
                f"artifacts: {run_dir}/metrics.json, checkpoints/, config.yaml, model.pt",
            ]
        )
    )
