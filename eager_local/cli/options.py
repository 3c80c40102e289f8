"""The options every command shares, and how the command line turns them into a GenerationConfig.

The generation options are not written here: `generation_options` builds one click option per
field of `config.py` (its flags, help, default and type), so an option added there appears in
`run`, `chat` and `eval` at once. Written here are the options that belong to a session rather
than to a generation (model, budget, threads, ...), the string form of `--theta` (a number,
`auto` or a quantile), and the one-line error handling every command wraps itself in.

This module imports no command module: the commands import it.
"""

from __future__ import annotations

import functools
from dataclasses import fields

import click

from ..config import METHODS, GenerationConfig, default, make_config, option_fields, parse_theta_spec
from ..errors import USER_ERRNOS, USER_ERRORS, ConfigError

click.ClickException.exit_code = 2  # bad input exits 2, like click's own usage errors

# ggml's limit on worker threads (GGML_MAX_N_THREADS in ggml.h); more crash llama.cpp.
MAX_THREADS = 512


def user_errors(func):
    """Turn the errors a user causes (errors.USER_ERRORS, USER_ERRNOS) into one line on stderr and exit code 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(_one_line(e)) from None
        except OSError as e:
            if e.errno not in USER_ERRNOS:
                raise
            raise click.ClickException(_one_line(e)) from None

    return wrapper


def _one_line(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or text}: {error.filename}"
    return text.splitlines()[0] if text else type(error).__name__


# --- generation options: one click option per config field ---------------------------------------
_TYPES = {"int": int, "float": float, "bool": bool, "str": str, int: int, float: float, bool: bool, str: str}

# Options a command declares itself: --method differs per command (one method, or a comma list),
# --theta takes a spec string (below).
_PER_COMMAND = ("method",)

THETA_HELP = ("'auto' calibrates θ for --target-sequences, 'q99.5' takes that quantile of the model's "
              "entropies (profile cached per model).")


def _field_option(f) -> click.Option:
    """The click option of one config field: its flags, help and default; a boolean is a switch."""
    meta = f.metadata
    kind = _TYPES.get(f.type)
    if kind is None:
        raise TypeError(f"config option {f.name} has type {f.type!r}; the command line knows {sorted(map(str, _TYPES))}")
    common = {"help": meta["help"] or None, "show_default": meta["show_default"]}
    if kind is bool:
        return click.Option([*meta["flags"], f.name], is_flag=True, default=f.default, **common)
    if f.name == "theta":  # a number, `auto` or `qNN.N`: parsed by config.parse_theta_spec
        return click.Option([*meta["flags"], f.name], type=str, default=f"{f.default:g}",
                            **dict(common, help=f"{meta['help']} {THETA_HELP}"))
    return click.Option([*meta["flags"], f.name], type=kind, default=f.default, **common)


def _session_options() -> dict[str, click.Option]:
    """The options of a session rather than of one generation, each defined once, by name."""
    return {
        "model": click.Option(["--model", "-m", "model"], default=None,
                              help="Registry name, .gguf path or http(s) URL (default: $EAGER_LOCAL_MODEL, else the registry's default; see `eager-local models list`)."),
        "target_sequences": click.Option(["--target-sequences", "-S", "target_sequences"], type=int, default=None,
                                         help="With --theta auto: mean sequences per prompt to aim for (default: M/2)."),
        "budget": click.Option(["--budget", "budget"], type=int, default=None,
                               help="Cap on generated tokens for the session."),
        "threads": click.Option(["--threads", "threads"], type=int, default=None,
                                help="CPU threads (default: physical cores)."),
        "n_gpu_layers": click.Option(["--n-gpu-layers", "n_gpu_layers"], type=int, default=0,
                                     help="Layers to offload (Metal/CUDA builds)."),
        "kv_memory": click.Option(["--kv-memory", "kv_memory"], type=int, default=None,
                                  help="MiB of KV cache at most (default: a quarter of the free memory, at most "
                                       "2048). The cache holds a full-length KV stream per row of the batch (up to "
                                       "32, shared by all prompts): less memory holds fewer rows per step."),
        "chat": click.Option(["--chat/--raw", "chat"], default=True,
                             help="Apply the GGUF's chat template (default) or not."),
        "system": click.Option(["--system", "system"], default=None, help="System message (with --chat)."),
    }


def option_list(overrides: dict[str, click.Option] | None = None) -> list[click.Option]:
    """The shared options in the order `--help` shows them: the model, the generation options
    (-S right after --theta), then the session's. `overrides` replaces options by name (eval's
    comma-list forms)."""
    session = _session_options()
    params = [session.pop("model")]
    for f in option_fields():
        if not f.metadata["cli"] or f.name in _PER_COMMAND:
            continue
        params.append(_field_option(f))
        if f.name == "theta":
            params.append(session.pop("target_sequences"))
    params += session.values()
    overrides = overrides or {}
    return [overrides.get(p.name, p) for p in params]


def generation_options(func=None, *, overrides: dict[str, click.Option] | None = None):
    """Decorator: the options shared by run, chat and eval (same names, same meaning everywhere).

    `@generation_options` or `@generation_options(overrides={name: click.Option})`.
    """

    def decorate(f):
        params = getattr(f, "__click_params__", [])
        # click lists decorator-added params bottom-up: the first shown goes last.
        f.__click_params__ = params + list(reversed(option_list(overrides)))
        return f

    return decorate(func) if func is not None else decorate


def method_option(func=None, *, extra: tuple[str, ...] = (), extra_help: str = ""):
    """--method for commands that run one method (run, chat, serve): a choice of config.METHODS,
    plus the `extra` methods a command runs itself (run's wave methods), described by `extra_help`.

    `@method_option` or `@method_option(extra=(...), extra_help="...")`.
    """
    (f,) = [f for f in fields(GenerationConfig) if f.name == "method"]

    def decorate(func):
        return click.option(*f.metadata["flags"], "method", type=click.Choice(METHODS + tuple(extra)),
                            default=f.default, show_default=True,
                            help=f"{f.metadata['help']} {extra_help}".strip())(func)

    return decorate(func) if func is not None else decorate


def rival_options(func):
    """Decorator: the options of the methods that sample in waves (adaptive-consistency, esc,
    deepconf-low/-high, eager-conf), one definition for eval and run. Their defaults live with the
    rules (eval/stopping.py, eval/deepconf.py); the rules' `method_options` check the values."""
    from ..eval import deepconf, stopping

    decorators = [
        click.option("--ac-criterion", default=stopping.DEFAULT_AC_CRITERION, show_default=True,
                     help="adaptive-consistency: stopping criterion (beta: the paper's Beta criterion)."),
        click.option("--ac-threshold", type=float, default=stopping.DEFAULT_AC_THRESHOLD, show_default=True,
                     help="adaptive-consistency, eager-conf: stop a prompt once P(leading answer is the majority) "
                          "reaches this; cap = -M."),
        click.option("--esc-window", default=stopping.DEFAULT_ESC_WINDOW, show_default=True,
                     help="esc: window size w; a prompt stops at the first window whose answers all agree, after "
                          "at most M // w windows. auto: 5, or M // 2 when two windows of 5 do not fit in M."),
        click.option("--deepconf-warmup", default=deepconf.DEFAULT_WARMUP, show_default=True,
                     help="deepconf-low/-high, eager-conf: N_init, warm-up samples per prompt that set its "
                          "confidence threshold. auto: the paper's 16, at most M // 2."),
        click.option("--deepconf-window", default=deepconf.DEFAULT_WINDOW, show_default=True,
                     help="deepconf-low/-high, eager-conf: tokens in the sliding window of group confidence. "
                          "auto: the paper's 2048, at most max-new-tokens // 8."),
    ]
    for decorator in reversed(decorators):  # the first listed is shown first
        func = decorator(func)
    return func


# --- from options to a config ----------------------------------------------------------------------
def config_from_options(opts: dict, **overrides) -> GenerationConfig:
    """The GenerationConfig of the generation options in `opts` (flat names), checked.

    `overrides` win over `opts` (e.g. method=, theta= a calibrated value, end_of_thinking=). When
    --theta is `auto` or a quantile the config's θ is a placeholder, config's default, until the
    calibrated value replaces it (`config.with_options(theta=...)`).
    """
    flat = {}
    for f in option_fields():
        if f.metadata["cli"] and f.name in opts and f.name not in _PER_COMMAND:
            flat[f.name] = opts[f.name]
    flat.update(overrides)
    if "theta" in flat:
        kind, value = parse_theta_spec(flat["theta"])
        flat["theta"] = value if kind == "number" else default("theta")
    config = make_config(**flat)
    config.validate()
    return config


def cli_settings(config: GenerationConfig, *, exclude: tuple[str, ...] = ()) -> dict:
    """The options of a config a user can type, by flat name (a chat's settings, an eval manifest's
    generation options)."""
    names = [f.name for f in option_fields() if f.metadata["cli"] and f.name not in exclude]
    flat = config.flat()
    return {name: flat[name] for name in names}


def check_session_options(opts: dict) -> None:
    """--threads, --budget and --kv-memory, checked before any model loads."""
    if opts.get("threads") is not None and not 1 <= opts["threads"] <= MAX_THREADS:
        raise ConfigError(f"threads must be between 1 and {MAX_THREADS}, got {opts['threads']}")
    if opts.get("kv_memory") is not None and opts["kv_memory"] < 1:
        raise ConfigError(f"--kv-memory must be >= 1 (MiB), got {opts['kv_memory']}")
    if opts.get("budget") is not None and opts["budget"] < 0:
        raise ConfigError(f"budget must be >= 0 tokens, got {opts['budget']}")


def check_auto_theta_cap(max_sequences: int) -> None:
    """--theta auto calibrates θ for a number of sequences: with a cap of one nothing can branch."""
    if max_sequences < 2:
        raise ConfigError("--theta auto needs --max-sequences 2 or more (one sequence never branches)")


def check_theta_options(opts: dict) -> None:
    """--theta and -S are checked before any model loads (one-line errors)."""
    kind, _ = parse_theta_spec(opts["theta"])
    if kind == "auto":
        check_auto_theta_cap(opts.get("max_sequences", 2))
    if opts.get("target_sequences") is not None:
        check_target_sequences([opts["target_sequences"]], auto=kind == "auto")


def check_target_sequences(targets: list[int], *, auto: bool) -> None:
    """-S values (run/chat: one, eval: a list): at least 1, and only with --theta auto."""
    if min(targets) < 1:
        raise ConfigError(f"target-sequences must be >= 1, got {min(targets)}")
    if not auto:
        raise ConfigError("--target-sequences goes with --theta auto")


def load_runner(opts: dict):
    """The EagerLocal of the session options (model, threads, GPU layers, KV memory)."""
    from ..api import EagerLocal

    check_session_options(opts)
    return EagerLocal(opts["model"], threads=opts["threads"], n_gpu_layers=opts["n_gpu_layers"],
                      kv_memory=kv_memory_bytes(opts))


def kv_memory_bytes(opts: dict) -> int | None:
    """--kv-memory (MiB) in bytes; None: the engine's default."""
    return opts["kv_memory"] << 20 if opts.get("kv_memory") else None


# --- θ -----------------------------------------------------------------------------------------------
def resolve_theta_option(opts: dict, runner, **hints) -> tuple[float, dict]:
    """θ from --theta: a number as is; auto / qNN.N from the model's calibration profile (calibrated
    first, on stderr, when there is none for these settings). Returns (θ, info for the output)."""
    from ..calibration import resolve_theta

    theta, info = resolve_theta(opts["theta"], runner, config_from_options(opts),
                                target_sequences=opts.get("target_sequences"), chat=opts["chat"],
                                system=opts["system"], log=lambda line: click.echo(line, err=True), **hints)
    if info["mode"] != "fixed":
        click.echo(f"θ = {theta:.3f} ({describe_theta(info)})", err=True)
    return theta, info


def describe_theta(info: dict) -> str:
    """'auto: target 4 of M=8 sequences, 3.9 on the calibration prompts' and the like."""
    if info["mode"] == "fixed":
        return "fixed"
    if info["mode"] == "quantile":
        return f"q{info['quantile']:g} of the model's top-K entropies"
    text = f"auto: target {info['target']} sequences per prompt"
    if info.get("achieved_on_calibration") is not None:
        text += f", {info['achieved_on_calibration']:.2f} on the calibration prompts"
    elif info.get("corrected"):
        text += (f", corrected from {info['measured_on_calibration']:.2f} on the calibration prompts"
                 f" at θ {info['measured_theta']:.3f}")
    return text
