"""Crash recovery as a property: kill the process (SIGKILL: no handler runs, like a power cut or a
closed laptop lid) at seeded random moments, start it again, and check that nothing was lost,
nothing counted twice, and no half-written file ever sits under a final name.

- `eval`: killed at least 10 times and resumed each time; the final records equal those of an
  uninterrupted run of the same command (same prompts, same tokens and texts), every prompt once.
- `models path URL` (a pull from a local HTTP server, no network): killed mid-download at least 10
  times; the model file under its final name is absent or whole, never partial, and the next pull
  removes what the killed one left.
- chat `/save`: killed while saving again and again, and made to die at seeded random bytes of the
  file it writes; the file under its name is absent, the old one, or the whole new one.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from eager_local.conversation import read_session
from eager_local.eval import store

SEED = 21
KILLS = 10
ENV = dict(os.environ, EAGER_LOCAL_THREADS="1", EAGER_LOCAL_CHAT_HISTORY="")


def start(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eager_local", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=kwargs.pop("env", ENV), **kwargs)


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process after `seconds` unless it ended first; True if it was killed."""
    try:
        proc.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        return True


# --- eval --------------------------------------------------------------------------------------------
PROBLEMS = 6
EVAL = ["eval", "-d", f"arith:{PROBLEMS}", "--method", "parallel,eager-init", "-M", "2", "-n", "12", "--theta", "2.0",
        "--raw", "--no-progress", "--threads", "1"]


def results(out: Path) -> dict[str, list[dict]]:
    """Every results file's records, as a reader sees them (a torn last line is ignored)."""
    return {p.name: store.read_records(p) for p in sorted(out.glob("*.jsonl"))}


def essence(record: dict) -> tuple:
    """What a record says about its prompt: the prompt, and each sequence's tokens and text."""
    return (record["id"], record["problem"], record["#S"], record["#T"],
            tuple((s["tokens"], s["text"], s["finish_reason"]) for s in record["sequences"]))


def check_equal(got: dict, expected: dict) -> None:
    """The same results files, each with the same records (by prompt), every prompt once."""
    assert sorted(got) == sorted(expected)
    for name, records in expected.items():
        want = sorted(essence(rec) for rec in records)
        have = sorted(essence(rec) for rec in got[name])
        assert len(have) == len(want) == len({h[0] for h in have}), name  # 0 lost, 0 duplicated
        assert have == want, name


def test_eval_killed_at_random_moments_resumes_to_the_uninterrupted_records(tmp_path, default_model_path):
    reference = tmp_path / "reference"
    began = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "eager_local", *EVAL, "--out", str(reference)], capture_output=True,
                       text=True, env=ENV, timeout=600)
    wall = time.perf_counter() - began
    assert r.returncode == 0, r.stderr
    expected = results(reference)
    total = sum(len(records) for records in expected.values())
    assert expected and all(len(records) == PROBLEMS for records in expected.values())
    began = time.perf_counter()  # the same command again is a no-op: what starting up costs
    assert subprocess.run([sys.executable, "-m", "eager_local", *EVAL, "--out", str(reference)], env=ENV,
                          capture_output=True, timeout=600).returncode == 0
    startup = time.perf_counter() - began

    # Episodes: a fresh run directory, killed at random moments of the run's work and resumed
    # each time until a run finishes; then its records must be the reference's. Until KILLS kills.
    rng = random.Random(SEED)
    kills, runs, mid_work, episodes = 0, 0, 0, 0
    while kills < KILLS:
        episodes += 1
        out = tmp_path / f"killed{episodes}"
        while True:
            runs += 1
            assert runs < 80, "the resumed runs make no progress"
            proc = start([*EVAL, "--out", str(out)])
            if not kill_after(proc, rng.uniform(startup * 0.8, wall)):
                _, err = proc.communicate()
                assert proc.returncode == 0, err.decode()
                break
            kills += 1
            on_disk = results(out)
            for name, records in on_disk.items():  # after every crash: each prompt at most once
                ids = [rec["id"] for rec in records]
                assert len(ids) == len(set(ids)), (name, ids)
            mid_work += 0 < sum(len(records) for records in on_disk.values()) < total
            if kills == KILLS // 2 and (out / "parallel_M2.jsonl").exists():
                with open(out / "parallel_M2.jsonl", "a") as f:  # a record cut off mid-write
                    f.write('{"id": "arith-L3-0002", "problem": "What is')
        check_equal(results(out), expected)
        for stats in out.glob("*.stats.json"):
            assert json.loads(stats.read_text())["complete"], stats.name
    assert mid_work >= 3, f"only {mid_work} of {kills} kills came between records"


# --- models pull ---------------------------------------------------------------------------------------
def fake_model(size: int) -> bytes:
    """A well-formed GGUF of about `size` bytes: one F32 tensor holding seeded noise."""
    floats = size // 4

    def s(text: bytes) -> bytes:
        return struct.pack("<Q", len(text)) + text

    header = (b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + s(b"general.architecture") + struct.pack("<I", 8) + s(b"llama")
              + s(b"weight") + struct.pack("<IQIQ", 1, floats, 0, 0))
    return header + b"\0" * ((-len(header)) % 32) + random.Random(SEED).randbytes(floats * 4)


