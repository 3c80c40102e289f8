"""The stopping rules of the two sampling-only rivals, as pure functions, and their defaults.

Both methods sample a prompt in waves and look only at the answers drawn so far (extracted and
grouped by eager_local/answers.py: equivalent answers count together, a sample without an answer
does not vote). Nothing here touches a model; eval/waves.py runs the waves.

- **Adaptive-Consistency** (Aggarwal et al., EMNLP 2023; reference `BetaStoppingCriteria.should_stop`
  in Pranjal2041/AdaptiveConsistency): with a and b the sizes of the two largest answer groups,
  P = ∫_{1/2}^{1} x^a (1 − x)^b dx / ∫_0^1 x^a (1 − x)^b dx, the probability under a uniform prior that
  the leading answer is the true majority; stop once P ≥ the threshold (0.95), else go on to the cap.
  For integer a, b this is P(X > 1/2) for X ~ Beta(a + 1, b + 1) = P(Binomial(a + b + 1, 1/2) ≤ a),
  a finite sum computed exactly here (the reference integrates numerically).
- **ESC** (Li et al., ICLR 2024; reference Yiwei98/ESC `early_stop_gsm8k.py`): sample windows of w;
  stop as soon as every answer of one window is the same; at most cap // w windows.

The waves. ESC's wave is its window. Adaptive-Consistency's rule is checked after every sample, but
a wave of k samples changes nothing as long as the rule cannot fire before the k-th: `ac_wave_size`
is the smallest k after which it could (all k joining the leader is the best case, since P grows
with a and falls with b), so waves give exactly the stops and #S of one-at-a-time sampling in fewer
rounds (at 0.95 the first wave is 4: P = 1 − 2^−(a+1) < 0.95 for a ≤ 3 unanimous answers).

The wave-rule interface. eval/waves.py runs any rule with these members: `engine_method` (how a
wave decodes: full parallel sampling, or an EAGer tree), `next_wave(answers)`, `decide(answers,
wave)`, `votes(record)` (the answers a wave's record adds to the prompt's), `watch(request,
earlier_waves)` (hooks the wave's request with the methods of one object, which it returns, or
None) and `merge(point, waves, stopped_by)` (the prompt's record). A watch has `annotate(record)`
(what it saw, into the wave's record) and `state()` / `restore(state)`: the hooks run where the
wave decodes, and a runner that decodes in another process (a Ray actor, cluster/worker.py) brings
the state of its copy back. WaveRule is the plain case; deepconf.DeepConfRule and
eagerconf.EagerConfRule watch tokens (deepconf.Watch) and keep confidences.

Defaults (docs/eager-method.md, "Adaptive-Consistency and ESC"): threshold 0.95 as in the paper;
the cap is the evaluation's -M (40 in both papers); ESC's window is the paper's 5 unless two windows
would not fit in M, then M // 2 (`default_window`).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Sequence

from ..answers import tally
from ..errors import ConfigError
from .records import merge_waves
from .store import AC, ESC, PARALLEL, WAVE_METHODS, Point

AC_CRITERIA = ("beta",)  # the reference's other criteria (dirichlet, entropy, majority) are not ported
DEFAULT_AC_CRITERION = "beta"
DEFAULT_AC_THRESHOLD = 0.95
ESC_PAPER_WINDOW = 5
DEFAULT_ESC_WINDOW = "auto"  # the paper's 5, or M // 2 when two windows of 5 do not fit in M


# --- Adaptive-Consistency -------------------------------------------------------------------------
def top_two(answers: Sequence[str | None]) -> tuple[int, int]:
    """Sizes of the largest and second-largest groups of equivalent answers (0 where there is none)."""
    sizes = [len(group) for group in tally(answers)] + [0, 0]
    return sizes[0], sizes[1]


def beta_probability(a: int, b: int) -> float:
    """∫_{1/2}^{1} x^a (1−x)^b dx / ∫_0^1 x^a (1−x)^b dx for counts a, b ≥ 0, exactly as
    P(Binomial(a+b+1, 1/2) ≤ a)."""
    if a < 0 or b < 0:
        raise ValueError(f"counts must be >= 0, got a={a}, b={b}")
    n = a + b + 1
    return sum(comb(n, i) for i in range(a + 1)) / 2**n


@dataclass(frozen=True)
class Decision:
    """What a rule says after the answers so far: stop or not, and the figure it decided on."""

    stop: bool
    value: float | None = None  # Adaptive-Consistency: P; ESC: None
    counts: tuple[int, int] | None = None  # Adaptive-Consistency: (a, b)


def ac_decision(answers: Sequence[str | None], threshold: float) -> Decision:
    """Adaptive-Consistency's Beta criterion on every answer drawn so far."""
    a, b = top_two(answers)
    p = beta_probability(a, b)
    return Decision(stop=p >= threshold, value=p, counts=(a, b))


