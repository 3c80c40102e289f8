"""Turning trees into text a person reads in a terminal (used by `run` and `chat`).

Two modes, chosen by `use_colour`: colour (a TTY, NO_COLOR unset) paints each token by the entropy
of the distribution it was drawn from, low → high; plain (NO_COLOR, pipes, files) has no escape
codes at all. Fork points are marked in text (⟨#N⟩: branch #N took another token here), so both
modes show where the model branched.

Token-level rendering takes a `vocab`: any object with `piece(token) -> bytes` and
`is_eog(token) -> bool` (an `llama.Model`), so this module does not load llama.cpp.
"""

from __future__ import annotations

import codecs
import math
import os
import sys
from collections.abc import Iterable

from .answers import extract_answer
from .budget import TokenBudget
from .tree import LOW_CONFIDENCE, Sequence, Tree

# Entropy colours, low to high: green, yellow, orange, red (256-colour ANSI).
_ENTROPY_COLOURS = (34, 148, 214, 196)
_RESET = "\x1b[0m"
_MARK_STYLE = "\x1b[1;35m"  # bold magenta fork markers
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"


def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def entropy_level(entropy: float, theta: float) -> int | None:
    """0..3 (green..red): [0, θ/3), [θ/3, 2θ/3), [2θ/3, θ), [θ, ∞); None when not computed."""
    if entropy is None or math.isnan(entropy):
        return None
    return min(len(_ENTROPY_COLOURS) - 1, int(entropy / max(theta, 1e-6) * (len(_ENTROPY_COLOURS) - 1)))


def entropy_colour(text: str, entropy: float, theta: float, colour: bool) -> str:
    level = entropy_level(entropy, theta)
    if not colour or level is None or not text:
        return text
    return f"\x1b[38;5;{_ENTROPY_COLOURS[level]}m{text}{_RESET}"


def style(text: str, code: str, colour: bool) -> str:
    return f"{code}{text}{_RESET}" if colour and text else text


def dim(text: str, colour: bool) -> str:
    return style(text, _DIM, colour)


def bold(text: str, colour: bool) -> str:
    return style(text, _BOLD, colour)


def fork_marker(child: int, colour: bool) -> str:
    return style(f"⟨#{child}⟩", _MARK_STYLE, colour)


def legend(theta: float, colour: bool) -> str:
    marks = "⟨#N⟩ = branch #N forked here (it took the second most likely token)"
    if not colour:
        return marks
    marks += "; uncoloured = entropy not computed (branching had closed)"
    swatches = " ".join(
        entropy_colour(name, (i + 0.5) * theta / (len(_ENTROPY_COLOURS) - 1), theta, True)
        for i, name in enumerate(("low", "medium", "high", f"≥θ={theta:g}"))
    )
    return f"entropy: {swatches} · {marks}"