class FileServer:
    """Serves one file over HTTP on 127.0.0.1, 64 KiB at a time with `chunk_delay` seconds between
    chunks (slowly by default, so a kill lands mid-download)."""

    def __init__(self, body: bytes, chunk_delay: float = 0.01):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 65536):
                        self.wfile.write(body[i:i + 65536])
                        time.sleep(chunk_delay)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fake-model.gguf"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_pull_killed_at_random_moments_never_shows_a_partial_model(tmp_path):
    body = fake_model(3 << 20)  # about 0.5 s to serve
    server = FileServer(body)
    env = dict(ENV, EAGER_LOCAL_HOME=str(tmp_path / "home"), no_proxy="127.0.0.1")
    final = tmp_path / "home" / "models" / "fake-model.gguf"
    rng = random.Random(SEED)
    kills, starts, mid_download = 0, 0, 0
    try:
        while kills < KILLS:
            starts += 1
            assert starts < 40, "the pulls always finished before the kill"
            proc = start(["models", "path", server.url], env=env)
            if not kill_after(proc, rng.uniform(0.1, 1.0)):
                assert proc.returncode == 0, proc.stderr.read().decode()
                final.unlink()  # finished before the kill: start again from nothing
                (final.parent / (final.name + ".sha256")).unlink()
                continue
            kills += 1
            assert not final.exists() or final.read_bytes() == body  # absent or whole, never partial
            mid_download += final.parent.exists() and any(p.suffix == ".part" for p in final.parent.iterdir())
        r = subprocess.run([sys.executable, "-m", "eager_local", "models", "path", server.url], capture_output=True,
                           text=True, env=env, timeout=120)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert mid_download >= 1, "no kill landed during a download"
    assert r.stdout.strip() == str(final) and final.read_bytes() == body
    assert sorted(p.name for p in final.parent.iterdir()) == ["fake-model.gguf", "fake-model.gguf.sha256"]
    assert (final.parent / "fake-model.gguf.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()


# --- chat /save ------------------------------------------------------------------------------------------
def big_chat(path: Path, turns: int) -> dict:
    """A chat file of many turns (about 20 KB each), so that a save takes long enough to be interrupted."""
    words = [f"w{i}" for i in range(200)]
    doc = {"format": "eager-local-chat", "version": 1, "model": {"file": "other.gguf", "size": 1, "sha256": None},
           "system": None, "settings": {}, "budget": {"limit": None, "spent": 0}, "generations": turns, "turns": [
               {"user": f"question {t}", "picked": 0, "index": t, "tree": {
                   "prompt": f"question {t}", "prompt_tokens": 5, "method": "eager-init", "events": [],
                   "sequences": [{"id": 0, "parent": None, "fork_at": 0, "tokens": list(range(1000)),
                                  "entropies": [0.5] * 1000, "finish_reason": "stop", "text": " ".join(words)}]}}
               for t in range(turns)]}
    path.write_text(json.dumps(doc))
    return doc


def test_chat_save_killed_at_random_moments_leaves_a_whole_file_or_none(tmp_path, default_model_path):
    source = big_chat(tmp_path / "big.json", 200)  # about 4 MB
    target = tmp_path / "saved.json"
    rng = random.Random(SEED)
    saves = "".join(f"/save {target}\n" for _ in range(40)).encode()
    kills, starts, seen_whole = 0, 0, 0
    while kills < KILLS:
        starts += 1
        assert starts < 40, "the saves always finished before the kill"
        proc = subprocess.Popen([sys.executable, "-m", "eager_local", "chat", "--threads", "1", "--load",
                                 str(tmp_path / "big.json")], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
        proc.stdin.write(saves)
        proc.stdin.close()
        if not kill_after(proc, rng.uniform(1.0, 4.0)):
            continue  # every save done before the kill: try again
        kills += 1
        for t in tmp_path.glob(".saved.json.*.tmp"):  # a kill mid-save leaves its temporary, never the file
            t.unlink()
        if target.exists():  # absent, or whole: never half of one under its name
            doc = read_session(target)
            assert [t["user"] for t in doc["turns"]] == [t["user"] for t in source["turns"]]
            seen_whole += 1
    assert seen_whole >= 1, "no kill came after a save"  # (most land while the JSON is being built)


DIE_MID_WRITE = """
import os, sys
from eager_local.conversation import write_atomic
budget = int(sys.argv[2])
real = os.write
def write(fd, data):  # the process dies (no handler runs) once `budget` bytes of the file are written
    global budget
    if budget < len(data):
        real(fd, bytes(data[:budget]))
        os._exit(9)
    budget -= len(data)
    return real(fd, data)
os.write = write
write_atomic(sys.argv[1], sys.stdin.read())
"""


def test_chat_save_dying_at_random_bytes_keeps_the_old_file(tmp_path):
    """The moment a save dies, chosen exactly: at seeded random byte offsets of the new file."""
    target = tmp_path / "saved.json"
    old = json.dumps(big_chat(tmp_path / "old.json", 3))
    target.write_text(old)
    new = json.dumps(big_chat(tmp_path / "new.json", 50))
    rng = random.Random(SEED)
    for offset in sorted(rng.sample(range(len(new.encode())), KILLS)):
        r = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(target), str(offset)], input=new, text=True,
                           capture_output=True, timeout=60)
        assert r.returncode == 9, r.stderr
        assert target.read_text() == old  # the old file, whole, under its name
        for t in tmp_path.glob(".saved.json.*.tmp"):  # the dead save's temporary (a SIGKILL cleans nothing)
            t.unlink()
    r = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(target), str(1 << 40)], input=new, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert target.read_text() == new and sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "old.json",
                                                                                         "saved.json"]
