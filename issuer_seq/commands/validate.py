"""`issuer-seq validate`: check a log against the contract and print its summary."""

from __future__ import annotations

import json
import logging
from typing import Any

from omegaconf import DictConfig

from issuer_seq.schema import load_log, summarize

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    routes = cfg.get("routes")
    vlog = load_log(
        cfg.path if cfg.get("path") else cfg.data_dir,
        routes=None if routes is None else [str(r) for r in routes],
    )
    summary = summarize(vlog)
    log.info(json.dumps(summary, indent=2))
    log.info("OK: %s meets the transaction-log contract (%d rows)", vlog.source, summary["rows"])
    return summary
