"""Load test: the request rate `issuer-seq serve` holds at p99 under 10 ms, by server processes.

    python scripts/load_test.py ARTIFACT_DIR DATA_DIR [--processes 1 2] [--users 1 2 4 8 16]
        [--seconds 10] [--requests 2000] [--out reports/load_test] [--serve KEY=VALUE ...]

For each number of processes N: N `issuer-seq serve` replicas on loopback (bench/http.py
`running_server`, each with its own in-memory state), each warmed over `/v1/outcomes` with
the histories that the requests read, so that all hold the same state (the load only reads
it). Then locust (headless, scripts/load_locustfile.py: `FastHttpUser`, no wait between
requests) posts the log's last `--requests` attempts to `/v1/score`, one attempt a request,
with each user count in turn, users spread over the replicas in turn. Every request's time
is recorded; the first `--warmup-seconds` of each step are left out. A step *holds* when its
p99 is under `--p99-ms` with no failures and no fallback answers; for each N the highest
rate so held is reported (none: no step held).

The load generator shares the host's cores with the servers, as it would on a 2-core host
with a co-located client. Writes load_test.json (every step, the machine, the settings) and
load_test.md (the table) to --out and prints the table: measured numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from issuer_seq.bench.http import as_json, post_outcomes, running_server, warm_histories
from issuer_seq.bench.scorers import machine
from issuer_seq.schema import load_log
from issuer_seq.serve.bundle import read_manifest
from issuer_seq.serve.inputs import history_lengths

LOCUSTFILE = Path(__file__).resolve().parent / "load_locustfile.py"


def step_stats(records: Sequence[Sequence[Any]], warmup_s: float) -> dict[str, Any]:
    """Rate and latency of one step from its requests (start s, time ms, status, fallback),
    leaving out those that started in its first `warmup_s`."""
    if not records:
        return {
            "requests": 0,
            "rate_per_s": 0.0,
            "p50_ms": None,
            "p99_ms": None,
            "failures": 0,
            "fallbacks": 0,
        }
    start = np.array([r[0] for r in records])
    ms = np.array([r[1] for r in records])
    ok = np.array([r[2] == 200 for r in records])
    fallback = np.array([bool(r[3]) for r in records])
    since = start.min() + warmup_s
    kept = start >= since
    end = float((start + ms / 1e3)[kept].max()) if kept.any() else since
    span = max(end - since, 1e-9)
    times = ms[kept]
    return {
        "requests": int(kept.sum()),
        "rate_per_s": round(float(kept.sum() / span), 1),
        "p50_ms": round(float(np.percentile(times, 50)), 3) if len(times) else None,
        "p99_ms": round(float(np.percentile(times, 99)), 3) if len(times) else None,
        "failures": int((~ok & kept).sum()),
        "fallbacks": int((fallback & kept).sum()),
    }


def run_locust(
    urls: Sequence[str], bodies: Path, users: int, seconds: float, warmup_s: float, out: Path
) -> dict[str, Any]:
    """One headless locust run of `users` users for `warmup_s + seconds`."""
    records_path = out.with_suffix(".json")
    env = {
        **os.environ,
        "LOAD_TEST_BODIES": str(bodies),
        "LOAD_TEST_HOSTS": ",".join(urls),
        "LOAD_TEST_OUT": str(records_path),
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{max(1, round(warmup_s + seconds))}s",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
    ]
    with out.with_suffix(".log").open("wb") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    if done.returncode != 0 or not records_path.exists():
        raise SystemExit(f"locust failed (exit {done.returncode}); see {out.with_suffix('.log')}")
    records = json.loads(records_path.read_text())
    records_path.unlink()
    return step_stats(records, warmup_s)


def held(rows: Sequence[Mapping[str, Any]], p99_ms: float) -> dict[str, Any] | None:
    """The step with the highest rate whose p99 is under `p99_ms`, with no failures and no
    fallback answers."""
    ok = [
        r
        for r in rows
        if r["p99_ms"] is not None
        and r["p99_ms"] < p99_ms
        and r["failures"] == 0
        and r["fallbacks"] == 0
    ]
    return max(ok, key=lambda r: r["rate_per_s"]) if ok else None


def markdown(result: Mapping[str, Any]) -> str:
    p99 = result["settings"]["p99_ms"]
    lines = [
        "| processes | users | requests/s | p50 ms | p99 ms | failures | fallbacks | load 1 min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["steps"]:
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        p99_cell = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
        lines.append(
            f"| {r['processes']} | {r['users']} | {r['rate_per_s']:.0f} | {p50} | {p99_cell} "
            f"| {r['failures']} | {r['fallbacks']} | {r['load_avg_1m']:.2f} |"
        )
    lines.append("")
    for n, best in result["held"].items():
        processes = f"{n} process" + ("es" if n != "1" else "")
        if best is None:
            lines.append(f"- {processes}: no step held p99 < {p99:g} ms")
        else:
            users = f"{best['users']} user" + ("s" if best["users"] != 1 else "")
            lines.append(
                f"- {processes}: {best['rate_per_s']:.0f} requests/s held at p99 < {p99:g} ms "
                f"({users}: p50 {best['p50_ms']:.2f} ms, p99 {best['p99_ms']:.2f} ms)"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("data_dir", type=Path, help="the log whose last attempts are sent")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per step")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="per step, left out")
    parser.add_argument("--requests", type=int, default=2000, help="the log's last attempts")
    parser.add_argument("--p99-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("reports/load_test"))
    parser.add_argument(
        "--serve", action="append", default=[], help="a conf/serve.yaml KEY=VALUE (repeatable)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    records = load_log(args.data_dir).frame.to_dict("records")
    n = min(args.requests, len(records) - 1)
    requests, earlier = records[-n:], records[: len(records) - n]
    ks = history_lengths(read_manifest(args.artifact_dir)["history"])
    warm = warm_histories(earlier, requests, ks)
    bodies = args.out / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"attempt": as_json(r)}) + "\n" for r in requests))

    steps: list[dict[str, Any]] = []
    for processes in args.processes:
        with ExitStack() as stack:
            urls = [
                stack.enter_context(
                    running_server(
                        args.artifact_dir, args.out / f"serve_{processes}_{i}.log", args.serve
                    )
                )
                for i in range(processes)
            ]
            for url in urls:
                post_outcomes(url, warm)
            for users in args.users:
                stats = run_locust(
                    urls,
                    bodies,
                    users,
                    args.seconds,
                    args.warmup_seconds,
                    args.out / f"locust_{processes}_{users}",
                )
                row = {"processes": processes, "users": users, **stats}
                row["load_avg_1m"] = round(os.getloadavg()[0], 2)
                steps.append(row)
                print(json.dumps(row), flush=True)
    bodies.unlink()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "artifact_dir": str(args.artifact_dir),
            "data_dir": str(args.data_dir),
            "requests": n,
            "warm_state_events": len(warm),
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "p99_ms": args.p99_ms,
            "serve": ["host=127.0.0.1", "shutdown_delay_s=0", *args.serve],
            "client": "locust FastHttpUser, no wait, users spread over the processes in turn",
        },
        "steps": steps,
        "held": {
            str(p): held([s for s in steps if s["processes"] == p], args.p99_ms)
            for p in args.processes
        },
    }
    (args.out / "load_test.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "load_test.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
