"""A real `eager-local serve` app on a free loopback port, in this process, for the serve tests.

It runs what the command runs (a Scheduler over the test model, the Starlette app, uvicorn) with
small caps so the tests stay short; the tests talk to it over HTTP with the `openai` client.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from eager_local.serve import Limits, Scheduler, create_app

CAP = 8  # the server's M: the largest n a request may ask for
MAX_NEW_TOKENS = 256
PROMPT_TOKENS = 200


@dataclass
class Running:
    base_url: str
    scheduler: Scheduler
    limits: Limits

    def client(self, api_key: str = "unused", **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120, **kwargs)


@contextmanager
def running_server(llm, *, api_key: str | None = None, slots: int = 4, seed: int | None = None,
                   cors_origins: tuple[str, ...] = (), **options):
    config = llm.config(max_sequences=CAP, max_new_tokens=MAX_NEW_TOKENS, **options)
    limits = Limits(model=llm.resolved.name, config=config, prompt_tokens=PROMPT_TOKENS, seed=seed)
    scheduler = Scheduler(llm, config, prompt_tokens=PROMPT_TOKENS, slots=slots)
    app = create_app(scheduler, limits, api_key=api_key, cors_origins=cors_origins)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}/v1", scheduler, limits)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not stop"


def wait_until(condition, timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