# --- tokens to text ----------------------------------------------------------------------------
def token_pieces(tokens: Iterable[int], vocab) -> list[str]:
    """The text of each token. A character split over several tokens (UTF-8 bytes) is given to the
    token that completes it, so per-token colouring never cuts a character; end-of-generation
    tokens render as nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out = []
    for token in tokens:
        out.append("" if vocab.is_eog(token) else decoder.decode(vocab.piece(token)))
    tail = decoder.decode(b"", final=True)
    if tail and out:
        out[-1] += tail
    return out


def fork_points(tree: Tree) -> dict[int, dict[int, list[int]]]:
    """{sequence id: {token index: [ids of the branches that forked off it there]}}."""
    marks: dict[int, dict[int, list[int]]] = {}
    for event in tree.events:
        marks.setdefault(event.parent, {}).setdefault(event.step, []).append(event.child)
    return marks


def render_tokens(
    seq: Sequence,
    vocab,
    *,
    theta: float,
    colour: bool,
    marks: dict[int, list[int]] | None = None,
    start: int = 0,
    limit: int | None = None,
    oneline: bool = False,
) -> str:
    """A sequence's tokens from `start`: coloured by entropy, ⟨#N⟩ before the token where branch N
    forked off. `limit` cuts the visible text at that many characters (with "…"); `oneline`
    shows newlines as ↵."""
    pieces = token_pieces(seq.tokens, vocab)
    marks = marks or {}
    parts: list[str] = []
    shown = 0
    for i in range(start, len(pieces)):
        for child in marks.get(i, ()):
            parts.append(fork_marker(child, colour))
        text = pieces[i].replace("\n", " ↵ ") if oneline else pieces[i]
        entropy = seq.entropies[i] if i < len(seq.entropies) else math.nan
        if limit is not None and shown + len(text) > limit:
            parts.append(entropy_colour(text[: max(0, limit - shown)], entropy, theta, colour))
            parts.append("…")
            break
        shown += len(text)
        parts.append(entropy_colour(text, entropy, theta, colour))
    return "".join(parts)


def own_text(seq: Sequence, vocab) -> str:
    """The part of a branch after its fork point (all of it for a root sequence)."""
    return "".join(token_pieces(seq.tokens, vocab)[seq.fork_at :])


def first_words(text: str, n: int = 12) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


# --- forks ---------------------------------------------------------------------------------------
def describe_fork(tree: Tree, seq_id: int) -> str:
    """'forked from #1 at token 12 (H=2.61 > 2.40: kept ' the', took ' a')' or 'root'."""
    for event in tree.events:
        if event.child == seq_id:
            return (
                f"forked from #{event.parent} at token {event.step} "
                f"(H={event.entropy:.2f} > {event.threshold:.2f}: kept {event.top1_text!r}, took {event.top2_text!r})"
            )
    return "root"


def branch_order(tree: Tree) -> list[tuple[int, int]]:
    """(sequence id, depth) in tree order: each branch under the one it forked from, by fork point."""
    children: dict[int | None, list[Sequence]] = {}
    for seq in tree.sequences:
        children.setdefault(seq.parent, []).append(seq)
    out: list[tuple[int, int]] = []

    def walk(parent, depth):
        for seq in sorted(children.get(parent, []), key=lambda s: (s.fork_at, s.id)):
            out.append((seq.id, depth))
            walk(seq.id, depth + 1)

    walk(None, 0)
    seen = {i for i, _ in out}
    out.extend((s.id, 0) for s in tree.sequences if s.id not in seen)  # orphans (malformed input)
    return out


def entropy_stats(seq: Sequence) -> str:
    values = [h for h in seq.entropies if h is not None and not math.isnan(h)]
    if not values:
        return ""
    return f"entropy mean {sum(values) / len(values):.2f}, max {max(values):.2f} nats"


# --- the `run` command ---------------------------------------------------------------------------
def render_run(tree: Tree, *, wall: float, budget: TokenBudget | None = None) -> str:
    """`run`'s output: each branch's header (fork point, length, finish, answer) and text, then
    the summary line."""
    lines = []
    for seq in tree.sequences:
        answer = extract_answer(seq.text)
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


# --- chat ----------------------------------------------------------------------------------------
def render_branches(tree: Tree, vocab, *, picked: int, colour: bool, answers: dict[int, str | None]) -> str:
    """`/branches`: one entry per branch of a turn, in tree order.

    vocab None (a tree made with another model) shows the stored text instead of token pieces.
    """
    lines = []
    for seq_id, depth in branch_order(tree):
        seq = tree.sequences[seq_id]
        indent = "  " * depth
        tag = bold(f"#{seq.id}", colour) + (" (picked)" if seq.id == picked else "")
        head = [tag, describe_fork(tree, seq.id), f"{seq.new_token_count} tokens", seq.finish_reason or "live"]
        if answers.get(seq.id) is not None:
            head.append(f"answer: {answers[seq.id]}")
        lines.append(indent + " · ".join(head))
        words = first_words(own_text(seq, vocab) if vocab is not None else seq.text)
        if seq.fork_at:
            words = "…" + words
        lines.append(indent + "    " + dim(repr_words(words), colour))
    return "\n".join(lines)


def repr_words(words: str) -> str:
    return '"' + words.replace("\n", " ") + '"'


def render_branch(tree: Tree, seq_id: int, vocab, *, picked: int, colour: bool, answer: str | None) -> str:
    """`/show N`: a header, then the branch's full text, coloured, with its fork points marked."""
    seq = tree.sequences[seq_id]
    theta = float(tree.settings.get("theta", 2.4))
    head = [f"#{seq.id}" + (" (picked)" if seq.id == picked else ""), describe_fork(tree, seq.id),
            f"{len(seq.tokens)} tokens ({seq.new_token_count} its own)", seq.finish_reason or "live"]
    stats = entropy_stats(seq)
    if stats:
        head.append(stats)
    if answer is not None:
        head.append(f"answer: {answer}")
    lines = [bold(" · ".join(head), colour)]
    if vocab is None:
        lines.append(seq.text)
    else:
        body = render_tokens(seq, vocab, theta=theta, colour=colour, marks=_marks_on_path(tree, seq))
        lines.append(body)
        lines.append(dim(legend(theta, colour), colour))
    return "\n".join(lines)


