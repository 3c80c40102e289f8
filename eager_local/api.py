"""The Python API: load a model once, generate for one or many prompts, get trees back.

    from eager_local import EagerLocal
    llm = EagerLocal()                       # the embedded default model
    tree = llm.generate("What is 17*23?", theta=2.2, max_sequences=8)
    for seq in tree.sequences: print(seq.id, seq.finish_reason, seq.text)
"""

from __future__ import annotations

from collections.abc import Iterator

from . import models
from .budget import TokenBudget
from .config import GenerationConfig, make_config
from .engine import Engine, Inbox, Request, ServingLoop, StepStats
from .llama import Model
from .tree import Tree


class PromptBuilder:
    """Prompts and configs from a loaded model's tokenizer, chat template and registry entry.

    Needs `self.model` (a Model, the weights optional) and `self.resolved` (models.resolve's
    answer). EagerLocal generates in this process; a Ray evaluation's driver (cluster/runner.py)
    only builds prompts here and generates in its actors, so both share these methods.
    """

    @property
    def end_of_thinking(self) -> str | None:
        """The model's end-of-thinking marker (registry value, else `</think>` if it is one token)."""
        if self.resolved.end_of_thinking:
            return self.resolved.end_of_thinking
        return "</think>" if self.model.single_token("</think>") is not None else None

    def prompt_tokens(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
        """Token ids of a prompt, through the GGUF's chat template unless chat=False."""
        if not chat:
            return self.model.tokenize(prompt, add_special=True)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.chat_tokens(messages)

    def chat_tokens(self, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
        text = self.model.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.model.tokenize(text, add_special=not self.model.chat_template_has_bos(text))

    def config(self, **options) -> GenerationConfig:
        """A GenerationConfig from keyword options (the same names as the CLI's, with underscores)."""
        options.setdefault("end_of_thinking", self.end_of_thinking)
        return make_config(**options)


class EagerLocal(PromptBuilder):
    """One model and its engine, loaded once; every front-end generates through these methods.

    `generate` takes prompt texts and options by name; `stream` / `generate_requests` take
    prepared requests (token ids, a conversation prefix already in the KV cache, per-request
    seeds) and a GenerationConfig, for front-ends that build their own prompts.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        kv_memory: int | None = None,
    ):
        self.resolved = models.resolve(model)  # pulls the default model on first use; checks the GGUF
        self.model = Model(self.resolved.path, n_gpu_layers=n_gpu_layers)
        engine_kwargs = {"n_threads": threads}
        if kv_memory:
            engine_kwargs["kv_memory"] = kv_memory
        self.engine = Engine(self.model, **engine_kwargs)

    def stream(self, requests: list[Request], config: GenerationConfig, *, budget: TokenBudget | None = None,
               on_token=None, keep_sequences: bool = False, catch_interrupt: bool = False) -> Iterator[Tree]:
        """Generate for prepared requests (token ids, per-request overrides); yield each prompt's tree
        as soon as it completes. The front-ends (run, chat, eval, calibration) come in here."""
        yield from self.engine.stream(requests, config, budget=budget, on_token=on_token,
                                      keep_sequences=keep_sequences, catch_interrupt=catch_interrupt)

    def generate_requests(self, requests: list[Request], config: GenerationConfig, *,
                          budget: TokenBudget | None = None, on_token=None) -> list[Tree]:
        """Like stream(), all at once: the trees in request order."""
        return self.engine.generate(requests, config, budget=budget, on_token=on_token)

    def serving_loop(self, config: GenerationConfig, inbox: Inbox, *, prompt_tokens: int, slots: int,
                     max_batch_rows: int | None = None) -> ServingLoop:
        """A step loop for a server: requests (each with its own config) arrive through `inbox` from
        any thread and share every batched decode; run `loop.serve()` on one thread, which yields
        (request, tree) as each completes (engine/serving.py)."""
        return self.engine.serving_loop(config, inbox, prompt_tokens=prompt_tokens, slots=slots,
                                        max_batch_rows=max_batch_rows)

    # Sequences a caller keeps in the KV cache (stream(keep_sequences=True)), by their llama id
    # (`Sequence.llama_seq`): a chat continues its next turn from one of them.
    def count_steps(self) -> StepStats:
        """Start a fresh count of how full the engine keeps its batches (steps, rows and prompts per
        step); the returned StepStats fills as later calls generate."""
        self.engine.stats = StepStats()
        return self.engine.stats

    @property
    def threads(self) -> int | None:
        return self.engine.n_threads

    def kept_length(self, llama_seq: int) -> int:
        """How many positions a kept sequence holds in the KV cache."""
        return self.engine.context.seq_length(llama_seq)

    def release(self, llama_seq: int) -> None:
        """Free a kept sequence's KV cells."""
        self.engine.release(llama_seq)

    def generate(
        self,
        prompts: str | list[str],
        *,
        chat: bool = True,
        system: str | None = None,
        budget: TokenBudget | int | None = None,
        on_token=None,
        config: GenerationConfig | None = None,
        **options,
    ) -> Tree | list[Tree]:
        """Generate for one prompt (returns a Tree) or a list (returns a list of Trees, in order)."""
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        config = config or self.config(**options)
        requests = [
            Request(tokens=self.prompt_tokens(t, chat=chat, system=system), text=t, index=i)
            for i, t in enumerate(texts)
        ]
        if not isinstance(budget, TokenBudget):
            budget = TokenBudget(budget)
        trees = self.engine.generate(requests, config, budget=budget, on_token=on_token)
        return trees[0] if single else trees
