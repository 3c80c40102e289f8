"""The Python API (eager_local/api.py) on the real default model: the README's example, and the
promises it makes — one prompt gives a Tree, a list gives Trees in order, `parallel` draws
exactly M sequences, a budget caps #T, trees round-trip through JSON, unknown options are refused.

Expectations come from the arguments and the raw tokens (e.g. #T recounted from each sequence's
tokens and fork point), not from the code under test.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest

from eager_local import Tree
from eager_local.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"
SHORT = dict(max_new_tokens=16, seed=7)


def readme_python_example() -> str:
    """The first ```python block under the README's "## Python API" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def recount_tokens(tree) -> int:
    """#T from the raw data: each sequence's tokens after the point it shares with its parent."""
    return sum(len(s.tokens) - s.fork_at for s in tree.sequences)


def test_readme_example_runs_as_written():
    code = readme_python_example()
    assert "EagerLocal()" in code and "llm.generate(" in code
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    tree, trees = namespace["tree"], namespace["trees"]
    assert isinstance(tree, Tree) and 1 <= len(tree.sequences) <= 8
    assert tree.prompt == "What is 17*23? Put the answer in \\boxed{}."
    printed = out.getvalue()
    for seq in tree.sequences:  # what the example prints for each sequence and each branch event
        assert f"{seq.id} {seq.parent} {seq.fork_at} {seq.finish_reason} {seq.text}\n" in printed
    for event in tree.events:
        assert f"{event.step} {event.entropy} {event.top1_text!r} {event.top2_text!r}\n" in printed
    assert [t.prompt for t in trees] == ["What is 2+3?", "What is 40+2?"]
    assert sum(recount_tokens(t) for t in trees) <= 2000


def test_one_prompt_gives_a_tree_and_a_list_gives_trees_in_order(llm):
    tree = llm.generate("Name a colour.", **SHORT)
    assert isinstance(tree, Tree) and tree.prompt == "Name a colour."
    prompts = ["Name a fruit.", "Name a city.", "Name a planet."]
    trees = llm.generate(prompts, **SHORT)
    assert isinstance(trees, list) and [t.prompt for t in trees] == prompts
    assert [t.index for t in trees] == [0, 1, 2]
    for t in trees:
        assert t.sequences and all(1 <= len(s.tokens) <= 16 for s in t.sequences)


def test_parallel_draws_exactly_m_sequences(llm):
    tree = llm.generate("Write a word.", method="parallel", max_sequences=3, **SHORT)
    assert len(tree.sequences) == 3
    assert tree.events == []  # parallel sampling never branches on entropy
    assert [s.id for s in tree.sequences] == [0, 1, 2]


def test_budget_caps_generated_tokens(llm):
    # A raw count the test model continues far past 10 tokens on any CPU, so only the budget ends it.
    tree = llm.generate("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", chat=False, budget=10, theta=3.5, max_new_tokens=64)
    assert recount_tokens(tree) == tree.generated_tokens == 10
    assert tree.sequences[0].finish_reason == "budget"
    trees = llm.generate(["Count to ten.", "Count to twenty."], method="parallel", max_sequences=2,
                         budget=25, max_new_tokens=64)
    assert sum(recount_tokens(t) for t in trees) <= 25


def test_tree_json_round_trip(llm):
    tree = llm.generate("What is 2+3?", theta=1.0, max_sequences=3, **SHORT)
    assert len(tree.sequences) >= 2, "θ = 1.0 branches on this prompt with the default model"
    back = Tree.from_json(tree.to_json())
    assert (back.prompt, back.prompt_tokens, back.method, back.settings) == \
        (tree.prompt, tree.prompt_tokens, tree.method, tree.settings)
    assert back.events == tree.events
    for a, b in zip(back.sequences, tree.sequences, strict=True):
        assert (a.id, a.parent, a.fork_at, a.tokens, a.text, a.finish_reason) == \
            (b.id, b.parent, b.fork_at, b.tokens, b.text, b.finish_reason)
        assert len(a.entropies) == len(b.entropies)
        for x, y in zip(a.entropies, b.entropies):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-5)


def test_unknown_options_are_refused(llm):
    with pytest.raises(ConfigError, match="unknown generation option: temprature"):
        llm.generate("hi", temprature=0.5)
    with pytest.raises(ConfigError, match="frobnicate"):
        llm.config(frobnicate=1)
    with pytest.raises(ConfigError, match="unknown method"):
        llm.generate("hi", method="beam", **SHORT)
    with pytest.raises(ConfigError, match="max-sequences"):
        llm.generate("hi", max_sequences=0, **SHORT)

