"""The HTTP side: OpenAI-compatible models, completions and chat completions, the RAG ``/v1/answer``,
health, metrics, playground.

Every error is ``{"error": {"message": <one sentence>, "type": …, "param": …, "code": …}}``
(the shape the ``openai`` client reads): 400 a malformed or invalid request (the
``param`` names the field: an unknown parameter, a wrong type or value, an unknown
steering method or a bad strength — the message names the valid values — or a request
over the prompt-token / ``max_tokens`` limits), 404 an unknown model (code
``model_not_found``), 413 a body over the size limit, 429 a full queue or too many open
streams, 503 while draining.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from sparekit.data.formats import available_formats, passages
from sparekit.errors import SparekitError
from sparekit.probes.detectors import DEFAULT_DETECTOR
from sparekit.probes.training_free import check_detector_inputs, question_of, splits, without_context
from sparekit.serve.batcher import Batcher, QueueFull
from sparekit.serve.engine import GREEDY, Engine, Job, Sampling
from sparekit.serve.limits import Limits
from sparekit.serve.metrics import Metrics
from sparekit.serve.options import (OPTIONS_KEY, Capabilities, OptionError, Options, RowSteer, parse_detect,
                                   parse_options, parse_steer)
from sparekit.serve.protocol import (AnswerRequest, ApiError, ChatRequest, CompletionRequest, chat_prompt,
                                     check_model, check_unsupported, error_response, resolve_format, sampling,
                                     stop_strings, validation_error)


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
                reply = error_response(ApiError(503, "The server is shutting down; send the request to another replica."))
                return await reply(scope, receive, send_status)
            too_big = error_response(ApiError(413, f"The request body is larger than this server's limit of "
                                                   f"{self.limits.max_body_bytes} bytes."))
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


def check_prompt(engine: Engine, limits: Limits, text: str) -> None:
    n = engine.count_tokens(text)
    if n > limits.max_prompt_tokens:
        raise ApiError(400, f"The prompt has {n} tokens, more than this server's limit of {limits.max_prompt_tokens}.",
                       "prompt")


def check_max_tokens(limits: Limits, max_tokens: int, param: str = "max_tokens") -> None:
    if max_tokens < 1:
        raise ApiError(400, f"{param} must be at least 1 (got {max_tokens}).", param)
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"{param} is {max_tokens}, more than this server's limit of {limits.max_tokens}.", param)


# -- the app ----------------------------------------------------------------------------------
@dataclass
class _Plan:
    """A checked OpenAI request: what the batcher runs for it and how the reply is shaped."""

    prompts: list[str]
    max_tokens: int
    stop: tuple[str, ...] = ()
    detect: bool = False
    steer: RowSteer | None = None
    sampling: Sampling = GREEDY
    stream: bool = False
    include_usage: bool = False
    chat: bool = False
    #: per prompt, the detector that reads it, and its closed-book twin and question for one other than the probe
    twins: list[tuple[str, str | None, str | None]] | None = None


class _Runner:
    """Submits jobs for one request and turns the batcher's events into an async stream."""

    def __init__(self, app: FastAPI):
        self.engine: Engine = app.state.engine
        self.batcher: Batcher = app.state.batcher
        self.metrics: Metrics = app.state.metrics

    def submit(self, plan: _Plan) -> tuple[asyncio.Queue, list[Job]]:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emitter(index: int):
            return lambda kind, data: loop.call_soon_threadsafe(queue.put_nowait, (index, kind, data))

        twins = plan.twins or [(DEFAULT_DETECTOR, None, None)] * len(plan.prompts)
        jobs = [Job(p, plan.max_tokens, emitter(i), plan.stop, plan.detect, plan.steer, plan.stream, plan.sampling,
                    detector=detector, closed_book=closed, question=question)
                for i, (p, (detector, closed, question)) in enumerate(zip(plan.prompts, twins))]
        try:
            self.batcher.submit(jobs)
        except QueueFull:
            raise ApiError(429, f"The server's queue is full ({self.batcher.max_queue} prompts waiting); retry later.",
                           headers={"Retry-After": "1"}) from None
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


