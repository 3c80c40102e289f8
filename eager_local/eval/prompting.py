"""The text a benchmark problem becomes before the chat template is applied."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

PLACEHOLDER = "{problem}"
DEFAULT_TEMPLATE = (
    "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
)


def load_template(value: str | None) -> str:
    """A --prompt-template value: the template itself, or @FILE to read it from a file.

    The template must contain {problem}; nothing else in it is special (braces such as \\boxed{}
    are kept as written).
    """
    if value is None:
        return DEFAULT_TEMPLATE
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read prompt template {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read prompt template {path}: not UTF-8 text") from None
    if PLACEHOLDER not in value:
        raise ConfigError("prompt template must contain {problem} (where the problem text goes)")
    return value


def render(template: str, problem: str) -> str:
    return template.replace(PLACEHOLDER, problem)
