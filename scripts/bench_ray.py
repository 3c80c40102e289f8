#!/usr/bin/env python3
"""Wall time of one evaluation: one process vs Ray with 1 actor x T threads vs T actors x 1 thread.

    python scripts/bench_ray.py --model qwen2.5-coder-0.5b --dataset gsm8k --limit 12 -M 4 -n 192 --cpus 2

Starts a Ray head on loopback with --cpus CPUs (`ray start`, as a user would), then runs the same
`eager-local eval` (full parallel sampling, fixed seeds) into fresh directories, one run at a time,
in the order A B C C B A so drift on a shared machine hits every setting alike:

    A  plain eval, --threads CPUS (one process, the baseline)
    B  --ray, --threads CPUS   -> 1 actor x CPUS threads
    C  --ray, --threads 1      -> CPUS actors x 1 thread

It prints one JSON document: each run's wall time (the whole command, model loads included) and
the point's own wall time (from its stats file), the ratios to A, Ray's cost per prompt (B against
A: the same threads in one process), and whether every run's records are identical (they must be:
a prompt's random streams do not depend on the actor). Benchmark code, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(run: Path) -> dict:
    out = {}
    for path in sorted(run.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            row.pop("wall_time", None)
        out[path.name] = sorted(rows, key=lambda r: r["id"])
    return out


def run_eval(args, out: Path, threads: int, address: str | None) -> dict:
    command = [sys.executable, "-m", "eager_local", "eval", "--dataset", args.dataset, "--limit", str(args.limit),
               "--method", "parallel", "-M", str(args.max_sequences), "-n", str(args.max_new_tokens),
               "--threads", str(threads), "--no-progress", "--out", str(out)]
    if args.model:
        command += ["--model", args.model]
    if address:
        command += ["--ray", address]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}):\n{done.stderr[-2000:]}")
    stats = json.loads((out / f"parallel_M{args.max_sequences}.stats.json").read_text())
    tokens = sum(r["#T"] for r in records(out)[f"parallel_M{args.max_sequences}.jsonl"])
    return {"threads": threads, "ray": bool(address), "command_wall": round(wall, 2),
            "point_wall": stats["wall_time"], "tokens": tokens, "tokens_per_s": round(tokens / stats["wall_time"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("-M", "--max-sequences", type=int, default=4)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=192)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                    str(args.cpus), "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env)
    plan = [("A", args.cpus, None), ("B", args.cpus, address), ("C", 1, address),
            ("C", 1, address), ("B", args.cpus, address), ("A", args.cpus, None)]
    runs: dict[str, list[dict]] = {"A": [], "B": [], "C": []}
    outs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, threads, addr) in enumerate(plan):
                out = Path(tmp) / f"{i}-{name}"
                result = run_eval(args, out, threads, addr)
                runs[name].append(result)
                outs.append(out)
                print(f"{name}: {result}", file=sys.stderr)
            identical = all(records(o) == records(outs[0]) for o in outs[1:])
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)

    def mean(name: str, key: str) -> float:
        return sum(r[key] for r in runs[name]) / len(runs[name])

    report = {
        "settings": vars(args),
        "runs": runs,
        "mean_command_wall": {k: round(mean(k, "command_wall"), 2) for k in runs},
        "mean_point_wall": {k: round(mean(k, "point_wall"), 2) for k in runs},
        "speed_vs_plain (point wall A / X)": {k: round(mean("A", "point_wall") / mean(k, "point_wall"), 3) for k in runs},
        "ray_cost_per_prompt_s (B - A, point wall)": round((mean("B", "point_wall") - mean("A", "point_wall")) / args.limit, 3),
        "records_identical": identical,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
