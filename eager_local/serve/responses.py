"""Trees → OpenAI response objects: completions, chat completions, their stream chunks, usage,
and the `eager` object (the branches, where they forked and why, the voted answer).

One choice per sequence of the tree, its index the sequence's id (0 is the first branch, the one
a chat streams). `usage.completion_tokens` is the tree's #T: every generated token once, a prefix
that branches share counted once, since the KV cache computed it once.

With `echo` (completions), every choice's text starts with the prompt: a text prompt as it was
sent, token ids as their text. Its logprobs then list the prompt's tokens first, the first one's
log-probability and alternatives null (nothing precedes it), as OpenAI's and vLLM's do; then the
generated tokens, an end-of-generation token included: lm-evaluation-harness's `parse_logprobs`
takes the last entry for the one token it asked to generate, so leaving it out would cost the
prompt's last token. Streamed, a choice's first chunk carries the prompt (as vLLM sends it).
`text_offset` is where each token's text starts in the choice's text (a token that starts inside
a character points at that character; an end-of-generation token, at the text's end).
"""

from __future__ import annotations

import codecs
import time
import uuid

from .. import tree as T
from ..answers import extract_answer, tally
from .schema import Ask, cut_at_stop

# The engine's finish reasons in OpenAI's words: what ran out is "length" whatever the limit was
# (the eager object keeps the engine's own reason).
FINISH = {T.STOP: "stop", T.LENGTH: "length", T.BUDGET: "length", T.KV_FULL: "length", T.CANCELLED: "stop"}


