#!/usr/bin/env python3
"""Which prefill splits give the same logits as one whole prefill, to the last bit?

    python scripts/probe_exact_prefill.py --model qwen2.5-coder-0.5b --threads 1

A prompt is prefilled whole into one stream; then, for each `rest`, its first len - rest tokens go
into another stream and the last `rest` tokens follow in a second decode (what the prompt cache does
when it reuses len - rest cells). Prints the values of `rest` whose last-token logits differ from
the whole prefill's. llama.cpp's CPU matrix kernels take another path for batches of few rows, and
this shows below how many rows that happens on this machine and model: `llama.EXACT_BATCH_ROWS`
must stay above it.

Benchmark code, not part of the package.
"""

from __future__ import annotations

import argparse

import numpy as np

from eager_local import models
from eager_local.llama import Context, ContextSize, Model

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May? Please reason step by step. ")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="registry name or .gguf (default: the default model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="the question this many times (a longer prompt)")
    args = ap.parse_args(argv)
    model = Model(models.resolve(args.model).path)
    ctx = Context(model, ContextSize(cells=1024, n_seq_max=2, n_batch=512), n_threads=args.threads)
    tokens = model.tokenize(model.apply_chat_template([{"role": "user", "content": QUESTION * args.repeat}]))
    whole = ctx.prefill(tokens, 0)
    rests = [r for r in [*range(1, 21), 24, 32, 64, 100] if r < len(tokens)]
    differ = []
    for rest in rests:
        ctx.drop(1)
        ctx.prefill(tokens[:-rest], 1)
        split = ctx.prefill(tokens[-rest:], 1, start_pos=len(tokens) - rest)
        if not np.array_equal(split, whole):
            differ.append(rest)
    print(f"{models.resolve(args.model).name}: prompt of {len(tokens)} tokens, {args.threads} thread(s); "
          f"tried rest = {rests}")
    print(f"last-token logits differ from the whole prefill's for rest = {differ or 'none'}")


if __name__ == "__main__":
    main()
