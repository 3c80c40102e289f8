"""`eager-local serve` as a user runs it: a real process on a free loopback port, answered by the
`openai` client and stopped by a signal; its one-line errors; when it warns about exposure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cli_helpers import assert_one_line_error, eager
from eager_local.cli.serve import exposure_warning, is_loopback
from serve_helpers import wait_until


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args,fragment", [
    (["--budget", "10"], "--budget"),
    (["--raw"], "--raw"),
    (["--slots", "0"], "--slots"),
    (["--port", "70000"], "port"),
    (["--theta", "abc"], "theta"),
    (["--temperature", "-1"], "temperature"),
    (["--kv-memory", "0"], "--kv-memory"),
])
def test_bad_options_are_one_line_errors(args, fragment):
    assert_one_line_error(eager("serve", *args, timeout=120), fragment)


def test_exposure_warning_only_off_loopback_without_a_key():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "key") is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)


def test_serve_process_answers_the_openai_client_and_stops_on_sigterm():
    import openai

    port = free_port()
    env = dict(os.environ, EAGER_LOCAL_API_KEY="k3y")
    process = subprocess.Popen([sys.executable, "-m", "eager_local", "serve", "--port", str(port), "-M", "2",
                                "-n", "16", "--slots", "2", "--max-prompt-tokens", "128", "--kv-memory", "64"],
                               env=env, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0, timeout=60)

        def up():
            try:
                return bool(client.models.list().data)
            except openai.APIConnectionError:
                return process.poll() is None and False

        assert wait_until(up, timeout=120, step=0.3), "the server did not come up"
        out = client.chat.completions.create(model=client.models.list().data[0].id, n=2, max_tokens=20,
                                             messages=[{"role": "user", "content": "Say hi."}])
        assert 1 <= len(out.choices) <= 2 and out.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):  # the key came from $EAGER_LOCAL_API_KEY
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    # uvicorn shuts down gracefully, then exits by the signal it caught
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Serving" in stderr and "Warning" not in stderr and "Traceback" not in stderr
