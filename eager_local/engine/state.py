"""The bookkeeping of one call: an admitted prompt (`PromptRun`), a live sequence (`Row`), and how
full the batches were (`StepStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import branching as branching_rule
from .. import tree as T
from ..config import GenerationConfig
from .request import Request


@dataclass
class StepStats:
    """How full the step loop kept its batches. An Engine sums every call into `engine.stats`;
    replace it with a fresh StepStats between calls to measure one stretch of work."""

    steps: int = 0
    row_steps: int = 0  # rows decoded, summed over steps
    prompt_steps: int = 0  # prompts active, summed over steps
    peak_rows: int = 0
    peak_prompts: int = 0
    prompt_tokens: int = 0  # prompts admitted, their tokens summed
    cached_tokens: int = 0  # of those, tokens whose cells were reused, not decoded

    def record_prompt(self, tokens: int, cached: int) -> None:
        self.prompt_tokens += tokens
        self.cached_tokens += cached

    def record(self, rows: int, prompts: int) -> None:
        self.steps += 1
        self.row_steps += rows
        self.prompt_steps += prompts
        self.peak_rows = max(self.peak_rows, rows)
        self.peak_prompts = max(self.peak_prompts, prompts)

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "mean_rows": round(self.row_steps / self.steps, 2) if self.steps else 0.0,
            "mean_prompts": round(self.prompt_steps / self.steps, 2) if self.steps else 0.0,
            "peak_rows": self.peak_rows,
            "peak_prompts": self.peak_prompts,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass
class PromptRun:
    """An admitted prompt: its settings (its request's config, else the call's), its tree so far,
    its cap and θ, and where its branch window stands."""

    request: Request
    config: GenerationConfig
    tree: T.Tree
    cap: int
    theta: float
    reserved: int  # llama sequence ids this prompt may still take (M at admission, one per sequence)
    started_at: float
    branching_open: bool = True
    steps_since_branch: int = 0
    live: int = 0
    peak_live: int = 0
    n_created: int = 0
    entropy_history: list[float] = field(default_factory=list)  # for the dynamic threshold
    think_token: int | None = None  # the config's end-of-thinking token: no branching after it
    spent: int = 0  # tokens generated for this prompt (#T so far)

    @property
    def budget_left(self) -> float:
        """Tokens this prompt may still generate under its own budget (Request.budget)."""
        return float("inf") if self.request.budget is None else max(0, self.request.budget - self.spent)

    @property
    def parallel(self) -> bool:
        return self.config.method == "parallel"

    def threshold(self, dynamic: bool) -> float:
        return branching_rule.threshold(self.theta, self.entropy_history, dynamic)


WAITING = -1  # the llama id of a forked row that waits for a free KV stream


@dataclass
class Row:
    """A live sequence: its tree entry, its llama sequence id and its random stream.

    A row forked when the pool has no id for it waits (llama_id WAITING; streams.SequencePool):
    `source` is a row whose cells hold the fork's prefix, `keep` how many of them (the prompt and
    the parent's tokens up to the fork).
    """

    seq: T.Sequence
    run: PromptRun
    llama_id: int
    rng: np.random.Generator
    past_thinking: bool = False
    fresh_logits: np.ndarray | None = None  # set until the row's first decode (right after prefill)
    source: Row | None = None
    keep: int = 0

    @property
    def waiting(self) -> bool:
        return self.llama_id == WAITING

    @property
    def position(self) -> int:  # KV position of the row's newest token
        return self.run.tree.prompt_tokens + len(self.seq.tokens) - 1


def tree_settings(config: GenerationConfig, cap: int, request: Request) -> dict:
    """The settings a tree records: the config's, with the request's overrides applied."""
    return {
        "theta": config.theta if request.theta is None else request.theta,
        "max_sequences": cap,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.sampling.temperature,
        "top_k_entropy": config.top_k_entropy,
        "branch_window": config.branch_window,
        "dynamic_threshold": config.dynamic_threshold,
        "seed": config.seed if request.seed is None else request.seed,
    }
