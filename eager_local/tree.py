"""What one prompt's generation produced: its sequences, where they forked, and why.

A child sequence shares its parent's first `fork_at` generated tokens (the KV cache stores them
once); `tokens` always holds the full generated text of the sequence, prefix included, so each
sequence reads on its own. Generated-token counts count shared prefixes once.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

# Why a sequence ended.
STOP = "stop"  # end-of-generation token
LENGTH = "length"  # max_new_tokens (or the model's context) reached
BUDGET = "budget"  # the session's token budget ran out
KV_FULL = "kv_full"  # the KV cache had no room left
CANCELLED = "cancelled"  # the user interrupted generation
LOW_CONFIDENCE = "low_confidence"  # a watcher ended it: its confidence fell below a threshold (DeepConf)
FINISH_REASONS = (STOP, LENGTH, BUDGET, KV_FULL, CANCELLED, LOW_CONFIDENCE)


@dataclass
class BranchEvent:
    step: int  # index of the generated token at which the two branches diverge
    parent: int  # sequence that kept the most likely token
    child: int  # new sequence that took the second most likely token
    entropy: float  # top-K entropy (nats) of the distribution at that step
    threshold: float  # the θ in force (differs from the setting with the dynamic threshold)
    top1: int
    top2: int
    top1_text: str = ""
    top2_text: str = ""


@dataclass
class Sequence:
    id: int  # index within the tree (0 is the first sequence)
    parent: int | None
    fork_at: int  # generated tokens shared with the parent (0 for root sequences)
    tokens: list[int] = field(default_factory=list)
    # top-K entropy of the distribution each token was drawn from; NaN where it was not computed:
    # past the end of thinking, and, unless the config records entropies, wherever no branch could
    # happen (branching closed for the prompt, method parallel).
    entropies: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    llama_seq: int | None = None  # llama.cpp sequence id, while the engine keeps it alive

    @property
    def own_tokens(self) -> list[int]:
        return self.tokens[self.fork_at :]

    @property
    def new_token_count(self) -> int:
        """Tokens this sequence generated itself (its shared prefix belongs to its ancestors)."""
        return len(self.tokens) - self.fork_at


@dataclass
class Tree:
    prompt: str
    prompt_tokens: int
    method: str
    index: int = 0  # position of the prompt in the request list
    sequences: list[Sequence] = field(default_factory=list)
    events: list[BranchEvent] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    steps: int = 0
    wall_time: float = 0.0
    started: bool = True  # False when the budget ran out before the prompt got a turn
    # prompt tokens whose KV cells an earlier prompt left (the engine's prompt cache, a kept
    # conversation): not decoded again. Not part of the tree's JSON: it depends on what ran
    # before, not on the prompt.
    cached_tokens: int = 0

    @property
    def generated_tokens(self) -> int:
        """#T: every generated token once, shared prefixes once."""
        return sum(s.new_token_count for s in self.sequences)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.sequences]

    @property
    def cut_by_budget(self) -> bool:
        return not self.started or any(s.finish_reason == BUDGET for s in self.sequences)

    def finish_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.sequences:
            counts[s.finish_reason or "live"] = counts.get(s.finish_reason or "live", 0) + 1
        return counts

    # JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        del data["cached_tokens"]
        for s in data["sequences"]:
            # JSON has no NaN: entropies that were not computed become null.
            s["entropies"] = [None if math.isnan(h) else round(h, 5) for h in s["entropies"]]
        data["generated_tokens"] = self.generated_tokens
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Tree":
        data = dict(data)
        data.pop("generated_tokens", None)
        sequences = []
        for s in data.pop("sequences", []):
            s = dict(s)
            s["entropies"] = [math.nan if h is None else h for h in s.get("entropies", [])]
            sequences.append(Sequence(**s))
        events = [BranchEvent(**e) for e in data.pop("events", [])]
        return cls(sequences=sequences, events=events, **data)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Tree":
        return cls.from_dict(json.loads(text))
