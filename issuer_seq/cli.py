"""The `issuer-seq` dispatcher: `issuer-seq <command> [key=value ...]`.

Each command composes `conf/<command>.yaml` with Hydra, so every Hydra feature (overrides,
`-m` multirun sweeps, `--cfg job`) works per command. The command bodies live in
`issuer_seq/commands/`, one module each, imported only when that command runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from issuer_seq.errors import IssuerSeqError

#: command -> (module under issuer_seq.commands, one-line help)
COMMANDS: dict[str, str] = {
    "validate": "check a transaction log against the contract and print a summary",
    "simulate": "generate a synthetic transaction log with ground truth",
    "train": "train the transformer (Hydra: model=, trainer=, logger=, experiment=, -m sweeps)",
    "evaluate": "score the model, baselines and (synthetic data) the oracle on the test split",
    "export": "ONNX export + parity check + serving bundle (manifest, variants, Triton repository)",
    "serve": "HTTP scorer over an exported bundle (domain API, Open Inference Protocol V2)",
    "bench": "latency and throughput of the scorers, data-pipeline ratios (bench.json)",
    "report": "latency-vs-accuracy comparison report (report.html, report.json, PNG figures)",
    "suite": "the default recipe vs LightGBM and the oracle on a suite of worlds (suite.json/md)",
    "demo": "the main job end to end on the embedded default (simulate ... report)",
}

log = logging.getLogger("issuer_seq")
_COMMAND_ENV = "ISSUER_SEQ_COMMAND"


def conf_dir() -> Path:
    """`conf/` beside the package (editable install), or $ISSUER_SEQ_CONF."""
    env = os.environ.get("ISSUER_SEQ_CONF")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "conf"
    if not path.is_dir():
        raise SystemExit(
            f"issuer-seq: config directory {path} not found; install the package in editable "
            "mode from the repository (`make install`) or set ISSUER_SEQ_CONF"
        )
    return path


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return (
        "usage: issuer-seq <command> [key=value ...] [hydra options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nHydra options work per command, e.g. `issuer-seq simulate --cfg job`."
    )


def _guarded(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Turn our own errors into a message and exit code 2 instead of a traceback."""

    def task(cfg: Any) -> Any:
        try:
            return fn(cfg)
        except IssuerSeqError as exc:
            log.error("error: %s", exc)
            raise SystemExit(2) from None

    return task


def main(argv: list[str] | None = None) -> None:
    import hydra

    args = sys.argv[1:] if argv is None else argv
    inherited = os.environ.get(_COMMAND_ENV)
    if inherited in COMMANDS and (not args or args[0] not in COMMANDS):
        # A process started by Lightning's DDP launcher: it re-runs our script with the
        # overrides only, so the command comes from the parent's environment.
        args = [inherited, *args]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = args[0]
    if command not in COMMANDS:
        print(f"issuer-seq: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"issuer_seq.commands.{command}")
    os.environ[_COMMAND_ENV] = command
    sys.argv = [sys.argv[0], *args[1:]]
    hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(
        _guarded(module.run)
    )()


if __name__ == "__main__":
    main()
