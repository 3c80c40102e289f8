"""One session of work on a run directory: opening (or resuming) it, recording who ran it on what,
and the per-point stats sidecar (wall time and memory, summed over the sessions that worked on it).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io import write_json_atomic
from . import store
from .datasets import Problem
from .spec import EvalSpec
from .store import Point, ResultsError


def open_run_dir(out: Path, spec: EvalSpec, problems: list[Problem], info: dict,
                 calibration: list[dict] | None = None) -> dict:
    """Create the run directory and manifest, or check that an existing one holds the same run.

    A different run in the same directory is refused (ResultsError, one line). `info` (model path,
    versions, machine) is recorded per session and never compared; `calibration` (how each
    calibrated θ was found) is kept for the report.
    """
    params = spec.params()
    ids = [p.id for p in problems]
    manifest_path = out / store.MANIFEST
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} exists and is not a directory")
    if manifest_path.exists():
        manifest = store.load_manifest(out)
        differences = store.param_differences(manifest["params"], params)
        if manifest.get("problems") != ids and "selection" not in {d.split(".")[0] for d in differences}:
            differences.append("problems (the dataset's content changed)")
        if differences:
            raise ResultsError(
                f"{out} holds a run with different parameters ({', '.join(differences[:4])}"
                f"{' …' if len(differences) > 4 else ''}): rerun with the same ones to resume, or use another --out"
            )
        manifest.setdefault("sessions", []).append(info)
    else:
        if out.exists() and any(out.iterdir()):
            raise ResultsError(f"--out {out} is a non-empty directory that is not an eager-local run")
        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": store.FORMAT_VERSION,
            "created": info["started"],
            "params": params,
            "seed": spec.generation.get("seed"),
            "model": info["model"],
            "versions": info["versions"],
            "machine": info["machine"],
            "problems": ids,
            "sessions": [info],
        }
    if calibration:
        manifest["theta_calibration"] = calibration
    write_json_atomic(manifest_path, manifest, indent=1)
    return manifest


def session_info(model_path: Path, model_name: str | None, sha256: str, threads: int | None) -> dict:
    """When, with what command, model, library versions and machine this session runs."""
    from importlib import metadata

    from ..machine import default_threads

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS or Windows
        affinity = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "model": {
            "path": str(model_path),
            "name": model_name,
            "sha256": sha256,
            "size": model_path.stat().st_size,
        },
        "versions": {
            "eager-local": version("eager-local"),
            "llama-cpp-python": version("llama_cpp_python"),
            "numpy": version("numpy"),
            "math-verify": version("math-verify"),
            "python": platform.python_version(),
        },
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "usable_cpus": affinity,
            "threads": threads or default_threads(),
        },
    }


# --- memory ----------------------------------------------------------------------------------------
def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (getrusage), in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_mb() -> float | None:
    """Resident memory now (Linux /proc), in MiB; None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * _PAGE / (1024 * 1024), 1)
    except (OSError, ValueError, IndexError):
        return None


# --- a point's stats sidecar -----------------------------------------------------------------------
@dataclass
class PointStats:
    """The stats sidecar of a point: accumulated over the sessions that worked on it.

    The process's peak memory covers everything it did (the model included); the sampled peak is
    the highest resident memory seen at this point's saves.
    """

    path: Path
    doc: dict = field(default_factory=dict)
    session_start: float = 0.0
    base_wall: float = 0.0
    sampled_peak: float | None = None

    @classmethod
    def open(cls, path: Path, point: Point) -> "PointStats":
        doc = store.read_json(path) or {"point": point.name, "wall_time": 0.0, "sessions": 0}
        doc["sessions"] = doc.get("sessions", 0) + 1
        doc["complete"] = False
        stats = cls(path=path, doc=doc, session_start=time.perf_counter(), base_wall=doc.get("wall_time", 0.0))
        stats.sampled_peak = doc.get("peak_rss_sampled_mb")
        return stats

    def sample_memory(self) -> None:
        rss = current_rss_mb()
        if rss is not None and (self.sampled_peak is None or rss > self.sampled_peak):
            self.sampled_peak = rss

    def save(self, complete: bool = False, **extra) -> None:
        self.sample_memory()
        self.doc["wall_time"] = round(self.base_wall + time.perf_counter() - self.session_start, 3)
        peak = peak_rss_mb()
        self.doc["peak_rss_mb"] = max(filter(None, [peak, self.doc.get("peak_rss_mb")]), default=None)
        self.doc["peak_rss_sampled_mb"] = self.sampled_peak
        self.doc["complete"] = complete
        self.doc.update(extra)
        write_json_atomic(self.path, self.doc, sync=False, indent=1)