def plan_request(engine: Engine, limits: Limits, body: CompletionRequest | ChatRequest, prompts: list[str],
                 max_tokens: int, stop: tuple[str, ...] = ()) -> _Plan:
    """Every check an OpenAI request gets before it is queued (the first failure is the 400 / 404)."""
    check_model(body.model, engine.lm.info.name)
    check_unsupported(body)
    if not 1 <= len(prompts) <= limits.max_batch:
        raise ApiError(400, f"prompt must be a string or a list of 1 to {limits.max_batch} strings.", "prompt")
    check_max_tokens(limits, max_tokens, "max_completion_tokens" if isinstance(body, ChatRequest)
                     and body.max_completion_tokens is not None else "max_tokens")
    options = parse_options(body.sparekit, engine.capabilities(limits.max_strength))
    for prompt in prompts:
        check_prompt(engine, limits, prompt)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true.", "stream_options")
    caps = engine.capabilities(limits.max_strength)
    twins = [text_twin(p, options, caps) for p in prompts] \
        if options.detect or caps.gate_reads_twin(options.steer) else None
    return _Plan(prompts, max_tokens, stop_strings(body.stop) + stop, options.detect, options.steer,
                 sampling(body, engine.lm.info.vocab_size), body.stream, include_usage,
                 chat=isinstance(body, ChatRequest), twins=twins)


def text_twin(prompt: str, options: Options, caps: Capabilities) -> tuple[str, str | None, str | None]:
    """A prompt given as text: the detector that reads it, and its closed-book twin and question where a detector
    other than the probe or a recall gate reads it (``three_shot`` blocks, as ``sparekit detect PROMPT`` reads them);
    ``auto`` reads a prompt that does not split with the probe, and where there is none, or a named detector or the
    gate cannot read it, a 400 says how to ask."""
    detector = caps.detector_for(options.detector, splits(prompt)) if options.detect else "probe"
    gated = caps.gate_reads_twin(options.steer)
    if options.detect and detector == "probe" and not caps.can_detect:
        raise ApiError(400, "Detection of this prompt is not available: no conflict probes were loaded (start the "
                       "server with --probe DIR), and it is not three_shot blocks, which the recall detector reads; "
                       "or ask /v1/answer with the question and context.", f"{OPTIONS_KEY}.detect")
    if detector == "probe" and not gated:
        return detector, None, None
    reader, param = ((f"the {detector} detector", f"{OPTIONS_KEY}.detect") if detector != "probe"
                     else ("the recall gate", f"{OPTIONS_KEY}.steer.gate"))
    try:
        closed = without_context(prompt)
        question = question_of(prompt) if gated or detector.endswith("recall") else None
    except SparekitError as exc:
        raise ApiError(400, f"{exc.message}: {reader} reads a prompt given as text only as three_shot blocks; ask "
                       "/v1/answer with the question and context instead.", param) from None
    return detector, closed, question


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
    app.state.started = int(time.time())
    app.add_middleware(Guard, metrics=metrics, limits=limits, traffic=app.state.traffic)
    _error_handlers(app)
    _info_routes(app, engine, metrics, playground)
    _generation_routes(app, engine, limits)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error as the OpenAI error object, naming the ``param`` where one is at fault."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(OptionError)
    async def bad_option(request: Request, exc: OptionError) -> JSONResponse:  # the vLLM plugin's 400s, alike
        return JSONResponse(exc.body(), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc, request.headers.get("content-type", "")))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        path = request.url.path
        message = {404: f"No endpoint {path}.", 405: f"{request.method} is not allowed on {path}."}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))))


def _info_routes(app: FastAPI, engine: Engine, metrics: Metrics, playground: str) -> None:
    """The playground, health, metrics and model listing."""
    model_name = engine.lm.info.name
    formats = available_formats(engine.lm.tokenizer)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(playground)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        return {"status": "ok", "model": model_name, "queue_depth": app.state.batcher.depth,
                "detect": engine.can_detect, "methods": engine.method_names(), "prompt_formats": formats}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(model_name, app.state.started)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        check_model(name, model_name)
        return _model_card(model_name, app.state.started)


