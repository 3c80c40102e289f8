"""A chat session: the conversation, its settings and budget, and what of it lives in the KV cache.

Generating a turn renders the whole conversation (the picked path) with the GGUF's chat template,
finds which kept llama sequence shares the longest token prefix with it, and continues from that
sequence: only the tokens after the common prefix are decoded (`Request(prefix_seq=, reuse=)`).

KV cache policy: after a turn, every branch of it stays in the cache (`keep_sequences=True`), so
`/pick N` costs nothing — the next turn continues from branch N's own cells. When the next turn
starts, the branches that are not its prefix are released, and once it has finished the prefix is
released too: its cells live on, shared, in the new turn's branches. So the cache holds one turn's
branches (plus, during generation, one prefix), never the whole history. Turns dropped by /undo
leave their branches in place until the next generation, which reuses what it can of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .budget import TokenBudget
from .config import GenerationConfig
from .conversation import (
    FORMAT,
    VERSION,
    ChatError,
    Conversation,
    Turn,
    common_prefix,
    describe_model,
    dump_session,
    model_identity,
    read_session,
    same_model,
    turns_from,
    write_atomic,
)
from .engine import Request
from .errors import ConfigError
from .tree import BUDGET, CANCELLED, KV_FULL, Tree

# The settings chat commands may change (GenerationConfig keywords) and their types.
SETTINGS = {
    "theta": float,
    "max_sequences": int,
    "temperature": float,
    "seed": int,
}


class BudgetSpent(ChatError):
    """The session's token budget is spent: no new generation until the limit is raised."""


@dataclass
class _Kept:
    llama_id: int
    tokens: list[int]  # what the sequence holds in the KV cache, position by position


@dataclass
class TurnStats:
    branches: int
    generated: int
    wall: float
    reused: int  # prompt tokens read from the KV cache
    computed: int  # prompt tokens decoded
    interrupted: bool = False
    cut_by_budget: bool = False
    kv_full: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.wall if self.wall > 0 else 0.0


