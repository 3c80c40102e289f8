"""`eager-local chat`: the conversation model, the session's KV reuse, and the real program.

Three layers:
- the conversation model and its file format (no model);
- a ChatSession on the real default model in this process: /pick continues from the picked
  branch's own KV cells (counted at Context.prefill), the continuation equals a fresh computation,
  the cache holds one turn's branches, save/load round trips;
- the real program in a real pseudo-terminal (pexpect) and in a pipe.

Every model run uses one thread (EAGER_LOCAL_THREADS=1 / --threads 1) and short generations.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from eager_local import tree as T
from eager_local.budget import TokenBudget
from eager_local.chat import ChatUI
from eager_local.chat_session import BudgetSpent, ChatSession
from eager_local.conversation import (
    ChatError,
    Conversation,
    Turn,
    common_prefix,
    read_session,
    same_model,
    write_atomic,
)
from eager_local.errors import ConfigError
from eager_local.entropy import top_k_entropy
from eager_local.llama import Context, ContextSize

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --- the conversation model (no model) -----------------------------------------------------------
def make_turn(user: str, replies: list[str], picked: int = 0) -> Turn:
    seqs = [T.Sequence(id=i, parent=None if i == 0 else 0, fork_at=0 if i == 0 else 1, tokens=[1, 2, 3],
                       entropies=[0.1, 0.2, float("nan")], finish_reason=T.STOP, text=text)
            for i, text in enumerate(replies)]
    return Turn(user=user, tree=T.Tree(prompt=user, prompt_tokens=5, method="eager-init", sequences=seqs), picked=picked)


def test_messages_follow_the_picked_path():
    conv = Conversation(system="Be brief.", turns=[make_turn("hi", ["Hello!", "Hey."]), make_turn("2+2?", ["4", "5"])])
    conv.pick(1)
    assert conv.messages(user="thanks") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "thanks"},
    ]
    assert conv.messages(conv.turns[:1], "again")[-1] == {"role": "user", "content": "again"}


def test_pick_and_undo_refuse_what_does_not_exist():
    conv = Conversation()
    with pytest.raises(ChatError, match="nothing to pick from yet"):
        conv.pick(0)
    with pytest.raises(ChatError, match="nothing to undo yet"):
        conv.undo()
    conv.turns.append(make_turn("hi", ["a", "b", "c"]))
    with pytest.raises(ChatError, match=r"no branch 99: the last turn has 3 branches \(#0 to #2\)"):
        conv.pick(99)
    with pytest.raises(ChatError, match="no branch -1"):
        conv.pick(-1)
    assert conv.last.picked == 0
    conv.pick(2)
    assert conv.last.reply == "c"
    assert conv.undo().user == "hi" and conv.turns == []


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "chat.json"
    write_atomic(target, '{"old": true}')

    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # not text: the write fails after the temp file exists
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json"]  # no temp file left
    with pytest.raises(ChatError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "x.json", "{}")


def test_read_session_refuses_files_that_are_not_chats(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ChatError, match="not a chat file"):
        read_session(bad)
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(ChatError, match="not an eager-local chat file"):
        read_session(bad)
    bad.write_text('{"format": "eager-local-chat", "version": 99, "turns": []}')
    with pytest.raises(ChatError, match="version 99"):
        read_session(bad)
    with pytest.raises(ChatError, match="no such file"):
        read_session(tmp_path / "nope.json")


def test_same_model_by_sha256_else_name_and_size():
    a = {"file": "m.gguf", "size": 10, "sha256": "aa"}
    assert same_model(a, dict(a))
    assert not same_model(a, dict(a, sha256="bb"))
    assert same_model({"file": "m.gguf", "size": 10}, dict(a))
    assert not same_model({"file": "m.gguf", "size": 11}, dict(a))
    assert not same_model(None, a)


# --- a session on the real model, in this process ------------------------------------------------
SETTINGS = dict(method="eager-init", theta=1.0, max_sequences=3, temperature=0.6, max_new_tokens=24, seed=55)


@pytest.fixture
def session(llm):
    s = ChatSession(llm, SETTINGS)
    yield s
    s.close()
    assert not llm.engine._pinned  # the session leaves nothing in the shared engine's cache


@pytest.fixture
def prefills(monkeypatch):
    """Every Context.prefill call as (number of tokens, start position): what was computed."""
    calls = []
    original = Context.prefill

    def counting(self, tokens, seq_id, start_pos=0, **kwargs):
        calls.append((len(tokens), start_pos))
        return original(self, tokens, seq_id, start_pos, **kwargs)

    monkeypatch.setattr(Context, "prefill", counting)
    return calls


def branched_first_turn(session) -> Turn:
    turn = session.say("What is 2+3?")
    assert len(turn.tree.sequences) >= 2, "θ = 1.0 branches on this prompt with the default model"
    return turn


def test_pick_continues_from_the_picked_branch_without_recomputing(session, prefills):
    # Start from a fresh KV cache: llama.cpp's float results depend on where cells sit in the cache
    # (0.07 nats of entropy after other tests had used it), and the reference below is a fresh context.
    session.llm.engine.reset()
    first = branched_first_turn(session)
    assert prefills == [(len(first.prompt), 0)]  # the first turn computes its whole prompt
    branch = first.tree.sequences[1]
    engine = session.llm.engine
    assert set(session.kept_ids) == {s.llama_seq for s in first.tree.sequences} == engine._pinned
    held = engine.context.seq_length(branch.llama_seq)
    assert held >= len(first.prompt) + len(branch.tokens) - 1  # prompt + reply in the cache

    prefills.clear()
    session.pick(1)
    assert prefills == []
    second = session.say("And times 4?")
    cached = (first.prompt + branch.tokens)[:held]
    expected_reuse = common_prefix(cached, second.prompt)
    # It continued from branch #1's own cells: past the prompt and past #1's fork point.
    assert expected_reuse > len(first.prompt) + branch.fork_at
    assert second.reused == expected_reuse
    assert prefills == [(len(second.prompt) - expected_reuse, expected_reuse)]
    assert session.last_stats.computed == len(second.prompt) - expected_reuse < 25
    # The cache now holds the new turn's branches only.
    assert set(session.kept_ids) == {s.llama_seq for s in second.tree.sequences} == engine._pinned
    for seq in second.tree.sequences:
        assert engine.context.seq_length(seq.llama_seq) >= len(second.prompt) + len(seq.tokens) - 1

    # The continuation sees what a fresh context computes for the same conversation, decoded the
    # same way (first prompt in one chunk, the reply token by token, the new message in one chunk):
    # chunking changes llama.cpp's float results, so comparing against one big prefill would test
    # the matmul path, not the cache reuse.
    history = first.prompt + branch.tokens
    fresh = Context(session.llm.model, ContextSize(cells=1024, n_seq_max=1, n_batch=512, unified=True), n_threads=engine.n_threads)
    try:
        fresh.prefill(first.prompt, 0)
        for pos in range(len(first.prompt), expected_reuse):
            fresh.decode([history[pos]], [pos], [0], [1])
        logits = fresh.prefill(second.prompt[expected_reuse:], 0, start_pos=expected_reuse)
    finally:
        fresh.close()
    first_entropy = second.tree.sequences[0].entropies[0]
    assert first_entropy == pytest.approx(float(top_k_entropy(logits[None, :], 20)[0]), abs=1e-4)
    assert second.prompt == session.llm.chat_tokens(
        [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": branch.text},
         {"role": "user", "content": "And times 4?"}]
    )


def test_retry_reuses_the_whole_prompt_and_draws_again(session, prefills):
    first = branched_first_turn(session)
    prefills.clear()
    again = session.retry()
    assert len(session.conversation.turns) == 1 and session.conversation.last is again
    assert again.prompt == first.prompt and again.index == first.index + 1
    assert prefills == [(1, len(first.prompt) - 1)]  # only the last prompt token, for its logits
    assert [s.tokens for s in again.tree.sequences] != [s.tokens for s in first.tree.sequences]


def test_undo_then_a_new_message_reuses_the_dropped_turns_cache(session, prefills):
    first = branched_first_turn(session)
    session.say("And times 4?")
    dropped = session.undo()
    assert dropped.user == "And times 4?" and len(session.conversation.turns) == 1
    prefills.clear()
    other = session.say("And minus 1?")
    # The dropped turn's branches held turn 1 and its picked reply: only the new message is computed.
    assert other.reused > len(first.prompt) + len(first.branch.tokens) - 3
    assert prefills == [(len(other.prompt) - other.reused, other.reused)]


def test_budget_is_shared_by_turns_and_refuses_only_generation(llm):
    s = ChatSession(llm, SETTINGS, budget=TokenBudget(10))
    try:
        turn = s.say("Count to twenty.")
        assert turn.tree.generated_tokens == 10 and s.last_stats.cut_by_budget
        with pytest.raises(BudgetSpent, match="budget is spent"):
            s.say("More?")
        assert len(s.conversation.turns) == 1  # refused before generating anything
        s.budget.raise_limit(20)
        s.say("More?")
        assert 10 < s.budget.spent <= 20
    finally:
        s.close()


def test_settings_refuse_nonsense_and_keep_the_old_value(session):
    with pytest.raises(ConfigError, match="theta"):
        session.set("theta", -1.0)
    with pytest.raises(ConfigError, match="max-sequences"):
        session.set("max_sequences", 0)
    assert session.settings["theta"] == 1.0 and session.settings["max_sequences"] == 3
    session.set("temperature", 0.0)
    assert session.config().sampling.temperature == 0.0


def test_save_load_round_trip_and_other_model_warning(session, llm, tmp_path):
    branched_first_turn(session)
    session.pick(1)
    path = tmp_path / "chat.json"
    session.save(path)
    doc = json.loads(path.read_text())
    assert doc["model"]["file"] == llm.resolved.path.name and doc["model"]["size"] > 0
    assert all(s["llama_seq"] is None for s in doc["turns"][0]["tree"]["sequences"])

    other = ChatSession(llm, dict(SETTINGS, theta=2.2), budget=TokenBudget(5))
    try:
        assert other.load(path) == []
        assert other.to_dict() == session.to_dict()
        assert other.conversation.last.picked == 1 and other.settings["theta"] == 1.0
        assert other.budget.spent == session.budget.spent

        doc["model"]["sha256"] = "0" * 64
        doc["model"]["file"] = "another.gguf"
        path.write_text(json.dumps(doc))
        (warning,) = other.load(path)
        assert "another.gguf" in warning and llm.resolved.path.name in warning
        assert other.conversation.last.foreign
        path.write_text("{broken")
        with pytest.raises(ChatError):
            other.load(path)
        assert len(other.conversation.turns) == 1  # a bad file changes nothing
    finally:
        other.close()


def test_commands_in_process_report_clear_errors(session):
    out, err = io.StringIO(), io.StringIO()
    ui = ChatUI(session, interactive=False, colour=False, out=out, err=err)
    ui.run(["/vote", "/show 1", "/retry", "/budget -3", "/budget x", "/seed 1.5", "/max-sequences 999",
            "/budget 1000", "/seed 7", "/help", "/quit", "never read"])
    errors = err.getvalue().splitlines()
    assert errors == [
        "error: nothing to vote on yet: send a message first",
        "error: nothing to show yet: send a message first",
        "error: nothing to retry yet: send a message first",
        "error: the budget must be >= 0 tokens, got -3",
        "error: token count must be a whole number, got 'x' (usage: /budget N)",
        "error: seed must be a whole number, got '1.5' (usage: /seed S)",
        "error: max-sequences must be between 1 and 256, got 999",
    ]
    text = out.getvalue()
    assert "budget: 1000 tokens for the session · 0 spent · 1000 left" in text
    assert "seed = 7" in text and session.settings["seed"] == 7
    assert "/max-sequences [N]" in text
    assert session.conversation.turns == []  # "never read" came after /quit


# --- the real program ----------------------------------------------------------------------------
pexpect = pytest.importorskip("pexpect")


def chat_env(tmp_path, **extra) -> dict:
    env = dict(os.environ, EAGER_LOCAL_THREADS="1", EAGER_LOCAL_CHAT_HISTORY=str(tmp_path / "history"),
               TERM="xterm-256color", **extra)
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def spawn(tmp_path, *args, preexec_fn=None, **env):
    child = pexpect.spawn(
        sys.executable, ["-m", "eager_local", "chat", "--threads", "1", *args], env=chat_env(tmp_path, **env),
        encoding="utf-8", timeout=120, dimensions=(60, 400), cwd=str(tmp_path), preexec_fn=preexec_fn,
    )
    child.expect_exact("you> ")
    return child


def command(child, line: str) -> str:
    """Send a line, wait for the next prompt; what was printed in between (echo removed, no ANSI)."""
    child.sendline(line)
    child.expect_exact("you> ")
    text = ANSI.sub("", child.before).replace("\r\n", "\n").replace("\r", "")
    first, _, rest = text.partition("\n")
    assert first.strip() == line.strip(), text
    return rest


SUMMARY = re.compile(
    r"── (\d+) branch(?:es)? · (\d+) tokens this turn · (.*?) · [\d.]+ tokens/s · "
    r"prompt: (\d+) cached \+ (\d+) computed tokens"
)


def test_tty_conversation_branches_pick_tree_save_load(tmp_path):
    child = spawn(tmp_path, "-n", "24", "--theta", "1.0", "-M", "3")
    child.sendline("What is 2+3?")
    child.expect_exact("you> ")
    raw = child.before
    assert "\x1b[38;5;" in raw  # a TTY without NO_COLOR: the reply streams coloured by entropy
    first = SUMMARY.search(ANSI.sub("", raw))
    assert first, raw
    branches, _, budget, cached, computed = first.groups()
    assert int(branches) >= 2 and budget == "no budget limit" and cached == "0"

    listing = command(child, "/branches")
    assert "#0 (picked) · root ·" in listing
    assert re.search(r"#1 · forked from #\d at token \d+ \(H=\d\.\d\d > 1\.00: kept .*, took .*\)", listing)

    assert 'continuing from branch #1: "' in command(child, "/pick 1")
    second = SUMMARY.search(command(child, "And times 4?"))
    assert second, "no summary after the second turn"
    # Continued from branch #1 in the KV cache: the first prompt and the reply were not recomputed.
    assert int(second.group(4)) > int(computed) and int(second.group(5)) < 25

    tree = command(child, "/tree")
    assert "turn 1 · you: What is 2+3?" in tree and "turn 2 · you: And times 4?" in tree
    assert "#1 ★ picked · from #" in tree and "⟨#1⟩" in tree

    assert "no branch 99: the last turn has" in command(child, "/pick 99")
    assert "theta must be a number, got 'abc' (usage: /theta X)" in command(child, "/theta abc")
    assert "unknown command /frobnicate" in command(child, "/frobnicate")
    assert "θ = 1 nats" in command(child, "/theta")  # unchanged, session alive
    assert "saved 2 turn(s)" in command(child, "/save chat.json")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "/tree" in (tmp_path / "history").read_text()  # readline history kept

    # A new process loads the file and shows the same tree; NO_COLOR turns colours off on a TTY.
    child = spawn(tmp_path, NO_COLOR="1")
    assert "loaded 2 turn(s) from chat.json" in command(child, "/load chat.json")
    child.sendline("/tree")
    child.expect_exact("you> ")
    assert "\x1b[38;5;" not in child.before
    again = command(child, "/tree")
    assert again.splitlines()[:-1] == tree.splitlines()[:-1]  # all but the legend (it names the colours)
    command(child, "/save again.json")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads((tmp_path / "chat.json").read_text())


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_tty_ctrl_c_stops_generation_and_keeps_the_session(tmp_path, inherited):
    # "ignored": started the way a background job starts its children (SIGINT ignored, so Python
    # would install no KeyboardInterrupt handler); the chat must still stop on Ctrl-C.
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None
    child = spawn(tmp_path, "-n", "2000", "-M", "2", "--theta", "1.0", preexec_fn=ignore, NO_COLOR="1")
    child.sendline("Write a long story about a dragon.")
    child.expect(r"dragon\.\r\n")  # the echo
    child.expect(r"\w+\W+\w+\W+\w+\W+\w+")  # the reply is streaming
    child.sendintr()
    child.expect_exact("you> ", timeout=30)
    text = ANSI.sub("", child.before)
    assert "interrupted: what was generated is kept" in text
    summary = SUMMARY.search(text)
    assert summary and 0 < int(summary.group(2)) < 2 * 2000 // 4
    assert "cancelled" in command(child, "/branches")
    assert command(child, "/show 0").strip()
    child.sendintr()  # at the prompt: the session stays
    child.expect_exact("Ctrl-C again or Ctrl-D to quit")
    child.expect_exact("you> ")
    assert "tokens spent" in command(child, "/budget")
    child.sendintr()
    child.expect_exact("you> ")
    child.sendintr()  # a second Ctrl-C in a row quits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_tty_budget_exhaustion_keeps_commands_usable(tmp_path):
    child = spawn(tmp_path, "--budget", "12", "-n", "32", "--theta", "3.5")
    text = command(child, "Write a long story about a dragon.")
    summary = SUMMARY.search(text)
    assert summary and summary.group(2) == "12" and summary.group(3) == "0 of 12 budget tokens left"
    assert "the session budget is spent (12 of 12 tokens): the reply was cut" in text
    refused = command(child, "And then?")
    assert "the session budget is spent" in refused and not SUMMARY.search(refused)
    assert command(child, "/show 0").startswith("#0 (picked) · root · 12 tokens (12 its own) · budget")
    assert "saved 1 turn(s)" in command(child, "/save spent.json")
    assert "budget: 40 tokens for the session · 12 spent · 28 left" in command(child, "/budget 40")
    resumed = SUMMARY.search(command(child, "And then?"))
    assert resumed and resumed.group(3).endswith("of 40 budget tokens left")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def run_chat(*args, input_text: str, tmp_path, timeout=120):
    env = chat_env(tmp_path)
    return subprocess.run([sys.executable, "-m", "eager_local", "chat", "--threads", "1", *args], input=input_text,
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))


def test_pipe_once_is_plain_and_exits_zero(tmp_path):
    r = run_chat("--once", "-n", "16", input_text="What is 2+3?\nnot read\n", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "\x1b" not in r.stdout and "\x1b" not in r.stderr
    assert "you>" not in r.stdout and "/help" not in r.stdout  # no prompt, no banner
    assert SUMMARY.search(r.stderr) and r.stderr.count("tokens this turn") == 1  # one turn only


def test_pipe_runs_commands_and_reports_errors_on_stderr(tmp_path):
    r = run_chat("-n", "8", "--theta", "1.0", "-M", "2",
                 input_text="/pick 1\nHi!\n/branches\n/theta abc\n/budget\n", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "#0 (picked) · root" in r.stdout and "budget: unlimited" in r.stdout
    assert "error: nothing to pick from yet" in r.stderr and "error: theta must be a number" in r.stderr
    assert "\x1b" not in r.stdout + r.stderr


def test_raw_mode_is_refused(tmp_path):
    r = run_chat("--raw", input_text="", tmp_path=tmp_path)
    assert r.returncode == 2 and "chat needs the model's chat template" in r.stderr
    assert "Traceback" not in r.stderr
