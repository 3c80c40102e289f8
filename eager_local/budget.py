"""The per-session token budget: a hard cap on generated tokens across every call that shares it."""

from __future__ import annotations

from .errors import ConfigError


class TokenBudget:
    """Counts generated tokens against an optional limit. Shared prefixes are spent once.

    The engine asks `remaining` before each step and never spends more: a step that would overrun
    the budget cuts sequences instead (finish reason `budget`).
    """

    def __init__(self, limit: int | None = None):
        if limit is not None and limit < 0:
            raise ConfigError(f"budget must be >= 0 tokens, got {limit}")
        self.limit = limit
        self.spent = 0

    @property
    def remaining(self) -> float:
        return float("inf") if self.limit is None else max(0, self.limit - self.spent)

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def spend(self, n: int) -> None:
        if n > self.remaining:
            raise RuntimeError(f"budget overrun: spending {n} with {self.remaining} left")
        self.spent += n

    def raise_limit(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ConfigError(f"budget must be >= 0 tokens, got {limit}")
        self.limit = limit

    def __repr__(self) -> str:
        return f"TokenBudget(spent={self.spent}, limit={self.limit})"


# --- reallocating the saved sequence budget (eager-method.md §3) --------------------------------
ADAPT = "eager-adapt"
FULL = "eager"


def saved_sequences(n_sequences: list[int], max_sequences: int) -> int:
    """B = M·|D| − Σ n_i: what EAGer-init left unspent of full parallel sampling's budget."""
    return max(0, max_sequences * len(n_sequences) - sum(n_sequences))


def reallocation_candidates(
    n_sequences: list[int], max_sequences: int, mode: str, solved: list[bool] | None = None
) -> list[int]:
    """Prompt indices that may receive extra sequences, in the order they are served.

    eager-adapt (no labels): the prompts that hit the cap M, in dataset order.
    eager (labels): the prompts with no correct answer yet; those that hit the cap first, then the
    others, each group in dataset order.
    """
    hit_cap = [i for i, n in enumerate(n_sequences) if n >= max_sequences]
    if mode == ADAPT:
        return hit_cap
    if mode != FULL:
        raise ValueError(f"unknown reallocation mode {mode!r}")
    if solved is None:
        raise ValueError("full EAGer needs to know which prompts are solved")
    if len(solved) != len(n_sequences):
        raise ValueError(f"got {len(solved)} solved flags for {len(n_sequences)} prompts")
    unsolved_capped = [i for i in hit_cap if not solved[i]]
    unsolved_rest = [i for i, n in enumerate(n_sequences) if n < max_sequences and not solved[i]]
    return unsolved_capped + unsolved_rest


def split_budget(budget: int, candidates: list[int], per_prompt_cap: int) -> dict[int, int]:
    """Share `budget` sequences over the candidates: evenly, the remainder one each to the first.

    With fewer sequences than candidates, one each to the first `budget`. No candidate gets more
    than `per_prompt_cap`, and the total never exceeds `budget`.
    """
    if budget <= 0 or not candidates or per_prompt_cap <= 0:
        return {}
    base, extra = divmod(budget, len(candidates))
    shares = {}
    for position, index in enumerate(candidates):
        share = min(per_prompt_cap, base + (1 if position < extra else 0))
        if share > 0:
            shares[index] = share
    return shares


def retry_theta(theta: float, retry: int, hit_cap: bool) -> float:
    """θ for a full-EAGer retry (1-based): −20% per retry (compounding) for a prompt that did not hit
    the cap; from the third retry on, any prompt a further −10% per retry."""
    if not hit_cap:
        theta *= 0.8**retry
    if retry >= 3:
        theta *= 0.9 ** (retry - 2)
    return theta
