"""Same model, seed and settings, same trees, token for token: the engine against trees it produced
before a refactoring (tests/data/pinned_trees.json, written by scripts/pin_trees.py).

The trees are pinned per CPU kernel set (pinned_cases.kernels). Only a deliberate change of
behaviour may regenerate them; a CPU with kernels new to the file adds its own pins, made by an
engine whose pins pass elsewhere (`scripts/pin_trees.py --add`). The estimator cases pin the
calibration estimator's mean #S on fixed synthetic traces the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinned_cases import CASES, ESTIMATOR_CASES, MODEL, estimator_outputs, kernels, run_case

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_trees.json").read_text())
PINS = PINNED["cases"]  # CPU kernel set -> case name -> trees (pinned_cases.py says why per CPU)
KERNELS = kernels()  # this CPU's kernel set, the key into PINS


def test_pins_are_for_the_test_model(llm):
    from eager_local import models

    assert llm.resolved.name == MODEL
    assert models.model_sha256(llm.resolved.path) == PINNED["model_sha256"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_reproduces_pinned_trees(llm, name):
    got = run_case(llm, CASES[name])
    if KERNELS not in PINS:  # a CPU pinned under a descriptive label is recognised by its trees
        assert any(pins[name] == got for pins in PINS.values()), (
            f"{name}: the trees equal no pinned CPU's, and this CPU's kernels ({KERNELS}) have no pins "
            "of their own: if the engine is unchanged, `python scripts/pin_trees.py --add` pins them")
        return
    want = PINS[KERNELS][name]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert [s["tokens"] for s in g["sequences"]] == [s["tokens"] for s in w["sequences"]], (name, i)
        assert g == w, (name, i)


def test_pinned_cases_branch_and_cut():
    """The pins cover what they claim: branching, a budget cut, parallel rows, a closed window."""
    for cases in PINS.values():
        assert any(t["events"] for t in cases["eager_init"])
        assert any(s["finish_reason"] == "budget" for t in cases["budget"] for s in t["sequences"])
        assert all(len(t["sequences"]) == 3 for t in cases["parallel"])
        assert any(len(t["sequences"]) > 1 for t in cases["eager_dynamic_sampling"])


@pytest.mark.parametrize("name", sorted(ESTIMATOR_CASES))
def test_estimator_reproduces_pinned_means(name):
    assert estimator_outputs(ESTIMATOR_CASES[name]) == PINNED["estimator"][name]
