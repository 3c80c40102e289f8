#!/usr/bin/env python3
"""Peak memory and tokens/s of EAGer-init against full parallel sampling on the same prompts, and
against EAGer-init on another checkout of eager_local (the engine before a change).

    python scripts/bench_memory.py --model qwen2.5-coder-0.5b --limit 24 -M 8 -n 256 --theta 1.912 \
        --before ../eager_local-before

Each run is its own process (peak RSS is a process's), one after another, never two at once:

  parallel     full parallel sampling of M per prompt (the engine admits max_batch_rows // M prompts)
  eager        EAGer-init as the engine runs it (`eager-local eval --method eager-init`)
  eager-before EAGer-init with the eager_local package of the checkout --before names (put first on
               the child's PYTHONPATH; e.g. `git worktree add ../eager_local-before <commit>`)
  eager:R[:H]  EAGer-init with admission's row limit R (`Engine.max_batch_rows`) and, if given, the
               pool of streams at H x R + 1 (`sizing.POOL_HEADROOM`): the trade of memory for
               batch width, as knobs of this script, not of the product

Prints tokens, wall, tokens/s, peak RSS, rows and prompts per step, where the wall time went
(prefilling prompts, the steps' batched decodes, Python between them), the steps by the KV span
their rows attend over (rows and llama.cpp micro-batches per step, cost per row-token, the steps
that copied streams first), forks and moves, and each run's ratios to
`parallel`, among them tokens/s outside prefill: every method prefills the same prompts once, so
that time does not shrink with the tokens a method saves. The runs draw the same samples as
`eager-local eval` would (same prompts, seeds and template); `eager` and `eager-before` draw the
same trees when the change was not meant to change sampling (the script says whether they did).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

KINDS = ("parallel", "eager", "eager-before")


def child(args) -> dict:
    from eager_local.api import EagerLocal
    from eager_local.engine import Request
    from eager_local.eval.datasets import load_dataset, select
    from eager_local.eval.prompting import DEFAULT_TEMPLATE, render
    from eager_local.eval.session import peak_rss_mb

    runner = EagerLocal(args.model, threads=args.threads)
    kind, rows, headroom = parse_run(args.child)
    if rows is not None:
        runner.engine.max_batch_rows = rows
    if headroom is not None:
        from eager_local.engine import sizing
        sizing.POOL_HEADROOM = headroom
    everything = load_dataset(args.dataset)
    problems = select(everything, offset=args.offset, limit=args.limit)
    positions = {p.id: i for i, p in enumerate(everything)}
    requests = [Request(tokens=runner.prompt_tokens(render(DEFAULT_TEMPLATE, p.problem), chat=True),
                        text=p.problem, index=positions[p.id]) for p in problems]
    method = "parallel" if kind == "parallel" else "eager-init"
    config = runner.config(method=method, theta=args.theta, max_sequences=args.M, max_new_tokens=args.n,
                           temperature=args.temperature, seed=55)
    stats = runner.count_steps()
    timers = time_llama_calls()
    start = time.perf_counter()
    trees = list(runner.stream(requests, config))
    wall = time.perf_counter() - start
    tokens = sum(t.generated_tokens for t in trees)
    ctx = runner.engine.context.size
    shapes = [[(s.parent, s.fork_at, list(s.tokens)) for s in t.sequences] for t in sorted(trees, key=lambda t: t.index)]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    import eager_local

    return {"kind": args.child, "package": os.path.dirname(eager_local.__file__), "tokens": tokens, "wall": wall,
            "tokens_per_s": tokens / wall, "trees": digest,
            "peak_rss_mb": peak_rss_mb(), "sequences": sum(len(t.sequences) for t in trees),
            "n_seq_max": ctx.n_seq_max, "cells_per_seq": ctx.cells, **stats.as_dict(),
            "prefill_s": timers["prefill"], "step_decode_s": timers["decode"] - timers["prefill"],
            "rest_s": wall - timers["decode"],
            "spans": {str(k): v for k, v in sorted(timers["spans"].items())},
            "forks": timers["forks"], "moves": timers["moves"]}


def attention_span(positions, cells: int) -> int:
    """How many KV cells each row of a step attends over: llama.cpp pads the longest used stream
    of the batch up to a multiple of 256 cells (at most the stream's size) and every row of the
    batch attends over that many, masked where it has no tokens (flash attention off)."""
    used = int(max(positions)) + 1
    return min(cells, -(-used // 256) * 256)


def micro_batches(seq_ids) -> int:
    """How many micro-batches llama.cpp runs a step of one-token rows in, with a KV stream per
    sequence: one per run of consecutive increasing ids in batch order (`split_equal`), each a
    full pass over the weights."""
    return 1 + sum(1 for a, b in zip(seq_ids, seq_ids[1:]) if b != a + 1)


def time_llama_calls() -> dict:
    """Wrap Context.prefill and Context.decode to add up their seconds (prefill's own decode
    calls count in both, so a step's decodes are decode - prefill). The split answers where a
    run's wall time goes: prompts (the same prompts, once each, for every method), the batched
    steps, and everything in Python between them. Stream copies for forks are made by llama.cpp at
    the start of the next decode, so they count in the steps.

    The steps are also added up by the KV span their rows attend over (`attention_span`): per
    span, [steps, row-tokens, seconds, micro-batches, steps that began with stream copies, their
    seconds], so a method's cost per row-token compares with another's at the same span, and
    apart from the steps that copied streams (forks, and the moves that keep ids contiguous)."""
    from eager_local.llama import Context

    seconds = {"prefill": 0.0, "decode": 0.0, "spans": {}, "forks": 0, "moves": 0}
    inside = []  # the wrapped calls running now: a decode inside prefill or _apply_copies is no step

    def timed(name, method):
        def wrapper(*args, **kwargs):
            ctx = args[0]
            copies = ctx._copies_pending
            inside.append(name)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                inside.pop()
                if name in ("prefill", "decode"):
                    seconds[name] += spent
                if name == "decode" and not inside:  # a step
                    positions, seq_ids = args[2], list(args[3])
                    span = seconds["spans"].setdefault(attention_span(positions, ctx.size.cells), [0, 0, 0.0, 0, 0, 0.0])
                    span[0] += 1
                    span[1] += len(positions)
                    span[2] += spent
                    span[3] += micro_batches(seq_ids)
                    span[4] += copies
                    span[5] += spent if copies else 0.0
        return wrapper

    def counted(name, method):
        def wrapper(*args, **kwargs):
            if not inside:  # a move forks and drops: count it once, as a move
                seconds[name] += 1
            inside.append(name)
            try:
                return method(*args, **kwargs)
            finally:
                inside.pop()
        return wrapper

    Context.prefill = timed("prefill", Context.prefill)
    Context._apply_copies = timed("copies", Context._apply_copies)
    Context.decode = timed("decode", Context.decode)
    Context.move = counted("moves", Context.move)
    Context.fork = counted("forks", Context.fork)
    return seconds


def parse_run(run: str) -> tuple[str, int | None, float | None]:
    """A run's kind, row limit and pool headroom (None: the engine's): a name of KINDS, or
    eager:ROWS[:HEADROOM] with a whole ROWS > 0 and a HEADROOM >= 1. ValueError for anything else."""
    if run in KINDS:
        return run, None, None
    name, _, knobs = run.partition(":")
    rows, _, headroom = knobs.partition(":")
    parsed = (name, int(rows), float(headroom) if headroom else None)  # ValueError if not numbers
    if name != "eager" or parsed[1] <= 0 or (parsed[2] is not None and parsed[2] < 1):
        raise ValueError(run)
    return parsed


def _outside_prefill(r: dict) -> float:
    """Generated tokens per second of the wall time not spent prefilling prompts."""
    return r["tokens"] / (r["wall"] - r["prefill_s"])


def _at_base_span_cost(r: dict, base: dict) -> float:
    """Seconds r's steps would have taken at base's seconds per row-token in each attention span:
    what is left of a gap after this is not explained by how long the rows attend."""
    return sum(v[1] * base["spans"][span][2] / base["spans"][span][1] for span, v in r["spans"].items())


def _valid_run(run: str) -> bool:
    try:
        parse_run(run)
    except ValueError:
        return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--offset", type=int, default=100)
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("-M", type=int, default=8)
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--theta", type=float, default=1.912)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--runs", default="parallel,eager", help="comma list, in order, of " + ", ".join(KINDS) + ", eager:ROWS[:HEADROOM]")
    ap.add_argument("--before", help="checkout whose eager_local the eager-before run uses")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    passthrough = [a for a in sys.argv[1:]]
    kinds = args.runs.split(",")
    if unknown := [k for k in kinds if not _valid_run(k)]:
        sys.exit(f"bench_memory: unknown run {unknown[0]!r} (one of {', '.join(KINDS)}, or eager:ROWS[:HEADROOM])")
    if "eager-before" in kinds and not args.before:
        sys.exit("bench_memory: the eager-before run needs --before CHECKOUT")
    results = []
    for kind in kinds:
        env = dict(os.environ)
        if kind == "eager-before":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(args.before), env.get("PYTHONPATH")]))
        out = subprocess.run([sys.executable, __file__, *passthrough, "--child", kind], capture_output=True,
                             text=True, check=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{kind:<10} {r['tokens']:>7} tokens {r['wall']:8.1f} s {r['tokens_per_s']:7.1f} tok/s "
              f"{r['peak_rss_mb']:8.0f} MB · {r['n_seq_max']} KV streams of {r['cells_per_seq']} cells · "
              f"{r['mean_rows']} rows, {r['mean_prompts']} prompts per step (peak {r['peak_prompts']}) · "
              f"trees {r['trees']} · {r['package']}", flush=True)
        decoded = r["prompt_tokens"] - r.get("cached_tokens", 0)  # an older checkout's stats may lack the cache
        print(f"{'':<10} {decoded} prompt tokens decoded in {r['prefill_s']:.1f} s, steps' decodes "
              f"{r['step_decode_s']:.1f} s over {r['steps']} steps, the rest {r['rest_s']:.1f} s · "
              f"{_outside_prefill(r):.1f} tok/s outside prefill", flush=True)
        if "forks" in r:
            print(f"{'':<10} {r['forks']} forks, {r['moves']} moves (stream copies)", flush=True)
        for span, (calls, rows, spent, micro, copying, copy_s) in r.get("spans", {}).items():
            print(f"{'':<10} steps attending over {span:>5} cells: {calls} steps, {rows / calls:.1f} rows and "
                  f"{micro / calls:.2f} micro-batches each, {spent:.1f} s, {1000 * spent / rows:.2f} ms per "
                  f"row-token; {copying} of them copied streams first ({copy_s:.1f} s)", flush=True)
    base = next((r for r in results if r["kind"] == "parallel"), None)
    if base:
        print("\nratios to parallel (same prompts, same run):")
        for r in results:
            print(f"{r['kind']:<10} tokens {r['tokens'] / base['tokens']:.2f} · wall {r['wall'] / base['wall']:.2f} · "
                  f"tokens/s {r['tokens_per_s'] / base['tokens_per_s']:.2f} · peak RSS "
                  f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} · tokens/s outside prefill "
                  f"{_outside_prefill(r) / _outside_prefill(base):.2f} · prefill s {r['prefill_s'] / base['prefill_s']:.2f}")
            if r is not base and base.get("spans") and r.get("spans") and set(r["spans"]) <= set(base["spans"]):
                print(f"{'':<10} its step decodes at parallel's cost per row-token of each KV span: "
                      f"{_at_base_span_cost(r, base):.1f} s (took {r['step_decode_s']:.1f} s)")
    eager = [next((r for r in results if r["kind"] == kind), None) for kind in ("eager", "eager-before")]
    if all(eager):
        print("eager and eager-before grew " + ("the same trees" if eager[0]["trees"] == eager[1]["trees"]
                                                 else "different trees"))


if __name__ == "__main__":
    main()
