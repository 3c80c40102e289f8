#!/usr/bin/env python3
"""Does a new prompt's prefill cost less inside a step's llama_decode than in a call of its own?

    python scripts/probe_mixed_batch.py --model qwen2.5-coder-0.5b --threads 1

R rows, each with H cells of history, decode one token each (one step of the engine's loop), and a
new prompt of P tokens is prefilled into one more sequence. Both are timed two ways, alternating:

  separate   the step's decode, then the prompt's own decode (what the engine does)
  mixed      one decode holding the R row tokens and the P prompt tokens (what llama.cpp's server
             and `parallel` example do)

in a context with a KV stream per sequence (the engine's layout for run, eval and serve) and in one
with a unified cache. Prints the median seconds of each, mixed ÷ separate, and whether the mixed
batch gave the same logits as the separate calls (a change that moved prefill into the step must
not change the trees).

What to expect from llama.cpp's source (src/llama-batch.cpp): a streams context splits a batch
with `split_equal`, whose micro-batches take the same number of tokens from every sequence in them,
so a one-token row and a P-token prompt share a micro-batch for the prompt's first token only and
the rest runs as before; a unified cache splits by count (`split_simple`), so there the prompt's
tokens ride in the rows' micro-batch. Benchmark code, not part of the package.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from eager_local import models
from eager_local.llama import Context, ContextSize, Model

HISTORY = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May? Let us reason step by step. ") * 8
PROMPT = ("A bakery sells 23 boxes of 17 cookies each on Monday and twice as many boxes on Tuesday. "
          "How many cookies did it sell in the two days? Answer with a number. ") * 8


def probe(model: Model, *, unified: bool, rows: int, history: int, prompt: int, repeats: int,
          threads: int) -> dict:
    """Median seconds of `separate` and `mixed` in one context of this layout, and whether their
    logits agree."""
    cells = history + prompt + 16
    size = ContextSize(cells=cells * (rows + 1) if unified else cells, n_seq_max=rows + 1,
                       n_batch=max(512, rows + prompt), unified=unified)
    ctx = Context(model, size, n_threads=threads)
    past = model.tokenize(HISTORY)[:history]
    new = model.tokenize(PROMPT)[:prompt]
    if len(past) < history or len(new) < prompt:
        raise SystemExit("probe_mixed_batch: --history or --prompt is longer than the probe's texts")
    ctx.prefill(past, 0)
    for seq in range(1, rows):
        ctx.fork(0, seq)

    row_tokens = np.full(rows, past[-1], dtype=np.int32)
    row_pos = np.full(rows, history, dtype=np.int32)
    row_ids = np.arange(rows, dtype=np.int32)
    new_pos = np.arange(prompt, dtype=np.int32)
    new_ids = np.full(prompt, rows, dtype=np.int32)  # the next id after the rows': llama.cpp wants them increasing
    want_new = np.zeros(prompt, dtype=np.int8)
    want_new[-1] = 1

    def separate():
        a = np.array(ctx.decode(row_tokens, row_pos, row_ids, np.ones(rows, dtype=np.int8)))
        b = np.array(ctx.decode(np.asarray(new, dtype=np.int32), new_pos, new_ids, want_new))
        return np.concatenate([a, b])

    def mixed():
        return np.array(ctx.decode(np.concatenate([row_tokens, np.asarray(new, dtype=np.int32)]),
                                   np.concatenate([row_pos, new_pos]), np.concatenate([row_ids, new_ids]),
                                   np.concatenate([np.ones(rows, dtype=np.int8), want_new])))

    def undo():
        for seq in range(rows):
            ctx.truncate(seq, history)
        ctx.drop(rows)

    seconds = {"separate": [], "mixed": []}
    logits = {}
    for i in range(repeats + 2):  # two warm-up rounds, not counted
        order = (("separate", separate), ("mixed", mixed))
        for name, call in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            logits[name] = call()
            elapsed = time.perf_counter() - start
            undo()
            if i >= 2:
                seconds[name].append(elapsed)
    ctx.close()
    return {"separate": statistics.median(seconds["separate"]), "mixed": statistics.median(seconds["mixed"]),
            "same": bool(np.array_equal(logits["separate"], logits["mixed"]))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="registry name or .gguf (default: the default model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=16, help="rows decoding one token each")
    ap.add_argument("--history", type=int, default=128, help="cells each row already holds")
    ap.add_argument("--prompt", default="16,48,128", help="comma list of new prompts' lengths in tokens")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    entry = models.resolve(args.model)
    model = Model(entry.path)
    print(f"{entry.name}: {args.rows} rows of {args.history} cells, {args.threads} thread(s), "
          f"median of {args.repeats} (ms)")
    print(f"{'layout':<9} {'prompt':>6} {'separate':>9} {'mixed':>8} {'mixed/sep':>10}  same logits")
    for unified in (False, True):
        for prompt in (int(p) for p in args.prompt.split(",")):
            r = probe(model, unified=unified, rows=args.rows, history=args.history, prompt=prompt,
                      repeats=args.repeats, threads=args.threads)
            print(f"{'unified' if unified else 'streams':<9} {prompt:>6} {1000 * r['separate']:9.1f} "
                  f"{1000 * r['mixed']:8.1f} {r['mixed'] / r['separate']:10.2f}  {'yes' if r['same'] else 'no'}",
                  flush=True)


if __name__ == "__main__":
    main()
