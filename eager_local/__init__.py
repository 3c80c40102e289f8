"""eager_local: entropy-aware branching generation (EAGer) on llama.cpp.

`from eager_local import EagerLocal` is the Python API (see api.py). It is imported lazily so that
the pure modules (entropy, sampling, grading, metrics) load without llama.cpp.
"""

__all__ = ["EagerLocal", "TokenBudget", "Tree"]


def __getattr__(name):
    if name == "EagerLocal":
        from .api import EagerLocal

        return EagerLocal
    if name == "TokenBudget":
        from .budget import TokenBudget

        return TokenBudget
    if name == "Tree":
        from .tree import Tree

        return Tree
    raise AttributeError(name)