def _generation_routes(app: FastAPI, engine: Engine, limits: Limits) -> None:
    """The OpenAI completions and chat endpoints and sparekit's ``/v1/answer``."""
    model_name = engine.lm.info.name

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        plan = plan_request(engine, limits, body, prompts, 16 if body.max_tokens is None else body.max_tokens)
        return await _reply(app, request, plan, {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                                                 "created": int(time.time()), "model": model_name})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        prompt, turn_ends = chat_prompt(engine.lm.tokenizer, body.messages)
        max_tokens = next((m for m in (body.max_completion_tokens, body.max_tokens) if m is not None),
                          limits.max_tokens)
        plan = plan_request(engine, limits, body, [prompt], max_tokens, turn_ends)
        return await _reply(app, request, plan, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                                                 "created": int(time.time()), "model": model_name})

    @app.post("/v1/answer")
    async def answer(body: AnswerRequest, request: Request):
        check_max_tokens(limits, body.max_tokens)
        if not body.question.strip():
            raise ApiError(400, "question must not be empty.", "question")
        caps = engine.capabilities(limits.max_strength)
        steer = None if body.steer is None else parse_steer(body.steer, caps, "steer")
        builder = engine.answer_builder(resolve_format(body.prompt_format, engine))
        prompt = builder(body.question, body.context)
        check_prompt(engine, limits, prompt)
        detect, detector = parse_detect(body.detect, caps, "detect")
        detector = caps.detector_for(detector, bool(passages(body.context)))
        if detect and detector == "probe" and not caps.can_detect:
            if body.detect is not True:
                raise ApiError(400, "Detection without a context is the probe's, and no conflict probes were loaded "
                               "(start the server with --probe DIR).", "detect")
            detect = False  # detection is on by default: a server without probes answers without a reading
        elif detect and detector != "probe":
            try:  # the check `sparekit detect` makes: a context-contrast detector needs a context
                check_detector_inputs(detector, None, engine.probes and engine.probes.folder,
                                      bool(passages(body.context)))
            except SparekitError as exc:
                raise ApiError(400, f"{exc.message[:1].upper()}{exc.message[1:]}.", "detect") from None
        if caps.gate_reads_twin(steer) and not passages(body.context):
            raise ApiError(400, "The recall gate contrasts the prompt with and without its context, and none was "
                           "given; pass a context or set steer.gate to false.", "steer.gate")
        plan = _Plan([prompt], body.max_tokens, ("\n",), detect, steer,
                     twins=[(detector, builder.without_passages(body.question), body.question)])
        runner = _Runner(app)
        queue, jobs = runner.submit(plan)
        results = [data async for _, kind, data in runner.events(request, queue, jobs) if kind == "done"]
        if not results:
            return Response(status_code=499)
        return {"model": model_name, "answer": results[0]["text"].strip(), "finish_reason": results[0]["finish_reason"],
                "sparekit": results[0]["sparekit"], "usage": _usage(results)}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "sparekit"}


async def _reply(app: FastAPI, request: Request, plan: _Plan, head: dict):
    """Run a checked plan: an event stream, or one JSON body once every prompt is done."""
    runner = _Runner(app)
    if plan.stream:
        limits, metrics = app.state.limits, app.state.metrics
        if app.state.streams >= limits.max_streams:
            raise ApiError(429, f"Too many streams are open (limit {limits.max_streams}); retry later.",
                           headers={"Retry-After": "1"})
        queue, jobs = runner.submit(plan)
        app.state.streams += 1
        metrics.streams.inc()

        def closed() -> None:
            app.state.streams -= 1
            metrics.streams.dec()
            for job in jobs:  # no-op for finished jobs; covers a client gone before the first chunk
                runner.batcher.cancel(job)

        return _Stream(_sse(runner, request, queue, jobs, head, plan), closed)
    queue, jobs = runner.submit(plan)
    results = {i: data async for i, kind, data in runner.events(request, queue, jobs) if kind == "done"}
    if len(results) < len(jobs):
        return Response(status_code=499)  # the client went away; nobody reads this
    choices = [{"index": i, **_content(plan, r["text"]), "finish_reason": r["finish_reason"], "logprobs": None,
                "sparekit": r["sparekit"]} for i, r in sorted(results.items())]
    return {**head, "choices": choices, "usage": _usage(results.values()), "sparekit": choices[0]["sparekit"]}


def _content(plan: _Plan, text: str, first: bool = False, delta: bool = False) -> dict:
    """A choice's text in the request's shape: ``text`` (completions), ``message`` or ``delta`` (chat)."""
    if not plan.chat:
        return {"text": text}
    if delta:
        return {"delta": {"role": "assistant", "content": text} if first else {"content": text}}
    return {"message": {"role": "assistant", "content": text}}


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


async def _sse(runner: _Runner, request: Request, queue: asyncio.Queue, jobs: list[Job], head: dict,
               plan: _Plan) -> AsyncIterator[str]:
    """Server-sent events in the OpenAI shape; the first chunk of each choice carries its ``sparekit`` object,
    and with ``stream_options.include_usage`` a last chunk (no choices) carries the usage."""
    head = {**head, "object": "chat.completion.chunk"} if plan.chat else head

    def chunk(index: int, text: str, finish_reason: str | None = None, first: bool = False, **extra) -> str:
        choice = {"index": index, **_content(plan, text, first, delta=True), "finish_reason": finish_reason,
                  "logprobs": None}
        return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n"

    done: list[dict] = []
    try:
        async for index, kind, data in runner.events(request, queue, jobs):
            if kind == "sparekit":
                yield chunk(index, "", first=True, sparekit=data)
            elif kind == "delta":
                yield chunk(index, data)
            else:
                done.append(data)
                yield chunk(index, "", data["finish_reason"])
        if plan.include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(done)})}\n\n"
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
