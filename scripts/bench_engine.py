#!/usr/bin/env python3
"""Engine speed and memory, as ratios against baselines measured in the same run.

    python scripts/bench_engine.py                 # everything, default model
    python scripts/bench_engine.py --only decode   # one section: decode, sequential, fork, memory, layout

Sections, each with its target:
  decode      engine tokens/s at B = 1, 8, 32 live sequences vs a bare batched llama_decode loop
              over the same kind of context (target: engine >= 0.85 x bare);
  sequential  full parallel sampling of M = 32 answers vs drawing them one after another with
              llama-cpp-python's Llama.create_completion (target: >= 2.5 x);
  fork        forking a sequence after a 100- and a 4,000-token prefix vs re-prefilling that prefix
              (target: < 1 ms and >= 100 x cheaper);
  memory      peak RSS of a process running EAGer with M = 32 branches (target: < 1.5 GB);
  layout      B rows decoding at position 600 with a KV stream per sequence (flash attention off,
              then on) vs one unified cache holding the same sequences (llama.cpp's choice of
              flash attention): why the engine uses streams and turns flash attention off.

Never run two benchmarks at once on a small machine: llama.cpp's threads spin and the numbers
become garbage. This script runs its measurements one after another.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from eager_local import models
from eager_local.config import GenerationConfig, SamplingParams
from eager_local.engine import Engine, Request
from eager_local.llama import Context, ContextSize, Model
from eager_local.machine import default_threads

PROMPT = "Write a long story about a robot who learns to paint. Describe every day in detail."


def bare_batched_decode(model: Model, prompt: list[int], batch_size: int, n_tokens: int, threads: int) -> float:
    """Tokens/s of the simplest batched loop over llama-cpp-python's low-level API.

    Prefill once, fork B ways, then each step: fill a llama_batch (llama_batch_init, Python loop as in
    the low-level examples), llama_decode, argmax per row. No entropy, no sampling, no bookkeeping.
    """
    import llama_cpp as lc

    size = ContextSize(cells=_round(len(prompt) + n_tokens + 64), n_seq_max=max(batch_size, 1), n_batch=512)
    ctx = Context(model, size, n_threads=threads)
    start = time.perf_counter()  # like the engine's timing: prefill, fork, B x n tokens
    first = ctx.prefill(prompt, 0)
    for s in range(1, batch_size):
        ctx.fork(0, s)
    raw = ctx._ctx
    batch = lc.llama_batch_init(batch_size, 0, 1)
    tokens = [int(np.argmax(first))] * batch_size
    n_vocab = model.n_vocab
    for step in range(n_tokens):
        batch.n_tokens = batch_size
        for s in range(batch_size):
            batch.token[s] = tokens[s]
            batch.pos[s] = len(prompt) + step
            batch.n_seq_id[s] = 1
            batch.seq_id[s][0] = s
            batch.logits[s] = 1
        if lc.llama_decode(raw, batch) != 0:
            raise RuntimeError("bare decode failed")
        logits = np.ctypeslib.as_array(lc.llama_get_logits(raw), shape=(batch_size, n_vocab))
        tokens = logits.argmax(axis=1).tolist()
    elapsed = time.perf_counter() - start
    lc.llama_batch_free(batch)
    ctx.close()
    return batch_size * n_tokens / elapsed


def engine_parallel(model: Model, prompt: list[int], batch_size: int, n_tokens: int, threads: int) -> float:
    """Tokens/s of the engine drawing B full-length samples (parallel method, EOS ignored): prefill,
    fork and B x n tokens with entropy-free sampling over the full vocabulary and all bookkeeping."""
    engine = Engine(model, n_threads=threads)
    config = GenerationConfig(
        method="parallel", max_sequences=batch_size, max_new_tokens=n_tokens,
        sampling=SamplingParams(temperature=0.6), ignore_eos=True,
    )
    # Warm the context up so the timing covers generation, not allocation.
    engine.generate([Request(tokens=prompt)], GenerationConfig(method="parallel", max_sequences=batch_size, max_new_tokens=2, ignore_eos=True))
    start = time.perf_counter()
    (tree,) = engine.generate([Request(tokens=prompt)], config)
    elapsed = time.perf_counter() - start
    assert tree.generated_tokens == batch_size * n_tokens, tree.generated_tokens
    engine.context.close()
    return tree.generated_tokens / elapsed


def section_decode(model, prompt, threads, n_tokens, sizes, rounds):
    """Alternate bare and engine runs `rounds` times per B; compare medians (a shared machine is noisy)."""
    rows = []
    for b in sizes:
        bare, engine = [], []
        for _ in range(rounds):
            bare.append(bare_batched_decode(model, prompt, b, n_tokens, threads))
            engine.append(engine_parallel(model, prompt, b, n_tokens, threads))
        bare_m, engine_m = float(np.median(bare)), float(np.median(engine))
        rows.append({"B": b, "bare_tps": bare_m, "engine_tps": engine_m, "ratio": engine_m / bare_m,
                     "bare_runs": bare, "engine_runs": engine})
        print(f"  B={b:<3} bare {bare_m:8.1f} t/s   engine {engine_m:8.1f} t/s   ratio {engine_m / bare_m:5.2f}   "
              f"(medians of {rounds}; bare {', '.join(f'{x:.0f}' for x in bare)}; engine {', '.join(f'{x:.0f}' for x in engine)})")
    return rows


def section_sequential(model_path, model, prompt_text, prompt, threads, n_tokens, m):
    """Engine parallel M vs M create_completion calls, same prompt text, same max tokens."""
    import llama_cpp as lc

    from eager_local.machine import extra_buffers_enabled

    # Llama() loads with default model params; keep llama.cpp's AMX buffers off where ours are.
    default_params = lc.llama_model_default_params

    def patched():
        params = default_params()
        params.use_extra_bufts = extra_buffers_enabled()
        return params

    lc.llama_model_default_params = patched
    import llama_cpp.llama as high_level

    high_level.llama_cpp.llama_model_default_params = patched
    llm = lc.Llama(model_path=str(model_path), n_ctx=len(prompt) + n_tokens + 64, n_threads=threads,
                   n_threads_batch=threads, verbose=False, seed=1)
    start = time.perf_counter()
    generated = 0
    for i in range(m):
        out = llm.create_completion(prompt_text, max_tokens=n_tokens, temperature=0.6, top_k=0, top_p=1.0,
                                    min_p=0.0, seed=i)
        generated += out["usage"]["completion_tokens"]
    sequential = generated / (time.perf_counter() - start)
    del llm

    engine = Engine(model, n_threads=threads)
    config = GenerationConfig(method="parallel", max_sequences=m, max_new_tokens=n_tokens,
                              sampling=SamplingParams(temperature=0.6))
    engine.generate([Request(tokens=prompt)], GenerationConfig(method="parallel", max_sequences=m, max_new_tokens=2))
    start = time.perf_counter()
    (tree,) = engine.generate([Request(tokens=prompt)], config)
    parallel = tree.generated_tokens / (time.perf_counter() - start)
    engine.context.close()
    print(f"  M={m}: sequential create_completion {sequential:7.1f} t/s ({generated} tokens)   "
          f"engine parallel {parallel:7.1f} t/s ({tree.generated_tokens} tokens)   ratio {parallel / sequential:5.2f}")
    return {"M": m, "sequential_tps": sequential, "sequential_tokens": generated, "parallel_tps": parallel,
            "parallel_tokens": tree.generated_tokens, "ratio": parallel / sequential}


def section_fork(model, threads, lengths, repeats=50):
    """Cost of a fork. With streams llama.cpp copies the parent's KV stream before the next decode,
    so time a fork plus a one-token decode of another sequence, minus the same decode without a
    fork. In a unified cache a fork only tags cells (the engine uses it for chat)."""
    rows = []
    for length, unified in [(n, u) for u in (False, True) for n in lengths]:
        words = ("alpha beta gamma delta " * (length // 2 + 8)).strip()
        prefix = model.tokenize(words)[:length]
        cells = _round(length + 256)
        ctx = Context(model, ContextSize(cells=cells * 4 if unified else cells, n_seq_max=4, n_batch=512, unified=unified),
                      n_threads=threads)
        ctx.prefill(prefix, 0)

        def one_token(fork: bool) -> float:
            t0 = time.perf_counter()
            if fork:
                ctx.fork(0, 1)
            ctx.decode([1], [0], [2], [1])
            elapsed = time.perf_counter() - t0
            ctx.drop(2)
            ctx.drop(1)
            return elapsed

        one_token(True)  # warm-up
        with_fork = sorted(one_token(True) for _ in range(repeats))[repeats // 2]
        without = sorted(one_token(False) for _ in range(repeats))[repeats // 2]
        fork = max(with_fork - without, 1e-6)
        if unified:  # nothing deferred: time the call itself (the difference above is noise)
            timings = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ctx.fork(0, 1)
                timings.append(time.perf_counter() - t0)
                ctx.drop(1)
            fork = sorted(timings)[repeats // 2]
        ctx.fork(0, 1)
        ctx.decode([1], [length], [1], [1])  # the copy is usable: the child continues the prefix
        assert ctx.seq_length(1) == length + 1
        ctx.clear()
        start = time.perf_counter()
        ctx.prefill(prefix, 0)
        prefill = time.perf_counter() - start
        stream_mb = ctx.cells_per_seq * model.kv_bytes_per_cell() / 2**20
        ctx.close()
        rows.append({"prefix": length, "unified": unified, "stream_cells": ctx.cells_per_seq, "fork_ms": fork * 1e3,
                     "prefill_ms": prefill * 1e3, "ratio": prefill / fork})
        what = "tags cells" if unified else f"copies a {ctx.cells_per_seq}-cell stream, {stream_mb:.0f} MB"
        print(f"  {'unified' if unified else 'streams'} prefix {length:5d}: fork {fork * 1e3:7.2f} ms ({what})   "
              f"re-prefill {prefill * 1e3:9.1f} ms   prefill/fork {prefill / fork:9.0f}x")
    return rows


def section_layout(model, threads, sizes, position=600, steps=20):
    """Decode tokens/s of B rows whose sequences already hold `position` cells each."""
    import os

    rng = np.random.default_rng(0)
    layouts = [("streams, flash attention off", False, "0"), ("streams, flash attention on", False, "1"),
               ("unified, llama.cpp's choice", True, None)]
    rows = []
    for b in sizes:
        speeds = {}
        for name, unified, flash in layouts:
            if flash is None:
                os.environ.pop("EAGER_LOCAL_FLASH_ATTN", None)
            else:
                os.environ["EAGER_LOCAL_FLASH_ATTN"] = flash
            cells = _round(position + steps + 1)
            size = ContextSize(cells=cells * b if unified else cells, n_seq_max=b, n_batch=2048, unified=unified)
            ctx = Context(model, size, n_threads=threads)
            for start in range(0, position, 50):  # interleaved, as sequences decoded in lockstep lie
                chunk = min(50, position - start)
                ctx.decode(rng.integers(100, 20000, chunk * b).astype(np.int32),
                           np.tile(np.arange(start, start + chunk, dtype=np.int32), b),
                           np.repeat(np.arange(b, dtype=np.int32), chunk), np.zeros(chunk * b, np.int8))
            t0 = time.perf_counter()
            for i in range(steps):
                ctx.decode(rng.integers(100, 20000, b).astype(np.int32), np.full(b, position + i, np.int32),
                           np.arange(b, dtype=np.int32), np.ones(b, np.int8))
            speeds[name] = b * steps / (time.perf_counter() - t0)
            ctx.close()
        os.environ.pop("EAGER_LOCAL_FLASH_ATTN", None)
        base = speeds["unified, llama.cpp's choice"]
        print(f"  B={b:<3d} " + "   ".join(f"{name} {v:6.1f} t/s ({v / base:4.2f} x)" for name, v in speeds.items()))
        rows.append({"B": b, **speeds})
    return rows


def section_memory(threads, m, n_tokens):
    """Peak RSS of a fresh process that runs EAGer-init with θ = 0 so that it reaches M branches."""
    code = f"""
