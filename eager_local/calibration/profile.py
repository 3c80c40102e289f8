"""Calibration profiles: what a calibration was made for (its key), what it found, where it is kept.

A *profile* is one JSON file per model, `home_dir()/profiles/<model-sha256[:16]>.json`, holding
one *entry* (a `Calibration`) per key. The key is everything the recorded entropies depend on:

- the model file (its sha256),
- the generation options marked `entropy=True` in config.py (`config.entropy_settings`: K,
  temperature and sampling, tempered entropy, max_new_tokens) — a new such option joins the key
  without a change here,
- the prompt format (text template, chat template, system message: `PromptFormat.key`),
- the task (the dataset family the prompts came from),
- the profile format version.

An entry is used only when its key matches exactly: any other setting means other entropies, so a
lookup misses and calibration runs again. The key's id is a hash of its fields as one flat JSON
object, so entries written by earlier versions with the same settings are found again.

An entry keeps its raw traces (everything else can be recomputed from them) and every real check
run, keyed by (target, M, W). Writes are atomic (io.write_json_atomic) and serialised by a lock
file, so two processes calibrating at once do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import models
from ..config import GenerationConfig, entropy_settings
from ..io import write_json_atomic
from .estimator import DEFAULT_WINDOW, default_targets, estimate_sequences, quantiles, theta_for_target

try:
    import fcntl
except ImportError:  # Windows has no advisory locks: writes stay atomic, concurrent ones may race
    fcntl = None

PROFILE_VERSION = 1
PROFILE_FORMAT = "eager_local.calibration"
QUANTILE_LEVELS = (50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9)
RAW_TEMPLATE = "{problem}"  # the prompt as typed (run, chat)


def short_sha(text: str, n: int = 16) -> str:
    """The first n hex digits of the text's sha256: ids of keys, formats and prompt sets."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True)
class PromptFormat:
    """How a problem becomes tokens: the text template around it, the chat template, the system message."""

    chat: bool = True
    system: str | None = None
    template: str = RAW_TEMPLATE  # with {problem}; eval's default asks for \\boxed{}

    def render(self, problem: str) -> str:
        return self.template.replace("{problem}", problem)

    def tokens(self, llm, problems: Sequence[str]) -> list[list[int]]:
        """Each problem's prompt tokens, rendered and templated as the run will."""
        return [llm.prompt_tokens(self.render(p), chat=self.chat, system=self.system) for p in problems]

    def key(self, chat_template: str | None) -> str:
        """`chat:<hash>` or `raw:<hash>` over everything that changes the tokens."""
        payload = json.dumps(
            {"chat_template": chat_template if self.chat else None, "system": self.system if self.chat else None,
             "template": self.template},
            sort_keys=True,
        )
        return f"{'chat' if self.chat else 'raw'}:{short_sha(payload, 12)}"


@dataclass(frozen=True)
class CalibrationKey:
    """Everything the recorded entropies depend on. A profile entry is used only on an exact match.

    `settings` are the generation options with `entropy=True` (config.entropy_settings), as sorted
    (name, value) pairs so the key stays hashable and order-free.
    """

    model_sha256: str
    prompt_format: str  # PromptFormat.key()
    task: str  # dataset family the prompts came from ("gsm8k", "arith", "file:<path>", "default")
    settings: tuple[tuple[str, Any], ...]
    version: int = PROFILE_VERSION

    @classmethod
    def of(cls, model_sha256: str, config: GenerationConfig, prompt_format: str, task: str) -> "CalibrationKey":
        return cls(model_sha256=model_sha256, prompt_format=prompt_format, task=task,
                   settings=tuple(sorted(entropy_settings(config).items())))

    def setting(self, name: str) -> Any:
        """One generation option of the key (`top_k_entropy`, `temperature`, `max_new_tokens`, ...)."""
        return dict(self.settings)[name]

    def to_dict(self) -> dict:
        """One flat object: the identity fields and the settings side by side (the stored form)."""
        return {"model_sha256": self.model_sha256, "prompt_format": self.prompt_format, "task": self.task,
                **dict(self.settings), "version": self.version}

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationKey":
        fixed = ("model_sha256", "prompt_format", "task", "version")
        return cls(model_sha256=data["model_sha256"], prompt_format=data["prompt_format"], task=data["task"],
                   settings=tuple(sorted((k, v) for k, v in data.items() if k not in fixed)),
                   version=data["version"])

    def id(self) -> str:
        return short_sha(json.dumps(self.to_dict(), sort_keys=True), 16)


def model_sha256(llm) -> str:
    """The sha256 of the loaded model's file (cached next to it: models.model_sha256)."""
    return models.model_sha256(llm.resolved.path, llm.resolved.sha256)


def make_key(llm, config: GenerationConfig, fmt: PromptFormat, task: str) -> CalibrationKey:
    """The key of a calibration of this model, with these generation options, prompt format and task."""
    chat_template = llm.model.chat_template() if fmt.chat else None
    return CalibrationKey.of(model_sha256(llm), config, fmt.key(chat_template), task)


