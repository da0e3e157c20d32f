"""Point-in-time history building: our index vs the straightforward pandas groupby.

    python scripts/bench_sequences.py DATA_DIR [--k-card 16] [--k-issuer 32] [--rows N]

Prints one JSON object (target: `speedup` at least 20, docs/targets.md); exits 1 if the two
builds disagree. The method is described in issuer_seq/bench/sequences.py and docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from issuer_seq.bench.sequences import bench_sequences
from issuer_seq.schema import load_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--k-card", type=int, default=16)
    parser.add_argument("--k-issuer", type=int, default=32)
    parser.add_argument("--rows", type=int, default=None, help="first N rows (default: all)")
    args = parser.parse_args(argv)
    result = bench_sequences(load_log(args.data_dir).frame, args.k_card, args.k_issuer, args.rows)
    print(json.dumps(result))
    if not result["identical"]:
        print("histories differ between our index and the pandas reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