import resource, json
from eager_local.api import EagerLocal
llm = EagerLocal(threads={threads})
tree = llm.generate("Write a long story about a robot.", theta=0.0, max_sequences={m}, max_new_tokens={n_tokens}, ignore_eos=True)
print(json.dumps({{"sequences": len(tree.sequences), "tokens": tree.generated_tokens,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "n_ctx": llm.engine.context.n_ctx}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    mb = info["maxrss_kb"] / 1024
    print(f"  EAGer-init M={m}: {info['sequences']} sequences, {info['tokens']} tokens, KV {info['n_ctx']} cells, "
          f"peak RSS {mb:.0f} MB (target < 1536 MB)")
    info["peak_rss_mb"] = mb
    return info


def _round(n: int) -> int:
    return -(-n // 256) * 256


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per sequence in the decode section")
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3, help="alternating repetitions per B in the decode section")
    ap.add_argument("--only", default="decode,sequential,fork,memory,layout")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    resolved = models.resolve(args.model)
    threads = args.threads or default_threads()
    model = Model(resolved.path)
    prompt = model.tokenize(PROMPT)
    print(f"model {resolved.path.name} · {threads} threads · prompt {len(prompt)} tokens · "
          f"llama-cpp-python {__import__('llama_cpp').__version__}")
    results = {"model": resolved.path.name, "threads": threads}
    sections = args.only.split(",")
    if "decode" in sections:
        print("decode: engine vs bare batched llama_decode (same context kind, same B)")
        results["decode"] = section_decode(model, prompt, threads, args.tokens, [int(b) for b in args.sizes.split(",")],
                                           args.rounds)
    if "sequential" in sections:
        print("sequential: engine parallel M=32 vs 32 x Llama.create_completion")
        results["sequential"] = section_sequential(resolved.path, model, PROMPT, prompt, threads, 96, 32)
    if "fork" in sections:
        print("fork: llama_memory_seq_cp vs re-prefilling the prefix")
        results["fork"] = section_fork(model, threads, [100, 4000])
    if "memory" in sections:
        print("memory: peak RSS with M = 32 branches")
        results["memory"] = section_memory(threads, 32, 256)
    if "layout" in sections:
        print("layout: B rows at position 600, KV streams vs one unified cache (tokens/s, x unified)")
        results["layout"] = section_layout(model, threads, [1, 4, 16])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
