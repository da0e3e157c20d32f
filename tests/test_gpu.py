"""The CUDA path: batches gathered on the GPU, the network on the GPU, `experiment=gpu`.

Skipped where torch sees no CUDA device (CI). `scripts/gpu_check.sh` runs them on a GPU host.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from issuer_seq.commands.train import train
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import EventStore, StoreConfig, build_store
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.schema import load_log
from tests.conftest import make_sim
from tests.test_train import FAST, _compose

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def gpu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sim(tmp_path_factory.mktemp("gpu"), seed=5, n_cards=400, days=20)


@pytest.fixture(scope="module")
def store(gpu_dir: Path) -> EventStore:
    return build_store(load_log(gpu_dir), StoreConfig(k_card=8, k_issuer=16, k_route=16))


def test_batches_gathered_on_the_gpu_equal_the_cpu_ones(store: EventStore) -> None:
    cpu, gpu = DeviceStore(store), DeviceStore(store).to("cuda")
    rows = torch.randperm(len(cpu.t), generator=torch.Generator().manual_seed(0))[:1024]
    on_cpu, on_gpu = cpu.gather(rows), gpu.gather(rows)
    assert on_cpu.keys() == on_gpu.keys()
    for name, value in on_cpu.items():
        assert on_gpu[name].device.type == "cuda", name
        torch.testing.assert_close(on_gpu[name].cpu(), value, msg=name)


def test_network_on_the_gpu_matches_the_cpu(store: EventStore) -> None:
    cpu, gpu = DeviceStore(store), DeviceStore(store).to("cuda")
    torch.manual_seed(0)
    net = IssuerSeqNet(store.vocab.sizes(), n_delays=len(store.config.delay_grid), d_model=32)
    net.eval()
    rows = torch.arange(min(2048, len(cpu.t)))
    with torch.no_grad():
        ref = net.logits(cpu.gather(rows))
        out = net.to("cuda").logits(gpu.gather(rows))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = net.logits(gpu.gather(rows))
    for r, o, h in zip(ref, out, half, strict=True):
        torch.testing.assert_close(o.float().cpu(), r, atol=1e-3, rtol=1e-3)
        # bf16 keeps ~3 significant digits: logits agree to a few hundredths
        torch.testing.assert_close(h.float().cpu(), r, atol=5e-2, rtol=5e-2)


def test_gpu_experiment_trains_on_cuda(gpu_dir: Path, tmp_path: Path) -> None:
    overrides = ["experiment=gpu", f"data_dir={gpu_dir}", f"run_dir={tmp_path}", *FAST]
    overrides += ["trainer.limit_train_batches=5", "data.batch_size=256"]
    cfg = _compose("train", overrides)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    val_logloss = train(cfg)
    assert math.isfinite(val_logloss)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 5
    assert all(math.isfinite(v) for v in metrics["approval"]["test"].values())
    state = torch.load(tmp_path / "model.pt", map_location="cpu")
    assert all(v.device.type == "cpu" for v in state.values())
