"""Generation options: one definition each, read by the engine, the API, the CLI and calibration.

Every option is a dataclass field below, with its default, its command-line flags and help, and
whether recorded entropies depend on it (then it belongs to a calibration profile's key). The
command line builds its options from these fields (`cli/options.py`), the API takes them as
keywords (`make_config`), calibration keys its profiles by the `entropy` ones (`entropy_settings`),
an evaluation's manifest stores `flat()`. Adding an option is one field here plus its use.

Also here, because they are rules about option values: the methods, llama.cpp's sequence limit,
and what a `--theta` value may be (`parse_theta_spec`).
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import ConfigError

METHODS = ("eager-init", "parallel")
# llama.cpp's compile-time limit on sequence ids (LLAMA_MAX_SEQ in src/llama-cparams.h).
MAX_SEQUENCES = 256


def option(default: Any, *flags: str, help: str = "", entropy: bool = False, cli: bool = True,
           show_default: bool = True) -> Any:
    """A config field with what the command line and calibration need to know about it.

    flags: the CLI spelling (a boolean with one flag is an on/off switch); entropy: recorded
    entropies depend on it, so a calibration profile made with another value is not used;
    cli=False: set by code (the API, a benchmark), never typed.
    """
    return field(default=default, metadata={"flags": flags, "help": help, "entropy": entropy, "cli": cli,
                                            "show_default": show_default})


@dataclass(frozen=True)
class SamplingParams:
    """How a token is drawn from the logits (sampling.py). All off but temperature by default."""

    temperature: float = option(0.6, "--temperature", "-t", help="Sampling temperature (0 = greedy).", entropy=True)
    top_k: int = option(0, "--top-k", help="Sampling top-k (0 = off).", entropy=True, show_default=False)
    top_p: float = option(1.0, "--top-p", help="Sampling top-p (1 = off).", entropy=True, show_default=False)
    min_p: float = option(0.0, "--min-p", help="Sampling min-p (0 = off).", entropy=True, show_default=False)

    def validate(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min-p must be in [0, 1), got {self.min_p}")


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides what the engine generates for a prompt (with the seed, the tree)."""

    method: str = option("eager-init", "--method", help="eager-init, or parallel (full parallel sampling).")
    theta: float = option(2.4, "--theta", help="Branch when the top-K entropy (nats) exceeds this.")
    max_sequences: int = option(8, "--max-sequences", "-M", help="Cap on sequences per prompt (parallel draws exactly M).")
    max_new_tokens: int = option(512, "--max-new-tokens", "-n", entropy=True,
                                 help="Tokens per sequence, counted from the prompt's first step.")
    sampling: SamplingParams = field(default_factory=SamplingParams)
    top_k_entropy: int = option(20, "--top-k-entropy", entropy=True, help="K of the top-K entropy.")
    tempered_entropy: bool = option(False, "--tempered-entropy", entropy=True,
                                    help="Ablation: entropy of the tempered distribution.")
    branch_window: int = option(1000, "--branch-window", help="Steps without a branch before branching closes.")
    dynamic_threshold: bool = option(False, "--dynamic-threshold", help="θ_t = max(θ, p99 of the prompt's entropies so far).")
    seed: int = option(55, "--seed", help="Same seed and inputs, same tree, token for token.")
    end_of_thinking: str | None = option(None, cli=False)  # e.g. "</think>": no branching after it
    ignore_eos: bool = option(False, cli=False)  # benchmarks: run every sequence to max_new_tokens
    # Compute every step's entropy even where no branch can happen (calibration records traces).
    record_entropies: bool = option(False, cli=False)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if not isinstance(self.theta, (int, float)) or not math.isfinite(self.theta) or self.theta < 0:
            raise ConfigError(f"theta must be a number >= 0 (nats), got {self.theta}")
        check_max_sequences(self.max_sequences)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k_entropy < 2:
            raise ConfigError(f"top-k-entropy must be >= 2, got {self.top_k_entropy}")
        if self.branch_window < 1:
            raise ConfigError(f"branch window must be >= 1 step, got {self.branch_window}")
        if self.seed < 0:  # numpy's SeedSequence takes non-negative integers only
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        self.sampling.validate()

    def flat(self) -> dict:
        """Every option by name, sampling ones included (the API's and the manifest's form)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sampling"}
        out.update({f.name: getattr(self.sampling, f.name) for f in fields(SamplingParams)})
        return out

    def with_options(self, **options) -> "GenerationConfig":
        """A copy with some options changed, sampling ones included (flat names)."""
        return make_config(**{**self.flat(), **options})


def option_fields() -> list:
    """The fields of every option, flat: GenerationConfig's (but `sampling`) then SamplingParams'."""
    return [f for f in fields(GenerationConfig) if f.name != "sampling"] + list(fields(SamplingParams))


_SAMPLING_NAMES = frozenset(f.name for f in fields(SamplingParams))
_CONFIG_NAMES = frozenset(f.name for f in fields(GenerationConfig)) - {"sampling"}


def make_config(**options) -> GenerationConfig:
    """A GenerationConfig from flat keywords (the CLI's option names, with underscores)."""
    unknown = sorted(set(options) - _SAMPLING_NAMES - _CONFIG_NAMES)
    if unknown:
        raise ConfigError(f"unknown generation option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    sampling = SamplingParams(**{k: v for k, v in options.items() if k in _SAMPLING_NAMES})
    return GenerationConfig(sampling=sampling, **{k: v for k, v in options.items() if k in _CONFIG_NAMES})


def default(name: str) -> Any:
    """An option's default (the one place it is written)."""
    for f in option_fields():
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()
    raise KeyError(name)


def entropy_settings(config: GenerationConfig) -> dict:
    """The options recorded entropies depend on, by name: a calibration profile's part of the key.

    Floats are stored as floats (an int typed on the command line names the same setting).
    """
    flat = config.flat()
    out = {}
    for f in option_fields():
        if f.metadata.get("entropy"):
            value = flat[f.name]
            out[f.name] = float(value) if f.type in ("float", float) else value
    return out


def check_max_sequences(m: int, *, at_least: int = 1) -> None:
    if not at_least <= m <= MAX_SEQUENCES:
        raise ConfigError(f"max-sequences must be between {at_least} and {MAX_SEQUENCES}, got {m}")


# --- --theta: a number, `auto`, or an entropy quantile `qNN.N` ---------------------------------------
_QUANTILE_SPEC = re.compile(r"^q(\d+(?:\.\d+)?)$", re.IGNORECASE)


def parse_theta_spec(spec: str | float) -> tuple[str, float | None]:
    """("number", θ) | ("auto", None) | ("quantile", level in 0..100); ConfigError otherwise."""
    if isinstance(spec, (int, float)):
        return "number", float(spec)
    text = str(spec).strip()
    if text.lower() == "auto":
        return "auto", None
    match = _QUANTILE_SPEC.match(text)
    if match:
        level = float(match.group(1))
        if not 0 <= level <= 100:
            raise ConfigError(f"theta quantile must be between q0 and q100, got {text}")
        return "quantile", level
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"theta must be a number (nats), 'auto' or a quantile like q99.5; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"theta must be a number >= 0 (nats), got {text}")
    return "number", value
