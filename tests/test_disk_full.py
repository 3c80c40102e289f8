"""A full disk while eager-local writes: results records, calibration profiles, chat files, model pulls.

The disk is filled on purpose by failing `os.write` with ENOSPC for the files a test names, after
a number of bytes (a short write first, as a filling disk gives): every write of the package goes
through `io.write_all`, so this is where a real full disk shows. Each case must give one line that
says the disk is full and names the file, keep everything written before, leave no temporary or
partial file, and work again, resuming, once there is space.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_local.chat import ChatUI
from eager_local.chat_session import ChatSession
from eager_local.cli import cli
from eager_local.eval import store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds a descriptor's path in /proc")

FULL = "no space left on the device"


class FullDisk:
    """`os.write` on a disk that fills up: files whose path contains `where` take `room` bytes in all."""

    def __init__(self, monkeypatch, where: str, room: int):
        self.where, self.room, self.refused = where, room, 0
        real = os.write

        def write(fd, data):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if self.where in path:
                if self.room <= 0:
                    self.refused += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                data = bytes(memoryview(data)[: self.room])
                self.room -= len(data)
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)

    def free(self) -> None:
        self.room = 1 << 62


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def one_full_disk_line(result, path_end: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and FULL in errors[0] and errors[0].endswith(path_end), result.stderr
    assert "Traceback" not in result.stderr


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


def essence(record: dict) -> tuple:
    return record["id"], tuple((s["tokens"], s["text"]) for s in record["sequences"])


EVAL = ["eval", "-d", "arith:4", "--method", "parallel", "-M", "1", "-n", "6", "--raw", "--no-progress",
        "--threads", "1"]


def test_results_keep_every_record_written_before_and_resume(tmp_path, monkeypatch, default_model_path):
    assert invoke(*EVAL, "--out", tmp_path / "reference").exit_code == 0
    reference = (tmp_path / "reference" / "parallel_M1.jsonl").read_bytes().splitlines(keepends=True)
    assert len(reference) == 4
    out = tmp_path / "full"
    disk = FullDisk(monkeypatch, "parallel_M1.jsonl", room=len(reference[0]) + len(reference[1]) + 40)
    one_full_disk_line(invoke(*EVAL, "--out", out), "parallel_M1.jsonl")
    assert disk.refused
    kept = store.read_records(out / "parallel_M1.jsonl")
    assert (out / "parallel_M1.jsonl").read_bytes().endswith(b"\n")  # no torn line: cut back to the last record
    want = [essence(json.loads(line)) for line in reference]
    assert [essence(r) for r in kept] == want[:2]  # every record written before the disk filled
    assert not json.loads((out / "parallel_M1.stats.json").read_text())["complete"]
    assert temporaries(out) == []

    disk.free()
    assert invoke(*EVAL, "--out", out).exit_code == 0
    assert sorted(essence(r) for r in store.read_records(out / "parallel_M1.jsonl")) == sorted(want)


def test_calibration_profile(tmp_path, monkeypatch, default_model_path):
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(tmp_path / "home"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 + 2?\nName a colour.\n")
    args = ["calibrate", "-m", default_model_path, "--prompts", prompts, "--samples", "1", "-n", "4", "-M", "2",
            "--no-check", "--threads", "1"]
    disk = FullDisk(monkeypatch, "/profiles/", room=0)
    result = invoke(*args)
    one_full_disk_line(result, ".json")
    assert disk.refused and "/profiles/" in result.stderr
    profiles = tmp_path / "home" / "profiles"
    assert [p.name for p in profiles.iterdir() if not p.name.endswith(".lock")] == []  # no half profile

    disk.free()
    assert invoke(*args).exit_code == 0
    (profile,) = [p for p in profiles.iterdir() if p.suffix == ".json"]
    assert len(json.loads(profile.read_text())["entries"]) == 1
    assert temporaries(tmp_path / "home") == []


def test_chat_save_keeps_the_old_file(tmp_path, monkeypatch, llm):
    session = ChatSession(llm, {"theta": 2.0, "max_sequences": 2, "max_new_tokens": 4, "seed": 1})
    out, err = io.StringIO(), io.StringIO()
    ui = ChatUI(session, interactive=False, colour=False, out=out, err=err)
    target = tmp_path / "chat.json"
    ui.run(["What is 2 + 2?", f"/save {target}", "And 3 + 3?"])
    saved = target.read_bytes()
    assert len(json.loads(saved)["turns"]) == 1 and len(session.conversation.turns) == 2

    disk = FullDisk(monkeypatch, "chat.json", room=len(saved) // 2)
    ui.run([f"/save {target}"])
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and FULL in errors[0] and errors[0].endswith(str(target)), err.getvalue()
    assert disk.refused and target.read_bytes() == saved and temporaries(tmp_path) == []

    disk.free()
    ui.run([f"/save {target}"])
    assert len(json.loads(target.read_text())["turns"]) == 2
    session.close()


def test_model_pull(tmp_path, monkeypatch):
    from test_crash_recovery import FileServer, fake_model  # a well-formed GGUF with seeded noise

    body = fake_model(2 << 20)
    server = FileServer(body, chunk_delay=0)
    monkeypatch.setenv("EAGER_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = server.url
    models = tmp_path / "home" / "models"
    try:
        disk = FullDisk(monkeypatch, "/home/models/", room=len(body) // 3)
        one_full_disk_line(invoke("models", "path", url), "fake-model.gguf")
        assert disk.refused and sorted(p.name for p in models.iterdir()) == []  # no partial model, no lock

        disk.free()
        result = invoke("models", "path", url)
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert (models / "fake-model.gguf").read_bytes() == body


REAL_DISK = """
set -e
mount -t tmpfs -o size=8k tmpfs "$DISK"
set +e
python -m eager_local eval -d arith:12 --method parallel -M 1 -n 6 --raw --no-progress --threads 1 --out "$DISK/run" \
    2> "$LOG/first.err"
