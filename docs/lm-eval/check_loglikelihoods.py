"""Recompute an lm_eval run's per-choice log-likelihoods with llama-cpp-python alone, and compare.

    python docs/lm-eval/check_loglikelihoods.py SAMPLES.jsonl [--docs 0,1,2]

SAMPLES.jsonl is the `--log_samples` output of a `local-completions` run against `eager-local serve`
(docs/serving.md, "Evaluating with lm-evaluation-harness"). For each (context, continuation) pair it
tokenizes as lm_eval does (`TemplateLM._encode_pair`: trailing spaces of the context move to the
continuation, the pair is tokenized whole, no special tokens added), decodes the tokens in
llama-cpp-python's own `Llama(logits_all=True)`, sums the continuation tokens' log-softmax and prints
it beside lm_eval's logged value; with `--docs all`, acc and acc_norm from those values too (the
argmax over a question's choices of the log-likelihood, and of it divided by the choice's length in
characters, as lm_eval's multiple_choice scores them; the task's docs hold `choices` and `answer`).
Nothing of eager_local computes a figure here; it only finds the test model's GGUF.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def load_reference(path: str):
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    from eager_local.machine import extra_buffers_enabled  # off where llama.cpp's AMX kernels crash

    defaults = lc.llama_model_default_params

    def params():
        out = defaults()
        out.use_extra_bufts = extra_buffers_enabled()
        return out

    lc.llama_model_default_params = params
    try:
        return llama_cpp.Llama(path, logits_all=True, n_ctx=512, n_batch=512, n_threads=1, n_threads_batch=1,
                               verbose=False)
    finally:
        lc.llama_model_default_params = defaults


def loglikelihood(reference, context: str, continuation: str) -> float:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = lambda text: reference.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # noqa: E731
    whole, head = encode(context + continuation), encode(context)
    reference.reset()
    reference.eval(whole)
    logits = np.asarray(reference.scores[:len(whole)], dtype=np.float64)
    total = 0.0
    for i in range(len(head), len(whole)):  # token i given tokens[:i]: row i - 1
        row = logits[i - 1]
        total += row[whole[i]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("samples")
    parser.add_argument("--docs", default="0,1,2", help="doc ids to check (comma-separated, or 'all')")
    args = parser.parse_args()
    os.environ.setdefault("EAGER_LOCAL_MODEL", "smollm2-135m")
    from eager_local import models

    reference = load_reference(str(models.resolve(None).path))
    wanted = None if args.docs == "all" else {int(d) for d in args.docs.split(",")}
    worst = 0.0
    hits = hits_norm = docs = 0
    for line in open(args.samples):
        sample = json.loads(line)
        if wanted is not None and sample["doc_id"] not in wanted:
            continue
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        lls = []
        for (context, continuation), resp in zip(pairs, sample["filtered_resps"]):
            logged = float(resp[0])
            ours = loglikelihood(reference, context, continuation)
            lls.append(ours)
            worst = max(worst, abs(ours - logged))
            print(f"doc {sample['doc_id']:2d} {continuation!r:8} lm_eval {logged:10.6f}  llama_cpp {ours:10.6f}  "
                  f"diff {abs(ours - logged):.2e}")
        docs += 1
        lengths = np.array([len(choice) for choice in sample["doc"]["choices"]], dtype=float)
        hits += int(np.argmax(lls)) == sample["doc"]["answer"]
        hits_norm += int(np.argmax(np.array(lls) / lengths)) == sample["doc"]["answer"]
    print(f"largest difference: {worst:.2e}")
    if wanted is None:
        print(f"from llama_cpp's log-likelihoods, {docs} questions: "
              f"acc {hits / docs:.4f}, acc_norm {hits_norm / docs:.4f}")


if __name__ == "__main__":
    main()