def ac_wave_size(answers: Sequence[str | None], threshold: float, cap: int) -> int:
    """Samples to draw next: the fewest after which the rule could first fire, at most what is left
    of the cap (all of it when it cannot fire before the cap); 0 once the cap is reached."""
    left = cap - len(answers)
    if left <= 0:
        return 0
    a, b = top_two(answers)
    for k in range(1, left + 1):
        if beta_probability(a + k, b) >= threshold:
            return k
    return left


# --- ESC --------------------------------------------------------------------------------------------
def default_window(max_sequences: int) -> int:
    """ESC's window at cap M: the paper's 5 if at least two windows fit in M, else M // 2 (at least 1)."""
    return min(ESC_PAPER_WINDOW, max(1, max_sequences // 2))


def window_agrees(window: Sequence[str | None]) -> bool:
    """ESC's stop: every sample of the window has an answer and all are equivalent."""
    groups = tally(window)
    return bool(window) and len(groups) == 1 and len(groups[0]) == len(window)


def esc_decision(window: Sequence[str | None]) -> Decision:
    return Decision(stop=window_agrees(window))


def esc_wave_size(drawn: int, window: int, cap: int) -> int:
    """The next window's size, or 0 when another whole window would pass the cap (cap // w windows)."""
    return window if drawn + window <= cap else 0


# --- one rule, as the wave loop uses it ---------------------------------------------------------------
@dataclass(frozen=True)
class WaveRule:
    """One method's rule at one cap: how large the next wave is, and whether to stop after a wave."""

    method: str
    cap: int
    threshold: float | None = None  # Adaptive-Consistency
    window: int | None = None  # ESC
    engine_method = PARALLEL  # a wave is full parallel sampling (a class attribute, not a field)

    def next_wave(self, answers: Sequence[str | None]) -> int:
        """Size of the prompt's next wave given every answer it has so far; 0: the cap is reached."""
        if self.method == AC:
            return ac_wave_size(answers, self.threshold, self.cap)
        return esc_wave_size(len(answers), self.window, self.cap)

    def decide(self, answers: Sequence[str | None], wave: int) -> Decision:
        """After a wave of `wave` samples (the last ones of `answers`): stop or go on."""
        if self.method == AC:
            return ac_decision(answers, self.threshold)
        return esc_decision(answers[len(answers) - wave:] if wave else [])

    def votes(self, record: dict) -> list[str | None]:
        """The answers a wave adds: every sample's."""
        return [s["answer"] for s in record["sequences"]]

    def watch(self, request, earlier_waves: list[dict]) -> None:
        """Sampling-only rules look at answers, never at tokens."""
        return None

    def merge(self, point: Point, waves: list[dict], stopped_by: str) -> dict:
        return merge_waves(point, waves, stopped_by)


def make_rule(method: str, max_sequences: int, options: dict) -> WaveRule:
    """The rule of a point, from the spec's method options (see `method_options`)."""
    if method == AC:
        return WaveRule(AC, max_sequences, threshold=options[AC]["threshold"])
    window = options[ESC]["window"]
    if window == DEFAULT_ESC_WINDOW:
        window = default_window(max_sequences)
    return WaveRule(ESC, max_sequences, window=window)


def check_ac_threshold(ac_threshold: float) -> None:
    """The Beta criterion's threshold must lie strictly between 1/2 and 1."""
    if not 0.5 < ac_threshold < 1:
        raise ConfigError(f"ac-threshold must be between 0.5 and 1 (exclusive), got {ac_threshold:g}")


def method_options(methods: Sequence[str], ac_criterion: str, ac_threshold: float, esc_window,
                   max_sequences: Sequence[int]) -> dict | None:
    """The rivals' options as an evaluation pins them (None when neither method is asked for), checked:
    one clear ConfigError for a value the rule cannot use."""
    if not any(m in WAVE_METHODS for m in methods):
        return None
    if ac_criterion not in AC_CRITERIA:
        raise ConfigError(f"unknown Adaptive-Consistency criterion {ac_criterion!r}; "
                          f"choose from {', '.join(AC_CRITERIA)}")
    check_ac_threshold(ac_threshold)
    if str(esc_window).strip().lower() == DEFAULT_ESC_WINDOW:
        window = DEFAULT_ESC_WINDOW
    else:
        try:
            window = int(str(esc_window).strip())
        except ValueError:
            raise ConfigError(f"esc-window must be a whole number or 'auto', got {esc_window!r}") from None
        if ESC in methods and not 1 <= window <= min(max_sequences):
            raise ConfigError(f"esc-window must be between 1 and the smallest -M ({min(max_sequences)}), "
                              f"got {window}")
    out = {}
    if AC in methods:
        out[AC] = {"criterion": ac_criterion, "threshold": float(ac_threshold)}
    if ESC in methods:
        out[ESC] = {"window": window}
    return out
