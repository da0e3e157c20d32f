"""A finished training run, read back: the calibrated network and what describes it.

A run dir holds `model.pt` (the calibrated network's state_dict), `model_spec.json`
(network kwargs, vocabularies, store settings, input names, temperatures), `metrics.json`
and `config.yaml` (the resolved training config, whose `data_dir` locates the log).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from issuer_seq.data.batches import input_names
from issuer_seq.data.store import StoreConfig
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import Vocab
from issuer_seq.model.network import IssuerSeqNet

RUN_FILES = ("model.pt", "model_spec.json", "metrics.json", "config.yaml")


@dataclass
class TrainedRun:
    path: Path
    net: IssuerSeqNet  # eval mode, on the CPU
    spec: dict[str, Any]
    metrics: dict[str, Any]
    data_dir: str  # the log the run was trained on
    weights_sha256: str

    @property
    def vocab(self) -> Vocab:
        return Vocab.from_json(self.spec["vocab"])

    @property
    def history(self) -> dict[str, int]:
        return StoreConfig.from_json(self.spec["store"]).history


def load_run(run_dir: str | Path) -> TrainedRun:
    path = Path(run_dir)
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise IssuerSeqError(
            f"{path} is not a finished training run: missing {', '.join(missing)} "
            "(run `issuer-seq train run_dir=...` first)"
        )
    spec = json.loads((path / "model_spec.json").read_text())
    if spec["inputs"] != input_names():
        # The graph's inputs are fed by today's batch code; a run from another feature schema
        # would be exported with inputs its weights were never trained on.
        raise IssuerSeqError(
            f"{path}/model_spec.json lists inputs that differ from this version's feature "
            "schema (issuer_seq.data.batches.input_names()); retrain the model"
        )
    kwargs = dict(spec["net"])
    net = IssuerSeqNet(Vocab.from_json(spec["vocab"]).sizes(), **kwargs)
    weights = (path / "model.pt").read_bytes()
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    _check_calibrated(net, spec, path)
    config = OmegaConf.load(path / "config.yaml")
    return TrainedRun(
        path=path,
        net=net,
        spec=spec,
        metrics=json.loads((path / "metrics.json").read_text()),
        data_dir=str(config.get("data_dir", "")),
        weights_sha256=hashlib.sha256(weights).hexdigest(),
    )


def _check_calibrated(net: IssuerSeqNet, spec: dict[str, Any], path: Path) -> None:
    """The temperatures live in the weights; the spec's must agree, or model.pt is stale."""
    for name in ("approval_temperature", "retry_temperature"):
        stored = float(getattr(net, name))
        stated = float(spec["calibration"][name])
        if not math.isclose(stored, stated, rel_tol=1e-5):
            raise IssuerSeqError(
                f"{path}/model.pt has {name} {stored:.6g} but model_spec.json says {stated:.6g}: "
                "the weights are not the calibrated network of this run"
            )
