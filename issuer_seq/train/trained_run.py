"""A finished training run: the calibrated network and what describes it, saved and loaded.

A run dir holds `model.pt` (the calibrated network's state_dict), `model_spec.json`
(network kwargs, vocabularies, store settings, input names, temperatures), `metrics.json`
and `config.yaml` (the resolved training config, whose `data_dir` locates the log).
`train` saves one; evaluate, export and bench load it, all with the same checks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from issuer_seq.baselines.fused import fused_frame_inputs
from issuer_seq.data.batches import input_names
from issuer_seq.data.store import EventStore, StoreConfig, build_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import Vocab
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.schema import ValidatedLog

RUN_FILES = ("model.pt", "model_spec.json", "metrics.json", "config.yaml")


@dataclass
class TrainedRun:
    path: Path
    net: IssuerSeqNet  # calibrated (its temperatures are the spec's)
    spec: dict[str, Any]
    metrics: dict[str, Any]
    config: str  # the resolved training config, as YAML

    @property
    def vocab(self) -> Vocab:
        return Vocab.from_json(self.spec["vocab"])

    @property
    def store_config(self) -> StoreConfig:
        return StoreConfig.from_json(self.spec["store"])

    @property
    def history(self) -> dict[str, int]:
        return self.store_config.history

    @property
    def data_dir(self) -> str:
        """The log the run was trained on (config.yaml's `data_dir`; "" when absent)."""
        return str((yaml.safe_load(self.config) or {}).get("data_dir", ""))

    @property
    def weights_sha256(self) -> str:
        return hashlib.sha256((self.path / "model.pt").read_bytes()).hexdigest()

    def build_store(self, vlog: ValidatedLog, features: pd.DataFrame | None = None) -> EventStore:
        """`vlog`'s examples as this run reads them: its history settings and vocabularies,
        and the fused aggregates when the network reads them (from `features`, the log's
        `sql_features` with the run's lag, when already computed)."""
        store = build_store(vlog, self.store_config, vocab=self.vocab)
        if self.net.n_fused:
            store.fused = fused_frame_inputs(vlog.frame, store.config.lag_s, features)
        return store

    def save(self) -> None:
        """Write the run files into `path` (the spec's temperatures must be the network's)."""
        _check_calibrated(self.net, self.spec, self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        # model_spec.json last: a run dir that has it holds a complete run (side runs rely on it)
        (self.path / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
        (self.path / "config.yaml").write_text(self.config)
        torch.save(self.net.state_dict(), self.path / "model.pt")
        (self.path / "model_spec.json").write_text(json.dumps(self.spec, indent=2))

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainedRun:
        """The run in `run_dir`, its network in eval mode on the CPU; a clear error when a
        file is missing, the inputs are of another feature schema, or the weights are not the
        calibrated network the spec describes."""
        path = Path(run_dir)
        missing = [f for f in RUN_FILES if not (path / f).is_file()]
        if missing:
            raise IssuerSeqError(
                f"{path} is not a finished training run: missing {', '.join(missing)} "
                "(run `issuer-seq train run_dir=...` first)"
            )
        spec = json.loads((path / "model_spec.json").read_text())
        if spec["inputs"] != input_names():
            # The graph's inputs are fed by today's batch code; a run from another feature
            # schema would be scored or exported with inputs its weights were never trained on.
            raise IssuerSeqError(
                f"{path}/model_spec.json lists inputs that differ from this version's feature "
                "schema (issuer_seq.data.batches.input_names()); retrain the model"
            )
        version = spec.get("net_version", 1)
        if version != IssuerSeqNet.VERSION:
            # the same parameter shapes may compute something else: refuse, never load
            raise IssuerSeqError(
                f"{path} was trained with version {version} of the network, this is version "
                f"{IssuerSeqNet.VERSION} (IssuerSeqNet.VERSION); retrain the model"
            )
        net = IssuerSeqNet(Vocab.from_json(spec["vocab"]).sizes(), **spec["net"])
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        # a run calibrated before the approval's shift: its temperature alone, as trained
        state.setdefault("approval_shift", torch.zeros(()))
        net.load_state_dict(state)
        net.eval()
        _check_calibrated(net, spec, path)
        return cls(
            path=path,
            net=net,
            spec=spec,
            metrics=json.loads((path / "metrics.json").read_text()),
            config=(path / "config.yaml").read_text(),
        )


def _check_calibrated(net: IssuerSeqNet, spec: dict[str, Any], path: Path) -> None:
    """The calibration lives in the weights; the spec's must agree, or model.pt is stale."""
    for name in IssuerSeqNet.CALIBRATION:
        stored = float(getattr(net, name))
        stated = float(spec["calibration"].get(name, 0.0))  # no shift: a run before it
        if not math.isclose(stored, stated, rel_tol=1e-5, abs_tol=1e-7):
            raise IssuerSeqError(
                f"{path}/model.pt has {name} {stored:.6g} but model_spec.json says {stated:.6g}: "
                "the weights are not the calibrated network of this run"
            )
