"""Training samples/s of two versions of the code, side by side on the same machine.

    python scripts/compare_training.py DATA_DIR --before REV [--rounds 3] [--threads 2]
        [--model small] [--batch-size 256] [--steps 40] [--accelerator cpu]
    python scripts/compare_training.py DATA_DIR --before-tree DIR ...

Each version runs its own scripts/bench_pipeline.py (the real input pipeline and the
Lightning loop, `--steps` timed steps) in a subprocess, taking turns for `--rounds` rounds
(before, after, before, after, ...), so that a machine growing busier or quieter moves both
alike. `--before REV` checks the revision out into a temporary git worktree;
`--before-tree` uses a checkout already made. Prints one JSON object: each version's
samples/s per round, their medians and the ratio after / before (the training-throughput
target of docs/targets.md: at least 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def samples_per_s(tree: Path, args: argparse.Namespace) -> float:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    command = [
        sys.executable,
        str(tree / "scripts" / "bench_pipeline.py"),
        str(Path(args.data_dir).resolve()),
        "--model", args.model,
        "--batch-size", str(args.batch_size),
        "--k-card", "32",
        "--k-issuer", "32",
        "--steps", str(args.steps),
        "--accelerator", args.accelerator,
        "--precision", args.precision,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: bench_pipeline failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["real_pipeline_samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    before = parser.add_mutually_exclusive_group(required=True)
    before.add_argument("--before", help="a git revision of this repository")
    before.add_argument("--before-tree", type=Path, help="a checkout of the earlier code")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    worktree = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="issuer-seq-before-")) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
            check=True,
            capture_output=True,
        )
    old = worktree or args.before_tree.resolve()
    try:
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            runs["before"].append(samples_per_s(old, args))
            runs["after"].append(samples_per_s(ROOT, args))
        medians = {k: statistics.median(v) for k, v in runs.items()}
        print(
            json.dumps(
                {
                    "before": args.before or str(args.before_tree),
                    "model": args.model,
                    "batch_size": args.batch_size,
                    "threads": args.threads,
                    "accelerator": args.accelerator,
                    "samples_per_s": runs,
                    "median_samples_per_s": medians,
                    "ratio_after_over_before": round(medians["after"] / medians["before"], 2),
                }
            )
        )
    finally:
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                capture_output=True,
            )
            shutil.rmtree(worktree.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