echo $? > "$LOG/first.rc"
cp "$DISK/run/parallel_M1.jsonl" "$LOG/kept.jsonl"
ls -a "$DISK/run" > "$LOG/files"
mount -o remount,size=1m "$DISK"
python -m eager_local eval -d arith:12 --method parallel -M 1 -n 6 --raw --no-progress --threads 1 --out "$DISK/run" \
    2> "$LOG/second.err"
echo $? > "$LOG/second.rc"
cp "$DISK/run/parallel_M1.jsonl" "$LOG/final.jsonl"
"""


def test_a_real_full_disk_when_a_tmpfs_can_be_mounted(tmp_path, default_model_path):
    """The same on a real 8 KiB tmpfs (a private mount namespace: needs `unshare -m` and the right to
    mount, e.g. root in a container); the first run fills it, the second resumes after it grows."""
    import shutil
    import subprocess

    disk, log = tmp_path / "disk", tmp_path / "log"
    disk.mkdir()
    log.mkdir()
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=8k tmpfs {disk}"], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    env = dict(os.environ, DISK=str(disk), LOG=str(log), EAGER_LOCAL_THREADS="1")
    subprocess.run(["unshare", "-m", "sh", "-c", REAL_DISK], env=env, check=True, timeout=600)
    assert (log / "first.rc").read_text().strip() == "2"
    (line,) = [x for x in (log / "first.err").read_text().splitlines() if x.strip()]
    assert line.startswith("Error: " + FULL) and str(disk / "run") in line
    kept = [essence(json.loads(x)) for x in (log / "kept.jsonl").read_text().splitlines()]
    assert 1 <= len(kept) < 12 and (log / "kept.jsonl").read_bytes().endswith(b"\n")
    assert not [f for f in (log / "files").read_text().split() if f.endswith(".tmp")]
    assert (log / "second.rc").read_text().strip() == "0", (log / "second.err").read_text()
    final = [essence(json.loads(x)) for x in (log / "final.jsonl").read_text().splitlines()]
    assert final[: len(kept)] == kept and len({f[0] for f in final}) == len(final) == 12
