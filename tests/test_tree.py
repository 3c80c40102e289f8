"""Trees of branches: counting, finish reasons, JSON round trips (no model needed)."""

from __future__ import annotations

import json
import math

from eager_local import tree as T


def small_tree() -> T.Tree:
    """#0 generates 5 tokens; #1 forks off #0 at token 2; #2 forks off #1 at token 3."""
    root = T.Sequence(id=0, parent=None, fork_at=0, tokens=[10, 11, 12, 13, 14],
                      entropies=[0.1, 2.5, 0.3, math.nan, math.nan], finish_reason=T.STOP, text="a b c d")
    one = T.Sequence(id=1, parent=0, fork_at=2, tokens=[10, 11, 20, 21], entropies=[0.1, 2.5, 2.5, 1.9],
                     finish_reason=T.LENGTH, text="a b x y", llama_seq=3)
    two = T.Sequence(id=2, parent=1, fork_at=3, tokens=[10, 11, 20, 30, 31, 32],
                     entropies=[0.1, 2.5, 2.5, 1.9, 0.2, 0.0], finish_reason=T.BUDGET, text="a b x z w v")
    events = [
        T.BranchEvent(step=2, parent=0, child=1, entropy=2.5, threshold=2.0, top1=12, top2=20, top1_text=" c", top2_text=" x"),
        T.BranchEvent(step=3, parent=1, child=2, entropy=1.9, threshold=1.5, top1=21, top2=30, top1_text=" y", top2_text=" z"),
    ]
    return T.Tree(prompt="p", prompt_tokens=7, method="eager-init", sequences=[root, one, two], events=events,
                  settings={"theta": 2.0})


def test_generated_tokens_count_shared_prefixes_once():
    tree = small_tree()
    # #0: 5 own; #1: 2 own (after its fork at 2); #2: 3 own (after its fork at 3)
    assert [s.new_token_count for s in tree.sequences] == [5, 2, 3]
    assert tree.generated_tokens == 10
    assert tree.sequences[2].own_tokens == [30, 31, 32]


def test_finish_counts_and_budget_flag():
    tree = small_tree()
    assert tree.finish_counts() == {T.STOP: 1, T.LENGTH: 1, T.BUDGET: 1}
    assert tree.cut_by_budget
    tree.sequences[2].finish_reason = T.STOP
    assert not tree.cut_by_budget
    assert T.Tree(prompt="", prompt_tokens=1, method="eager-init", started=False).cut_by_budget


def test_json_round_trip_keeps_everything_and_nan_becomes_null():
    tree = small_tree()
    text = tree.to_json()
    doc = json.loads(text)  # strict JSON: no NaN literals
    assert doc["sequences"][0]["entropies"][3] is None
    assert doc["generated_tokens"] == 10
    back = T.Tree.from_json(text)
    assert math.isnan(back.sequences[0].entropies[3])
    assert back.sequences[1].llama_seq == 3
    assert back.events == tree.events
    assert [s.tokens for s in back.sequences] == [s.tokens for s in tree.sequences]
    assert back.to_dict() == tree.to_dict()


def test_texts_and_empty_tree():
    tree = small_tree()
    assert tree.texts == ["a b c d", "a b x y", "a b x z w v"]
    empty = T.Tree.from_json(T.Tree(prompt="q", prompt_tokens=3, method="parallel").to_json())
    assert empty.sequences == [] and empty.generated_tokens == 0
