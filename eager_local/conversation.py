"""A chat conversation as data: turns, their branches, the picked path, and the JSON file format.

A conversation is a tree. Each turn is one user message and the `Tree` of branches generated for
it; the turn's `picked` branch is the reply the conversation continues from, and the next turn
hangs off it. The other branches stay in the turn (see them, pick one instead). Nothing here
touches llama.cpp: `chat_session.py` does the generating, `chat.py` the terminal.

File format (`/save`, `/load`), one JSON object:

    {"format": "eager-local-chat", "version": 1,
     "model": {"file", "name", "size", "sha256"},      # who made the token-level data
     "system": str | null, "settings": {...}, "budget": {"limit", "spent"}, "generations": int,
     "turns": [{"user", "picked", "index", "tree": Tree.to_dict()}]}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EagerError
from .io import write_text_atomic
from .tree import Sequence, Tree

FORMAT = "eager-local-chat"
VERSION = 1


class ChatError(EagerError):
    """A request the chat cannot honour (bad argument, nothing to undo, unreadable file), worded
    for the user. The session goes on unchanged."""


@dataclass
class Turn:
    user: str
    tree: Tree
    picked: int = 0
    index: int = 0  # the request index the turn was generated with (selects its random streams)
    # Not saved: the prompt tokens it was generated from (this model only), how many of them came
    # from the KV cache, and whether the tree's tokens belong to another model (loaded from a file).
    prompt: list[int] | None = field(default=None, repr=False, compare=False)
    reused: int = field(default=0, compare=False)
    foreign: bool = field(default=False, compare=False)

    @property
    def branch(self) -> Sequence:
        return self.tree.sequences[self.picked]

    @property
    def reply(self) -> str:
        return self.branch.text

    def check_branch(self, n: int) -> Sequence:
        count = len(self.tree.sequences)
        if not 0 <= n < count:
            choices = "#0" if count == 1 else f"#0 to #{count - 1}"
            raise ChatError(f"no branch {n}: the last turn has {count} branch{'es' if count != 1 else ''} ({choices})")
        return self.tree.sequences[n]

    def to_dict(self) -> dict:
        tree = self.tree.to_dict()
        for seq in tree["sequences"]:
            seq["llama_seq"] = None  # KV cache ids mean nothing outside this process
        return {"user": self.user, "picked": self.picked, "index": self.index, "tree": tree}

    @classmethod
    def from_dict(cls, data: dict, *, foreign: bool = False) -> "Turn":
        tree = Tree.from_dict(data["tree"])
        turn = cls(user=str(data["user"]), tree=tree, picked=int(data.get("picked", 0)),
                   index=int(data.get("index", 0)), foreign=foreign)
        if not tree.sequences:
            raise ChatError("a turn has no branches")
        turn.check_branch(turn.picked)
        return turn


@dataclass
class Conversation:
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)

    @property
    def last(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def messages(self, turns: list[Turn] | None = None, user: str | None = None) -> list[dict]:
        """Chat messages for the model: the system message, each turn's user message and picked
        reply, then `user` (the message to answer next)."""
        turns = self.turns if turns is None else turns
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn in turns:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.reply})
        if user is not None:
            messages.append({"role": "user", "content": user})
        return messages

    def require_last(self, what: str) -> Turn:
        if not self.turns:
            raise ChatError(f"nothing to {what} yet: send a message first")
        return self.turns[-1]

    def pick(self, n: int) -> Sequence:
        turn = self.require_last("pick from")
        seq = turn.check_branch(n)
        turn.picked = n
        return seq

    def undo(self) -> Turn:
        self.require_last("undo")
        return self.turns.pop()


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# --- files ---------------------------------------------------------------------------------------
def model_identity(path: str | os.PathLike, *, name: str | None = None, sha256: str | None = None) -> dict:
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        size = None
    return {"file": p.name, "name": name, "size": size, "sha256": sha256}


def same_model(a: dict | None, b: dict | None) -> bool:
    """Whether two model identities name the same weights: by sha256 when both have one, else by
    file name and size."""
    if not a or not b:
        return False
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return a.get("file") == b.get("file") and a.get("size") == b.get("size")


def describe_model(identity: dict | None) -> str:
    if not identity:
        return "an unknown model"
    text = identity.get("file") or "?"
    if identity.get("sha256"):
        text += f" (sha256 {identity['sha256'][:12]}…)"
    elif identity.get("size"):
        text += f" ({identity['size']} bytes)"
    return text


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a chat file atomically (io.write_text_atomic): a crash or a full disk leaves either
    the old file or the new one, never half of one. The folder must exist (the user named it)."""
    target = Path(path).expanduser()
    folder = target.parent
    if not folder.is_dir():
        raise ChatError(f"cannot save to {path}: folder {folder} does not exist")
    return write_text_atomic(target, text)


def dump_session(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def read_session(path: str | os.PathLike) -> dict:
    """The parsed chat file, checked enough that loading it cannot half-fail."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChatError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChatError(f"cannot read {path}: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ChatError(f"{path} is not a chat file (invalid JSON: {e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ChatError(f"{path} is not an eager-local chat file")
    if doc.get("version") != VERSION:
        raise ChatError(f"{path} has chat file version {doc.get('version')}; this eager-local reads version {VERSION}")
    if not isinstance(doc.get("turns"), list):
        raise ChatError(f"{path} has no list of turns")
    return doc


def turns_from(doc: dict, *, foreign: bool) -> list[Turn]:
    try:
        return [Turn.from_dict(t, foreign=foreign) for t in doc["turns"]]
    except ChatError as e:
        raise ChatError(f"damaged chat file: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ChatError(f"damaged chat file: {type(e).__name__}: {e}") from None
