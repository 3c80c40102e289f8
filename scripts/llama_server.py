"""A llama.cpp `llama-server` process as a baseline to measure eager_local against.

It starts the user's binary on 127.0.0.1 with M parallel slots and a unified KV cache (or a stream
per slot), waits for /health, sends each prompt's M requests concurrently, and always stops the
process: on normal exit, on error and on Ctrl-C (it is a context manager; SIGTERM is turned into the
same clean exit).

Benchmark code, not part of the package: `compare_server.py` and `check_same_distribution.py` import
it from this folder, tests/test_llama_server.py checks its lifecycle.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


class ServerError(RuntimeError):
    """The server could not be started or answered badly (one line, for a user)."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """Ask a server process to stop (SIGTERM); kill it if it has not exited within `timeout` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens, as the server counts them
    stop_reason: str


class LlamaServer:
    """`with LlamaServer(binary, model, slots=M, ...) as server: server.complete_many(...)`.

    kv_unified: one KV cache for all slots (`--kv-unified`, llama-server's own default only when it
    picks the number of slots itself), or a KV stream per slot (`--no-kv-unified`, its default for
    an explicit `-np`)."""

    def __init__(
        self,
        binary: str | os.PathLike,
        model: str | os.PathLike,
        *,
        slots: int,
        n_ctx: int,
        threads: int,
        port: int | None = None,
        extra_args: list[str] | None = None,
        kv_unified: bool = True,
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike | None = None,
    ):
        self.binary = Path(binary)
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise ServerError(f"llama-server binary not found or not executable: {self.binary}")
        self.model = Path(model)
        self.port = port or free_port()
        if not port_is_free(self.port):
            raise ServerError(f"port {self.port} on 127.0.0.1 is already in use")
        self.slots = slots
        self.args = [
            str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(slots), "-c", str(n_ctx), "-t", str(threads), "-tb", str(threads),
            "--kv-unified" if kv_unified else "--no-kv-unified", "--no-webui", *(extra_args or []),
        ]
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self._previous_sigterm = None

    # lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.log_path:
            log.close()
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise ServerError(f"llama-server exited with code {code} while starting (see {self.log_path or 'its log'})")
            if self._healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"llama-server did not become healthy within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout=10)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _on_sigterm(self, signum, frame):
        raise KeyboardInterrupt  # unwinds through __exit__, which stops the server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    # requests -----------------------------------------------------------------------------------
    def complete(self, prompt_tokens: list[int], *, n_predict: int, temperature: float, seed: int) -> Completion:
        """One completion from token ids (the same tokens eager_local decodes), full-vocabulary sampling."""
        body = {
            "prompt": prompt_tokens,
            "n_predict": n_predict,
            "temperature": temperature,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "seed": seed,
            "cache_prompt": True,
        }
        request = urllib.request.Request(
            self.url + "/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as r:
                data = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ServerError(f"llama-server answered {e.code}: {e.read()[:200]!r}") from None
        return Completion(
            text=data.get("content", ""),
            tokens=int(data.get("tokens_predicted", data.get("timings", {}).get("predicted_n", 0))),
            stop_reason=str(data.get("stop_type", "")),
        )

    def complete_many(self, prompt_tokens: list[int], *, n: int, n_predict: int, temperature: float, seed: int) -> list[Completion]:
        """n concurrent completions of one prompt (one per slot), seeds seed, seed+1, ..."""
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [
                pool.submit(self.complete, prompt_tokens, n_predict=n_predict, temperature=temperature, seed=seed + i)
                for i in range(n)
            ]
            return [f.result() for f in futures]
