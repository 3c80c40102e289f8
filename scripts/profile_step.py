#!/usr/bin/env python3
"""Where one eval step's milliseconds go: llama_decode, batch assembly and logits, entropy,
sampling, per-token callbacks, forks, admission (prefill), and the Python around them.

    python scripts/profile_step.py --model qwen2.5-coder-0.5b --method parallel,eager-init --limit 16

Runs GSM8K prompts (the eval's default template and chat formatting) through `EagerLocal.stream`
exactly as `eager-local eval` does for a full-parallel or an EAGer-init point, with the step loop's
stages wrapped in timers (monkeypatched here; the product has no timers). Prints, per method,
milliseconds per step and the share of the run each stage takes; `--logprobs` adds DeepConf's
per-token confidence callback to every request, so its cost shows too.

Stages (nested ones are subtracted from their parents, so the shares add up to 100 %):
  llama_decode   the C call on the step's batch (Context.decode minus its numpy view)
  prefill        the C calls that decode new prompts into the cache (inside admission)
  decode glue    the rest of StepLoop._decode_step: id compaction, ordering, the logits view/copy
  entropy        StepLoop._entropies (top-K entropy in numpy)
  sampling       StepLoop._sample
  logprobs       StepLoop._report_logprobs (log-softmax and callbacks; zero without --logprobs)
  fork           StepLoop._fork (llama_memory_seq_cp plus the new row)
  advance other  the rest of StepLoop._advance: the branch rule, appending tokens, stops, results
  admit          the rest of StepLoop._admit: choosing prompts, the first rows
  context setup  Engine._ensure_context: a new llama context (KV allocation) when the call needs one
  loop other     the rest: StepLoop.run's own loop, consumer work between trees

Timing is wall clock on a shared machine: run it alone (never beside a benchmark) and read the
shares, not the absolute figures.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict

from eager_local.api import EagerLocal
from eager_local.engine import Request
from eager_local.engine import loop as L
from eager_local.eval import confidence as C
from eager_local.eval.datasets import load_dataset, select
from eager_local.eval.prompting import DEFAULT_TEMPLATE, render
from eager_local import llama

TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_STACK: list[list[float]] = []  # per open timer: time its nested timers took


def _account(name: str, start: float) -> None:
    elapsed = time.perf_counter() - start
    nested = _STACK.pop()[0]
    TIMES[name] += elapsed - nested
    CALLS[name] += 1
    if _STACK:
        _STACK[-1][0] += elapsed


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _STACK.append([0.0])
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _account(name, start)
    return wrapper


def timed_generator(name: str, fn):
    """Time a generator's own work: each resumption until it yields or ends, not the consumer's."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gen = fn(*args, **kwargs)
        while True:
            _STACK.append([0.0])
            start = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                _account(name, start)
                return
            _account(name, start)
            yield item
    return wrapper


_IN_PREFILL = [False]


def install() -> None:
    import llama_cpp as lc

    from eager_local.engine import engine as E

    raw_decode = lc.llama_decode
    timed_step, timed_prefill = timed("llama_decode", raw_decode), timed("prefill", raw_decode)
    llama.lc.llama_decode = lambda ctx, batch: (timed_prefill if _IN_PREFILL[0] else timed_step)(ctx, batch)
    raw_prefill = llama.Context.prefill

    def prefill(self, *args, **kwargs):
        _IN_PREFILL[0] = True
        try:
            return raw_prefill(self, *args, **kwargs)
        finally:
            _IN_PREFILL[0] = False

    llama.Context.prefill = prefill
    E.Engine._ensure_context = timed("context setup", E.Engine._ensure_context)
    L.StepLoop._decode_step = timed("decode glue", L.StepLoop._decode_step)
    L.StepLoop._entropies = timed("entropy", L.StepLoop._entropies)
    L.StepLoop._sample = timed("sampling", L.StepLoop._sample)
    L.StepLoop._report_logprobs = timed("logprobs", L.StepLoop._report_logprobs)
    L.StepLoop._fork = timed("fork", L.StepLoop._fork)
    L.StepLoop._advance = timed_generator("advance other", L.StepLoop._advance)
    L.StepLoop._admit = timed_generator("admit", L.StepLoop._admit)


STAGES = ["llama_decode", "prefill", "decode glue", "entropy", "sampling", "logprobs", "fork", "advance other",
          "admit", "context setup", "loop other"]


def profile(runner: EagerLocal, prompts: list[list[int]], method: str, args) -> dict:
    TIMES.clear()
    CALLS.clear()
    config = runner.config(method=method, theta=args.theta, max_sequences=args.M, max_new_tokens=args.n,
                           temperature=args.temperature, seed=55)
    requests = []
    for i, tokens in enumerate(prompts):
        request = Request(tokens=tokens, index=i)
        if args.logprobs:
            request.top_logprobs = C.TOP_K
            request.on_logprobs = lambda seq, token, lp, top: C.token_confidence_milli([x for _, x in top])
        requests.append(request)
    stats = runner.count_steps()
    start = time.perf_counter()
    trees = list(runner.stream(requests, config))
    wall = time.perf_counter() - start
    TIMES["loop other"] = wall - sum(TIMES.values())
    steps = stats.as_dict()
    n_steps = steps.get("steps") or 1
    tokens = sum(t.generated_tokens for t in trees)
    print(f"\n{method}: {len(trees)} prompts, {tokens} tokens, {n_steps} steps, wall {wall:.1f} s, "
          f"{tokens / wall:.1f} tokens/s, mean rows per step {steps.get('mean_rows', 0):.1f}")
    print(f"{'stage':<15} {'ms/step':>8} {'share':>7} {'calls':>7}")
    for stage in STAGES:
        print(f"{stage:<15} {1000 * TIMES[stage] / n_steps:8.2f} {100 * TIMES[stage] / wall:6.1f}% {CALLS[stage]:7d}")
    return {"method": method, "wall": wall, "tokens": tokens, "steps": n_steps, "stages": dict(TIMES)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--method", default="parallel,eager-init")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--offset", type=int, default=100)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("-M", type=int, default=8)
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--theta", type=float, default=1.912)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--logprobs", action="store_true", help="add a per-token confidence callback (DeepConf's cost)")
    args = ap.parse_args()

    runner = EagerLocal(args.model, threads=args.threads)
    problems = select(load_dataset(args.dataset), offset=args.offset, limit=args.limit)
    prompts = [runner.prompt_tokens(render(DEFAULT_TEMPLATE, p.problem), chat=True) for p in problems]
    print(f"model {runner.resolved.path.name} · threads {runner.threads} · {len(prompts)} {args.dataset} prompts · "
          f"M={args.M} · n={args.n}" + (" · with per-token logprob callbacks" if args.logprobs else ""))
    install()
    for method in args.method.split(","):
        profile(runner, prompts, method, args)


if __name__ == "__main__":
    main()
