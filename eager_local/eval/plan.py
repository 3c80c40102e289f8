"""Plans for spending EAGer-init's saved sequence budget (eager-method.md §3), as pure functions.

The evaluation runner calls these with what is on disk (the EAGer-init records, then the extra runs
already logged), so a resumed run rebuilds exactly the same plan. Nothing here touches a model.

- EAGer-adapt (no labels): one round. B = M·|D| − Σ n_i is split evenly over the prompts that hit the
  cap, at most 3M each; each share becomes one new EAGer-init run of the bare prompt with cap = share.
- EAGer (labels): rounds. In each round the candidates are the prompts still unsolved (capped ones
  first, then the others, each group in dataset order); what is left of B is split evenly over them,
  at most M each per round; θ of each run is `retry_theta(θ, r, hit_cap)` where r counts that
  prompt's retries (1 for its first extra run). Sequences actually drawn are charged to B, so an
  extra run that branched less than its cap leaves the rest for later rounds. Rounds go on while B
  and unsolved candidates remain; B is never exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..budget import ADAPT, FULL, reallocation_candidates, retry_theta, saved_sequences, split_budget

# Request.index of an extra run = dataset position + STREAM_STRIDE × (round + method offset): each
# extra run samples from random streams no other run of the evaluation uses.
STREAM_STRIDE = 10_000_000
_METHOD_STREAM_OFFSET = {ADAPT: 0, FULL: 1000}

PER_PROMPT_CAP = {ADAPT: 3, FULL: 1}  # × M


@dataclass(frozen=True)
class ExtraRun:
    """One new EAGer-init run of a prompt's bare prompt."""

    slot: int  # position of the prompt in the evaluated list (dataset order of the selection)
    round: int  # 1-based
    cap: int  # max sequences of this run (the prompt's share of B)
    theta: float
    retry: int  # 1-based count of this prompt's extra runs, this one included
    hit_cap: bool  # the prompt's EAGer-init run reached M sequences


def stream_index(mode: str, round_: int, position: int) -> int:
    """Request.index for an extra run: distinct random streams per method, round and prompt."""
    return position + STREAM_STRIDE * (_METHOD_STREAM_OFFSET[mode] + round_)


def per_prompt_cap(mode: str, max_sequences: int) -> int:
    return PER_PROMPT_CAP[mode] * max_sequences


def plan_round(
    mode: str,
    round_: int,
    n_init: list[int],
    max_sequences: int,
    theta: float,
    remaining: int,
    solved: list[bool] | None = None,
    retries: list[int] | None = None,
) -> list[ExtraRun]:
    """The extra runs of one round, in service order.

    n_init: sequences of each prompt's EAGer-init run; remaining: what is left of B; solved (full
    EAGer): whether each prompt has a correct sequence so far; retries: extra runs each prompt had.
    EAGer-adapt has a single round: round_ > 1 gives no runs.
    """
    if mode == ADAPT and round_ > 1:
        return []
    retries = retries or [0] * len(n_init)
    candidates = reallocation_candidates(n_init, max_sequences, mode, solved)
    shares = split_budget(remaining, candidates, per_prompt_cap(mode, max_sequences))
    runs = []
    for slot, share in shares.items():
        hit_cap = n_init[slot] >= max_sequences
        retry = retries[slot] + 1
        run_theta = theta if mode == ADAPT else retry_theta(theta, retry, hit_cap)
        runs.append(ExtraRun(slot=slot, round=round_, cap=share, theta=run_theta, retry=retry, hit_cap=hit_cap))
    return runs


def initial_budget(n_init: list[int], max_sequences: int) -> int:
    """B for the whole selection."""
    return saved_sequences(n_init, max_sequences)


@dataclass
class Outcome:
    """What an extra run produced, as far as planning is concerned."""

    sequences: int  # sequences actually drawn (charged to B)
    solved: bool  # at least one of them is correct


@dataclass
class Reallocation:
    saved: int  # B
    remaining: int
    rounds: int
    runs: list[tuple[ExtraRun, Outcome]]


def reallocate(mode: str, n_init: list[int], max_sequences: int, theta: float, solved: list[bool], execute) -> Reallocation:
    """Spend B round by round. `execute(runs)` performs (or looks up) a round's runs and returns one
    Outcome per run, in order. Stops when B is spent, when no candidate is left, or when a round drew
    nothing at all (the token budget ran out before any run started)."""
    solved = list(solved)
    retries = [0] * len(n_init)
    B = initial_budget(n_init, max_sequences)
    remaining, round_, done = B, 1, []
    while remaining > 0:
        runs = plan_round(mode, round_, n_init, max_sequences, theta, remaining,
                          solved=solved if mode == FULL else None, retries=retries)
        if not runs:
            break
        outcomes = execute(runs)
        drawn = 0
        for run, outcome in zip(runs, outcomes, strict=True):
            retries[run.slot] += 1
            solved[run.slot] = solved[run.slot] or outcome.solved
            drawn += outcome.sequences
            done.append((run, outcome))
        remaining -= drawn
        if drawn == 0:
            break
        round_ += 1
    return Reallocation(saved=B, remaining=remaining, rounds=len({r.round for r, _ in done}), runs=done)
