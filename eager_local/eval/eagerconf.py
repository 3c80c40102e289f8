"""eager-conf: EAGer's forks, DeepConf's pruning and Adaptive-Consistency's stop, in one method.

Each of the three spends a sample budget differently: EAGer forks a sequence where the model is
unsure (prefixes shared, so a branch costs only its new tokens); DeepConf ends a trace whose
confidence collapses; Adaptive-Consistency stops drawing once the answers agree. On their own,
EAGer's single root never gets a second, independent try when its first text is confidently
wrong (docs/results.md §6), DeepConf pays for every trace from the prompt on, and
Adaptive-Consistency rarely stops where the model is often wrong. eager-conf runs EAGer trees
in waves (eval/waves.py batches them across prompts):

1. warm-up: an EAGer tree of cap N_init (DeepConf's warm-up size, at least Adaptive-Consistency's
   first wave), each token's confidence recorded; its sequences' lowest group confidences set the
   prompt's threshold s (the 90th percentile: DeepConf-low's, which saved tokens at no loss where
   DeepConf-high saved little, docs/results.md §7);
2. then, until the cap M or the stop: an EAGer tree from a new root (a new random stream) of cap =
   the fewest sequences after which Adaptive-Consistency's rule could fire, every sequence watched
   and ended (`low_confidence`) at the first full window whose mean confidence falls below s; a
   fork is judged on its whole text, prefix included (deepconf.Watch);
3. after each wave, stop the prompt when the Beta criterion says the leading answer of the
   sequences that were not pruned is the majority with probability ≥ the AC threshold.

The vote (cons@k) is DeepConf's: weighted by each sequence's lowest group confidence, over the
sequences at or above s. Sequences are numbered across waves like every wave method's: a wave whose
first sequence is the prompt's k-th draws it from random stream k, as parallel sampling's sample k
is drawn, so the waves' roots sample from independent random streams (a root still keeps the
top-1 token wherever its tree branches, as in every EAGer tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..tree import LOW_CONFIDENCE
from . import confidence as C
from .deepconf import (DEFAULT_WARMUP, DEFAULT_WINDOW, DeepConfRule, Watch, default_warmup, default_window,
                       warmup_and_window)
from .stopping import Decision, ac_decision, ac_wave_size, check_ac_threshold
from .store import DC_LOW, ECONF, INIT, Point

PRUNE_LIKE = DC_LOW  # whose percentile sets the threshold: DeepConf-low's (keep the top 10 %)


@dataclass(frozen=True)
class EagerConfRule:
    """One eager-conf point's rule (the wave-rule interface of stopping.py)."""

    method: str
    cap: int
    theta: float
    warmup: int
    window: int
    ac_threshold: float
    keep_percent: int = C.KEEP_PERCENT[PRUNE_LIKE]
    top_k: int = C.TOP_K
    engine_method = INIT  # every wave is an EAGer tree (a class attribute, not a field)

    def next_wave(self, answers: Sequence[str | None]) -> int:
        """The warm-up tree's cap first; then the fewest sequences after which the AC rule could
        fire, within what is left of M; 0 at the cap."""
        if not answers:
            return min(self.warmup, self.cap)
        return ac_wave_size(answers, self.ac_threshold, self.cap)

    def decide(self, answers: Sequence[str | None], wave: int) -> Decision:
        """Adaptive-Consistency's Beta criterion over every vote so far (pruned sequences have none)."""
        return ac_decision(answers, self.ac_threshold)

    def votes(self, record: dict) -> list[str | None]:
        """A wave's answers, None for a pruned sequence: a trace DeepConf ends does not vote."""
        return [None if s["finish_reason"] == LOW_CONFIDENCE else s["answer"] for s in record["sequences"]]

    def threshold(self, warmup_record: dict) -> float | None:
        """s from the warm-up tree's record (its sequences' lowest group confidences)."""
        return self._as_deepconf().threshold(warmup_record)

    def watch(self, request, earlier_waves: list[dict]) -> Watch:
        """Record every token's confidence; after the warm-up, prune below the warm-up's threshold."""
        return self._as_deepconf().watch(request, earlier_waves)

    def merge(self, point: Point, waves: list[dict], stopped_by: str) -> dict:
        """The prompt's record: the waves' trees merged, with the threshold and the pruning counts."""
        record = self._as_deepconf().merge(point, waves, stopped_by)
        record["eager_conf"] = {**record.pop("deepconf"), "theta": self.theta, "ac_threshold": self.ac_threshold}
        return record

    def _as_deepconf(self) -> DeepConfRule:
        """The DeepConf rule with eager-conf's window and percentile: its watch, threshold and merge."""
        return DeepConfRule(PRUNE_LIKE, self.cap, warmup=self.warmup, window=self.window,
                            keep_percent=self.keep_percent, top_k=self.top_k)


def make_rule(point: Point, options: dict, max_new_tokens: int) -> EagerConfRule:
    """The rule of an eager-conf point, from the spec's method options (deepconf.method_options
    pins the warm-up and window, stopping.method_options the AC threshold)."""
    how = options[point.method]
    cap = point.max_sequences
    warmup = default_warmup(cap) if how["warmup"] == DEFAULT_WARMUP else how["warmup"]
    first_ac_wave = ac_wave_size([], how["ac_threshold"], cap)  # before it the Beta rule cannot fire
    window = default_window(max_new_tokens) if how["window"] == DEFAULT_WINDOW else how["window"]
    return EagerConfRule(point.method, cap, point.theta, warmup=min(max(warmup, first_ac_wave), cap),
                         window=window, ac_threshold=how["ac_threshold"])


def method_options(methods: Sequence[str], warmup, window, ac_threshold: float, max_sequences: Sequence[int],
                   max_new_tokens: int) -> dict:
    """eager-conf's options as an evaluation pins them ({} when it is not asked for): the warm-up
    and window of --deepconf-warmup/--deepconf-window, the stop of --ac-threshold; checked."""
    if ECONF not in methods:
        return {}
    warmup, window = warmup_and_window(warmup, window, max_sequences, max_new_tokens)
    check_ac_threshold(ac_threshold)
    return {ECONF: {"warmup": warmup, "window": window, "ac_threshold": float(ac_threshold)}}


def describe(point: Point, options: dict, max_new_tokens: int) -> str:
    """One line for the report."""
    rule = make_rule(point, options, max_new_tokens)
    return (f"EAGer trees in waves: warm-up cap {rule.warmup} of {rule.cap}, prune below p"
            f"{100 - rule.keep_percent} of the warm-up's lowest group confidences (window {rule.window}), "
            f"stop at AC P ≥ {rule.ac_threshold:g}")
