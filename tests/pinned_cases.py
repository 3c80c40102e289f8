"""The cases behind tests/data/pinned_trees.json (scripts/pin_trees.py writes it, the test reads it).

Each case is a call of the public API, `EagerLocal.generate(prompts, **options)`, and is reduced to
what generation decides: every sequence's tokens, parent, fork point and finish reason, every branch
event, and entropies to 3 decimals (llama.cpp's logits are deterministic for one build and thread
count; rounding absorbs float noise in the entropy sum, not a changed decision).

The trees are pinned per CPU kernel set (`kernels`): llama.cpp built for another instruction set
(AVX2 against AVX-512, say) computes other last bits of the logits, and a sampled token near a tie,
or an entropy near θ, then goes the other way, so one engine grows other trees on another CPU.
"""

from __future__ import annotations

import math

import numpy as np

MODEL = "smollm2-135m"  # the model the pins were made with (the suite's test model, tests/conftest.py)

PROMPTS = [
    "What is 23 + 19? Think step by step and put the final answer in \\boxed{}.",
    "Name three colours of the rainbow.",
    "A train travels 60 km in 1.5 hours. What is its average speed?",
]

CASES = {
    "eager_init": dict(prompts=PROMPTS, options=dict(theta=2.0, max_sequences=6, max_new_tokens=40, seed=7)),
    "eager_init_window": dict(prompts=PROMPTS[:2], options=dict(theta=2.3, max_sequences=8, max_new_tokens=48,
                                                               branch_window=6, seed=55)),
    "eager_dynamic_sampling": dict(prompts=PROMPTS[1:], options=dict(theta=1.5, max_sequences=5, max_new_tokens=32,
                                                                     dynamic_threshold=True, top_k=40, top_p=0.9,
                                                                     temperature=0.8, seed=3)),
    "parallel": dict(prompts=PROMPTS, options=dict(method="parallel", max_sequences=3, max_new_tokens=24, seed=11)),
    "budget": dict(prompts=PROMPTS, options=dict(theta=1.6, max_sequences=8, max_new_tokens=64, seed=5), budget=150),
    "raw_tempered": dict(prompts=PROMPTS[:1], chat=False,
                         options=dict(theta=0.4, max_sequences=4, max_new_tokens=32, tempered_entropy=True,
                                      top_k_entropy=10, seed=9)),
}


def kernels() -> str:
    """Which of llama.cpp's CPU kernels this process runs: the features llama.cpp was built with (its
    system info; a source build targets the building CPU) and whether its extra weight buffer types
    (repacked weights) are on. Two machines with the same value compute the same logits."""
    import llama_cpp

    from eager_local.machine import extra_buffers_enabled

    info = llama_cpp.llama_print_system_info().decode().replace("CPU :", "|")
    features = [part.split("=")[0].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    return " ".join(features) + (" | extra buffers" if extra_buffers_enabled() else " | no extra buffers")


def _round(values):
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else round(float(v), 3) for v in values]


def reduce_tree(tree) -> dict:
    return {
        "sequences": [
            {"id": s.id, "parent": s.parent, "fork_at": s.fork_at, "tokens": list(map(int, s.tokens)),
             "finish_reason": s.finish_reason, "entropies": _round(s.entropies)}
            for s in tree.sequences
        ],
        "events": [
            {"step": e.step, "parent": e.parent, "child": e.child, "top1": int(e.top1), "top2": int(e.top2),
             "entropy": round(float(e.entropy), 3), "threshold": round(float(e.threshold), 3)}
            for e in tree.events
        ],
        "started": tree.started,
    }


def run_case(llm, case: dict) -> list[dict]:
    trees = llm.generate(case["prompts"], chat=case.get("chat", True), budget=case.get("budget"), **case["options"])
    return [reduce_tree(t) for t in trees]


# The calibration estimator on fixed synthetic traces (no model): its mean #S at a few θ.
def _synthetic_traces(seed: int, prompts: int, samples: int, length: int) -> list:
    rng = np.random.default_rng(seed)
    return [[list(rng.gamma(2.0, 0.6, size=int(rng.integers(length // 2, length)))) for _ in range(samples)]
            for _ in range(prompts)]


ESTIMATOR_CASES = {
    "m8": dict(traces=dict(seed=1, prompts=6, samples=3, length=80), thetas=[1.5, 2.2, 2.8, 3.5],
               max_sequences=8, branch_window=1000),
    "m16_window": dict(traces=dict(seed=2, prompts=4, samples=2, length=120), thetas=[2.0, 2.6, 3.2],
                       max_sequences=16, branch_window=10),
}


def estimator_outputs(case: dict) -> list[float]:
    from eager_local.calibration import estimate_sequences

    traces = _synthetic_traces(**case["traces"])
    return [round(float(estimate_sequences(traces, theta, case["max_sequences"],
                                           branch_window=case["branch_window"])), 6)
            for theta in case["thetas"]]