class Reply:
    """What every object of one response shares: its id, creation time, model and kind."""

    def __init__(self, ask: Ask, model: str, prompt: list[int], vocab=None):
        self.ask = ask
        self.model = model
        self.vocab = vocab  # the llama Model: token texts for logprobs
        self.prompt = prompt  # the prompt's token ids
        self.prompt_tokens = len(prompt)
        self.chat = ask.kind == "chat"
        self.echo = ""  # what precedes each choice's text
        self.echo_shift = 0  # characters the prompt's detokenized text has before the echoed text
        if ask.echo:  # (the schema refuses echo on chat)
            self.echo = ask.prompt if isinstance(ask.prompt, str) else vocab.detokenize(prompt)
            if ask.logprobs is not None:
                # a text prompt's text may lack what the tokenizer added before it (a start-of-text token)
                self.echo_shift = max(0, len(vocab.detokenize(prompt)) - len(self.echo))
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    # whole responses ------------------------------------------------------------------------------
    def texts(self, tree: T.Tree) -> list[str]:
        """Each sequence's text, cut where a stop string starts."""
        return [cut_at_stop(seq.text, self.ask.stop) for seq in tree.sequences]

    def body(self, tree: T.Tree, logprobs: dict[int, list] | None = None,
             prompt_logprobs: list | None = None) -> dict:
        texts = self.texts(tree)
        choices = []
        for seq, text in zip(tree.sequences, texts):
            choice = {"index": seq.id, "finish_reason": FINISH[seq.finish_reason],
                      "logprobs": self.logprobs(logprobs, seq.id, prompt_logprobs)}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = self.echo + text
            choices.append(choice)
        out = self._object("chat.completion" if self.chat else "text_completion", choices)
        out["usage"] = self.usage(tree)
        out["eager"] = self.eager(tree, texts)
        return out

    def usage(self, tree: T.Tree) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": tree.generated_tokens,
                "total_tokens": self.prompt_tokens + tree.generated_tokens,
                # OpenAI's name for prompt tokens served from a cache (the engine's prompt cache)
                "prompt_tokens_details": {"cached_tokens": tree.cached_tokens}}

    def eager(self, tree: T.Tree, texts: list[str], *, with_texts: bool = False) -> dict:
        """The branching: settings, each branch (and its text when it is not a choice), each
        branch event, and the vote over the branches' answers (answers.py)."""
        answers = [extract_answer(text) for text in texts]
        groups = tally(answers)
        branches = []
        for seq, text, answer in zip(tree.sequences, texts, answers):
            branch = {"index": seq.id, "parent": seq.parent, "fork_at": seq.fork_at,
                      "finish_reason": seq.finish_reason, "tokens": len(seq.tokens), "answer": answer}
            if with_texts:
                branch["text"] = text
            branches.append(branch)
        settings = tree.settings
        return {
            "method": tree.method,
            "theta": settings.get("theta"),
            "max_sequences": settings.get("max_sequences"),
            "seed": settings.get("seed"),
            "sequences": len(tree.sequences),
            "branches": branches,
            "events": [{"sequence": e.parent, "child": e.child, "at": e.step, "entropy": round(e.entropy, 4),
                        "threshold": round(e.threshold, 4), "tokens": [e.top1_text, e.top2_text]}
                       for e in tree.events],
            "answer": groups[0][0] if groups else None,
            "votes": len(groups[0]) if groups else 0,
        }

    def logprobs(self, logprobs: dict[int, list] | None, index: int, prompt: list | None = None) -> dict | None:
        """A choice's logprobs in the endpoint's format (None when the request asked for none);
        with echo, the prompt's (`prompt`: the entries of its tokens after the first) come first.
        End-of-generation tokens are not part of the text and are listed only with echo."""
        if self.ask.logprobs is None or logprobs is None:
            return None
        echo = self.ask.echo
        entries = [e for e in logprobs.get(index, []) if echo or not self.vocab.is_eog(e[0])]
        if self.chat:
            return {"content": [dict(self._token(token, logprob), top_logprobs=[self._token(t, lp) for t, lp in top])
                                for token, logprob, top in entries], "refusal": None}
        offsets = [len(self.echo) + at for at in _offsets(self.vocab, [t for t, _, _ in entries])]
        if echo:
            head = [(self.prompt[0], None, None)] + list(prompt or [])
            in_prompt = _offsets(self.vocab, [t for t, _, _ in head], skip_eog=False)
            offsets = [max(0, at - self.echo_shift) for at in in_prompt] + offsets
            entries = head + entries
        return {"tokens": [self._text(token) for token, _, _ in entries],
                "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [None if top is None else {self._text(t): lp for t, lp in top}
                                 for _, _, top in entries],
                "text_offset": offsets}

    def _text(self, token: int) -> str:
        return self.vocab.piece(token).decode("utf-8", "replace")

    def _token(self, token: int, logprob: float) -> dict:
        return {"token": self._text(token), "logprob": logprob, "bytes": list(self.vocab.piece(token))}

    # streaming ------------------------------------------------------------------------------------
    def chunk(self, index: int, text: str | None = None, *, finish: str | None = None, first: bool = False,
              logprobs: dict | None = None) -> dict:
        """One stream chunk for one choice: new text, or (finish) its finish reason and, when asked
        for, the choice's logprobs, all at once."""
        if self.chat:
            delta: dict = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return self._object("chat.completion.chunk", [choice])
        if first:  # with echo, a choice's text starts with the prompt
            text = self.echo + (text or "")
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return self._object("text_completion", [choice])

    def usage_chunk(self, tree: T.Tree) -> dict:
        out = self._object("chat.completion.chunk" if self.chat else "text_completion", [])
        out["usage"] = self.usage(tree)
        return out


def _offsets(vocab, tokens: list[int], *, skip_eog: bool = True) -> list[int]:
    """Where each token's text starts in the text of them all, in characters: a token that starts
    inside a character (its bytes split over tokens) points at that character. End-of-generation
    tokens add nothing to a generated text (`skip_eog`); a prompt's text shows them."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    offsets, chars = [], 0
    for token in tokens:
        offsets.append(chars)
        if not (skip_eog and vocab.is_eog(token)):
            chars += len(decoder.decode(vocab.piece(token)))
    return offsets
