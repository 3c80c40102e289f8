#!/usr/bin/env python3
"""Prefill cost against the number of KV streams, and against one batch holding every prompt.

    python scripts/probe_prefill.py --prompts 32 --threads 2

Why: calibration decodes every prompt once per sample, and on short answers the prompts are over
half of the tokens it processes (docs/calibration.md). This prefills the same chat-rendered
arithmetic prompts one at a time in contexts of 2, 16, 64 and 256 streams (what the engine opens for
few or many sequences), then all of them in one batch (llama.cpp's `parallel` example style), and
prints tokens/s with the ratio to the 2-stream context measured first in the same run.

Run it alone: llama.cpp's threads spin, so a second heavy process makes the numbers garbage.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eager_local.api import EagerLocal
from eager_local.eval.datasets import load_dataset, select
from eager_local.eval.prompting import DEFAULT_TEMPLATE, render
from eager_local.llama import Context, ContextSize


def one_at_a_time(llm, prompts: list[list[int]], n_seq_max: int, threads: int) -> float:
    ctx = Context(llm.engine.model, ContextSize(cells=256, n_seq_max=n_seq_max, n_batch=max(512, n_seq_max)),
                  n_threads=threads)
    try:
        start = time.perf_counter()
        for i, tokens in enumerate(prompts):
            seq = i % n_seq_max
            ctx.drop(seq)
            ctx.prefill(tokens, seq)
        return time.perf_counter() - start
    finally:
        ctx.close()


def one_batch(llm, prompts: list[list[int]], threads: int) -> float:
    total = sum(len(p) for p in prompts)
    ctx = Context(llm.engine.model, ContextSize(cells=256, n_seq_max=len(prompts), n_batch=total), n_threads=threads)
    try:
        tokens = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts])
        positions = np.concatenate([np.arange(len(p), dtype=np.int32) for p in prompts])
        seqs = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(prompts)])
        want = np.zeros(total, dtype=np.int8)
        want[np.cumsum([len(p) for p in prompts]) - 1] = 1  # the last token of each prompt
        start = time.perf_counter()
        ctx.decode(tokens, positions, seqs, want)
        return time.perf_counter() - start
    finally:
        ctx.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Registry name, .gguf path or URL (default: smollm2-135m).")
    ap.add_argument("--dataset", default="arith:128:0")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    llm = EagerLocal(args.model, threads=args.threads)
    problems = select(load_dataset(args.dataset), limit=args.prompts)
    prompts = [llm.prompt_tokens(render(DEFAULT_TEMPLATE, p.problem)) for p in problems]
    total = sum(len(p) for p in prompts)
    print(f"{len(prompts)} prompts, {total / len(prompts):.1f} tokens each on average, {args.threads} threads")
    base = None
    for n_seq_max in (2, 16, 64, 256):
        seconds = one_at_a_time(llm, prompts, n_seq_max, args.threads)
        base = base or seconds
        print(f"one at a time, {n_seq_max:3d} streams: {seconds / len(prompts) * 1000:5.0f} ms a prompt, "
              f"{total / seconds:5.0f} tokens/s, {base / seconds:.2f} x the 2-stream speed")
    seconds = one_batch(llm, prompts, args.threads)
    print(f"all in one batch:             {total / seconds:5.0f} tokens/s, {base / seconds:.2f} x the 2-stream speed")


if __name__ == "__main__":
    main()