def _marks_on_path(tree: Tree, seq: Sequence) -> dict[int, list[int]]:
    """Fork markers along a branch's full text: the forks off the branch itself, the forks off its
    ancestors inside the prefix it shares with them, and the point where the branch was born."""
    by_parent = fork_points(tree)
    marks: dict[int, list[int]] = {}
    current, shared = seq, len(seq.tokens)
    while current is not None:
        for step, children in by_parent.get(current.id, {}).items():
            if step < shared:
                marks.setdefault(step, []).extend(children)
        if current.parent is not None:  # where this branch (or an ancestor) was born
            marks.setdefault(current.fork_at, []).append(current.id)
        shared = min(shared, current.fork_at)
        current = tree.sequences[current.parent] if current.parent is not None else None
    return {step: sorted(set(children)) for step, children in marks.items()}


def render_conversation(turns, vocab, *, colour: bool, header: str = "", unpicked_chars: int = 160) -> str:
    """`/tree`: every turn — the user's message, then its branches as a tree.

    Each branch shows its own text (from its fork point), coloured by entropy with the fork points
    of its sub-branches marked; the picked branch (the conversation goes on from it) in full, the
    others cut at `unpicked_chars`. `turns` are conversation.Turn objects; a turn whose tokens
    belong to another model (`foreign`) shows stored text without colours.
    """
    lines = [header] if header else []
    if not turns:
        lines.append("(no turns yet)")
        return "\n".join(lines)
    thetas = set()
    for number, turn in enumerate(turns, 1):
        tree = turn.tree
        theta = float(tree.settings.get("theta", 2.4))
        thetas.add(theta)
        lines.append(bold(f"turn {number}", colour) + f" · you: {turn.user}")
        marks = fork_points(tree)
        for seq_id, depth in branch_order(tree):
            seq = tree.sequences[seq_id]
            picked = seq.id == turn.picked
            lead = "  " + "   " * (depth - 1) + "└─ " if depth else "  "
            where = "" if seq.parent is None else f" · from #{seq.parent} at token {seq.fork_at}"
            lines.append(
                lead + bold(f"#{seq.id}", colour) + (" ★ picked" if picked else "") + where
                + f" · {seq.new_token_count} tokens · {seq.finish_reason or 'live'}"
            )
            limit = None if picked else unpicked_chars
            if turn.foreign or vocab is None:
                text = seq.text.replace("\n", " ↵ ")
                body = text if limit is None or len(text) <= limit else text[:limit] + "…"
            else:
                body = render_tokens(seq, vocab, theta=theta, colour=colour, marks=marks.get(seq.id),
                                     start=seq.fork_at, limit=limit, oneline=True)
            lines.append(" " * (len(lead) + 2) + ("…" if seq.fork_at else "") + body)
    theta_note = thetas.pop() if len(thetas) == 1 else max(thetas)
    lines.append(dim(legend(theta_note, colour), colour))
    return "\n".join(lines)


