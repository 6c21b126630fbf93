"""The HTTP side: OpenAI-compatible completions, the RAG ``/v1/answer``, health, metrics, playground.

Every error is ``{"error": {"message": <one sentence>, "type": …, "code": <status>}}``
(the shape the ``openai`` client reads): 400 malformed JSON or a request over the
prompt-token / ``max_tokens`` limits, 413 a body over the size limit, 422 a field with
a wrong type or value (unknown steering method, bad strength: the message names the
valid values), 429 a full queue or too many open streams, 503 while draining.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictInt
from starlette.exceptions import HTTPException

from sparekit.serve.batcher import Batcher, QueueFull
from sparekit.serve.engine import Engine, Job, RowSteer
from sparekit.serve.metrics import Metrics


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces; each is a ``sparekit serve`` option."""

    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_tokens: int = 256
    max_queue: int = 256
    max_streams: int = 32
    max_batch: int = 16
    batch_wait_ms: float = 10.0
    max_strength: float = 16.0
    drain_timeout_s: float = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


_ERROR_TYPES = {400: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "unavailable"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "error"), "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- request bodies -------------------------------------------------------------------------
class SteerSpec(BaseModel):
    """Checked by hand in :func:`resolve_steer`, so a bad value gets a message naming the valid ones."""

    model_config = ConfigDict(extra="forbid")
    method: Any = "spare"
    toward: Any = None
    strength: Any = None
    gate: bool = False


class SparekitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detect: bool = False
    steer: SteerSpec | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields without meaning here (user, stream_options…)
    model: str | None = None
    prompt: str | list[str]
    max_tokens: StrictInt = 16  # strict: JSON true would otherwise count as 1
    temperature: float | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    sparekit: SparekitOptions | None = None


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str | None = None
    question: str
    steer: SteerSpec | None = None
    detect: bool = True
    max_tokens: StrictInt = 12


# -- the middleware: drain, body size, in-flight count, request metrics -----------------------
@dataclass
class Traffic:
    """Shared between the middleware and :class:`Server`: drain flag and requests being handled."""

    draining: bool = False
    in_flight: int = 0


class Guard:
    """Pure ASGI middleware in front of every request."""

    def __init__(self, app, metrics: Metrics, limits: Limits, traffic: Traffic):
        self.app, self.metrics, self.limits, self.traffic = app, metrics, limits, traffic

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.traffic.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            if self.traffic.draining:
                reply = error_response(503, "The server is shutting down; send the request to another replica.")
                return await reply(scope, receive, send_status)
            too_big = error_response(413, f"The request body is larger than this server's limit of "
                                          f"{self.limits.max_body_bytes} bytes.")
            headers = dict(scope.get("headers") or [])
            if int(headers.get(b"content-length", b"0") or 0) > self.limits.max_body_bytes:
                return await too_big(scope, receive, send_status)
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > self.limits.max_body_bytes:
                    return await too_big(scope, receive, send_status)
                more = message.get("more_body", False)
            replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

            async def receive_again():
                return replay.pop() if replay else await receive()

            await self.app(scope, receive_again, send_status)
        finally:
            self.traffic.in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.record(scope["path"], status, time.perf_counter() - start)


# -- request checks -----------------------------------------------------------------------------
def resolve_steer(spec: SteerSpec | None, engine: Engine, limits: Limits) -> RowSteer | None:
    """A validated :class:`RowSteer`, or a 422 that names the valid values."""
    if spec is None or spec.method == "none":
        return None
    names = engine.method_names()
    if not isinstance(spec.method, str) or spec.method not in engine.steering.methods:
        raise ApiError(422, f"Unknown steering method {spec.method!r}; valid methods: {', '.join(names)}.")
    directions = sorted(engine.steering.methods[spec.method])
    if spec.toward not in directions:
        raise ApiError(422, f"steer.toward must be one of: {', '.join(directions)} (got {spec.toward!r}).")
    tuned = engine.default_strength(spec.method, spec.toward)
    strength = tuned if spec.strength is None else spec.strength
    if (isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength)
            or not 0 <= strength <= limits.max_strength):
        raise ApiError(422, f"steer.strength must be a number from 0 to {limits.max_strength:g} "
                            f"(got {spec.strength!r}; {spec.method} toward {spec.toward} is tuned at {tuned:g}).")
    if spec.gate and spec.method not in engine.steering.gates:
        gated = sorted(engine.steering.gates)
        raise ApiError(422, f"No calibrated conflict gate for method {spec.method!r}; set gate to false"
                            f"{' or use ' + ', '.join(gated) if gated else ''}.")
    return RowSteer(spec.method, spec.toward, float(strength), bool(spec.gate))