@dataclass
class ChatSession:
    """A conversation with its settings and budget, generated through the API (`llm`), keeping
    the last turn's branches in the KV cache so the next turn continues from any of them."""

    llm: object  # api.EagerLocal
    settings: dict  # GenerationConfig keywords (llm.config(**settings))
    budget: TokenBudget = field(default_factory=TokenBudget)
    conversation: Conversation = field(default_factory=Conversation)
    generations: int = 0  # requests made so far; each turn or retry gets the next index
    model: dict | None = None  # identity of the loaded model (conversation.model_identity)
    last_stats: TurnStats | None = None
    _kept: list[_Kept] = field(default_factory=list)

    def __post_init__(self):
        self.settings = dict(self.settings)
        self.config()  # refuse nonsense settings up front
        if self.model is None:
            resolved = self.llm.resolved
            self.model = model_identity(resolved.path, name=resolved.name, sha256=resolved.sha256)

    # settings -----------------------------------------------------------------------------------
    def config(self, settings: dict | None = None) -> GenerationConfig:
        config = self.llm.config(**dict(settings or self.settings))
        config.validate()
        return config

    def set(self, name: str, value) -> None:
        """Change one setting; nonsense raises ConfigError and changes nothing."""
        if name not in SETTINGS:
            raise ChatError(f"unknown setting {name}")
        candidate = dict(self.settings, **{name: value})
        self.config(candidate)
        self.settings = candidate

    # generation ---------------------------------------------------------------------------------
    def say(self, user: str, *, on_token=None) -> Turn | None:
        """Answer a new user message; the new turn (None if interrupted before any token)."""
        return self._generate(list(self.conversation.turns), user, on_token=on_token, replace=False)

    def retry(self, *, on_token=None) -> Turn | None:
        """Generate the last turn again (fresh random streams); it replaces the old one."""
        last = self.conversation.require_last("retry")
        return self._generate(self.conversation.turns[:-1], last.user, on_token=on_token, replace=True)

    def prompt_tokens(self, history: list[Turn], user: str) -> list[int]:
        return self.llm.chat_tokens(self.conversation.messages(history, user))

    def _generate(self, history: list[Turn], user: str, *, on_token, replace: bool) -> Turn | None:
        if self.budget.exhausted:
            raise BudgetSpent(
                f"the session budget is spent ({self.budget.spent} of {self.budget.limit} tokens): "
                "no new generation until /budget N raises it"
            )
        config = self.config()
        tokens = self.prompt_tokens(history, user)
        prefix, reuse = self._best_prefix(tokens)
        self._keep_only(prefix)
        request = Request(
            tokens=tokens,
            text=user,
            index=self.generations,
            prefix_seq=prefix.llama_id if prefix else None,
            reuse=reuse,
        )
        self.generations += 1
        started = time.perf_counter()
        trees: list[Tree] = []
        interrupted = False
        try:
            for tree in self.llm.stream(
                [request], config, budget=self.budget, on_token=on_token, keep_sequences=True, catch_interrupt=True
            ):
                trees.append(tree)
        except KeyboardInterrupt:  # landed outside the engine's loop (between yields): same meaning
            interrupted = True
        wall = time.perf_counter() - started
        tree = trees[0] if trees else None
        if tree is None or not tree.sequences:
            # Interrupted before the first token (or the cache had no room): no turn. The prefix
            # stays kept: it is still the best start for the next attempt.
            kv_full = tree is not None and not tree.started  # the engine found no room to prefill
            self.last_stats = TurnStats(0, 0, wall, 0, 0, interrupted=not kv_full, kv_full=kv_full)
            return None
        # The new branches share the prefix's cells; the prefix itself is no longer needed.
        self._keep_only(None)
        for seq in tree.sequences:
            if seq.llama_seq is not None:
                held = self.llm.kept_length(seq.llama_seq)
                self._kept.append(_Kept(seq.llama_seq, (tokens + seq.tokens)[:held]))
        computed_from = min(reuse, len(tokens) - 1) if prefix else 0
        turn = Turn(user=user, tree=tree, picked=0, index=request.index, prompt=tokens, reused=computed_from)
        if replace:
            self.conversation.turns[-1] = turn
        else:
            self.conversation.turns.append(turn)
        reasons = {s.finish_reason for s in tree.sequences}
        self.last_stats = TurnStats(
            branches=len(tree.sequences),
            generated=tree.generated_tokens,
            wall=wall,
            reused=computed_from,
            computed=len(tokens) - computed_from,
            interrupted=interrupted or CANCELLED in reasons,
            cut_by_budget=BUDGET in reasons,
            kv_full=KV_FULL in reasons,
        )
        return turn

    def _best_prefix(self, tokens: list[int]) -> tuple[_Kept | None, int]:
        best, best_len = None, 0
        for kept in self._kept:
            n = common_prefix(kept.tokens, tokens)
            if n > best_len:
                best, best_len = kept, n
        return best, best_len

    def _keep_only(self, keep: _Kept | None) -> None:
        for kept in self._kept:
            if kept is not keep:
                self.llm.release(kept.llama_id)
        self._kept = [keep] if keep else []

    @property
    def kept_ids(self) -> list[int]:
        return [k.llama_id for k in self._kept]

    def close(self) -> None:
        """Release every sequence the session keeps in the KV cache."""
        self._keep_only(None)

    # turns --------------------------------------------------------------------------------------
    def pick(self, n: int):
        """Follow branch n of the last turn. Its KV cells are kept: nothing is computed now, and
        the next turn continues from them."""
        return self.conversation.pick(n)

    def undo(self) -> Turn:
        return self.conversation.undo()

    # files --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "system": self.conversation.system,
            "settings": self.settings,
            "budget": {"limit": self.budget.limit, "spent": self.budget.spent},
            "generations": self.generations,
            "turns": [turn.to_dict() for turn in self.conversation.turns],
        }

    def save(self, path) -> str:
        return str(write_atomic(path, dump_session(self.to_dict())))

    def load(self, path) -> list[str]:
        """Replace the session with a saved one; returns warnings to show. A bad file raises
        ChatError and changes nothing."""
        doc = read_session(path)
        warnings = []
        same = same_model(doc.get("model"), self.model)
        if not same:
            warnings.append(
                f"{path} was made with {describe_model(doc.get('model'))}; this session runs "
                f"{describe_model(self.model)}. Its texts load as they are; its token-level data "
                "(entropy colours, fork points in text) belong to the other model and are shown without "
                "colours. The next turn reads the conversation as text."
            )
        turns = turns_from(doc, foreign=not same)
        settings = dict(self.settings)
        unknown = []
        for key, value in (doc.get("settings") or {}).items():
            if key in settings:
                settings[key] = value
            else:
                unknown.append(key)
        try:
            self.config(settings)
        except (ConfigError, TypeError) as e:  # a setting of the wrong type fails a comparison
            raise ChatError(f"{path} has unusable settings: {e}") from None
        if unknown:
            warnings.append(f"ignored settings this version does not know: {', '.join(sorted(unknown))}")
        budget_doc = doc.get("budget") or {}
        try:
            budget = TokenBudget(budget_doc.get("limit"))
            budget.spent = int(budget_doc.get("spent", 0))
        except (TypeError, ValueError) as e:
            raise ChatError(f"{path} has an unusable budget: {e}") from None
        system = doc.get("system")
        # Everything checked: replace the session.
        self._keep_only(None)
        self.settings = settings
        self.budget = budget
        self.conversation = Conversation(system=system if isinstance(system, str) else None, turns=turns)
        self.generations = max(int(doc.get("generations", 0)), max((t.index + 1 for t in turns), default=0))
        self.last_stats = None
        return warnings
