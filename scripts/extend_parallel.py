#!/usr/bin/env python3
"""Full parallel sampling at a larger M from a run's parallel point: decode only the new samples.

    python scripts/extend_parallel.py runs/gsm8k-par --to 16 --out runs/gsm8k-par16 [--sizes 8,12,16] [--threads 1]
    eager-local eval <the source run's options> --method parallel -M 16 --out runs/gsm8k-par16   # or -M <--sizes>

Sample j of a prompt draws from the random stream (seed, position, j) whatever M is (eval/waves.py:
`Request.first_sequence`), so the first M samples of a run at M' > M are exactly the samples of the
run at M. This script reads the source run's decoded parallel point at M, decodes samples M … M'−1
of every prompt (one `first_sequence = M` request per prompt, all in one batched stream, as eval
decodes a point) and writes a new run directory whose parallel point at M' holds both, in sample
order. The source directory is only read. tests/test_extend_parallel.py checks the result against
a parallel run decoded at M' directly, sequence for sequence.

The new samples are appended to `<out>/parallel_M<M'>.tail.jsonl` as each prompt completes
(fsync'ed): a rerun after Ctrl-C or SIGKILL decodes only the prompts not in it. The merged point is
written once every prompt is in. Its stats give the source's wall time plus this script's; peak
memory is left out (two processes). Running `eager-local eval` with the source's options and
`-M M'` (or the `--sizes` list) on the new directory then derives M = 1, 2, 4, … (and every
size listed) from it, without decoding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from eager_local.api import EagerLocal
from eager_local.config import default
from eager_local.engine import Request
from eager_local.eval import store
from eager_local.eval.datasets import Problem
from eager_local.eval.prompting import render
from eager_local.eval.records import combine_parts, make_record
from eager_local.eval.session import session_info
from eager_local.eval.store import Point
from eager_local.io import write_json_atomic


def source_point(run_dir: Path) -> Point:
    """The run's decoded (not derived) parallel point at the largest M."""
    points = [p for p in (store.parse_point(f.stem) for f in run_dir.glob("parallel_M*.jsonl"))
              if p is not None and not (store.read_json(run_dir / p.stats_file) or {}).get("derived_from")]
    if not points:
        sys.exit(f"{run_dir}: no decoded parallel point (parallel_M<M>.jsonl)")
    point = max(points, key=lambda p: p.max_sequences)
    if not (store.read_json(run_dir / point.stats_file) or {}).get("complete"):
        sys.exit(f"{run_dir}: {point.name} is not complete; finish it with eval first")
    return point


def merged(point: Point, head: dict, tail: dict) -> dict:
    """A prompt's record at M' from its first M samples (head) and the next ones (tail)."""
    record = combine_parts(point, [head, tail])  # one run: every sequence's `run` is 0
    record["steps"] = max(head["steps"], tail["steps"])  # a parallel record's steps: its longest sample
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="run directory with a complete parallel point at M")
    ap.add_argument("--to", type=int, required=True, help="the larger M")
    ap.add_argument("--out", type=Path, required=True, help="new run directory (or this script's, to resume)")
    ap.add_argument("--sizes", default=None,
                    help="comma list: the -M list of the new run (what `eval -M` later derives), default --to")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default=None, help="default: the source manifest's model (registry name, else path)")
    args = ap.parse_args()

    manifest = store.load_manifest(args.source)
    head_point = source_point(args.source)
    m = head_point.max_sequences
    if args.to <= m:
        sys.exit(f"--to {args.to} must be larger than the source's M = {m}")
    point = Point("parallel", None, args.to)
    sizes = sorted({int(x) for x in args.sizes.split(",")} | {args.to}) if args.sizes else [args.to]
    if sizes[-1] != args.to or sizes[0] < 1:
        sys.exit(f"--sizes must lie in 1 … {args.to}")
    params = dict(manifest["params"], methods=["parallel"], max_sequences=sizes)
    heads = {r["id"]: r for r in store.read_records(args.source / head_point.records_file)}

    runner = EagerLocal(args.model or manifest["model"].get("name") or manifest["model"]["path"], threads=args.threads)
    if runner.resolved.sha256 and runner.resolved.sha256 != manifest["model"].get("sha256"):
        sys.exit("the model is not the one the source run used (sha256 differs)")
    args.out.mkdir(parents=True, exist_ok=True)
    out_manifest = args.out / store.MANIFEST
    info = session_info(runner.resolved.path, manifest["model"].get("name"), runner.resolved.sha256, runner.threads)
    if out_manifest.exists():
        if store.param_differences(store.load_manifest(args.out)["params"], params):
            sys.exit(f"{args.out} holds another run")
    else:
        write_json_atomic(out_manifest, {**{k: manifest[k] for k in ("format", "created", "seed", "model",
                                                                     "versions", "machine", "problems")},
                                         "params": params, "extended_from": str(args.source),
                                         "sessions": manifest.get("sessions", []) + [info]}, indent=1)

    tail_path = args.out / f"{point.name}.tail.jsonl"
    tails = {r["id"]: r for r in store.read_records(tail_path, repair=True)} if tail_path.exists() else {}
    todo = [r for r in heads.values() if r["id"] not in tails]
    config = runner.config(method="parallel", theta=default("theta"), max_sequences=args.to - m, **params["generation"])
    problems, requests = {}, []
    for r in todo:
        problems[r["position"]] = Problem(id=r["id"], problem=r["problem"], answer=r["reference"], kind=r["kind"])
        tokens = runner.prompt_tokens(render(params["prompt_template"], r["problem"]),
                                      chat=params["chat"], system=params["system"])
        if len(tokens) != r["prompt_tokens"]:
            sys.exit(f"{r['id']}: the prompt has {len(tokens)} tokens here, {r['prompt_tokens']} in the source run")
        requests.append(Request(tokens=tokens, text=r["problem"], index=r["position"], first_sequence=m))
    start = time.perf_counter()
    print(f"{len(heads)} prompts, {len(todo)} to decode: samples {m}…{args.to - 1} each", file=sys.stderr)
    with store.RecordWriter(tail_path) as writer:
        for tree in runner.stream(requests, config):
            record = make_record(problems[tree.index], tree.index, tree, point)
            writer.append(record)
            tails[record["id"]] = record
            print(f"{len(tails)}/{len(heads)} {record['id']} #T {record['#T']}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start

    records = [merged(point, heads[pid], tails[pid]) for pid in manifest["problems"] if pid in heads]
    store.write_records_atomic(args.out / point.records_file, records)
    stats_path = args.out / point.stats_file
    old = store.read_json(stats_path) or {}
    head_stats = store.read_json(args.source / head_point.stats_file) or {}
    tail_wall = round((old.get("tail_wall_time") or 0.0) + seconds, 3)
    write_json_atomic(stats_path, {
        "point": point.name, "complete": True, "records": len(records),
        "wall_time": round((head_stats.get("wall_time") or 0.0) + tail_wall, 3),
        "tail_wall_time": tail_wall, "extended_from": f"{args.source}/{head_point.name}",
        "peak_rss_mb": None,
    }, indent=1)
    print(f"wrote {args.out / point.records_file}: {len(records)} prompts at M = {args.to}")


if __name__ == "__main__":
    main()
