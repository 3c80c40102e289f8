"""A run directory on disk: manifest, one JSONL of records per point, a stats sidecar per point.

    runs/NAME/manifest.json                  parameters, model + sha256, versions, machine, problem ids
    runs/NAME/parallel_M8.jsonl              one record per prompt
    runs/NAME/eager-init_theta2.4_M8.jsonl   one record per prompt
    runs/NAME/eager-adapt_theta2.4_M8.extra.jsonl   journal: one record per extra EAGer-init run
    runs/NAME/eager-adapt_theta2.4_M8.jsonl  one record per prompt (init + extra runs merged)
    runs/NAME/esc_M8.waves.jsonl             journal: one record per wave (adaptive-consistency, esc)
    runs/NAME/esc_M8.jsonl                   one record per prompt (its waves merged)
    runs/NAME/deepconf-low_M8.waves.jsonl    journal: warm-up and final wave, with per-token confidences
    runs/NAME/eager-conf_theta2.4_M8.waves.jsonl   journal: EAGer trees in waves, with per-token confidences
    runs/NAME/<point>.stats.json             wall time, peak memory, completeness

Records are appended, flushed and fsync'ed one by one; a torn last line (a crash mid-write) is
dropped on the next read-for-append. Pure Python: the report reads run dirs without llama.cpp.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskFullError, EagerError
from ..io import disk_full_is_an_error, write_all, write_text_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PARALLEL, INIT, ADAPT, FULL = "parallel", "eager-init", "eager-adapt", "eager"
AC, ESC = "adaptive-consistency", "esc"  # the rivals that sample in waves (stopping.py)
DC_LOW, DC_HIGH = "deepconf-low", "deepconf-high"  # DeepConf-online: a warm-up wave, then a watched one (deepconf.py)
DEEPCONF_METHODS = (DC_LOW, DC_HIGH)
ECONF = "eager-conf"  # EAGer trees in waves, pruned by confidence, stopped by agreement (eagerconf.py)
EVAL_METHODS = (PARALLEL, INIT, ADAPT, FULL, AC, ESC, DC_LOW, DC_HIGH, ECONF)
DEFAULT_EVAL_METHODS = (PARALLEL, INIT, ADAPT, FULL)  # the paper's four; the rivals are asked for by name
WAVE_METHODS = (AC, ESC, DC_LOW, DC_HIGH)  # no θ: their point is (method, M)
CONFIDENCE_METHODS = (DC_LOW, DC_HIGH, ECONF)  # cons@k is their confidence-weighted vote (confidence.py)


class ResultsError(EagerError):
    """A run directory or results file that cannot be used; the message is one line."""


def fmt_number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Point:
    """One (method, θ, M) of an evaluation. Full parallel sampling and the wave methods have no θ."""

    method: str
    theta: float | None
    max_sequences: int

    @property
    def name(self) -> str:
        if self.theta is None:
            return f"{self.method}_M{self.max_sequences}"
        return f"{self.method}_theta{fmt_number(self.theta)}_M{self.max_sequences}"

    @property
    def records_file(self) -> str:
        return self.name + ".jsonl"

    @property
    def extra_file(self) -> str:
        return self.name + ".extra.jsonl"

    @property
    def waves_file(self) -> str:
        return self.name + ".waves.jsonl"

    @property
    def generated_file(self) -> str:
        """The file whose records hold the tokens this point generated (a journal, if it keeps one)."""
        if self.reallocates:
            return self.extra_file
        return self.waves_file if self.samples_in_waves else self.records_file

    @property
    def samples_in_waves(self) -> bool:
        return self.method in WAVE_METHODS or self.method == ECONF

    @property
    def stats_file(self) -> str:
        return self.name + ".stats.json"

    @property
    def reallocates(self) -> bool:
        return self.method in (ADAPT, FULL)

    def init_point(self) -> "Point":
        return Point(INIT, self.theta, self.max_sequences)


_POINT_NAME = re.compile(r"^(parallel|adaptive-consistency|esc|deepconf-low|deepconf-high)_M(\d+)$"
                         r"|^(eager-init|eager-adapt|eager|eager-conf)_theta([0-9.eE+-]+)_M(\d+)$")


def tokens_generated(run_dir: Path, point: Point) -> int:
    """Tokens a point's own decoding generated: the #T of the records of its generated file, minus
    the waves it borrowed from another point's journal (their tokens are that point's)."""
    return sum(r["#T"] for r in read_records(run_dir / point.generated_file) if not r.get("borrowed_from"))


def parse_point(name: str) -> Point | None:
    m = _POINT_NAME.match(name)
    if not m:
        return None
    if m.group(1):
        return Point(m.group(1), None, int(m.group(2)))
    return Point(m.group(3), float(m.group(4)), int(m.group(5)))


# --- JSONL -----------------------------------------------------------------------------------------
def read_records(path: Path, *, repair: bool = False) -> list[dict]:
    """All complete records of a JSONL results file ([] if it does not exist).

    The last line may be torn (no newline, or not valid JSON) after a crash: it is ignored, and with
    repair=True cut off the file so that the next append starts on a clean line. A bad line anywhere
    else means the file was damaged by something other than a crash: ResultsError.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline; else an unfinished (torn) write
    records: list[dict] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ResultsError(f"{path} line {number}: not a JSON record (file damaged)")
        records.append(record)
    if tail and repair:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            f.flush()
            os.fsync(f.fileno())
    return records


class RecordWriter:
    """Append records to a JSONL file: one line each, written and fsync'ed before returning.

    A full disk mid-record is DiskFullError, and the file is cut back to the records before it, so
    a rerun (once there is space) resumes from them.
    """

    def __init__(self, path: Path):
        self.path = path
        with disk_full_is_an_error(path):
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, record: dict) -> None:
        data = _line(record).encode("utf-8")
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            with disk_full_is_an_error(self.path):
                write_all(self._fd, data)
                os.fsync(self._fd)
        except DiskFullError:
            os.ftruncate(self._fd, start)  # no torn line: the file ends with the last whole record
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_records_atomic(path: Path, records: list[dict]) -> None:
    """A whole results file at once (a reallocation point's merged records), replacing any old one."""
    write_text_atomic(path, "".join(_line(record) for record in records))


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise ResultsError(f"{path}: not valid JSON") from None


# --- manifest --------------------------------------------------------------------------------------
def load_manifest(run_dir: Path) -> dict:
    """The manifest of an existing run directory, or ResultsError (one line)."""
    if not run_dir.exists():
        raise ResultsError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise ResultsError(f"not a directory: {run_dir}")
    manifest = read_json(run_dir / MANIFEST)
    if manifest is None:
        raise ResultsError(f"{run_dir} is not an eager-local run directory (no {MANIFEST})")
    if manifest.get("format") != FORMAT_VERSION or "params" not in manifest:
        raise ResultsError(f"{run_dir / MANIFEST}: unknown manifest format")
    return manifest


def param_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two parameter dicts."""
    keys = list(old) + [k for k in new if k not in old]
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += param_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def normalise(doc: object) -> object:
    """What a document looks like after a JSON round trip (tuples become lists, ...)."""
    return json.loads(json.dumps(doc))
