"""Terminal rendering: entropy colours, fork markers, plain mode (NO_COLOR, non-TTY), UTF-8 pieces.

A tiny vocabulary object stands in for the model's detokenizer; rendering never generates.
"""

from __future__ import annotations

import io
import math
import re

from eager_local import render
from eager_local import tree as T
from eager_local.conversation import Turn

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EOG = 99


class Vocab:
    """id -> bytes; 99 is end-of-generation. 50 and 51 are the two UTF-8 bytes of 'é'."""

    pieces = {10: b"The", 11: b" cat", 12: b" sat", 13: b".", 20: b" dog", 21: b" ran", 30: b" far",
              50: b"\xc3", 51: b"\xa9", 52: b"!", EOG: b"<|im_end|>"}

    def piece(self, token: int) -> bytes:
        return self.pieces[token]

    def is_eog(self, token: int) -> bool:
        return token == EOG


VOCAB = Vocab()


def make_tree() -> T.Tree:
    root = T.Sequence(id=0, parent=None, fork_at=0, tokens=[10, 11, 12, 13, EOG],
                      entropies=[0.1, 2.9, 0.5, math.nan, math.nan], finish_reason=T.STOP, text="The cat sat.")
    child = T.Sequence(id=1, parent=0, fork_at=1, tokens=[10, 20, 21, 30], entropies=[0.1, 2.9, 1.2, 0.1],
                       finish_reason=T.LENGTH, text="The dog ran far")
    grandchild = T.Sequence(id=2, parent=1, fork_at=2, tokens=[10, 20, 12, 13], entropies=[0.1, 2.9, 2.2, 0.1],
                            finish_reason=T.CANCELLED, text="The dog sat.")
    events = [
        T.BranchEvent(step=1, parent=0, child=1, entropy=2.9, threshold=2.4, top1=11, top2=20, top1_text=" cat", top2_text=" dog"),
        T.BranchEvent(step=2, parent=1, child=2, entropy=2.5, threshold=2.4, top1=21, top2=12, top1_text=" ran", top2_text=" sat"),
    ]
    return T.Tree(prompt="q", prompt_tokens=5, method="eager-init", sequences=[root, child, grandchild],
                  events=events, settings={"theta": 2.4})


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_use_colour_needs_a_tty_and_no_NO_COLOR(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render.use_colour(FakeTTY())
    assert not render.use_colour(io.StringIO())  # a pipe or file: plain
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.use_colour(FakeTTY())


def test_entropy_levels_go_low_to_high_relative_to_theta():
    assert render.entropy_level(0.0, 2.4) == 0
    assert render.entropy_level(0.9, 2.4) == 1
    assert render.entropy_level(1.7, 2.4) == 2
    assert render.entropy_level(2.4, 2.4) == 3
    assert render.entropy_level(9.0, 2.4) == 3
    assert render.entropy_level(math.nan, 2.4) is None
    green, red = render.entropy_colour("a", 0.1, 2.4, True), render.entropy_colour("a", 2.5, 2.4, True)
    assert green != red and green.startswith("\x1b[38;5;34m") and red.startswith("\x1b[38;5;196m")
    assert render.entropy_colour("a", 2.5, 2.4, False) == "a"
    assert render.entropy_colour("a", math.nan, 2.4, True) == "a"


def test_token_pieces_never_split_a_character_and_drop_end_of_generation():
    assert render.token_pieces([10, 50, 51, 52, EOG], VOCAB) == ["The", "", "é", "!", ""]
    # a dangling lead byte at the very end becomes a replacement character, not an exception
    assert render.token_pieces([10, 50], VOCAB) == ["The", "\ufffd"]


def test_render_tokens_marks_forks_and_colours_only_in_colour_mode():
    tree = make_tree()
    marks = render.fork_points(tree)
    plain = render.render_tokens(tree.sequences[0], VOCAB, theta=2.4, colour=False, marks=marks[0])
    assert plain == "The⟨#1⟩ cat sat."
    coloured = render.render_tokens(tree.sequences[0], VOCAB, theta=2.4, colour=True, marks=marks[0])
    assert "\x1b[38;5;196m cat" in coloured  # H=2.9 > θ: red
    assert "\x1b[38;5;34mThe" in coloured  # H=0.1: green
    assert ANSI.sub("", coloured) == plain
    # from the fork point on, cut at a limit, newlines shown as ↵
    own = render.render_tokens(tree.sequences[1], VOCAB, theta=2.4, colour=False, marks=marks[1], start=1)
    assert own == " dog⟨#2⟩ ran far"
    assert render.render_tokens(tree.sequences[1], VOCAB, theta=2.4, colour=False, start=1, limit=6) == " dog r…"


def test_describe_fork_and_branch_order():
    tree = make_tree()
    assert render.describe_fork(tree, 0) == "root"
    assert render.describe_fork(tree, 2) == (
        "forked from #1 at token 2 (H=2.50 > 2.40: kept ' ran', took ' sat')"
    )
    assert render.branch_order(tree) == [(0, 0), (1, 1), (2, 2)]


def test_branches_listing_plain():
    tree = make_tree()
    text = render.render_branches(tree, VOCAB, picked=1, colour=False, answers={0: None, 1: "7", 2: None})
    lines = text.splitlines()
    assert lines[0] == "#0 · root · 5 tokens · stop"
    assert lines[1] == '    "The cat sat."'
    assert lines[2].startswith("  #1 (picked) · forked from #0 at token 1")
    assert lines[2].endswith("· 3 tokens · length · answer: 7")
    assert lines[3] == '      "…dog ran far"'
    assert "cancelled" in lines[4]
    assert "\x1b" not in text


def test_show_branch_marks_every_fork_along_its_text():
    tree = make_tree()
    text = render.render_branch(tree, 2, VOCAB, picked=0, colour=False, answer=None)
    head, body, legend = text.splitlines()
    assert head.startswith("#2 · forked from #1 at token 2") and "cancelled" in head
    assert "entropy mean" in head
    # born off #0 at token 1 (as #1's prefix) and itself at token 2
    assert body == "The⟨#1⟩ dog⟨#2⟩ sat."
    assert "⟨#N⟩" in legend


def test_conversation_tree_plain_and_coloured(monkeypatch):
    tree = make_tree()
    turns = [Turn(user="Say something", tree=tree, picked=1)]
    plain = render.render_conversation(turns, VOCAB, colour=False, header="conversation")
    assert "\x1b" not in plain
    lines = plain.splitlines()
    assert lines[0] == "conversation"
    assert lines[1] == "turn 1 · you: Say something"
    assert lines[2] == "  #0 · 5 tokens · stop"
    assert lines[3] == "    The⟨#1⟩ cat sat."
    assert lines[4] == "  └─ #1 ★ picked · from #0 at token 1 · 3 tokens · length"
    assert lines[5] == "       … dog⟨#2⟩ ran far"
    assert lines[6] == "     └─ #2 · from #1 at token 2 · 2 tokens · cancelled"
    assert lines[7] == "          … sat."
    coloured = render.render_conversation(turns, VOCAB, colour=True, header="conversation")
    assert "\x1b[38;5;" in coloured
    # the same text once the colours are stripped, apart from the legend's colour explanation
    assert ANSI.sub("", coloured).splitlines()[:8] == lines[:8]


def test_conversation_tree_of_another_models_turn_uses_stored_text():
    turns = [Turn(user="hi", tree=make_tree(), picked=0, foreign=True)]
    text = render.render_conversation(turns, VOCAB, colour=True)
    assert "The cat sat." in text and "The dog ran far" in text
    body = text.splitlines()[:-1]  # the last line is the legend, with its colour swatches
    assert not any("\x1b[38;5;" in line for line in body)  # no per-token colours: not this model's tokens
    assert render.render_conversation([], VOCAB, colour=False) == "(no turns yet)"


def test_token_stream_completes_characters_and_marks_forks():
    out = []
    stream = render.TokenStream(VOCAB, out.append, theta=2.4, colour=False)
    for token, forks in ((10, ()), (50, (3,)), (51, ()), (EOG, ())):
        stream.token(token, 0.5, forks)
    stream.close()
    assert "".join(out) == "The⟨#3⟩é"
    assert stream.chars == 4
    coloured = []
    stream = render.TokenStream(VOCAB, coloured.append, theta=2.4, colour=True)
    stream.token(11, 2.9)
    assert coloured == ["\x1b[38;5;196m cat\x1b[0m"]


def test_run_output_shows_each_branch_with_the_answer_chat_and_eval_would_extract():
    tree = make_tree()
    tree.sequences[0].text = "17*23 is \\boxed{391}."
    tree.sequences[1].text = "So the result is 380"
    tree.sequences[2].text = "I do not know."
    text = render.render_run(tree, wall=2.0)
    heads = [line for line in text.splitlines() if line.startswith("── ")]
    assert heads == [
        "── branch #0 · root · 5 new tokens · stop · answer: 391",
        "── branch #1 · forked from #0 at token 1 (H=2.90 > 2.40: kept ' cat', took ' dog') · 3 new tokens"
        " · length · answer: 380",  # no box: the last number, as chat's /vote and eval's numeric grading read it
        "── branch #2 · forked from #1 at token 2 (H=2.50 > 2.40: kept ' ran', took ' sat') · 2 new tokens"
        " · cancelled",
    ]
    assert text.splitlines()[-1] == "3 sequences · 10 generated tokens · 5.0 tokens/s · 2.00 s"
