"""The engine side of serving (engine/serving.py, engine/groups.py), without HTTP: requests with
configs of their own share one serving loop and each gets the tree it gets alone; a cancelled
request ends; closing the inbox ends the loop; per-prompt budgets in the branch rule.
"""

from __future__ import annotations

import threading

import numpy as np

from eager_local.engine import Inbox, Request
from eager_local.engine.groups import decide

SETTINGS = [
    dict(theta=1.5, max_sequences=4, max_new_tokens=20, seed=1),
    dict(method="parallel", max_sequences=3, max_new_tokens=12, seed=2, temperature=0.9, top_p=0.8),
    dict(theta=0.8, max_sequences=5, max_new_tokens=16, seed=3, temperature=0.0),
    dict(theta=1.0, max_sequences=6, max_new_tokens=24, seed=4, top_k=20, dynamic_threshold=True),
]
PROMPTS = ["Name a colour.", "What is 2+3?", "Count to five.", "Say hello in French."]


def shape(tree):
    return [(s.parent, s.fork_at, s.tokens, s.finish_reason) for s in tree.sequences]


def serve_all(llm, requests, *, cancel=None):
    inbox = Inbox()
    loop = llm.serving_loop(llm.config(max_sequences=8, max_new_tokens=32), inbox, prompt_tokens=128, slots=4)
    results = {}

    def run():
        for request, tree in loop.serve():
            results[id(request)] = tree
            if len(results) == len(requests):
                inbox.close()

    thread = threading.Thread(target=run)
    thread.start()
    for request in requests:
        inbox.submit(request)
    if cancel is not None:
        inbox.cancel(cancel)
    thread.join(timeout=300)
    assert not thread.is_alive()
    return loop, [results[id(r)] for r in requests]


def test_requests_with_their_own_configs_share_steps_and_get_their_solo_trees(llm):
    base = llm.config(max_sequences=8, max_new_tokens=32)
    requests = [Request(tokens=llm.prompt_tokens(p), text=p, config=base.with_options(**o))
                for p, o in zip(PROMPTS, SETTINGS)]
    stats = llm.count_steps()
    loop, served = serve_all(llm, requests)
    assert stats.peak_prompts >= 2  # they were decoded together
    for request, tree, options in zip(requests, served, SETTINGS):
        (alone,) = llm.generate_requests([Request(tokens=request.tokens, text=request.text)], request.config)
        assert shape(tree) == shape(alone)
        assert tree.method == options.get("method", "eager-init")
        assert len(tree.sequences) <= options["max_sequences"]
        assert all(len(s.tokens) <= options["max_new_tokens"] for s in tree.sequences)


def test_cancel_ends_a_request_and_close_ends_the_loop(llm):
    base = llm.config(max_sequences=8, max_new_tokens=32)
    keep = Request(tokens=llm.prompt_tokens("Name a colour."), config=base.with_options(max_new_tokens=8))
    gone = Request(tokens=llm.prompt_tokens("Tell a long story."), config=base.with_options(ignore_eos=True))
    loop, (kept, cancelled) = serve_all(llm, [keep, gone], cancel=gone)
    assert kept.started and all(s.finish_reason in ("stop", "length") for s in kept.sequences)
    # cancelled before or after it started: never a whole generation
    assert not cancelled.started or all(s.finish_reason == "cancelled" for s in cancelled.sequences)
    assert not loop.runs and not loop.rows and not loop.pending


def test_decide_with_prompt_budgets_by_hand():
    # rows 0,1 of prompt 7 (budget 3 left), rows 2,3 of prompt 9 (no budget of its own)
    entropies = np.array([3.0, 3.0, 3.0, 0.1])
    thresholds = np.full(4, 2.0)
    prompts = np.array([7, 7, 9, 9])
    sequences, caps = {7: 2, 9: 2}, {7: 8, 9: 8}
    branching, cut = decide(entropies, thresholds, prompts, sequences, caps, float("inf"), {7: 3})
    # prompt 7: row 0 branches (2 tokens), row 1 gets the last token and only samples
    assert branching.tolist() == [True, False, True, False] and cut.tolist() == [False] * 4
    branching, cut = decide(entropies, thresholds, prompts, sequences, caps, float("inf"), {7: 1})
    assert branching.tolist() == [False, False, True, False] and cut.tolist() == [False, True, False, False]
    # the call's budget still binds everyone: 3 tokens, prompt 7 takes 1, prompt 9 gets 2
    branching, cut = decide(entropies, thresholds, prompts, sequences, caps, 3, {7: 1})
    assert branching.tolist() == [False, False, True, False] and cut.tolist() == [False, True, False, True]
