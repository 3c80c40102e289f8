"""Bad input, one table: every front-end (run, chat, eval, report, calibrate, models) fed what users
get wrong — files, option values, prompts, datasets, run directories, chat commands.

Each row is one command, run as a user runs it (a real process). It must end with exit code 2
(chat commands inside a session: 0, the session goes on, docs/chat.md § Pipes), exactly one line
on stderr that names the problem (a chat session's notes aside: one `error:` line), no traceback,
and no file written or left half-written (the folder the row works in is unchanged; no temporary
or partial file). Rows with a `fixed` command also run it, corrected, and it must work.

Rows are cheap on purpose: most fail before the model loads; those that need it use the test
model (conftest.py) with a few tokens at one thread. Fake GGUFs are written byte by byte
(models/gguf.py has the header format).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

THREADS = ["--threads", "1"]
TINY = ["-n", "2", "-M", "1", *THREADS]  # a fixed command's generation: two tokens, one sequence
EVAL_TINY = ["--method", "parallel", "--raw", "--no-progress", *TINY]


# --- files the rows use ----------------------------------------------------------------------------
def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def gguf(*, magic=b"GGUF", version=3, n_tensors=1, floats=8) -> bytes:
    """A small well-formed GGUF (architecture key, one F32 tensor) unless told otherwise."""
    kv = _s(b"general.architecture") + struct.pack("<I", 8) + _s(b"llama")
    tensor = _s(b"weight") + struct.pack("<IQIQ", 1, floats, 0, 0)  # 1 dim, F32, offset 0
    header = magic + struct.pack("<IQQ", version, n_tensors, 1) + kv + tensor
    return header + b"\0" * ((-len(header)) % 32) + struct.pack(f"<{floats}f", *[0.5] * floats)


def put(tmp: Path, name: str, content: bytes | str) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = [{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}, {"id": "b", "problem": "What is 2 + 2?", "answer": 4}]


def dataset(tmp: Path, *records, name="data.jsonl") -> str:
    return put(tmp, name, jsonl(*records))


def no_template_model(tmp: Path, real: Path) -> str:
    """The test model with its chat template key renamed (same length, so the file stays valid)."""
    data = bytearray(real.read_bytes())
    key = b"tokenizer.chat_template"
    at = data.find(key)
    assert at > 0
    data[at:at + len(key)] = b"tokenizer.chat_templatX"
    return put(tmp, "no-template.gguf", bytes(data))


REAL_EVAL = ["eval", "-d", "arith:1", *EVAL_TINY]  # the real run directory rows copy (fixture real_run)


def copy_run(tmp: Path, name: str, *, manifest=None, prepend: str = "") -> str:
    """A copy of the real run directory, its manifest changed by `manifest(doc)` and a line put before
    its records (`prepend`), for report and resume rows."""
    d = tmp / name
    shutil.copytree((tmp / "RUN").read_text(), d)
    if manifest is not None:
        doc = json.loads((d / "manifest.json").read_text())
        manifest(doc)
        (d / "manifest.json").write_text(json.dumps(doc))
    records = d / "parallel_M1.jsonl"
    records.write_text(prepend + records.read_text())
    return str(d)


def chat_file(tmp: Path, name="chat.json", **changes) -> str:
    doc = {"format": "eager-local-chat", "version": 1, "model": {"file": "other.gguf", "size": 1, "sha256": "f" * 64},
           "system": None, "settings": {}, "budget": {"limit": None, "spent": 0}, "generations": 1,
           "turns": [{"user": "hi", "picked": 0, "index": 0, "tree": {
               "prompt": "hi", "prompt_tokens": 3, "method": "eager-init", "events": [],
               "sequences": [{"id": 0, "parent": None, "fork_at": 0, "tokens": [1, 2], "entropies": [0.1, 0.2],
                              "finish_reason": "stop", "text": "Hello."}]}}]}
    doc.update(changes)
    return put(tmp, name, json.dumps(doc))


def same_model(tmp: Path) -> dict:
    """The identity a chat file made with the test model has (file name and size)."""
    path = Path(model_of(tmp))
    return {"file": path.name, "size": path.stat().st_size, "sha256": None}


def read_only(path: Path) -> None:
    """Make a folder unwritable, for root too (chattr +i; root ignores the mode bits)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a folder read-only")
    else:
        path.chmod(0o555)


def writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    path.chmod(0o755)


# --- the table -------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # builds what the row needs in its folder, returns the command
    fragment: str  # the error line must contain it
    stdin: bytes | Callable[[Path], bytes] = b""
    code: int = 2
    fixed: Callable[[Path], list[str]] | None = None  # the same command, corrected: must exit 0
    fixed_stdin: bytes = b""
    env: dict = field(default_factory=dict)
    model: bool = False  # needs the real test model (path given as tmp/"MODEL")
    run: bool = False  # copies the real run directory (fixture real_run; path given as tmp/"RUN")
    read_only: str | None = None  # a folder under the row's folder that is made unwritable
    read_only_mount: str | None = None  # a folder the command sees as a read-only filesystem (its own mount)
    notes: bool = False  # progress notes ("downloading …") may come before the one "Error:" line


def model_of(tmp: Path) -> str:
    return (tmp / "MODEL").read_text()


CASES = [
    # files: the model
    Case("run/model is a directory", lambda t: ["run", "hi", "-m", str(t)], "is a directory"),
    Case("chat/model missing", lambda t: ["chat", "-m", str(t / "nope.gguf")], "model file not found"),
    Case("eval/model missing", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "-m", str(t / "x.gguf")],
         "model file not found"),
    Case("calibrate/model empty file", lambda t: ["calibrate", "-m", put(t, "e.gguf", b"")], "not a GGUF file"),
    Case("calibrate/text renamed .gguf", lambda t: ["calibrate", "-m", put(t, "t.gguf", "<html>404</html>\n" * 9)],
         "not a GGUF file (bad magic)"),
    Case("run/GGUF cut in its header", lambda t: ["run", "hi", "-m", put(t, "h.gguf", gguf()[:40])], "is truncated"),
    Case("run/GGUF cut in its tensor data", lambda t: ["run", "hi", "-m", put(t, "d.gguf", gguf()[:-8])],
         "is truncated"),
    Case("run/wrong magic", lambda t: ["run", "hi", "-m", put(t, "m.gguf", gguf(magic=b"GGML"))], "bad magic"),
    Case("run/huge claimed tensor count", lambda t: ["run", "hi", "-m", put(t, "n.gguf", gguf(n_tensors=1 << 40))],
         "implausible header counts"),
    Case("run/unknown GGUF version", lambda t: ["run", "hi", "-m", put(t, "v.gguf", gguf(version=9))],
         "unsupported GGUF version 9"),
    Case("run/valid header, not a model", lambda t: ["run", "hi", "-m", put(t, "w.gguf", gguf())],
         "llama.cpp could not load"),
    Case("chat/GGUF without a chat template", lambda t: ["chat", "-m", no_template_model(t, Path(model_of(t))),
                                                         *THREADS], "has no chat template", model=True,
         fixed=lambda t: ["chat", "--once", *TINY], fixed_stdin=b"hi\n"),
    Case("models/path of a directory", lambda t: ["models", "path", str(t)], "is a directory"),
    Case("models/pull unknown name", lambda t: ["models", "pull", "no-such-model"], "unknown model 'no-such-model'"),
    Case("models/URL nobody serves", lambda t: ["models", "path", "http://127.0.0.1:9/x.gguf"], "download of",
         env={"no_proxy": "*"}, notes=True),
    Case("models/URL without a file name", lambda t: ["models", "path", "http://127.0.0.1:9/"],
         "cannot tell a file name"),
    # options
    Case("run/temperature nan", lambda t: ["run", "hi", "--temperature", "nan"], "temperature must be >= 0"),
    Case("run/top-p 0", lambda t: ["run", "hi", "--top-p", "0"], "top-p must be in (0, 1]"),
    Case("run/theta nan", lambda t: ["run", "hi", "--theta", "nan"], "theta must be a number >= 0"),
    Case("run/max-sequences huge", lambda t: ["run", "hi", "-M", "1000000"], "max-sequences must be between 1 and 256"),
    Case("run/max-sequences not an integer", lambda t: ["run", "hi", "-M", "1.5"], "'1.5' is not a valid integer"),
    Case("run/seed negative", lambda t: ["run", "hi", "--seed", "-1"], "seed must be >= 0",
         fixed=lambda t: ["run", "hi", "--seed", "1", *TINY]),
    Case("run/threads huge", lambda t: ["run", "hi", "--threads", "100000"], "threads must be between 1 and 512"),
    Case("run/kv-memory 0", lambda t: ["run", "hi", "--kv-memory", "0"], "--kv-memory must be >= 1",
         fixed=lambda t: ["run", "hi", "--kv-memory", "64", *TINY]),
    Case("eval/kv-memory negative", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "--kv-memory", "-5"],
         "--kv-memory must be >= 1",
         fixed=lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "--kv-memory", "64", *EVAL_TINY]),
    Case("run/-S without --theta auto", lambda t: ["run", "hi", "-S", "3"], "--target-sequences goes with --theta auto"),
    Case("run/--theta auto with -M 1", lambda t: ["run", "hi", "--theta", "auto", "-M", "1"],
         "--theta auto needs --max-sequences 2 or more"),
    Case("eval/--theta auto with -M 1", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "--theta", "auto",
                                                   "-M", "1"], "--theta auto needs --max-sequences 2 or more"),
    Case("run/-S 0 with auto", lambda t: ["run", "hi", "--theta", "auto", "-S", "0"], "target-sequences must be >= 1"),
    Case("chat/temperature negative", lambda t: ["chat", "--temperature", "-1"], "temperature must be >= 0"),
    Case("chat/branch window 0", lambda t: ["chat", "--branch-window", "0"], "branch window must be >= 1"),
    Case("eval/max-new-tokens negative", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "-n", "-5"],
         "max-new-tokens must be >= 1"),
    Case("eval/theta inf", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "--theta", "1,inf"],
         "theta must be a number >= 0"),
    Case("eval/limit negative", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "--limit", "-1"],
         "limit must be non-negative"),
    Case("eval/eager-adapt with M over 85", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "-M", "100",
                                                       "--method", "eager-adapt"], "exceeds 85"),
    Case("eval/budget negative", lambda t: ["eval", "-d", "arith:2", "--out", str(t / "o"), "--budget", "-1"],
         "budget must be >= 0"),
    Case("calibrate/samples 0", lambda t: ["calibrate", "--samples", "0"], "samples must be >= 1"),
    Case("calibrate/M 1", lambda t: ["calibrate", "-M", "1"], "max-sequences must be between 2 and 256"),
    Case("calibrate/target over M", lambda t: ["calibrate", "-M", "8", "-S", "9"],
         "target-sequences must be between 2 and max-sequences (8)"),
    Case("calibrate/--dataset and --prompts", lambda t: ["calibrate", "-d", "arith:4", "--prompts", put(t, "p", "x")],
         "give --dataset or --prompts, not both"),
    Case("calibrate/limit 0", lambda t: ["calibrate", "--limit", "0"], "limit must be >= 1"),
    Case("report/unknown format", lambda t: ["report", str(t), "--format", "xml"], "Invalid value for '--format'"),
    # prompts
    Case("run/empty prompt", lambda t: ["run", ""], "empty prompt", fixed=lambda t: ["run", "hi", *TINY]),
    Case("run/whitespace-only prompt", lambda t: ["run", " \n\t "], "empty prompt"),
    Case("run/prompt not UTF-8", lambda t: ["run", os.fsdecode(b"caf\xe9 \xff")], "not valid UTF-8"),
    Case("run/raw prompt over the context", lambda t: ["run", "--raw", "word " * 9000, *THREADS], "does not fit",
         model=True),
    Case("chat/stdin not UTF-8", lambda t: ["chat", *TINY], "standard input is not valid UTF-8", stdin=b"caf\xe9\n",
         model=True, fixed=lambda t: ["chat", "--once", *TINY], fixed_stdin="café\n".encode()),
    Case("chat/stdin with NUL bytes", lambda t: ["chat", *TINY], "NUL byte", stdin=b"hi\x00\x00there\n", model=True),
    Case("calibrate/prompts file empty", lambda t: ["calibrate", "--prompts", put(t, "p.txt", "\n\n")],
         "no prompts (the file is empty)"),
    Case("calibrate/prompts file not UTF-8", lambda t: ["calibrate", "--prompts", put(t, "p.txt", b"\xff\xfe\x00")],
         "cannot read prompts file"),
    # datasets
    Case("calibrate/dataset malformed JSON line", lambda t: ["calibrate", "-d", dataset(t, GOOD[0], '{"id": "b",')],
         "line 2: invalid JSON"),
    Case("eval/dataset missing field", lambda t: ["eval", "-d", dataset(t, GOOD[0], {"id": "b", "problem": "x"}),
                                                  "--out", str(t / "o")], "line 2: missing field 'answer'",
         fixed=lambda t: ["eval", "-d", dataset(t, *GOOD), "--out", str(t / "o"), "--limit", "1", *EVAL_TINY]),
    Case("eval/dataset wrong field type", lambda t: ["eval", "-d", dataset(t, {"problem": ["x"], "answer": "1"}),
                                                     "--out", str(t / "o")], "must be a string or number, got array"),
    Case("eval/dataset empty", lambda t: ["eval", "-d", put(t, "e.jsonl", ""), "--out", str(t / "o")],
         "no problems (the file is empty)"),
    Case("eval/dataset duplicate ids", lambda t: ["eval", "-d", dataset(t, GOOD[0], GOOD[0]), "--out", str(t / "o")],
         "duplicate id 'a'"),
    Case("eval/dataset is a directory", lambda t: ["eval", "-d", str(t) + "/", "--out", str(t / "o")],
         "dataset path is not a file"),
    Case("eval/dataset not UTF-8", lambda t: ["eval", "-d", put(t, "b.jsonl", b'{"p": "\xff"}\n'), "--out", str(t / "o")],
         "not valid UTF-8"),
    Case("eval/0-problem selection", lambda t: ["eval", "-d", "arith:3", "--offset", "5", "--out", str(t / "o")],
         "no problems selected"),
    Case("eval/unknown ids", lambda t: ["eval", "-d", "arith:3", "--ids", "q1,q2", "--out", str(t / "o")],
         "unknown problem id(s): 'q1', 'q2'"),
    Case("eval/ids file not UTF-8", lambda t: ["eval", "-d", "arith:3", "--ids", "@" + put(t, "ids", b"\xff\n"),
                                               "--out", str(t / "o")], "cannot read ids file"),
    Case("eval/template file not UTF-8", lambda t: ["eval", "-d", "arith:3", "--prompt-template",
                                                    "@" + put(t, "tpl", b"{problem} \xff"), "--out", str(t / "o")],
         "cannot read prompt template"),
    # run directories
    Case("eval/--out holds another run", lambda t: [*REAL_EVAL, "--seed", "7", "--out", copy_run(t, "r")],
         "holds a run with different parameters (selection.seed, generation.seed)", model=True, run=True,
         fixed=lambda t: [*REAL_EVAL, "--out", str(t / "r")]),
    Case("eval/--out is a file", lambda t: ["eval", "-d", "arith:1", "--out", put(t, "f", "x"), *EVAL_TINY],
         "exists and is not a directory", model=True),
    Case("eval/--out manifest not JSON", lambda t: ["eval", "-d", "arith:1", "--out", str(Path(put(
        t, "r/manifest.json", "{o")).parent), *EVAL_TINY], "manifest.json: not valid JSON", model=True),
    Case("eval/--out on a read-only filesystem", lambda t: ["eval", "-d", "arith:1", "--out", str(t / "ro" / "o"),
                                                            *EVAL_TINY], "Read-only file system", model=True,
         read_only_mount="ro"),
    Case("eval/--out in a read-only folder", lambda t: ["eval", "-d", "arith:1", "--out", str(t / "ro" / "o"),
                                                        *EVAL_TINY], "/ro/o", model=True, read_only="ro",
         fixed=lambda t: ["eval", "-d", "arith:1", "--out", str(t / "ro" / "o"), *EVAL_TINY]),
    Case("report/damaged line before the last", lambda t: ["report", copy_run(t, "r", prepend="{not json\n")],
         "line 1: not a JSON record", run=True, fixed=lambda t: ["report", copy_run(t, "r2")]),
    Case("report/manifest of a newer format", lambda t: ["report", copy_run(t, "r", manifest=lambda d: d.update(
        format=2))], "unknown manifest format", run=True),
    Case("report/a file, not a directory", lambda t: ["report", put(t, "f", "x")], "not a directory"),
    Case("report/a directory without manifest", lambda t: ["report", str(t)], "not an eager-local run directory"),
    # chat commands (in a pipe: one error line, the session goes on, exit 0) and chat files
    Case("chat/unknown command", lambda t: ["chat", *TINY], "unknown command /frobnicate", stdin=b"/frobnicate\n",
         code=0, model=True),
    Case("chat/pick of a non-number", lambda t: ["chat", *TINY], "branch number must be a whole number",
         stdin=b"/pick two\n", code=0, model=True),
    Case("chat/theta nan", lambda t: ["chat", *TINY], "theta must be a number >= 0", stdin=b"/theta nan\n", code=0,
         model=True),
    Case("chat/save into a missing folder", lambda t: ["chat", *TINY], "does not exist",
         stdin=b"/save nowhere/x.json\n", code=0, model=True),
    Case("chat/load of a corrupt file", lambda t: ["chat", *TINY, "--load", put(t, "c.json", '{"format": "eager-lo')],
         "is not a chat file (invalid JSON", model=True),
    Case("chat/load of a newer format version", lambda t: ["chat", *TINY, "--load", chat_file(t, version=2)],
         "has chat file version 2", model=True,
         fixed=lambda t: ["chat", *TINY, "--load", chat_file(t, "ok.json", model=same_model(t))]),
    Case("chat/load of a file with a damaged turn", lambda t: ["chat", *TINY, "--load", chat_file(t, turns=[{}])],
         "damaged chat file", model=True),
    Case("chat/load of another model's file", lambda t: ["chat", *TINY], "was made with other.gguf",
         stdin=lambda t: f"/load {chat_file(t)}\n".encode(), code=0, model=True),
]


assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def _ids():
    return [c.id for c in CASES]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".part", ".lock"))]


MOUNT_RO = 'mount -t tmpfs -o ro,size=64k tmpfs "$0" && exec "$@"'  # $0: the folder


def mount_read_only_works(folder: Path) -> bool:
    """Whether this process may give a child its own read-only mount (unshare -m; root in a container)."""
    folder.mkdir(exist_ok=True)
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", MOUNT_RO, str(folder), "true"], capture_output=True).returncode == 0


def run(argv, tmp: Path, stdin: bytes, env: dict, read_only_mount: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, EAGER_LOCAL_THREADS="1", EAGER_LOCAL_CHAT_HISTORY="", **env)
    command = [sys.executable, "-m", "eager_local", *argv]
    if read_only_mount is not None:
        command = ["unshare", "-m", "sh", "-c", MOUNT_RO, str(read_only_mount), *command]
    r = subprocess.run(command, input=stdin, capture_output=True, timeout=300, cwd=tmp, env=full_env)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, default_model_path):
    out = tmp_path_factory.mktemp("real") / "run"
    r = run([*REAL_EVAL, "--out", str(out)], out.parent, b"", {})
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_bad_input(case: Case, tmp_path, request):
    if case.model:
        (tmp_path / "MODEL").write_text(str(request.getfixturevalue("default_model_path")))
    if case.run:
        (tmp_path / "RUN").write_text(str(request.getfixturevalue("real_run")))
    if case.read_only:
        (tmp_path / case.read_only).mkdir()
        read_only(tmp_path / case.read_only)
    mount = tmp_path / case.read_only_mount if case.read_only_mount else None
    if mount is not None and not mount_read_only_works(mount):
        pytest.skip("cannot give the command a read-only mount here (needs unshare -m and the right to mount)")
    try:
        argv = case.argv(tmp_path)
        stdin = case.stdin(tmp_path) if callable(case.stdin) else case.stdin
        before = snapshot(tmp_path)
        r = run(argv, tmp_path, stdin, case.env, mount)
        assert r.returncode == case.code, (r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.stderr
        if case.code == 2:
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            if case.notes:
                lines = [line for line in lines if line.startswith("Error:")]
        else:  # a chat session in a pipe: notes go to stderr too; its errors start with "error:"
            lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, r.stderr
        assert case.fragment in lines[0], lines[0]
        assert leftovers(tmp_path) == []
        assert snapshot(tmp_path) == before, "a refused command changed files"
    finally:
        if case.read_only:
            writable(tmp_path / case.read_only)
    if case.fixed is not None:
        good = run(case.fixed(tmp_path), tmp_path, case.fixed_stdin, case.env)
        assert good.returncode == 0, good.stderr[-2000:]
        assert "error:" not in good.stderr
