"""The HTTP side: the OpenAI endpoints as a Starlette app (uvicorn runs it; cli/serve.py).

    GET  /health                 liveness, the loop's capacity and how full it keeps its batches
    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages → one choice per branch (streamed with "stream": true)
    POST /v1/completions         a prompt (text or token ids) → the same, as text completions (echo:
                                 the prompt first, in the text and the logprobs)
    GET  /tokenizer_info         vLLM's tokenizer endpoints, on the model's own tokenizer
    POST /tokenize, /detokenize  (tokenizer.py): lm-evaluation-harness's tokenizer_backend=remote

Every refusal is an OpenAI error object with a 4xx status: a bad body (schema.py), a missing or
wrong key (401), an unknown model (404), a body over `MAX_BODY` (413), an unknown route. With
`cors_origins`, browsers on those origins may call it (CORS preflights need no key). A
request's work happens on the engine's thread (scheduler.py); this side only parses, tokenizes,
waits and writes. A client that disconnects, mid-stream or while waiting, cancels its request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import Sequence
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import tokenizer
from .responses import FINISH, Reply
from .scheduler import Job, Scheduler
from .schema import ApiError, Ask, Limits, parse, token_ids_in_vocabulary

MAX_BODY = 1 << 20  # bytes of request body at most (a prompt this long does not fit a context anyway)
DISCONNECT_POLL = 0.25  # seconds between checks that a waiting client is still there


def create_app(scheduler: Scheduler, limits: Limits, *, api_key: str | None = None,
               cors_origins: Sequence[str] = ()) -> Starlette:
    """The app; its lifespan starts the scheduler's thread and stops it at shutdown. `cors_origins`
    (`*`: any) lets pages from those origins call it from a browser; none: no CORS headers."""
    server = _Server(scheduler, limits, api_key)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(scheduler.stop)

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/tokenizer_info", server.tokenizer_info, methods=["GET"]),
        Route("/tokenize", server.tokenize, methods=["POST"]),
        Route("/detokenize", server.detokenize, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=_cors(cors_origins),
                     exception_handlers={ApiError: _api_error, HTTPException: _http_error})


def _cors(origins: Sequence[str]) -> list[Middleware]:
    """CORS around the routes. The middleware answers a preflight itself, before any route, so the
    preflight needs no key (browsers send none); every other request reaches its route's key check,
    and its answer, a 401 included, carries the CORS headers so the page can read it. Any request
    header is allowed (the middleware echoes the ones asked for): besides Authorization and
    Content-Type, OpenAI's client libraries send headers of their own (X-Stainless-*)."""
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["*"])]


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method) as OpenAI error objects."""
    return await _api_error(request, ApiError(f"{error.detail}: {request.method} {request.url.path}",
                                              status=error.status_code))


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class _Server:
    def __init__(self, scheduler: Scheduler, limits: Limits, api_key: str | None):
        self.scheduler = scheduler
        self.limits = limits
        self.api_key = api_key
        self.model = scheduler.runner.model
        self.context = tokenizer.max_model_len(self.model, scheduler.cells_per_sequence)

    # routes ---------------------------------------------------------------------------------------
    async def health(self, request: Request) -> JSONResponse:
        failed = self.scheduler.failure is not None
        return JSONResponse({"status": "error" if failed else "ok", "model": self.limits.model,
                             "slots": self.scheduler.concurrent, "max_sequences": self.limits.max_sequences,
                             "engine": self.scheduler.stats.as_dict()}, status_code=500 if failed else 200)

    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": self.limits.model, "object": "model", "created": 0, "owned_by": "eager-local"}]})

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, "completion")

    async def tokenizer_info(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(tokenizer.tokenizer_info(self.model, self.context))

    async def tokenize(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(tokenizer.tokenize(await _read_json(request), self.scheduler.runner, self.limits,
                                               self.context))

    async def detokenize(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(tokenizer.detokenize(await _read_json(request), self.model, self.limits))

    # one request ----------------------------------------------------------------------------------
    async def _complete(self, request: Request, kind: str) -> Response:
        self._authorize(request)
        ask = parse(await _read_json(request), kind, self.limits, seed=secrets.randbits(32))
        tokens = self._tokens(ask)
        job = Job(ask, tokens, ask.prompt if isinstance(ask.prompt, str) else "", asyncio.get_running_loop(),
                  self.model)
        reply = Reply(ask, self.limits.model, tokens, self.model)
        self.scheduler.submit(job)
        if ask.stream:
            return StreamingResponse(self._stream(job, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        tree = await self._wait(request, job)
        if tree is None:  # the client left; nobody reads this
            return Response(status_code=499)
        if not tree.started:
            raise ApiError("no room in the KV cache for this prompt now; retry later", status=503,
                           kind="server_error")
        return JSONResponse(reply.body(tree, job.logprobs, job.prompt_logprobs))

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError("Incorrect API key provided", status=401, code="invalid_api_key")

    def _tokens(self, ask: Ask) -> list[int]:
        """The prompt's token ids (chat: through the GGUF's chat template; a completion's text
        tokenized, its token ids as sent); 400 when too long or not the model's."""
        if ask.kind == "chat":
            tokens = tokenizer.chat_tokens(self.scheduler.runner, self.limits, ask.prompt)
        elif isinstance(ask.prompt, str):
            tokens = self.model.tokenize(ask.prompt, add_special=True)
        else:  # token ids: the client's tokenization, used as it is
            token_ids_in_vocabulary(ask.prompt, self.model.n_vocab)
            tokens = ask.prompt
        limit = min(self.limits.prompt_tokens, self.scheduler.cells_per_sequence - 1, self.model.n_ctx_train - 1)
        if len(tokens) > limit:
            raise ApiError(f"This server's maximum prompt length is {limit} tokens; the prompt has {len(tokens)}",
                           param="messages" if ask.kind == "chat" else "prompt", code="context_length_exceeded")
        return tokens

    async def _wait(self, request: Request, job: Job):
        """The job's tree, or None when the client disconnected first (the job is then cancelled)."""
        getter = asyncio.ensure_future(job.queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL)
                if not done:
                    if await request.is_disconnected():
                        self.scheduler.cancel(job)
                        return None
                    continue
                event = getter.result()
                if event[0] == "done":
                    return event[1]
                if event[0] == "error":
                    raise ApiError("the engine failed on this request", status=500, kind="server_error")
                getter = asyncio.ensure_future(job.queue.get())
        finally:
            getter.cancel()

    async def _stream(self, job: Job, reply: Reply):
        """Server-sent events: the first branch as it grows (and, when the client chose n, every
        branch as its own choice index; with echo, a choice's first chunk starts with the prompt),
        then each choice's finish (with its logprobs, the prompt's first under echo), usage on
        request, the eager object on the last chunk, and [DONE]."""
        ask = job.ask
        every_branch = ask.n_given
        sent: dict[int, int] = {}  # characters sent per choice index
        finished = False
        try:
            if reply.chat:
                sent[0] = 0
                yield _sse(reply.chunk(0, "", first=True))
            while True:
                event = await job.queue.get()
                if event[0] == "delta":
                    _, index, text = event
                    if index == 0 or every_branch:
                        first = index not in sent
                        sent[index] = sent.get(index, 0) + len(text)
                        yield _sse(reply.chunk(index, text, first=first))
                    continue
                finished = True
                if event[0] == "error":
                    yield _sse({"error": {"message": "the engine failed on this request", "type": "server_error",
                                          "param": None, "code": None}})
                    return
                for chunk in self._closing_chunks(reply, event[1], sent, every_branch, job):
                    yield _sse(chunk)
                yield _sse("[DONE]")
                return
        finally:
            if not finished:  # the client went away mid-stream
                self.scheduler.cancel(job)

    @staticmethod
    def _closing_chunks(reply: Reply, tree, sent: dict[int, int], every_branch: bool, job: Job) -> list[dict]:
        texts = reply.texts(tree)
        chunks = []
        for seq, text in zip(tree.sequences, texts):
            if seq.id != 0 and not every_branch:
                continue
            rest = text[sent.get(seq.id, 0):]
            if rest or seq.id not in sent:
                chunks.append(reply.chunk(seq.id, rest, first=seq.id not in sent))
            chunks.append(reply.chunk(seq.id, finish=FINISH[seq.finish_reason],
                                      logprobs=reply.logprobs(job.logprobs, seq.id, job.prompt_logprobs)))
        if reply.ask.include_usage or not chunks:
            chunks.append(reply.usage_chunk(tree))
        chunks[-1]["eager"] = reply.eager(tree, texts, with_texts=not every_branch)
        return chunks


async def _read_json(request: Request):
    """The body as JSON, read at most MAX_BODY bytes far: 413 beyond, 400 when it is not JSON."""
    length = request.headers.get("content-length", "")
    too_big = ApiError(f"request body over {MAX_BODY} bytes", status=413, code="request_too_large")
    if length.isdigit() and int(length) > MAX_BODY:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise too_big
    try:
        return json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(f"could not parse the JSON body: {e}") from None
