#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server: C concurrent clients × R requests each, on loopback.

    # eager-local serve, started and stopped by this script (its options after --serve-args):
    python scripts/load_serve.py --clients 32 --requests 4 --max-tokens 128 --model smollm2-135m \
        --serve-args "-M 8 --slots 16"
    # llama.cpp's llama-server, started and stopped by this script (scripts/llama_server.py):
    python scripts/load_serve.py --llama-server /path/to/llama-server --model model.gguf --slots 16 --threads 2
    # any running server (--tokenizer: the server's model, a .gguf or a registry name, for the recount):
    python scripts/load_serve.py --base-url http://127.0.0.1:8080/v1 --tokenizer model.gguf

Every client sends its requests one after the other (POST /v1/chat/completions, not streamed), so
C requests are in flight at once. The prompts are seeded arithmetic questions, the same for every
server. With --conversation each client's requests are the turns of one chat: a request carries the
questions and first answers before it, as a chat client sends them, so a server's prompt cache can
skip what it decoded for the turn before. At the end it prints one JSON document: requests sent, answered and failed, requests/s,
p50/p95 latency, completion tokens and aggregate tokens/s, how often the answers were right (the vote
over a request's choices, and any choice), and the server's batch statistics (eager-local's
/health; llama-server's /metrics: llama_decode calls and busy slots per call).
Speed and accuracy together answer the question a client with `n` > 1 asks: eager-init grows fewer
choices than n where the model is sure, so its tokens/s is not the same work as parallel
sampling's, but requests/s at the same accuracy is. It checks that nothing was lost or duplicated:
every request answered exactly once, every response id distinct.

Completion tokens are recounted, the same way for every server: after the timed load, every
choice's text is tokenized with the model's tokenizer and the counts summed. The servers' own
`usage.completion_tokens` differ in what they count (eager-local: the tree's #T, a shared prefix
once; llama-server: one choice only, whatever `n` is), so tokens/s comes from the recount; the
`usage` sum is reported beside it as `usage_completion_tokens`. Prompt tokens are the servers'
`usage` sums; `prompt_tokens_reused` is how many of them the server took from its prompt cache
(llama-server: a slot's `timings.cache_n`; eager-local: `usage.prompt_tokens_details.cached_tokens`).

Benchmark code, not part of the package. The load itself uses the standard library only; the
recount loads the tokenizer through eager_local (vocabulary only, no weights).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_server import LlamaServer, free_port, stop_process  # noqa: E402  (scripts/llama_server.py)


def prompts(count: int, seed: int) -> list[tuple[str, int]]:
    """`count` seeded questions and their answers: the same for every server and every run."""
    rng = random.Random(seed)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(count)]
    return [(f"What is {a} + {b}? Think step by step and put the final answer in \\boxed{{}}.", a + b)
            for a, b in pairs]


def score(answered: list[tuple[list[str], int]]) -> dict:
    """How often the answers were right, over (choices' texts, expected) pairs: the majority
    answer of a request's choices (what a client voting over them gets: eval's cons@k) and any
    choice (pass@n). Answers are read and graded as `eager-local eval` does."""
    from eager_local.answers import extract_answer
    from eager_local.eval.grading import is_correct
    from eager_local.eval.metrics import aggregate, prompt_metrics

    per_request = []
    for texts, expected in answered:
        answers = [extract_answer(t) for t in texts]
        correct = [is_correct(a, str(expected), "numeric") for a in answers]
        per_request.append(prompt_metrics(correct, answers, str(expected), "numeric", tokens=0))
    means = aggregate(per_request)
    return {"vote_accuracy": round(means.get("cons@k", 0.0), 4), "pass_at_n": round(means.get("pass@k", 0.0), 4)}


def post(url: str, body: dict, api_key: str | None, timeout: float) -> dict:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def get(url: str, timeout: float = 5) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def llama_server_metrics(root: str) -> dict:
    """llama-server's batch counters from its Prometheus `/metrics` (started with `--metrics`):
    llama_decode calls and busy slots per call, the nearest it reports to eager-local's rows per step."""
    try:
        with urllib.request.urlopen(root + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    wanted = ("n_decode_total", "n_busy_slots_per_decode", "tokens_predicted_total")
    values = dict(line.split()[:2] for line in text.splitlines() if line.startswith("llamacpp:"))
    return {name: float(values["llamacpp:" + name]) for name in wanted if "llamacpp:" + name in values}


def run_load(base_url: str, args) -> dict:
    questions = prompts(args.clients * args.requests, args.seed)
    texts = [q for q, _ in questions]
    url = base_url.rstrip("/") + "/chat/completions"

    def client(c: int) -> list[dict]:
        results = []
        history: list[dict] = []  # --conversation: the turns so far
        for r in range(args.requests):
            i = c * args.requests + r
            messages = (history if args.conversation else []) + [{"role": "user", "content": texts[i]}]
            body = {"model": args.model_name, "messages": messages,
                    "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed + i}
            if args.n is not None:
                body["n"] = args.n
            body.update(json.loads(args.extra) if args.extra else {})
            start = time.perf_counter()
            try:
                data = post(url, body, args.api_key, args.timeout)
                results.append({"request": i, "ok": True, "latency": time.perf_counter() - start, "id": data.get("id"),
                                "tokens": int((data.get("usage") or {}).get("completion_tokens", 0)),
                                "prompt": int((data.get("usage") or {}).get("prompt_tokens", 0)),
                                "reused": reused_prompt_tokens(data),
                                "texts": [choice_text(c) for c in data.get("choices", [])]})
                history = messages + [{"role": "assistant", "content": (results[-1]["texts"] or [""])[0]}]
            except urllib.error.HTTPError as e:  # the server's reason, e.g. a field out of its range
                results.append({"request": i, "ok": False, "latency": time.perf_counter() - start,
                                "error": f"{e}: {e.read()[:300].decode('utf-8', 'replace')}"})
            except (urllib.error.URLError, OSError, ValueError) as e:
                results.append({"request": i, "ok": False, "latency": time.perf_counter() - start, "error": str(e)})
        return results

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        results = [r for batch in pool.map(client, range(args.clients)) for r in batch]
    wall = time.perf_counter() - started
    ok = [r for r in results if r["ok"]]
    latencies = sorted(r["latency"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)
    reused = [r["reused"] for r in ok if r["reused"] is not None]
    recounted = recount_tokens([t for r in ok for t in r["texts"]], args.tokenizer)
    answered = sorted(r["request"] for r in results)
    ids = [r["id"] for r in ok]
    return {
        "base_url": base_url,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_tokens": args.max_tokens,
        "sent": len(texts),
        "answered": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
        "nothing_lost_or_duplicated": answered == list(range(len(texts))) and len(set(ids)) == len(ids) == len(ok),
        "wall_time": round(wall, 3),
        "requests_per_second": round(len(ok) / wall, 3) if wall else None,
        "latency_p50": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3) if latencies else None,
        "prompt_tokens": sum(r["prompt"] for r in ok),
        "prompt_tokens_reused": sum(reused) if reused else None,
        "usage_completion_tokens": tokens,
        "choices": sum(len(r["texts"]) for r in ok),
        "completion_tokens": recounted,
        "tokens_per_second": round(recounted / wall, 2) if wall else None,
        **score([(r["texts"], questions[r["request"]][1]) for r in ok]),
    }


def reused_prompt_tokens(data: dict) -> int | None:
    """Prompt tokens a response says came from the server's prompt cache (None: it does not say)."""
    if "timings" in data:  # llama-server: what the slot kept from its previous request
        return (data["timings"] or {}).get("cache_n")
    return ((data.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")


def choice_text(choice: dict) -> str:
    """A choice's generated text: a chat message's reasoning and content, or a completion's text."""
    message = choice.get("message")
    if message is None:
        return choice.get("text") or ""
    return (message.get("reasoning_content") or "") + (message.get("content") or "")


def recount_tokens(texts: list[str], tokenizer: str) -> int:
    """Completion tokens of all choices, each text tokenized by the model's tokenizer (no BOS)."""
    from eager_local.llama import Model
    from eager_local.models import resolve

    vocab = Model(resolve(tokenizer, progress=False).path, vocab_only=True)
    return sum(len(vocab.tokenize(text, add_special=False)) for text in texts)


def wait_healthy(root: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode} while starting")
        health = get(root + "/health", timeout=2)
        if health and health.get("status") == "ok":
            return
        time.sleep(0.3)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f} s")


def with_eager_local(args) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "eager_local", "serve", "--host", "127.0.0.1", "--port", str(port),
               *shlex.split(args.serve_args)]
    if args.model:
        command += ["--model", args.model]
    env = dict(os.environ, **({"EAGER_LOCAL_API_KEY": args.api_key} if args.api_key else {}))
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(root, process, args.startup_timeout)
        models = get(root + "/v1/models") or {}
        args.model_name = args.model_name or (models.get("data") or [{}])[0].get("id")
        report = run_load(root + "/v1", args)
        report["server"] = {"command": shlex.join(command[1:]), "health": get(root + "/health")}
        return report
    finally:
        stop_process(process, timeout=30)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="Requests per client, one after the other.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--n", type=int, default=None, help="`n` of each request (default: the server's).")
    parser.add_argument("--extra", default=None, help='Extra JSON fields per request, e.g. \'{"theta": 2.0}\'.')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conversation", action="store_true",
                        help="Each client's requests are the turns of one chat (each carries the ones before).")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model-name", default=None, help="`model` of each request (default: what /v1/models lists).")
    parser.add_argument("--base-url", default=None, help="Drive this running server (its /v1 URL).")
    parser.add_argument("--serve-args", default="", help="Options for the `eager-local serve` this script starts.")
    parser.add_argument("--model", default=None, help="Model for the server this script starts (llama-server: a .gguf).")
    parser.add_argument("--llama-server", default=None, help="Start this llama-server binary instead of eager-local.")
    parser.add_argument("--slots", type=int, default=16, help="llama-server's -np.")
    parser.add_argument("--threads", type=int, default=1, help="llama-server's -t.")
    parser.add_argument("--n-ctx", type=int, default=16 * 1024, help="llama-server's -c (shared by its slots).")
    parser.add_argument("--no-repack", action=argparse.BooleanOptionalAction, default=None,
                        help="Pass --no-repack to llama-server (default: when eager_local keeps llama.cpp's "
                             "extra weight buffers off, i.e. on CPUs that report AMX).")
    parser.add_argument("--kv-unified", action=argparse.BooleanOptionalAction, default=True,
                        help="llama-server's KV layout: one cache for all slots (default here), or with "
                             "--no-kv-unified a stream per slot (llama-server's own default for an explicit -np).")
    parser.add_argument("--tokenizer", default=None,
                        help="Model whose tokenizer recounts the completion tokens (default: --model).")
    parser.add_argument("--startup-timeout", type=float, default=300)
    args = parser.parse_args(argv)
    args.tokenizer = args.tokenizer or args.model
    if not args.tokenizer:
        parser.error("the token recount needs --model or --tokenizer (the server's model)")
    if args.base_url:
        args.model_name = args.model_name or ((get(args.base_url.rstrip("/") + "/models") or {}).get("data")
                                              or [{}])[0].get("id")
        report = run_load(args.base_url, args)
    elif args.llama_server:
        if not args.model:
            parser.error("--llama-server needs --model (a .gguf)")
        if args.no_repack is None:
            from eager_local.machine import extra_buffers_enabled

            args.no_repack = not extra_buffers_enabled()
        with LlamaServer(args.llama_server, args.model, slots=args.slots, n_ctx=args.n_ctx, threads=args.threads,
                         extra_args=["--metrics", *(["--no-repack"] if args.no_repack else [])],
                         kv_unified=args.kv_unified) as server:
            args.model_name = args.model_name or "default"
            report = run_load(server.url + "/v1", args)
            report["server"] = {"command": shlex.join(server.args), "metrics": llama_server_metrics(server.url)}
    else:
        report = with_eager_local(args)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
