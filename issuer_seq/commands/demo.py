"""`issuer-seq demo`: the main job end to end on the embedded default.

Each stage is the same code the single commands run, on the default paths of conf/.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from issuer_seq.commands.simulate import sim_config
from issuer_seq.schema import load_log, summarize
from issuer_seq.simulate import simulate

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    data_dir = Path(cfg.data_dir)
    log.info("[1/2] simulate: the default synthetic world -> %s", data_dir)
    simulate(sim_config(cfg), data_dir)
    log.info("[2/2] validate: check the log against the contract")
    summary = summarize(load_log(data_dir))
    log.info(json.dumps(summary, indent=2))
    log.info("demo finished in %.0f s; data in %s", time.perf_counter() - started, data_dir)
    return summary
