"""DeepConf-online (Fu et al., arXiv 2508.15260) as a wave method of an evaluation.

A prompt gets two waves (eval/waves.py runs them, batched across prompts like every wave method):

1. warm-up: N_init samples (streams 0 … N_init − 1, parallel sampling's first samples), each
   token's confidence recorded (confidence.py);
2. final: the other M − N_init samples (streams N_init … M − 1), watched token by token: a sample
   ends (finish reason `low_confidence`) at the first token where the mean confidence of its last
   w tokens falls below the prompt's threshold s, a percentile of the warm-up samples' lowest group
   confidences. The check starts once the window is full (the reference's `ConfPerReqLogitsProcessor`
   tests `len(conf_group_list) >= conf_group_size`), and the token that crossed it is kept: the
   reference forces the end-of-sequence token at that step instead, so both spend one token there.

Every sample's tokens count in #T (a stopped sample's tokens were spent). The per-token
confidences live in the wave journal (`<point>.waves.jsonl`); the merged per-prompt record keeps
each sample's lowest group confidence (`min_conf`) and the prompt's threshold, which is all the
confidence-weighted vote (confidence.weighted_majority, the report's cons@k) needs.

Defaults (docs/eager-method.md, "DeepConf"): the paper's N_init = 16 of a budget of 256 and window
2048 over generations of up to 64k tokens, scaled to an evaluation's -M and -n (`default_warmup`,
`default_window`); k = 20 and the percentiles (DeepConf-low keeps the top 10 %, DeepConf-high the
top 90 %) as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from ..tree import LOW_CONFIDENCE
from . import confidence as C
from .records import merge_waves
from .stopping import Decision
from .store import DEEPCONF_METHODS, PARALLEL, Point

PAPER_WARMUP = 16  # N_init of the paper (of a budget of 256 traces)
PAPER_WINDOW = 2048  # the paper's window (traces of up to 64k tokens)
DEFAULT_WARMUP = "auto"  # the paper's 16, at most half of M (at least 1)
DEFAULT_WINDOW = "auto"  # the paper's 2048, at most an eighth of -n (at least 1)


def default_warmup(max_sequences: int) -> int:
    """N_init at cap M: the paper's 16 when M ≥ 32, else M // 2, so that at least half of the
    budget is left to the watched wave (at least 1)."""
    return max(1, min(PAPER_WARMUP, max_sequences // 2))


def default_window(max_new_tokens: int) -> int:
    """w for generations of at most `max_new_tokens`: the paper's 2048 from -n 16384 on, else -n // 8,
    so a window fills within the first eighth of the longest trace and the check runs over the rest."""
    return max(1, min(PAPER_WINDOW, max_new_tokens // 8))


@dataclass(frozen=True)
class DeepConfRule:
    """One DeepConf point's rule (the wave-rule interface of stopping.WaveRule, plus `watch` and `merge`)."""

    method: str
    cap: int
    warmup: int
    window: int
    keep_percent: int
    top_k: int = C.TOP_K
    engine_method = PARALLEL  # both waves are full parallel sampling (a class attribute, not a field)

    def next_wave(self, answers: Sequence[str | None]) -> int:
        """The warm-up wave first, then the rest of M in one watched wave, then nothing."""
        if not answers:
            return min(self.warmup, self.cap)
        return max(self.cap - len(answers), 0)

    def decide(self, answers: Sequence[str | None], wave: int) -> Decision:
        """DeepConf never stops a prompt on its answers: its stop is per sample (`watch`)."""
        return Decision(stop=False)

    def votes(self, record: dict) -> list[str | None]:
        """The answers a wave adds: every sample's (the rule never stops on them)."""
        return [s["answer"] for s in record["sequences"]]

    def threshold(self, warmup_record: dict) -> float | None:
        """s from the warm-up wave's record (its samples' lowest group confidences)."""
        return C.threshold([s["min_conf"] for s in warmup_record["sequences"]], self.method)

    def watch(self, request, earlier_waves: list[dict]) -> "Watch":
        """Hook a wave's request: record every token's confidence; in the final wave (after the
        warm-up, `earlier_waves` holds its record) end a sample when its window mean falls below s."""
        limit = self.threshold(earlier_waves[0]) if earlier_waves else None
        watch = Watch(self.window, limit, self.top_k)
        request.top_logprobs = self.top_k
        request.on_logprobs = watch.on_logprobs
        request.on_token = watch.on_token
        return watch

    def merge(self, point: Point, waves: list[dict], stopped_by: str) -> dict:
        """A prompt's record: its waves merged (records.merge_waves) without the per-token
        confidences (they stay in the journal), with the threshold and how many samples voted."""
        record = merge_waves(point, waves, stopped_by)
        record["sequences"] = [{k: v for k, v in s.items() if k != "confidences"} for s in record["sequences"]]
        warmup = next((w for w in waves if w["round"] == 1), None)
        limit = self.threshold(warmup) if warmup else None
        lowest = [s["min_conf"] for s in record["sequences"]]
        record["threshold"] = limit
        record["deepconf"] = {
            "warmup": self.warmup, "window": self.window, "keep_percent": self.keep_percent, "top_k": self.top_k,
            "stopped": sum(s["finish_reason"] == LOW_CONFIDENCE for s in record["sequences"]),
            "voters": sum(w is not None and s["answer"] is not None
                          for w, s in zip(C.vote_weights(lowest, limit), record["sequences"])),
        }
        return record


