"""The network, the LightningModule and `issuer-seq train` with Hydra (CPU, tiny data)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from issuer_seq import features as F
from issuer_seq.cli import conf_dir
from issuer_seq.commands.train import train
from issuer_seq.data.batches import DeviceStore, input_names
from issuer_seq.data.store import VAL, StoreConfig, build_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.run import evaluate
from issuer_seq.model.network import (
    HistoryCounts,
    HistoryStats,
    IssuerSeqNet,
    PaymentSoFar,
    day_onehot,
    id_onehot,
    id_table,
)
from issuer_seq.schema import load_log
from issuer_seq.train.calibrate import fit_scaling, fit_temperature
from issuer_seq.train.infer import infer, observed_retries
from issuer_seq.train.module import IssuerSeqModule
from issuer_seq.train.run import fit, versus_trees
from issuer_seq.train.trained_run import TrainedRun
from tests.conftest import make_sim

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
FAST = [
    "model=tiny",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "data.eval_batch_size=1024",
    "data.max_eval_examples=2000",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sim(tmp_path_factory.mktemp("tiny"), seed=3, n_cards=400, days=20)


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=False)


def _cli(
    *args: str, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "issuer_seq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_every_config_composes() -> None:
    for name in ("validate", "simulate", "demo", "train"):
        assert _compose(name, []).data_dir
    groups = {
        "model": ["tiny", "small", "base"],
        "trainer": ["cpu", "gpu", "ddp"],
        "logger": ["csv", "mlflow", "tensorboard"],
        "experiment": EXPERIMENTS,
    }
    for group, options in groups.items():
        for option in options:
            cfg = _compose("train", [f"{group}={option}"])
            assert cfg.model.d_model > 0 and cfg.trainer.max_epochs > 0
    gpu = _compose("train", ["experiment=gpu"])
    assert gpu.trainer.precision == "bf16-mixed" and gpu.model.d_model == 128
    assert _compose("train", ["experiment=ablate_no_issuer"]).model.use_issuer is False
    assert _compose("train", ["experiment=ablate_no_card"]).model.use_card is False
    assert _compose("train", ["experiment=ablate_no_route"]).model.use_route is False
    assert _compose("train", ["experiment=long"]).trainer.max_epochs == 5
    # at most five passes by default on every trainer; early stopping may end a run sooner
    trainers = ("cpu", "gpu", "ddp")
    assert {_compose("train", [f"trainer={t}"]).trainer.max_epochs for t in trainers} == {5}
    quick = _compose("evaluate", []).baselines
    assert list(quick.models) == ["lightgbm"] and quick.trials == 1
    full = _compose("evaluate", ["search=full"]).baselines
    assert list(full.models) == ["lightgbm", "xgboost", "logistic"] and full.trials is None
    assert _compose("evaluate", ["search=full", "baselines.trials=3"]).baselines.trials == 3


@pytest.mark.parametrize("fastpath", [True, False])
def test_empty_histories_never_give_nan(tiny_dir: Path, fastpath: bool) -> None:
    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    batch = DeviceStore(store).gather(torch.arange(64))
    for s in F.STREAMS:
        batch[f"{s}_length"] = torch.zeros_like(batch[f"{s}_length"])
        batch[f"{s}_length"][::2] = 3
    assert set(input_names()) <= set(batch)
    net = IssuerSeqNet(store.vocab.sizes(), 8, d_model=16, n_heads=2, n_layers=2, d_ff=32)
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        for train_mode in (True, False):
            net.train(train_mode)
            with torch.set_grad_enabled(train_mode):
                p, r = net(batch)
            assert p.shape == (64,) and r.shape == (64, 8)
            assert torch.isfinite(p).all() and torch.isfinite(r).all()
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def test_history_is_padding_invariant(tiny_dir: Path) -> None:
    """Padded positions do not change the output: the mask really masks."""
    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    batch = DeviceStore(store).gather(torch.arange(200, 232))
    net = IssuerSeqNet(store.vocab.sizes(), 8, d_model=16, n_heads=2, n_layers=2, d_ff=32).eval()
    p1, _ = net(batch)
    noisy = dict(batch)
    for s in F.STREAMS:
        k = batch[f"{s}_mcc"].shape[1]
        pad = torch.arange(-k, 0)[None, :] < -batch[f"{s}_length"][:, None]
        noisy[f"{s}_mcc"] = torch.where(
            pad, torch.full_like(batch[f"{s}_mcc"], 3), batch[f"{s}_mcc"]
        )
    p2, _ = net(noisy)
    torch.testing.assert_close(p1, p2)


def test_history_counts_count_causes_in_each_window() -> None:
    counts = HistoryCounts(n_causes=5, d_model=8)
    minutes = torch.tensor([[0.0, 5.0, 100.0, 20_000.0]])
    table = counts.table(
        id_onehot(torch.tensor([[0, 3, 3, 4]]), id_table(5)),  # padding, causes 3, 3, 4
        torch.log1p(minutes),
        torch.tensor([[0.0, 1.0, 0.0, 1.0]]),
    )[0]  # rows: 10 min, 1 h, 1 day, 1 week, all, same merchant; columns: cause ids 1..4
    expected = torch.zeros(6, 4)
    expected[0:2, 2] = 1  # 5 minutes ago
    expected[2:5, 2] = 2  # both cause-3 events within a day
    expected[4, 3] = 1  # the cause-4 event, two weeks ago, only in "all"
    expected[5, 2] = expected[5, 3] = 1  # one of each at the same merchant
    assert torch.equal(table, expected)


def test_history_stats_take_recency_and_amounts_per_cause() -> None:
    stats = HistoryStats(n_causes=5, d_model=8)
    minutes = torch.log1p(torch.tensor([[0.0, 5.0, 100.0, 20_000.0]]))
    amounts = torch.log1p(torch.tensor([[999.0, 10.0, 30.0, 50.0]]))
    onehot = id_onehot(torch.tensor([[0, 3, 3, 4]]), id_table(5))
    table = stats.table(onehot, minutes, amounts)[0]
    # rows: recency / NEVER, largest, mean log amount; columns: cause ids 1..4
    expected = torch.zeros(3, 4)
    expected[0] = 1.0  # no event of causes 1 and 2: "never" (padding is no event)
    expected[0, 2], expected[0, 3] = minutes[0, 1] / stats.NEVER, minutes[0, 3] / stats.NEVER
    expected[1, 2], expected[1, 3] = amounts[0, 2], amounts[0, 3]
    expected[2, 2], expected[2, 3] = amounts[0, 1:3].mean(), amounts[0, 3]
    torch.testing.assert_close(table, expected)


def test_payment_so_far_reads_the_latest_earlier_attempt_of_the_payment() -> None:
    torch.manual_seed(0)
    payment = PaymentSoFar(d_model=8)
    codes, advice = torch.nn.Embedding(20, 8, padding_idx=0), torch.nn.Embedding(9, 8)
    minutes = torch.log1p(torch.tensor([[4_000.0, 90.0, 30.0, 3.0]] * 3))
    response = torch.tensor([[11, 12, 13, 14]] * 3)
    days = torch.tensor([[3.0, 5.0, 6.0, 6.0]] * 3) / 30
    today = torch.full((3,), 6.0) / 30
    same = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])

    def read(same, minutes, response, days, today):
        table = torch.arange(31, dtype=torch.float32)
        day, now = day_onehot(days, table), day_onehot(today, table)
        # each event's code embeddings, summed, as the cached state carries them
        vectors = codes(response) + advice(torch.full_like(response, 2))
        return payment(same, minutes, vectors, day, now)

    out = read(same, minutes, response, days, today)
    assert torch.equal(out[1], torch.zeros(8))  # a first attempt: nothing
    # rows 0 and 2 both read event 1 (code 12, 90 minutes ago, the day before): the latest
    # of the payment, not the more recent events of other payments
    torch.testing.assert_close(out[0], out[2])
    expected = read(
        torch.tensor([[0.0, 0.0, 0.0, 1.0]]),
        torch.log1p(torch.tensor([[0.0, 0.0, 0.0, 90.0]])),
        torch.tensor([[0, 0, 0, 12]]),
        torch.tensor([[0.0, 0.0, 0.0, 5.0]]) / 30,
        today[:1],
    )
    torch.testing.assert_close(out[0], expected[0])
    flipped = read(same[:1], minutes[:1], response[:1].flip(1), days[:1], today[:1])
    assert not torch.allclose(flipped[0], out[0])  # its code matters
    same_day = read(same[:1], minutes[:1], response[:1], days[:1] * 0 + today[0], today[:1])
    # the same attempt on the day of the retry (day 6) differs by the new day's vector
    torch.testing.assert_close(out[0] - same_day[0], payment.new_day.weight[:, 6])


def test_day_onehot_picks_each_calendar_day_exactly() -> None:
    # every day of a 31-day month as features.numeric encodes it (UTC midnight of each day)
    ts = np.arange(31, dtype=np.int64) * 86_400 + int(
        np.datetime64("2026-01-01", "s").astype(np.int64)
    )
    encoded = F.numeric(np.ones(31), np.ones(31), ts, np.zeros(31, np.int64))["day_of_month"]
    onehot = day_onehot(torch.from_numpy(encoded), torch.arange(31, dtype=torch.float32))
    torch.testing.assert_close(onehot, torch.eye(31))


def test_temperature_recovers_known_scale() -> None:
    g = torch.Generator().manual_seed(0)
    true_logit = torch.randn(20_000, generator=g) * 2
    y = (torch.rand(20_000, generator=g) < torch.sigmoid(true_logit)).float()
    assert fit_temperature(true_logit * 3, y) == pytest.approx(3.0, rel=0.1)


def test_platt_scaling_recovers_known_scale_and_shift() -> None:
    """The approval's calibration: a level the logits miss (approval moved since the
    training split) is the shift, and the network applies both as fitted."""
    g = torch.Generator().manual_seed(1)
    true_logit = torch.randn(40_000, generator=g) * 2 + 1
    y = (torch.rand(40_000, generator=g) < torch.sigmoid(true_logit)).float()
    t, b = fit_scaling((true_logit - 0.7) * 3, y, shift=True)
    assert t == pytest.approx(3.0, rel=0.1) and b == pytest.approx(0.7, abs=0.1)
    assert fit_scaling(true_logit * 3, y)[1] == 0.0  # without `shift`, a temperature alone
    net = IssuerSeqNet({f: 8 for f in F.CATEGORICAL}, 8, d_model=8, n_heads=2, d_ff=16)
    net.approval_temperature.fill_(t)
    net.approval_shift.fill_(b)
    torch.testing.assert_close(net.p_approve(true_logit), torch.sigmoid(true_logit / t + b))


def test_train_writes_metrics_checkpoints_and_config(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = _compose("train", [f"data_dir={tiny_dir}", f"run_dir={tmp_path}", *FAST])
    val_logloss = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(metrics["approval"][split]) == {"auroc", "ap_decline", "logloss", "brier", "ece"}
    assert metrics["approval"]["val"]["logloss"] == pytest.approx(val_logloss)
    assert "observed" in metrics["retry"]["test"]
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"best.ckpt", "last.ckpt"}
    assert "model:" in (tmp_path / "config.yaml").read_text()
    spec = json.loads((tmp_path / "model_spec.json").read_text())
    assert spec["inputs"] == input_names() and spec["net"]["d_model"] == 32
    train(cfg)  # a fresh run into the same run_dir replaces the checkpoints, not beside them
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["best_checkpoint"] == (
        "best.ckpt"
    )
    check = json.loads((tmp_path / "metrics.json").read_text())["versus_base_rate"]
    assert check["beats_base_rate"] is (check["logloss"] < check["base_rate_logloss"])
    trees = json.loads((tmp_path / "metrics.json").read_text())["versus_trees"]
    assert trees["logloss"] == pytest.approx(val_logloss) and trees["rows"] > 0
    assert trees["beats_lightgbm"] is (trees["logloss"] < trees["lightgbm_logloss"])
    assert 0 < trees["lightgbm_logloss"] < 1 and trees["lightgbm"]["trees"] >= 1
    _check_trained_run(tmp_path, tiny_dir)


def test_train_checks_the_model_against_the_trees_on_its_validation_rows(
    tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """LightGBM fitted beside the model, scored on the model's own validation rows: a model
    above its log loss gets a warning naming both, one below gets none; a fit that fails is
    reported and warned about, and never stops the run."""
    frame = load_log(tiny_dir).frame
    store = build_store(load_log(tiny_dir), StoreConfig())
    val = store.rows(VAL)[::2]  # a subsample, as max_eval_examples takes
    with caplog.at_level("WARNING", logger="issuer_seq.train.run"):
        worse = versus_trees(frame, store.split, val, 10.0, threads=1)
    assert worse["beats_lightgbm"] is False and worse["rows"] == len(val)
    (warning,) = [r.getMessage() for r in caplog.records if "LightGBM" in r.getMessage()]
    assert "10.0000" in warning and f"{worse['lightgbm_logloss']:.4f}" in warning
    assert "model.fuse=true" in warning  # what narrows the gap, for a network without it
    caplog.clear()
    with caplog.at_level("WARNING", logger="issuer_seq.train.run"):
        versus_trees(frame, store.split, val, 10.0, threads=1, fused=True)
    (warning,) = [r.getMessage() for r in caplog.records if "LightGBM" in r.getMessage()]
    assert "model.fuse" not in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="issuer_seq.train.run"):
        better = versus_trees(frame, store.split, val, 0.0, threads=1)
    assert better["beats_lightgbm"] is True and not caplog.records
    assert better["lightgbm_logloss"] == worse["lightgbm_logloss"]  # the same fit
    with caplog.at_level("WARNING", logger="issuer_seq.train.run"):
        broken = versus_trees(frame.drop(columns=["mcc"]), store.split, val, 0.3, threads=1)
    assert "error" in broken and "beats_lightgbm" not in broken
    assert any("LightGBM check" in r.getMessage() for r in caplog.records)


class _WorseEachEpoch(pl.LightningModule):
    """A one-weight model whose validation log loss is its epoch number: it never improves."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return ((self.w - batch) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/logloss", float(self.current_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epochs_even_when_it_did_not_improve(tmp_path: Path) -> None:
    """resume=true continues from last.ckpt, so it must be the last epoch's, not the best's:
    here the first epoch is the best and the third the last."""
    data = pl.LightningDataModule.from_datasets(
        train_dataset=torch.ones(8, 1), val_dataset=torch.ones(4, 1)
    )
    options = {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False}
    fitted = fit(_WorseEachEpoch(), data, tmp_path, options)  # type: ignore[arg-type]
    assert torch.load(fitted.best_checkpoint, weights_only=False)["epoch"] == 0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, fitted.trainer.global_step)


