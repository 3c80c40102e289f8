"""Turning trees into text a person reads in a terminal (used by `run` and `chat`)."""

from __future__ import annotations

import math
import os
import sys

from .budget import TokenBudget
from .tree import Tree

# Entropy colours, low to high: green, yellow, orange, red (256-colour ANSI).
_ENTROPY_COLOURS = (34, 148, 214, 196)


def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def entropy_colour(text: str, entropy: float, theta: float, colour: bool) -> str:
    if not colour or math.isnan(entropy):
        return text
    level = min(len(_ENTROPY_COLOURS) - 1, int(entropy / max(theta, 1e-6) * (len(_ENTROPY_COLOURS) - 1)))
    return f"\x1b[38;5;{_ENTROPY_COLOURS[level]}m{text}\x1b[0m"


def describe_fork(tree: Tree, seq_id: int) -> str:
    """'forked from #1 at token 12 (H=2.61 > 2.40: ' the' | ' a')' or 'root'."""
    for event in tree.events:
        if event.child == seq_id:
            return (
                f"forked from #{event.parent} at token {event.step} "
                f"(H={event.entropy:.2f} > {event.threshold:.2f}: kept {event.top1_text!r}, took {event.top2_text!r})"
            )
    return "root"


def render_run(tree: Tree, *, wall: float, budget: TokenBudget | None = None) -> str:
    from .eval.grading import extract_boxed

    lines = []
    for seq in tree.sequences:
        answer = extract_boxed(seq.text)
        head = f"── branch #{seq.id} · {describe_fork(tree, seq.id)} · {seq.new_token_count} new tokens · {seq.finish_reason}"
        if answer is not None:
            head += f" · answer: {answer}"
        lines.append(head)
        lines.append(seq.text.strip())
        lines.append("")
    lines.append(summary_line(tree, wall=wall, budget=budget))
    return "\n".join(lines)


def summary_line(tree: Tree, *, wall: float, budget: TokenBudget | None = None) -> str:
    speed = tree.generated_tokens / wall if wall > 0 else 0.0
    parts = [
        f"{len(tree.sequences)} sequences",
        f"{tree.generated_tokens} generated tokens",
        f"{speed:.1f} tokens/s",
        f"{wall:.2f} s",
    ]
    if budget is not None and budget.limit is not None:
        parts.append(f"budget left {int(budget.remaining)}/{budget.limit}")
    cut = sum(1 for s in tree.sequences if s.finish_reason == "budget")
    if cut:
        parts.append(f"{cut} cut by budget")
    return " · ".join(parts)