def check_prompt(engine: Engine, limits: Limits, text: str) -> None:
    n = engine.count_tokens(text)
    if n > limits.max_prompt_tokens:
        raise ApiError(400, f"The prompt has {n} tokens, more than this server's limit of {limits.max_prompt_tokens}.")


def check_max_tokens(limits: Limits, max_tokens: int) -> None:
    if max_tokens < 1:
        raise ApiError(422, f"max_tokens must be at least 1 (got {max_tokens}).")
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {max_tokens}, more than this server's limit of {limits.max_tokens}.")


def validation_message(exc: RequestValidationError, content_type: str) -> tuple[int, str]:
    """One sentence for the first problem pydantic found (400 when the body is not JSON at all)."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return 400, "The request body is not valid JSON."
    if tuple(first.get("loc", ())) == ("body",) and "json" not in content_type:
        return 400, "Send the request body as a JSON object with Content-Type: application/json."
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"Invalid request: {where}: {first.get('msg', 'invalid value')}."


# -- the app ----------------------------------------------------------------------------------
class _Runner:
    """Submits jobs for one request and turns the batcher's events into an async stream."""

    def __init__(self, app: FastAPI):
        self.engine: Engine = app.state.engine
        self.batcher: Batcher = app.state.batcher
        self.metrics: Metrics = app.state.metrics

    def submit(self, prompts: Sequence[str], max_tokens: int, stop: tuple[str, ...], detect: bool,
               steer: RowSteer | None, stream: bool) -> tuple[asyncio.Queue, list[Job]]:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emitter(index: int):
            return lambda kind, data: loop.call_soon_threadsafe(queue.put_nowait, (index, kind, data))

        jobs = [Job(p, max_tokens, emitter(i), stop, detect, steer, stream) for i, p in enumerate(prompts)]
        try:
            self.batcher.submit(jobs)
        except QueueFull:
            raise ApiError(429, f"The server's queue is full ({self.batcher.max_queue} prompts waiting); retry later.",
                           {"Retry-After": "1"}) from None
        return queue, jobs

    async def events(self, request: Request, queue: asyncio.Queue, jobs: list[Job]) -> AsyncIterator[tuple]:
        """``(index, kind, data)`` until every job is done; a client that goes away cancels its jobs."""
        finished: set[int] = set()
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while len(finished) < len(jobs):
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return
                index, kind, data = get.result()
                if kind == "error":
                    raise ApiError(500, f"The model failed on this batch ({data}); retry.")
                if kind == "done":
                    finished.add(index)
                    self.metrics.tokens.inc(data["completion_tokens"])
                yield index, kind, data
        finally:
            gone.cancel()
            for i, job in enumerate(jobs):
                if i not in finished:
                    self.batcher.cancel(job)
                    self.metrics.cancelled.inc()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, limits: Limits = Limits()) -> FastAPI:
    """The ASGI app; the batcher thread starts and stops with the app's lifespan."""
    metrics = Metrics()
    playground = resources.files("sparekit.serve").joinpath("playground.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher.start()
        yield
        await asyncio.to_thread(app.state.batcher.close, limits.drain_timeout_s)

    app = FastAPI(title="sparekit serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits
    app.state.batcher = Batcher(engine, metrics, limits.max_batch, limits.batch_wait_ms / 1000, limits.max_queue)
    app.state.streams = 0
    app.state.traffic = Traffic()
    app.add_middleware(Guard, metrics=metrics, limits=limits, traffic=app.state.traffic)
    model_name = engine.lm.info.name

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*validation_message(exc, request.headers.get("content-type", "")))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        path = request.url.path
        message = {404: f"No endpoint {path}.", 405: f"{request.method} is not allowed on {path}."}
        return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(playground)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        return {"status": "ok", "model": model_name, "queue_depth": app.state.batcher.depth,
                "detect": engine.can_detect, "methods": engine.method_names()}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not 1 <= len(prompts) <= limits.max_batch:
            raise ApiError(422, f"prompt must be a string or a list of 1 to {limits.max_batch} strings.")
        if body.n != 1 or body.echo or body.logprobs is not None or body.suffix is not None:
            raise ApiError(422, "n other than 1, echo, logprobs and suffix are not supported by this server.")
        if body.temperature not in (None, 0):
            raise ApiError(422, f"temperature must be 0: this server decodes greedily (got {body.temperature}).")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > 4 or not all(stop):
            raise ApiError(422, "stop must be up to 4 non-empty strings.")
        check_max_tokens(limits, body.max_tokens)
        options = body.sparekit or SparekitOptions()
        steer = resolve_steer(options.steer, engine, limits)
        if options.detect and not engine.can_detect:
            raise ApiError(422, "Detection is not available: start the server with --probe DIR for this model.")
        for prompt in prompts:
            check_prompt(engine, limits, prompt)
        runner = _Runner(app)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        if body.stream:
            if app.state.streams >= limits.max_streams:
                raise ApiError(429, f"Too many streams are open (limit {limits.max_streams}); retry later.",
                               {"Retry-After": "1"})
            queue, jobs = runner.submit(prompts, body.max_tokens, stop, options.detect, steer, stream=True)
            app.state.streams += 1
            metrics.streams.inc()

            def closed() -> None:
                app.state.streams -= 1
                metrics.streams.dec()
                for job in jobs:  # no-op for finished jobs; covers a client gone before the first chunk
                    runner.batcher.cancel(job)

            return _Stream(_sse(runner, request, queue, jobs, head), closed)
        queue, jobs = runner.submit(prompts, body.max_tokens, stop, options.detect, steer, stream=False)
        results = {i: data async for i, kind, data in runner.events(request, queue, jobs) if kind == "done"}
        if len(results) < len(jobs):
            return Response(status_code=499)  # the client went away; nobody reads this
        choices = [{"index": i, "text": r["text"], "finish_reason": r["finish_reason"], "logprobs": None,
                    "sparekit": r["sparekit"]} for i, r in sorted(results.items())]
        return {**head, "choices": choices, "usage": _usage(results.values()), "sparekit": choices[0]["sparekit"]}

    @app.post("/v1/answer")
    async def answer(body: AnswerRequest, request: Request):
        check_max_tokens(limits, body.max_tokens)
        if not body.question.strip():
            raise ApiError(422, "question must be a non-empty string.")
        steer = resolve_steer(body.steer, engine, limits)
        detect = body.detect and engine.can_detect
        prompt = engine.answer_prompt(body.context, body.question)
        check_prompt(engine, limits, prompt)
        runner = _Runner(app)
        queue, jobs = runner.submit([prompt], body.max_tokens, ("\n",), detect, steer, stream=False)
        results = [data async for _, kind, data in runner.events(request, queue, jobs) if kind == "done"]
        if not results:
            return Response(status_code=499)
        return {"model": model_name, "answer": results[0]["text"].strip(), "finish_reason": results[0]["finish_reason"],
                "sparekit": results[0]["sparekit"], "usage": _usage(results)}

    return app


def _usage(results) -> dict[str, int]:
    prompt = sum(r["prompt_tokens"] for r in results)
    completion = sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Stream(StreamingResponse):
    """An event stream that frees its slot however it ends (even if its body never started)."""

    def __init__(self, events: AsyncIterator[str], on_close):
        super().__init__(events, media_type="text/event-stream")
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _sse(runner: _Runner, request: Request, queue: asyncio.Queue, jobs: list[Job], head: dict
               ) -> AsyncIterator[str]:
    """Server-sent events in the OpenAI shape; the first chunk of each choice carries its ``sparekit`` object."""

    def chunk(index: int, text: str, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n"

    try:
        async for index, kind, data in runner.events(request, queue, jobs):
            if kind == "sparekit":
                yield chunk(index, "", sparekit=data)
            elif kind == "delta":
                yield chunk(index, data)
            else:
                yield chunk(index, "", data["finish_reason"])
        yield "data: [DONE]\n\n"
    except ApiError as exc:
        yield f"data: {json.dumps({'error': {'message': exc.message, 'type': 'server_error', 'code': exc.status}})}\n\n"


class Server(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains: new requests get 503, in-flight ones finish (bounded).

    A second signal stops at once (uvicorn's own handling).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **config: Any):
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=config.pop("log_level", "warning"),
                                        **config))
        self.traffic: Traffic = app.state.traffic
        self.drain_timeout_s: float = app.state.limits.drain_timeout_s

    def handle_exit(self, sig, frame) -> None:
        if self.traffic.draining:
            return super().handle_exit(sig, frame)
        self.traffic.draining = True
        threading.Thread(target=self._drain, name="sparekit-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while self.traffic.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.should_exit = True

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return self.servers[0].sockets[0].getsockname()[1]


@contextmanager
def serve_in_thread(engine: Engine, limits: Limits = Limits(), host: str = "127.0.0.1",
                    port: int = 0) -> Iterator[tuple[Server, str]]:
    """A real server in a background thread (tests, benchmarks, notebooks); yields it and its base URL.

    ``port=0`` takes a free port. Signals stay with the main thread: call
    ``server.handle_exit(signal.SIGTERM, None)`` to drain.
    """
    server = Server(create_app(engine, limits), host=host, port=port)
    thread = threading.Thread(target=server.run, name="sparekit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield server, f"http://{host}:{server.port}"
    finally:
        server.should_exit = True
        thread.join(limits.drain_timeout_s + 30)