def test_early_stopping_ends_the_run_and_keeps_the_best_epoch(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """No epoch can improve validation log loss by 10 nats, so patience 1 stops the run after
    its second epoch of four; model.pt holds the best checkpoint's weights, not the last's,
    and last.ckpt is the last epoch's, whether or not it improved on the best."""
    overrides = [o for o in FAST if not o.startswith("trainer.max_epochs")]
    cfg = _compose(
        "train",
        [
            f"data_dir={tiny_dir}",
            f"run_dir={tmp_path}",
            *overrides,
            "trainer.max_epochs=4",
            "trainer.max_time=00:00:30:00",
            "early_stopping.patience=1",
            "early_stopping.min_delta=10.0",
        ],
    )
    train(cfg)
    training = json.loads((tmp_path / "metrics.json").read_text())["training"]
    assert training["early_stopped_epoch"] == 1 and training["steps"] == 2 * 3
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 2 * 3)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert training["best_epoch"] == best["epoch"]
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    weights = {k[len("net.") :]: v for k, v in best["state_dict"].items() if k.startswith("net.")}
    compared = [k for k in weights if k not in IssuerSeqNet.CALIBRATION]
    assert compared and all(torch.equal(saved[k], weights[k]) for k in compared)
    with pytest.raises(IssuerSeqError, match="patience"):
        train(
            _compose(
                "train",
                [f"data_dir={tiny_dir}", f"run_dir={tmp_path}", *FAST, "early_stopping.patience=0"],
            )
        )
    with pytest.raises(IssuerSeqError, match="latest_answer_lr_scale"):
        train(
            _compose(
                "train",
                [f"data_dir={tiny_dir}", f"run_dir={tmp_path}", *FAST, "latest_answer_lr_scale=0"],
            )
        )


