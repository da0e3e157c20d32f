"""Training input pipeline vs pre-built in-memory tensors: samples/s and their ratio.

    python scripts/bench_pipeline.py DATA_DIR [--model small] [--steps 30] [--batch-size 512]
        [--accelerator cpu|gpu] [--precision 32-true|bf16-mixed]

Prints one JSON object (target: ratio at least 0.9, docs/targets.md).
"""

from __future__ import annotations

import argparse
import json
import logging

from omegaconf import OmegaConf

from issuer_seq.bench.pipeline import bench_pipeline
from issuer_seq.cli import conf_dir
from issuer_seq.data.store import StoreConfig, build_store
from issuer_seq.schema import load_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--model", default="small", help="a file of conf/model/")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--k-card", type=int, default=16)
    parser.add_argument("--k-issuer", type=int, default=32)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    net = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / f"{args.model}.yaml"))
    assert isinstance(net, dict)
    net.pop("_target_")
    if net.pop("fuse", False):  # a config key, not the network's: fused inputs need the SQL
        raise SystemExit(f"conf/model/{args.model}.yaml has fuse=true: this times plain networks")
    store = build_store(
        load_log(args.data_dir), StoreConfig(k_card=args.k_card, k_issuer=args.k_issuer)
    )
    result = bench_pipeline(
        store,
        {str(k): v for k, v in net.items()},
        steps=args.steps,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        precision=args.precision,
    )
    print(json.dumps({"model": args.model, "rows": len(store), **result}))


if __name__ == "__main__":
    main()
