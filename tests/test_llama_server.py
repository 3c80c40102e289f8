"""The llama-server baseline's lifecycle: port check, /health, requests, cleanup on every exit path.

The real binary is used when one is available (EAGER_LOCAL_LLAMA_SERVER=path, or llama-server on
PATH); those tests are skipped otherwise. Start-up failure is checked with a binary that exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# The baseline is benchmark code: it lives in scripts/, next to the scripts that use it.
SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
sys.path.insert(0, SCRIPTS)

from llama_server import LlamaServer, ServerError, port_is_free  # noqa: E402

SERVER = os.environ.get("EAGER_LOCAL_LLAMA_SERVER") or shutil.which("llama-server")
needs_server = pytest.mark.skipif(
    not SERVER, reason="no llama-server binary (set EAGER_LOCAL_LLAMA_SERVER; build steps in BENCHMARKS.md)"
)


def _no_repack():
    from eager_local.machine import extra_buffers_enabled

    return [] if extra_buffers_enabled() else ["--no-repack"]


def test_port_in_use_is_refused(default_model_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(ServerError, match="already in use"):
            LlamaServer(sys.executable, default_model_path, slots=2, n_ctx=512, threads=1, port=port)


def test_a_server_that_dies_at_start_up_is_reported_and_reaped(tmp_path, default_model_path):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = LlamaServer(fake, default_model_path, slots=2, n_ctx=512, threads=1, startup_timeout=20)
    with pytest.raises(ServerError, match="exited with code 3"):
        server.start()
    assert server.process is None and port_is_free(server.port)


@needs_server
@pytest.mark.parametrize("kv_unified", [True, False], ids=["unified", "streams"])
def test_real_server_serves_and_stops(default_model_path, llm, kv_unified):
    prompt = llm.prompt_tokens("What is 2+2?")
    server = LlamaServer(SERVER, default_model_path, slots=4, n_ctx=2048, threads=1, extra_args=_no_repack(),
                         kv_unified=kv_unified)
    with server:
        pid = server.process.pid
        outs = server.complete_many(prompt, n=4, n_predict=16, temperature=0.6, seed=1)
        assert len(outs) == 4 and all(0 < o.tokens <= 16 for o in outs)
        assert len({o.text for o in outs}) >= 2  # four seeds, four samples
    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert port_is_free(server.port)


@needs_server
def test_sigterm_stops_the_server_too(tmp_path, default_model_path):
    """A script holding a server gets SIGTERM (as from Ctrl-C or a job runner): the server goes too."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SCRIPTS!r})
        from llama_server import LlamaServer
        with LlamaServer({SERVER!r}, {str(default_model_path)!r}, slots=2, n_ctx=1024, threads=1,
                         extra_args={_no_repack()!r}) as s:
            open({str(pid_file)!r}, "w").write(str(s.process.pid))
            time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "server did not start"
    server_pid = int(pid_file.read_text())
    holder.send_signal(signal.SIGTERM)
    holder.wait(timeout=30)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