# --- one entry -------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """One profile entry: the traces recorded for a key, and the real runs that checked θ on them."""

    key: CalibrationKey
    traces: list[list[list[float]]]  # per prompt, per sample: the entropy at every step (NaN: not computed)
    source: dict  # what was decoded: dataset/prompts, ids, samples, seeds per check
    created: str = ""
    timing: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)  # real runs: target, M, W, θ, predicted, achieved

    @property
    def top_k_entropy(self) -> int:
        return self.key.setting("top_k_entropy")

    def entropies(self) -> list[float]:
        return [h for prompt in self.traces for trace in prompt for h in trace if not math.isnan(h)]

    def quantile_table(self, levels: Sequence[float] = QUANTILE_LEVELS) -> dict[str, float]:
        return {f"q{p:g}": round(v, 4) for p, v in zip(levels, quantiles(self.entropies(), levels))}

    def quantile(self, level: float) -> float:
        return quantiles(self.entropies(), [level])[0]

    def estimate(self, theta: float, max_sequences: int, branch_window: int = DEFAULT_WINDOW) -> float:
        return estimate_sequences(self.traces, theta, max_sequences, branch_window=branch_window)

    def target_table(self, max_sequences: int, branch_window: int = DEFAULT_WINDOW,
                     targets: Sequence[int] | None = None) -> list[dict]:
        """θ and its estimate for each target (default 2, 4, 8, … M), from the traces alone."""
        rows = []
        for s in targets or default_targets(max_sequences):
            theta, predicted = theta_for_target(self.traces, s, max_sequences, top_k_entropy=self.top_k_entropy,
                                                branch_window=branch_window)
            rows.append({"target": s, "theta": round(theta, 4), "predicted": round(predicted, 3)})
        return rows

    def measured_points(self, max_sequences: int, branch_window: int = DEFAULT_WINDOW) -> list[tuple[float, float]]:
        """(θ, achieved mean #S) of every real run on the calibration prompts at this M and W."""
        return [(r["theta"], r["achieved"]) for c in self.checks
                if c["max_sequences"] == max_sequences and c["branch_window"] == branch_window
                for r in c.get("runs", [])]

    def find_check(self, target: float, max_sequences: int, branch_window: int = DEFAULT_WINDOW) -> dict | None:
        for c in self.checks:
            if c["target"] == target and c["max_sequences"] == max_sequences and c["branch_window"] == branch_window:
                return c
        return None

    def theta_for(self, target: float, max_sequences: int, branch_window: int = DEFAULT_WINDOW) -> tuple[float, dict]:
        """The θ to use for a target: the checked (refined) one if there is a check, else the estimate."""
        check = self.find_check(target, max_sequences, branch_window)
        if check:
            return check["theta"], check
        theta, predicted = theta_for_target(self.traces, target, max_sequences, top_k_entropy=self.top_k_entropy,
                                            branch_window=branch_window)
        return theta, {"target": target, "theta": round(theta, 4), "predicted": round(predicted, 3), "checked": False}

    def to_dict(self) -> dict:
        return {
            "key": self.key.to_dict(),
            "created": self.created,
            "source": self.source,
            "timing": self.timing,
            "quantiles": self.quantile_table(),
            "checks": self.checks,
            # 4 decimals of a nat is far below any θ that matters; keeps the file small.
            "traces": [[[None if math.isnan(h) else round(h, 4) for h in t] for t in p] for p in self.traces],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(
            key=CalibrationKey.from_dict(data["key"]),
            traces=[[[math.nan if h is None else float(h) for h in t] for t in p] for p in data["traces"]],
            source=data.get("source", {}),
            created=data.get("created", ""),
            timing=data.get("timing", {}),
            checks=list(data.get("checks", [])),
        )


# --- the profile file --------------------------------------------------------------------------------
def profile_path(model_sha256: str) -> Path:
    return models.home_dir() / "profiles" / f"{model_sha256[:16]}.json"


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on `<path>.lock` (the profile itself is replaced, so it cannot hold one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except OSError:  # a filesystem without locks (some network mounts): writes stay atomic
                pass
        yield


def _read_profile(path: Path, model_sha256: str) -> dict:
    """The profile document, or a fresh one when it is missing, unreadable, stale or another model's."""
    fresh = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "model_sha256": model_sha256, "entries": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or not JSON: a cache, rebuilt on the next save
        return fresh
    if (not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT or doc.get("version") != PROFILE_VERSION
            or doc.get("model_sha256") != model_sha256 or not isinstance(doc.get("entries"), dict)):
        return fresh  # stale format or another model: never used, replaced on the next save
    return doc


def load_entry(key: CalibrationKey) -> Calibration | None:
    """The profile entry for exactly this key, or None (missing, stale or mismatched)."""
    doc = _read_profile(profile_path(key.model_sha256), key.model_sha256)
    data = doc["entries"].get(key.id())
    if not data:
        return None
    try:
        entry = Calibration.from_dict(data)
    except (KeyError, TypeError, ValueError):  # a hand-edited entry: calibrate again rather than trust it
        return None
    if entry.key != key:  # an id collision or a hand-edited file: do not trust it
        return None
    return entry


def save_entry(entry: Calibration) -> Path:
    """Add or replace the entry in its model's profile file; returns the file's path."""
    path = profile_path(entry.key.model_sha256)
    with _locked(path):
        doc = _read_profile(path, entry.key.model_sha256)
        doc["entries"][entry.key.id()] = entry.to_dict()
        write_json_atomic(path, doc, separators=(",", ":"))
    return path