class TokenStream:
    """Writes one sequence's tokens as they arrive: UTF-8 completed across tokens, coloured by
    entropy, ⟨#N⟩ where a branch forks off it. Call `token` per token, `close` at the end."""

    def __init__(self, vocab, write, *, theta: float, colour: bool):
        self.vocab = vocab
        self.write = write
        self.theta = theta
        self.colour = colour
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.chars = 0

    def token(self, token: int, entropy: float, forks: Iterable[int] = ()) -> None:
        out = "".join(fork_marker(child, self.colour) for child in forks)
        if not self.vocab.is_eog(token):
            text = self._decoder.decode(self.vocab.piece(token))
            self.chars += len(text)
            out += entropy_colour(text, entropy, self.theta, self.colour)
        if out:
            self.write(out)

    def close(self) -> None:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self.write(tail)


# --- `run` with a method that samples in waves (waves_run.py) -----------------------------------------
def render_waves(run, *, vocab=None, budget: TokenBudget | None = None) -> str:
    """`run --method adaptive-consistency|esc|deepconf-*|eager-conf`: the rule, then each wave (its
    samples numbered across waves, in tree order, with fork point, length, finish, answer and
    confidence; the rule's verdict after it), the method's vote, why it stopped, and the totals.
    `run` is a waves_run.WaveRun; `vocab` (a Model) shows a fork's text after its fork point."""
    lines = [run.description]
    samples = {s["id"]: s for s in run.samples}
    for wave in run.waves:
        count, first = len(wave.tree.sequences), wave.first_sample
        drawn = "no samples" if not count else f"sample #{first}" if count == 1 else \
            f"samples #{first}–#{first + count - 1}"
        head = [f"── wave {wave.round}", drawn, f"cap {wave.size}", f"{wave.tree.generated_tokens} tokens"]
        if wave.record.get("threshold") is not None:
            head.append(f"threshold s = {wave.record['threshold']:.3f}")
        lines.append(" · ".join(head))
        for seq_id, depth in branch_order(wave.tree):
            seq = wave.tree.sequences[seq_id]
            lines.extend(_wave_sample(samples[wave.first_sample + seq_id], seq, depth, vocab))
        verdict = run.verdict_text(wave)
        if verdict is not None and wave.tree.sequences:  # a wave that drew nothing stops on the budget
            lines.append(f"  after wave {wave.round}: {verdict}")
    vote = run.vote
    how = f"confidence-weighted, {run.voters} of {len(samples)} samples at or above s" if run.weighted \
        else f"majority of {run.voters} answers"
    lines.append(f"vote ({how}): {vote if vote is not None else 'no answer'}")
    lines.append(f"stopped by {run.stop_text()}")
    tokens = run.generated_tokens
    parts = [f"{len(run.waves)} wave{'s' if len(run.waves) != 1 else ''}", f"{len(samples)} sequences",
             f"{tokens} generated tokens", f"{tokens / run.wall if run.wall > 0 else 0.0:.1f} tokens/s",
             f"{run.wall:.2f} s"]
    if budget is not None and budget.limit is not None:
        parts.append(f"budget left {int(budget.remaining)}/{budget.limit}")
    lines.append(" · ".join(parts))
    return "\n".join(lines)


def _wave_sample(sample: dict, seq: Sequence, depth: int, vocab) -> list[str]:
    """One sample of a wave: a header line and the first words of its text (a fork's own text)."""
    where = "root" if sample["parent"] is None else f"forked from #{sample['parent']} at token {seq.fork_at}"
    finish = sample["finish_reason"] or "live"
    if finish == LOW_CONFIDENCE:
        finish += " (stopped: confidence below s)"
    head = [f"#{sample['id']}", where, f"{seq.new_token_count} tokens", finish,
            f"answer: {sample['answer']}" if sample["answer"] is not None else "no answer"]
    if sample.get("min_conf") is not None:
        head.append(f"conf {sample['min_conf']:.3f}")
    if "weight" in sample and sample["weight"] is None:
        head.append("no vote")
    indent = "  " + "  " * depth
    own = vocab is not None and seq.fork_at > 0
    words = "…" + first_words(own_text(seq, vocab)) if own else first_words(seq.text)
    return [indent + " · ".join(head), indent + "    " + repr_words(words)]
