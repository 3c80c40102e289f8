"""The chat at the terminal: talk to a local model and steer where it was unsure.

This module is the terminal: reading lines (readline on a TTY), the slash commands, streaming the
reply, Ctrl-C / Ctrl-D. The conversation model is in `conversation.py`, generation and the KV
cache policy in `chat_session.py`, the drawing of branches and trees in `render.py`, the
`eager-local chat` command and its options in `cli/chat.py`.

Streams: on a TTY everything goes to stdout (colours unless NO_COLOR). With stdin not a TTY (a pipe,
a file) output is plain: replies and command output on stdout, notes (summary lines, warnings,
errors) on stderr, no prompt, no banner — `echo hi | eager-local chat --once > reply.txt` works.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
from pathlib import Path

from . import render
from .answers import extract_answer, tally
from .chat_session import ChatSession
from .conversation import ChatError
from .errors import EagerError
from .llama import LlamaError

PROMPT = "you> "

COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("", "this list"),
    "branches": ("", "the last turn's branches: where each forked, first words, length, finish, answer"),
    "show": ("N", "the full text of branch N of the last turn (default: the picked one)"),
    "pick": ("N", "continue the conversation from branch N (nothing is recomputed)"),
    "tree": ("", "the whole conversation: turns, branches, fork points, tokens coloured by entropy"),
    "vote": ("", "majority answer over the last turn's branches"),
    "theta": ("[X]", "show or set θ: branch where the top-K entropy (nats) exceeds it"),
    "max-sequences": ("[N]", "show or set M, the cap on branches per turn"),
    "temperature": ("[T]", "show or set the sampling temperature (0 = greedy)"),
    "budget": ("[N|off]", "show the session token budget, or set it to N tokens in total"),
    "seed": ("[S]", "show or set the random seed"),
    "retry": ("", "generate the last turn again (new random draws)"),
    "undo": ("", "drop the last turn"),
    "save": ("FILE", "save the conversation tree, settings and budget as JSON"),
    "load": ("FILE", "load a saved conversation (replaces this one)"),
    "quit": ("", "leave (Ctrl-D too)"),
}

_SETTING_DOCS = {
    "theta": ("theta", float, "θ = {:g} nats: a branch forks where the top-K entropy exceeds it"),
    "max-sequences": ("max_sequences", int, "M = {} branches at most per turn"),
    "temperature": ("temperature", float, "temperature = {:g}"),
    "seed": ("seed", int, "seed = {}"),
}


class ChatUI:
    def __init__(self, session: ChatSession, *, interactive: bool, colour: bool, once: bool = False,
                 out=None, err=None):
        self.session = session
        self.interactive = interactive
        self.colour = colour
        self.once = once
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.running = True

    # output -------------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def say(self, text: str = "") -> None:
        """Command output: stdout."""
        self.write(text + "\n")

    def note(self, text: str) -> None:
        """Status and summaries: dim on a TTY; stderr in a pipe so stdout carries only replies."""
        if self.interactive:
            self.write(render.dim(text, self.colour) + "\n")
        else:
            self.err.write(text + "\n")
            self.err.flush()

    def error(self, text: str) -> None:
        if self.interactive:
            self.write(render.style(f"! {text}", "\x1b[31m", self.colour) + "\n")
        else:
            self.err.write(f"error: {text}\n")
            self.err.flush()

    # the loop -----------------------------------------------------------------------------------
    def banner(self) -> str:
        s = self.session
        model = s.model.get("name") or s.model.get("file")
        return (
            f"eager-local chat · {model} · {self._settings_line()} · {self._budget_text()}\n"
            "Type a message, or /help for commands. Ctrl-C stops a reply; Ctrl-D quits."
        )

    def _settings_line(self) -> str:
        st = self.session.settings
        return f"θ {st['theta']:g} · M {st['max_sequences']} · T {st['temperature']:g} · seed {st['seed']}"

    def run(self, lines=None) -> int:
        """Read lines until /quit, end of input or a second Ctrl-C; returns the exit code (0)."""
        if self.interactive:
            self.note(self.banner())
        read = self._reader(lines)
        interrupts = 0
        while self.running:
            try:
                line = read()
            except EOFError:
                if self.interactive:
                    self.write("\n")
                break
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts >= 2:
                    self.write("\n")
                    break
                self.write("\n")
                self.note("(Ctrl-C again or Ctrl-D to quit; the session is still here)")
                continue
            interrupts = 0
            try:
                self.handle(line)
            except KeyboardInterrupt:  # during a command's output, not a generation
                self.write("\n")
                self.note("(interrupted)")
        return 0

    def _reader(self, lines):
        if lines is not None:
            iterator = iter(lines)

            def read_from_list():
                try:
                    return next(iterator)
                except StopIteration:
                    raise EOFError from None

            return read_from_list
        if self.interactive:
            prompt = render.bold(PROMPT, self.colour)
            if self.colour:  # tell readline the escape codes take no columns
                prompt = prompt.replace("\x1b[1m", "\x01\x1b[1m\x02").replace("\x1b[0m", "\x01\x1b[0m\x02")
            return lambda: input(prompt)

        def read_stdin():
            try:
                line = sys.stdin.readline()
                line.encode("utf-8")  # undecodable bytes arrive as surrogates where stdin escapes them
            except UnicodeError:  # the whole input is suspect: stop here, one line, exit 2
                raise ChatError("standard input is not valid UTF-8 text") from None
            if "\0" in line:
                raise ChatError("standard input is not text (a NUL byte in a line)")
            if not line:
                raise EOFError
            return line.rstrip("\n")

        return read_stdin

    def handle(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        if text.startswith("/") and not text.startswith("//"):
            name, _, arg = text[1:].partition(" ")
            self.command(name.strip().lower(), arg.strip())
            return
        if text.startswith("//"):
            text = text[1:]  # "//text" sends "/text"
        self.message(text)
        if self.once:
            self.running = False

    # messages -----------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        self._generate(lambda on_token: self.session.say(text, on_token=on_token))

    def _generate(self, start) -> None:
        s = self.session
        if s.budget.exhausted:
            self.error(
                f"the session budget is spent ({s.budget.spent} of {s.budget.limit} tokens). "
                "Commands still work (/save, /show, /tree); /budget N raises the limit."
            )
            return
        theta = float(s.settings["theta"])
        stream = render.TokenStream(s.llm.model, self.write, theta=theta, colour=self.colour)

        def on_token(tree, seq, token):
            if seq.id != 0:  # the first branch streams; the others decode alongside it
                return
            step = len(seq.tokens) - 1
            # Fork markers help a person at a terminal; a pipe gets the plain reply.
            forks = [e.child for e in tree.events if e.parent == 0 and e.step == step] if self.interactive else []
            entropy = seq.entropies[-1] if seq.entropies else float("nan")
            stream.token(token, entropy, forks)

        try:
            turn = start(on_token)
        except (EagerError, LlamaError) as e:  # BudgetSpent, ChatError, ConfigError among them
            self.error(str(e))
            return
        stream.close()
        if stream.chars or turn is not None:
            self.write("\n")
        stats = s.last_stats
        if turn is None:
            if stats is not None and stats.kv_full:
                self.error("the KV cache had no room for the conversation: /undo, or /save and start afresh")
            else:
                self.note("(interrupted before the first token: nothing generated)")
            return
        self._summary(turn, stats)

    def _summary(self, turn, stats) -> None:
        s = self.session
        parts = [
            f"{stats.branches} branch{'es' if stats.branches != 1 else ''}",
            f"{stats.generated} tokens this turn",
            self._budget_text(short=True),
            f"{stats.tokens_per_second:.1f} tokens/s",
            f"prompt: {stats.reused} cached + {stats.computed} computed tokens",
        ]
        self.note("── " + " · ".join(parts))
        if stats.interrupted:
            self.note("(interrupted: what was generated is kept; /retry to generate the turn again)")
        if stats.kv_full:
            self.note("(some branches were cut: the KV cache was full)")
        if stats.cut_by_budget or s.budget.exhausted:
            self.error(
                f"the session budget is spent ({s.budget.spent} of {s.budget.limit} tokens): the reply was cut. "
                "Commands still work; /budget N raises the limit."
            )
        elif stats.branches > 1 and self.interactive:
            self.note("(/branches lists them, /pick N continues from one)")

    def _budget_text(self, short: bool = False) -> str:
        b = self.session.budget
        if b.limit is None:
            return "no budget limit" if short else f"budget unlimited ({b.spent} tokens spent)"
        return f"{int(b.remaining)} of {b.limit} budget tokens left"

    # commands -----------------------------------------------------------------------------------
    def command(self, name: str, arg: str) -> None:
        if name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" — did you mean /{close[0]}?" if close else ""
            self.error(f"unknown command /{name}{hint} (/help lists the commands)")
            return
        handler = getattr(self, "cmd_" + name.replace("-", "_"))
        try:
            handler(arg)
        except EagerError as e:
            self.error(str(e))
        except OSError as e:  # /save to a full disk or an unwritable folder: the session goes on
            self.error(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))

    def cmd_help(self, arg):
        width = max(len(f"/{n} {u}".strip()) for n, (u, _) in COMMANDS.items())
        for name, (usage, doc) in COMMANDS.items():
            self.say(f"  {f'/{name} {usage}'.strip():<{width}}  {doc}")
        self.say("  Anything else is a message to the model (start it with // to send a leading /).")

    def _last(self, what: str):
        return self.session.conversation.require_last(what)

    def _answers(self, tree) -> dict[int, str | None]:
        return {seq.id: extract_answer(seq.text) for seq in tree.sequences}

    def _vocab(self, turn):
        return None if turn.foreign else self.session.llm.model

    def cmd_branches(self, arg):
        turn = self._last("list")
        tree = turn.tree
        self.say(render.render_branches(tree, self._vocab(turn), picked=turn.picked, colour=self.colour,
                                        answers=self._answers(tree)))

    def cmd_show(self, arg):
        turn = self._last("show")
        n = turn.picked if not arg else _int(arg, "/show N", "branch number")
        turn.check_branch(n)
        answer = extract_answer(turn.tree.sequences[n].text)
        self.say(render.render_branch(turn.tree, n, self._vocab(turn), picked=turn.picked, colour=self.colour,
                                      answer=answer))

    def cmd_pick(self, arg):
        if not arg:
            raise ChatError("usage: /pick N (the branch to continue from; /branches lists them)")
        n = _int(arg, "/pick N", "branch number")
        seq = self.session.pick(n)
        words = render.first_words(seq.text, 10)
        self.note(f"continuing from branch #{n}: \"{words}\"")

    def cmd_tree(self, arg):
        s = self.session
        header = f"conversation · {len(s.conversation.turns)} turn(s) · model {s.model.get('file')}"
        if s.conversation.system:
            header += f"\nsystem: {s.conversation.system}"
        self.say(render.render_conversation(s.conversation.turns, s.llm.model, colour=self.colour, header=header))

    def cmd_vote(self, arg):
        turn = self._last("vote on")
        answers = [extract_answer(seq.text) for seq in turn.tree.sequences]
        groups = tally(answers)
        if not groups:
            self.say(f"no answer could be extracted from the {len(answers)} branch(es)")
            return
        given = sum(len(g) for g in groups)
        counts = ", ".join(f"{g[0]} ×{len(g)}" for g in groups)
        missing = len(answers) - given
        self.say(f"majority answer: {groups[0][0]} ({len(groups[0])} of {given} answers; {counts})"
                 + (f"; {missing} branch(es) gave none" if missing else ""))

    def _setting(self, command: str, arg: str) -> None:
        key, parse, doc = _SETTING_DOCS[command]
        if arg:
            usage = f"/{command} {COMMANDS[command][0].strip('[]')}"
            value = _parse(arg, parse, usage, key.replace("_", "-"))
            self.session.set(key, value)
        self.say(doc.format(self.session.settings[key]))

    def cmd_theta(self, arg):
        self._setting("theta", arg)

    def cmd_max_sequences(self, arg):
        self._setting("max-sequences", arg)

    def cmd_temperature(self, arg):
        self._setting("temperature", arg)

    def cmd_seed(self, arg):
        self._setting("seed", arg)

    def cmd_budget(self, arg):
        b = self.session.budget
        if arg:
            if arg.lower() in ("off", "none", "unlimited"):
                b.raise_limit(None)
            else:
                limit = _int(arg, "/budget N", "token count")
                if limit < 0:
                    raise ChatError(f"the budget must be >= 0 tokens, got {limit}")
                b.raise_limit(limit)
        if b.limit is None:
            self.say(f"budget: unlimited · {b.spent} tokens spent")
        else:
            self.say(f"budget: {b.limit} tokens for the session · {b.spent} spent · {int(b.remaining)} left")
            if b.exhausted:
                self.say("(spent: no new generation until /budget N raises it)")

    def cmd_retry(self, arg):
        self.session.conversation.require_last("retry")
        self._generate(lambda on_token: self.session.retry(on_token=on_token))

    def cmd_undo(self, arg):
        turn = self.session.undo()
        self.note(f"dropped the last turn (\"{render.first_words(turn.user, 8)}\"); "
                  f"{len(self.session.conversation.turns)} turn(s) left")

    def cmd_save(self, arg):
        if not arg:
            raise ChatError("usage: /save FILE")
        path = self.session.save(arg)
        self.note(f"saved {len(self.session.conversation.turns)} turn(s) to {path}")

    def cmd_load(self, arg):
        if not arg:
            raise ChatError("usage: /load FILE")
        for warning in self.session.load(arg):
            self.error(f"warning: {warning}")
        s = self.session
        self.note(f"loaded {len(s.conversation.turns)} turn(s) from {arg} · {self._settings_line()} · "
                  f"{self._budget_text()}")

    def cmd_quit(self, arg):
        self.running = False


def _parse(arg: str, parse, usage: str, what: str):
    try:
        return parse(arg)
    except ValueError:
        kind = "a whole number" if parse is int else "a number"
        raise ChatError(f"{what} must be {kind}, got {arg!r} (usage: {usage})") from None


def _int(arg: str, usage: str, what: str) -> int:
    return _parse(arg, int, usage, what)


def listen_to_ctrl_c() -> None:
    """Ctrl-C at a terminal means "stop generating", even if whatever started us ignored SIGINT.

    A process launched from a background job (a script's `cmd &`, nohup) inherits SIGINT as
    ignored, and Python then installs no KeyboardInterrupt handler: Ctrl-C would do nothing while
    the model streams. An interactive chat is in the terminal's foreground, so take it back.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --- readline ------------------------------------------------------------------------------------
def _history_path() -> Path | None:
    configured = os.environ.get("EAGER_LOCAL_CHAT_HISTORY")
    if configured is not None:
        return Path(configured) if configured else None
    from .models import home_dir

    return home_dir() / "chat_history"


def setup_readline():
    """Line editing and history on a TTY; returns a function that saves the history."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        return lambda: None
    path = _history_path()
    readline.set_history_length(1000)
    if path is not None:
        try:
            readline.read_history_file(path)
        except OSError:
            pass

    def save():
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass

    return save
