#!/usr/bin/env python3
"""Do eager_local and llama-server sample from the same distribution? Compare next-token probabilities.

    python scripts/check_same_distribution.py --server /path/to/llama-server [--prompt TEXT] [-t 0.6]

For the prompt (through the chat template) and two prefixes of an answer, prints the top-5 tokens
and their probabilities at temperature T from eager_local's context (softmax of logits / T) and
from llama-server's /completion with n_probs and post_sampling_probs (full-vocabulary sampling
settings, as compare_server.py sends them). They should agree to rounding.
"""

from __future__ import annotations

import argparse
import json
import urllib.request

import numpy as np

from eager_local.api import EagerLocal
from eager_local.llama import Context, ContextSize
from eager_local.machine import extra_buffers_enabled
from llama_server import LlamaServer  # scripts/llama_server.py (python puts scripts/ on the path)


def our_top(llm: EagerLocal, tokens: list[int], temperature: float, k: int = 5) -> list[tuple[int, float]]:
    ctx = Context(llm.model, ContextSize(cells=512, n_seq_max=1, n_batch=512), n_threads=llm.engine.n_threads)
    try:
        z = np.asarray(ctx.prefill(tokens, 0), dtype=np.float64).ravel() / temperature
    finally:
        ctx.close()
    p = np.exp(z - z.max())
    p /= p.sum()
    return [(int(t), round(float(p[t]), 4)) for t in np.argsort(-p)[:k]]


def server_top(server: LlamaServer, tokens: list[int], temperature: float, k: int = 5) -> list[tuple[int, float]]:
    body = {"prompt": tokens, "n_predict": 1, "temperature": temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
            "typical_p": 1.0, "repeat_penalty": 1.0, "n_probs": k, "post_sampling_probs": True, "seed": 1}
    request = urllib.request.Request(server.url + "/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        data = json.loads(r.read())
    return [(x["id"], round(x["prob"], 4)) for x in data["completion_probabilities"][0]["top_probs"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompt", default="What is 43 - 15? Put the answer in \\boxed{}.")
    ap.add_argument("--answer", default="\\boxed{28}", help="prefixes of this text are the other contexts")
    ap.add_argument("-t", "--temperature", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    llm = EagerLocal(args.model, threads=args.threads)
    prompt = llm.prompt_tokens(args.prompt)
    answer = llm.model.tokenize(args.answer, add_special=False)
    contexts = [prompt + answer[:k] for k in (0, len(answer) // 2, len(answer))]
    ours = [our_top(llm, c, args.temperature) for c in contexts]
    with LlamaServer(args.server, llm.resolved.path, slots=1, n_ctx=1024, threads=args.threads,
                     extra_args=[] if extra_buffers_enabled() else ["--no-repack"]) as server:
        theirs = [server_top(server, c, args.temperature) for c in contexts]
    worst = 0.0
    for context, a, b in zip(contexts, ours, theirs):
        print(f"after {len(context)} tokens:\n  eager_local  {a}\n  llama-server {b}")
        probs_b = dict(b)
        worst = max([worst] + [abs(p - probs_b[t]) for t, p in a if t in probs_b])
    print(f"largest difference on shared top tokens: {worst:.4f}")


if __name__ == "__main__":
    main()