def test_max_steps_before_the_first_validation_keeps_the_last_weights(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """trainer.max_steps that ends the first epoch before its validation: no val/logloss was
    ever logged, so early stopping has nothing to check and the run keeps its last weights
    (it used to stop with Lightning's "metric not available" error)."""
    cfg = _compose(
        "train", [f"data_dir={tiny_dir}", f"run_dir={tmp_path}", *FAST, "trainer.max_steps=2"]
    )
    with caplog.at_level("WARNING", logger="issuer_seq.train.run"):
        train(cfg)
    training = json.loads((tmp_path / "metrics.json").read_text())["training"]
    assert training["steps"] == 2 and training["best_checkpoint"] == "last.ckpt"
    assert any("no validation ran" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "model.pt").exists()


def test_train_warns_when_the_model_does_not_beat_the_base_rate(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A network that cannot learn (learning rate 0, two steps, no history read) ends below
    the issuer x MCC base rate on validation, both calibrated there: a warning names both
    figures and metrics.json records it. (With its histories, even the random network's
    features of them carry some signal.)"""
    cfg = _compose(
        "train",
        [
            f"data_dir={tiny_dir}",
            f"run_dir={tmp_path}",
            *FAST,
            "trainer.limit_train_batches=2",
            "optimizer.lr=0.0",
            "model.use_card=false",
            "model.use_issuer=false",
            "model.use_route=false",
        ],
    )
    with caplog.at_level("WARNING", logger="issuer_seq.train.run"):
        train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    check = metrics["versus_base_rate"]
    assert check["logloss"] == metrics["approval"]["val"]["logloss"]
    assert check["base_rate_logloss"] == metrics["base_rate"]["val_calibrated"]["logloss"]
    # the bar on validation has the network's calibration: never above the raw rate's loss
    assert check["base_rate_logloss"] <= metrics["base_rate"]["val"]["logloss"]
    assert check["beats_base_rate"] is (check["logloss"] < check["base_rate_logloss"])
    assert check["beats_base_rate"] is False
    (warning,) = [r.getMessage() for r in caplog.records if "base rate" in r.getMessage()]
    assert f"{check['logloss']:.4f}" in warning and f"{check['base_rate_logloss']:.4f}" in warning
    assert "prefer the base rate or the trees" in warning


def _check_trained_run(run_dir: Path, data_dir: Path) -> None:
    """The run dir reads back as one TrainedRun, saves to the same files, and every reader
    refuses a run whose files disagree."""
    run = TrainedRun.load(run_dir)
    assert run.metrics == json.loads((run_dir / "metrics.json").read_text())
    assert run.data_dir == str(data_dir) and not run.net.training
    assert float(run.net.approval_temperature) == pytest.approx(
        run.metrics["calibration"]["approval_temperature"]
    )
    copy = run_dir.parent / f"{run_dir.name}_copy"
    TrainedRun(copy, run.net, run.spec, run.metrics, run.config).save()
    for name in ("metrics.json", "model_spec.json", "config.yaml"):
        assert (copy / name).read_text() == (run_dir / name).read_text()
    saved = torch.load(copy / "model.pt", weights_only=True)
    for k, v in torch.load(run_dir / "model.pt", weights_only=True).items():
        assert torch.equal(saved[k], v)
    # a stale model_spec.json (the weights of another calibration), then another schema
    spec = json.loads((copy / "model_spec.json").read_text())
    spec["calibration"]["approval_temperature"] *= 2
    (copy / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(IssuerSeqError, match="not the calibrated network"):
        TrainedRun.load(copy)
    with pytest.raises(IssuerSeqError, match="not the calibrated network"):
        evaluate(data_dir, copy)  # evaluate reads runs as strictly as export
    # a run calibrated before the approval's shift (neither file has it): its temperature
    # alone, as it was served; a shift in the weights that the spec does not state: stale
    spec["calibration"]["approval_temperature"] /= 2
    assert spec["calibration"].pop("approval_shift") == pytest.approx(float(run.net.approval_shift))
    (copy / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(IssuerSeqError, match="approval_shift .* not the calibrated network"):
        TrainedRun.load(copy)
    torch.save({k: v for k, v in saved.items() if k != "approval_shift"}, copy / "model.pt")
    old = TrainedRun.load(copy)
    assert float(old.net.approval_shift) == 0.0
    z = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(
        old.net.p_approve(z), torch.sigmoid(z / run.net.approval_temperature)
    )
    spec = json.loads((run_dir / "model_spec.json").read_text())
    spec["inputs"] = spec["inputs"][:-1]
    (copy / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(IssuerSeqError, match="feature schema"):
        evaluate(data_dir, copy)
    # a run of an earlier network (no version recorded): the same shapes, another function
    spec = json.loads((run_dir / "model_spec.json").read_text())
    assert spec.pop("net_version") == IssuerSeqNet.VERSION
    (copy / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(IssuerSeqError, match="version 1 of the network"):
        TrainedRun.load(copy)
    (copy / "metrics.json").unlink()
    with pytest.raises(IssuerSeqError, match="missing metrics.json"):
        TrainedRun.load(copy)


def test_inference_matches_the_network_and_its_retry_labels(tiny_dir: Path) -> None:
    """The one batched loop gives the network's own probabilities, bit for bit, whatever the
    batch size, and the logit at each observed retry's delay."""
    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    device_store = DeviceStore(store)
    net = IssuerSeqNet(store.vocab.sizes(), 8, d_model=16, n_heads=2, n_layers=1, d_ff=32).eval()
    net.approval_temperature.fill_(0.8)
    net.retry_temperature.fill_(1.3)
    rows = torch.arange(0, 700)
    batch = device_store.gather(rows)
    p, r = net(batch)
    out = infer(net, device_store, rows, batch_size=256)
    batched = torch.cat([net(device_store.gather(rows[i : i + 256]))[0] for i in (0, 256, 512)])
    assert torch.equal(out["p_approve"], batched)
    torch.testing.assert_close(out["p_approve"], p)
    torch.testing.assert_close(out["p_retry"], r)
    assert torch.equal(out["approved"], batch["approved"])
    observed = observed_retries(out)
    seen = batch["retry_bucket"] >= 0
    assert 0 < len(observed["retry"]) == int(seen.sum())
    logits = net.logits(batch)[1][seen, batch["retry_bucket"][seen]]
    torch.testing.assert_close(observed["retry"], logits)
    assert torch.equal(observed["success"], batch["retry_success"][seen])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_the_cause_loss_learns_the_outcome_cause_beside_the_approval(tiny_dir: Path) -> None:
    """`cause_loss_weight` > 0 adds the cross-entropy of the attempt's outcome cause, a label
    the batch carries while the input's cause stays NONE; the training-only head is fitted
    and its gradient reaches the network. At weight 0 there is no such head."""
    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    device_store = DeviceStore(store)
    batch = device_store.gather(torch.arange(0, 512))
    assert torch.all(batch["cur_cause"] == F.NONE)
    approved = F.encode(store.vocab, "cause", ["approved"])[0]
    assert torch.equal(batch["cause"] == approved, batch["approved"].bool())
    torch.manual_seed(0)
    net = IssuerSeqNet(
        store.vocab.sizes(), 8, d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0
    )
    plain = IssuerSeqModule(net, device_store, optimizer=torch.optim.Adam)
    assert not hasattr(plain, "cause_head")
    module = IssuerSeqModule(
        net, device_store, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), cause_loss_weight=1.0
    )
    optimizer = module.optimizer_factory(module.parameters())
    losses = []
    for _ in range(40):
        approval, retry, *_ = module.losses(batch)
        loss = module.training_step(batch, 0)
        cause_loss = loss - approval - module.retry_loss_weight * retry
        losses.append(float(cause_loss.detach()))
        optimizer.zero_grad()
        if len(losses) == 1:  # the cause loss alone reaches the encoder and its head
            cause_loss.backward(retain_graph=True)
            assert net.events.cat.weight.grad.abs().sum() > 0
            assert module.cause_head.weight.grad.abs().sum() > 0
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[0] > 1.0 and losses[-1] < 0.5 * losses[0]
    module.on_fit_end()  # the hook goes: the trained network is the plain one
    net.logits(batch)
    assert module._joint is None


def test_the_latest_answer_path_trains_at_its_own_rate(tiny_dir: Path) -> None:
    """The optimizer holds every parameter once: the network's direct path from the card's
    latest answer in a group at `latest_answer_lr_scale` x the rate, the rest at the rate; a
    scale that is not positive is refused."""
    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    net = IssuerSeqNet(store.vocab.sizes(), 8, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    factory = functools.partial(torch.optim.AdamW, lr=2e-3)
    module = IssuerSeqModule(
        net,
        DeviceStore(store),
        optimizer=factory,
        cause_loss_weight=0.5,
        latest_answer_lr_scale=10.0,
    )
    rest, latest = module.make_optimizer().param_groups
    assert rest["lr"] == pytest.approx(2e-3) and latest["lr"] == pytest.approx(2e-2)
    assert {id(q) for q in latest["params"]} == {id(q) for q in net.latest_answer.parameters()}
    held = [id(q) for g in (rest, latest) for q in g["params"]]
    assert sorted(held) == sorted(id(q) for q in module.parameters())
    assert any(q is module.cause_head.weight for q in rest["params"])
    with pytest.raises(ValueError, match="latest_answer_lr_scale"):
        IssuerSeqModule(net, DeviceStore(store), optimizer=factory, latest_answer_lr_scale=0.0)


def test_only_the_command_reads_the_training_config() -> None:
    import issuer_seq.train as package

    for path in Path(package.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "omegaconf" not in text and "hydra" not in text, path.name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_smoke_runs_on_cpu(
    tiny_dir: Path, tmp_path: Path, experiment: str
) -> None:
    overrides = [f"experiment={experiment}", f"data_dir={tiny_dir}", f"run_dir={tmp_path}", *FAST]
    if experiment == "gpu":  # the GPU experiment's settings, run on the CPU (bf16 works there)
        overrides += ["trainer.accelerator=cpu", "data.batch_size=256"]
    cfg = _compose("train", overrides)
    assert train(cfg) > 0
    assert (tmp_path / "metrics.json").exists()


def test_cli_train_tiny_and_optuna_sweep(tiny_dir: Path, tmp_path: Path) -> None:
    run = _cli("train", f"data_dir={tiny_dir}", f"run_dir={tmp_path / 'r'}", *FAST)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "test approval: AUROC" in run.stdout
    # none of the notices Lightning prints on every run, which no user could act on
    notices = ("litlogger", "many workers", "on_after_batch_transfer", "LeafSpec", "configured so")
    for notice in notices:
        assert notice not in run.stdout + run.stderr, notice
    sweep = _cli(
        "train",
        "-m",
        "sweep=optuna",
        "hydra.sweeper.n_trials=2",
        f"data_dir={tiny_dir}",
        *FAST,
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    results = list((tmp_path / "runs" / "sweeps").glob("*/optimization_results.yaml"))
    assert len(results) == 1 and "best_value" in results[0].read_text()
    assert len(list((tmp_path / "runs" / "sweeps").glob("*/*/metrics.json"))) == 2


def test_mlflow_logger_records_params_and_metrics(tiny_dir: Path, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _compose(
        "train",
        [
            f"data_dir={tiny_dir}",
            f"run_dir={tmp_path / 'run'}",
            "logger=mlflow",
            f"logger.tracking_uri={uri}",
            *FAST,
        ],
    )
    train(cfg)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("issuer_seq").experiment_id])
    assert "val/logloss" in run.data.metrics
    assert run.data.params["model/d_model"] == "32"


def test_resume_after_kill_matches_uninterrupted(tiny_dir: Path, tmp_path: Path) -> None:
    args = [
        f"data_dir={tiny_dir}",
        *FAST[:1],
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=8",  # short epochs: the kill still lands mid-run
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "data.max_eval_examples=2000",
        "data.batch_size=256",
        "versus_trees.enabled=false",
    ]
    full = _cli("train", f"run_dir={tmp_path / 'full'}", *args)
    assert full.returncode == 0, full.stderr[-2000:]
    # Kill a run once its first epoch is checkpointed, then resume it.
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "issuer_seq.cli", "train", f"run_dir={run_dir}", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (run_dir / "metrics.json").exists()
    resumed = _cli("train", f"run_dir={run_dir}", "resume=true", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())["approval"]["test"]
    b = json.loads((run_dir / "metrics.json").read_text())["approval"]["test"]
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_resume_without_checkpoint_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    out = _cli("train", f"data_dir={tiny_dir}", f"run_dir={tmp_path}", "resume=true", *FAST)
    assert out.returncode == 2 and "last.ckpt does not exist" in out.stdout + out.stderr


def test_approval_never_sees_the_decline_inputs(tiny_dir: Path) -> None:
    """The decline code/MAC (the row's own outcome in training) feed the retry head only."""
    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    batch = DeviceStore(store).gather(torch.arange(100, 164))
    net = IssuerSeqNet(store.vocab.sizes(), 8, d_model=16, n_heads=2, n_layers=1, d_ff=32).eval()
    p1, r1 = net(batch)
    other = dict(batch)
    other["decline_response_code"] = torch.full_like(batch["decline_response_code"], 5)
    other["decline_advice_code"] = torch.full_like(batch["decline_advice_code"], 4)
    p2, r2 = net(other)
    torch.testing.assert_close(p1, p2)
    assert not torch.allclose(r1, r2)
    assert (batch["cur_response_code"] == 2).all() and (batch["cur_cause"] == 2).all()


def test_ddp_on_cpu_with_two_processes(tiny_dir: Path, tmp_path: Path) -> None:
    """trainer=ddp under torchrun, gloo on CPU: both ranks train, rank 0 writes the run."""
    torchrun = Path(sys.executable).parent / "torchrun"
    out = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "-m",
            "issuer_seq.cli",
            "train",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"data_dir={tiny_dir}",
            f"run_dir={tmp_path}",
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 3 and metrics["approval"]["test"]["auroc"] > 0


def test_pipeline_benchmark_reports_both_arms(tiny_dir: Path) -> None:
    from issuer_seq.bench.pipeline import bench_pipeline

    store = build_store(
        load_log(tiny_dir), StoreConfig(k_card=4, k_issuer=6, k_route=6, k_card_merchant=3)
    )
    kw = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "dropout": 0.0}
    result = bench_pipeline(store, kw, steps=4, warmup=1, batch_size=64, rounds=1)
    assert (
        result["real_pipeline_samples_per_s"] > 0 and result["prebuilt_tensors_samples_per_s"] > 0
    )
    assert result["ratio"] == pytest.approx(
        result["real_pipeline_samples_per_s"] / result["prebuilt_tensors_samples_per_s"], rel=0.01
    )


def test_pipeline_benchmark_script_times_a_model_config(tiny_dir: Path) -> None:
    """scripts/bench_pipeline.py (what scripts/compare_training.py runs per version) reads a
    conf/model file, whose `fuse` key is the training command's, not the network's."""
    root = Path(__file__).resolve().parent.parent
    script = [sys.executable, str(root / "scripts" / "bench_pipeline.py"), str(tiny_dir)]
    args = ["--model", "tiny", "--steps", "2", "--batch-size", "32", "--k-card", "4"]
    done = subprocess.run([*script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "tiny" and result["real_pipeline_samples_per_s"] > 0