class Watch:
    """One wave request's confidences, per sequence, and (with a threshold) its early stops.

    Each token costs one mean over its top-k log-probabilities and an integer update of its
    sequence's window sum. A sequence forked from another (an EAGer tree) is judged on its whole
    text: its confidences start as its parent's over the shared prefix, so its window spans the
    fork. (At the fork both have the same confidence: it depends on the distribution, not on the
    token drawn from it.)

    The watch runs where the wave decodes: its methods are the request's hooks, so a request sent
    to a Ray actor carries a copy of it, the copy watches and stops the sequences there, and its
    `state()` comes back with the tree, for the driver's watch to `restore` and `annotate` from."""

    def __init__(self, window: int, threshold: float | None, top_k: int = C.TOP_K):
        self.window = window
        self.limit = threshold
        self.top_k = top_k
        self.confs: dict[int, list[int]] = {}  # sequence id -> confidences in thousandths
        self._sums: dict[int, int] = {}
        self._low: set[int] = set()

    def on_logprobs(self, seq, token: int, logprob: float, top: list) -> None:
        confs = self.confs.get(seq.id)
        if confs is None:  # a new sequence: a root, or a fork that shares its parent's first tokens
            confs = self.confs[seq.id] = self.confs[seq.parent][:seq.fork_at] if seq.parent is not None else []
            self._sums[seq.id] = sum(confs[-self.window:])
        confs.append(C.token_confidence_milli([lp for _, lp in top]))
        if self.limit is None:
            return
        total = self._sums[seq.id] + confs[-1]
        if len(confs) > self.window:
            total -= confs[-1 - self.window]
        self._sums[seq.id] = total
        if len(confs) >= self.window and C.window_mean(total, self.window) < self.limit:
            self._low.add(seq.id)

    def on_token(self, tree, seq, token: int) -> str | None:
        return LOW_CONFIDENCE if seq.id in self._low else None

    def state(self) -> dict[int, list[int]]:
        """What `annotate` reads of the watched tokens: each sequence's confidences, in thousandths."""
        return self.confs

    def restore(self, state: dict[int, list[int]]) -> None:
        """Take the `state()` of this watch's copy that watched the tokens in another process."""
        self.confs = state

    def annotate(self, record: dict) -> None:
        """Add to a wave's record its threshold and each sequence's confidences (its own tokens',
        after the prefix it shares with its parent) and lowest group confidence (over its whole text)."""
        record["threshold"] = self.limit
        for s in record["sequences"]:
            confs = self.confs.get(s["id"], [])
            if len(confs) != s["tokens"]:  # the runner neither called on_logprobs nor restored their state
                raise ConfigError(f"{record['method']}: no per-token confidences came back for prompt "
                                  f"{record['id']!r}; the runner must call the request's hooks or return "
                                  "their state with the tree")
            s["confidences"] = [c / 1000 for c in confs[s["fork_at"]:]]
            s["min_conf"] = C.lowest_group_confidence(confs, self.window)


def make_deepconf_rule(method: str, max_sequences: int, options: dict, max_new_tokens: int) -> DeepConfRule:
    """The rule of a DeepConf point, from the spec's method options (see `method_options`)."""
    how = options[method]
    warmup = default_warmup(max_sequences) if how["warmup"] == DEFAULT_WARMUP else how["warmup"]
    window = default_window(max_new_tokens) if how["window"] == DEFAULT_WINDOW else how["window"]
    return DeepConfRule(method, max_sequences, warmup=min(warmup, max_sequences), window=window,
                        keep_percent=how["keep_percent"], top_k=how["top_k"])


def method_options(methods: Sequence[str], warmup, window, max_sequences: Sequence[int], max_new_tokens: int) -> dict:
    """DeepConf's options as an evaluation pins them ({} when no DeepConf method is asked for),
    checked: one clear ConfigError for a value it cannot use."""
    asked = [m for m in methods if m in DEEPCONF_METHODS]
    if not asked:
        return {}
    warmup, window = warmup_and_window(warmup, window, max_sequences, max_new_tokens)
    return {m: {"warmup": warmup, "window": window, "keep_percent": C.KEEP_PERCENT[m], "top_k": C.TOP_K}
            for m in asked}


def warmup_and_window(warmup, window, max_sequences: Sequence[int], max_new_tokens: int) -> tuple:
    """--deepconf-warmup and --deepconf-window checked ('auto' or a whole number in range)."""
    warmup = _whole_or_auto("deepconf-warmup", warmup, DEFAULT_WARMUP)
    if warmup != DEFAULT_WARMUP and not 1 <= warmup <= min(max_sequences):
        raise ConfigError(f"deepconf-warmup must be between 1 and the smallest -M ({min(max_sequences)}), "
                          f"got {warmup}")
    window = _whole_or_auto("deepconf-window", window, DEFAULT_WINDOW)
    if window != DEFAULT_WINDOW and not 1 <= window <= max_new_tokens:  # a longer window never fills
        raise ConfigError(f"deepconf-window must be between 1 and max-new-tokens ({max_new_tokens}), got {window}")
    return warmup, window


def _whole_or_auto(name: str, value, auto: str):
    text = str(value).strip().lower()
    if text == auto:
        return auto
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number or '{auto}', got {value!r}") from None


def describe(method: str, options: dict, max_sequences: int, max_new_tokens: int) -> str:
    """One line for the report: N_init, w and which percentile s is."""
    rule = make_deepconf_rule(method, max_sequences, options, max_new_tokens)
    how = options[method]
    warm = f"{rule.warmup}" + (" (auto)" if how["warmup"] == DEFAULT_WARMUP else "")
    win = f"{rule.window}" + (" (auto)" if how["window"] == DEFAULT_WINDOW else "")
    return (f"warm-up {warm} of {max_sequences}, window {win}, top-{rule.top_k} confidence, s = "
            f"p{C.percentile_for(method):g} of the warm-up's lowest group confidences (keeps the top "
            f"{rule.keep_percent} %)")
