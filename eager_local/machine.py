"""What this machine's CPU offers llama.cpp: how many threads to run, and whether llama.cpp may use
its extra weight buffer types. Read from the OS, never from llama.cpp."""

from __future__ import annotations

import os
import sys


def default_threads() -> int:
    """Physical performance cores available to this process.

    llama.cpp's worker threads spin; on small shared machines more threads than physical cores
    collapses throughput by 10-60x, so we never default to logical (SMT) cores.
    EAGER_LOCAL_THREADS overrides (e.g. 1 when several model processes share a small machine).
    """
    if os.environ.get("EAGER_LOCAL_THREADS", "").isdigit() and int(os.environ["EAGER_LOCAL_THREADS"]) > 0:
        return int(os.environ["EAGER_LOCAL_THREADS"])
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count() or 1
    physical = _physical_cores() or usable
    return max(1, min(usable, physical))


def _physical_cores() -> int | None:
    if sys.platform == "darwin":
        import subprocess

        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):  # perflevel0 = P-cores
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2)
                if out.returncode == 0 and out.stdout.strip().isdigit():
                    return int(out.stdout.strip())
            except (OSError, subprocess.SubprocessError):
                pass
        return None
    try:
        cores = set()
        physical_id = core_id = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    physical_id = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core_id = line.split(":")[1].strip()
                elif not line.strip() and core_id is not None:
                    cores.add((physical_id, core_id))
                    physical_id = core_id = None
        if core_id is not None:
            cores.add((physical_id, core_id))
        return len(cores) or None
    except OSError:
        return None


def extra_buffers_enabled() -> bool:
    """Whether llama.cpp may use its extra weight buffer types (CPU repacking, Intel AMX).

    On CPUs that report AMX, llama.cpp's AMX kernels died with SIGILL (`tilezero`) on the machine we
    test on, a VM whose CPU advertises AMX. Laptops have no AMX, so we leave those buffers off where
    AMX is reported; EAGER_LOCAL_EXTRA_BUFFERS=1 or 0 overrides.
    """
    forced = os.environ.get("EAGER_LOCAL_EXTRA_BUFFERS")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_int8" not in f.read()
    except OSError:
        return True
