"""The API-server side: ``--middleware sparekit_vllm.api.SparekitMiddleware`` on ``vllm serve``.

A ``/v1/completions`` or ``/v1/chat/completions`` body with a ``sparekit`` key (the built-in engine's
shape: ``extra_body={"sparekit": {"detect": true, "steer": {...}}}``) is checked first (a bad value is an
OpenAI-shaped 400 and never reaches the engine), then forwarded to vLLM with the key replaced by a
:class:`~sparekit_vllm.options.Plan` in ``vllm_xargs``. The readings come back from the workers
(``collective_rpc("sparekit_take", key)``) and are added to the JSON response as a ``sparekit`` object,
at the top and in each choice, as the built-in engine answers.

Why a middleware: the response is the natural place (one round trip, same shape on both engines), and
vLLM's own handlers stay untouched. A request that needs its reading before the edits (a gate, or
detection with an edit at or below the probe layer) first runs a one-token unsteered pass; with prefix
caching on, the steered pass then recomputes only the last prompt token. A steered request carries a
``cache_salt``, so its edited KV is never reused by a request with other settings. Bodies without a
``sparekit`` key pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

from sparekit.serve.options import OPTIONS_KEY, OptionError, Options, RowSteer, parse_options

from sparekit_vllm.bundle import bundle_from_env
from sparekit_vllm.options import PLAN_KEY, Plan, Served

ROUTES = ("/v1/completions", "/v1/chat/completions")


class SparekitMiddleware:
    def __init__(self, app: Any):
        self.app = app
        self._caps: Served | None = None
        self._installed = False
        self._lock = asyncio.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTES:
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        payload = _json_object(body) if OPTIONS_KEY.encode() in body else None
        if payload is None or OPTIONS_KEY not in payload:
            return await self.app(scope, _replay(body), send)
        try:
            options = parse_options(payload.pop(OPTIONS_KEY), await self._capabilities())
            _check_request(payload, options)
        except OptionError as exc:
            return await _send_json(send, 400, exc.body())
        await self._install(scope)
        await self._steer(scope, payload, options, send)

    async def _steer(self, scope: dict, payload: dict, options: Options, send: Any) -> None:
        caps, reading = await self._capabilities(), None
        steer = options.steer
        if caps.reads_first(options):  # the unsteered pass: its readings, and the gate's decision
            first = Plan(uuid.uuid4().hex, detect=options.detect, gate=steer.method if steer.gate else None)
            status, headers, out = await _call(self.app, scope, _with_plan({**payload, "stream": False}, first, 1))
            if status != 200:
                return await _send_raw(send, status, headers, out)
            reading = await self._take(scope, first.key)
            if steer.gate and not reading["fired"]:
                steer = None
        main = Plan(uuid.uuid4().hex, detect=options.detect and reading is None,
                    steer=None if steer is None else RowSteer(steer.method, steer.toward, steer.strength))
        body = _with_plan(payload, main)
        if payload.get("stream"):
            return await self.app(_inner_scope(scope, body), _replay(body), send)
        status, headers, out = await _call(self.app, scope, body)
        if status != 200:
            return await _send_raw(send, status, headers, out)
        if main.detect:
            reading = await self._take(scope, main.key)
        answer = json.loads(out)
        extra = describe(options, reading, steered=steer is not None)
        answer[OPTIONS_KEY] = extra
        for choice in answer.get("choices", []):
            choice[OPTIONS_KEY] = extra
        await _send_json(send, 200, answer)

    async def _capabilities(self) -> Served:
        if self._caps is None:  # the folders are read once, off the event loop
            bundle = await asyncio.to_thread(bundle_from_env)
            self._caps = bundle.capabilities(float(os.environ.get("SPAREKIT_VLLM_MAX_STRENGTH", "16")))
        return self._caps

    async def _install(self, scope: dict) -> None:
        async with self._lock:
            if not self._installed:
                await scope["app"].state.engine_client.collective_rpc("sparekit_install")
                self._installed = True

    async def _take(self, scope: dict, key: str) -> dict:
        results = await scope["app"].state.engine_client.collective_rpc("sparekit_take", args=(key,))
        found = next((r for r in results if r is not None), None)
        if found is None:
            raise RuntimeError(f"sparekit-vllm: no readings for plan {key}")
        return found


def describe(options: Options, reading: dict | None, steered: bool) -> dict:
    """The ``sparekit`` object of a response, with the built-in engine's keys."""
    out: dict[str, Any] = dict((reading or {}).get("probes") or {}) if options.detect else {}
    steer = options.steer
    if steer is None:
        out.update(steered=False, method="none")
    else:
        out.update(steered=steered, method=steer.method, toward=steer.toward, strength=steer.strength,
                   gate=steer.gate)
    return out


def _check_request(payload: dict, options: Options) -> None:
    """Refuse, in one line, what the plugin cannot attribute to one request's readings."""
    if PLAN_KEY in (payload.get("vllm_xargs") or {}):
        raise OptionError(f"vllm_xargs.{PLAN_KEY} is set by the server; send the options under "
                          f"{OPTIONS_KEY!r}.", f"vllm_xargs.{PLAN_KEY}")
    if isinstance(payload.get("prompt"), list) and not all(isinstance(p, int) for p in payload["prompt"]):
        raise OptionError(f"{OPTIONS_KEY} options need one prompt per request (got a list of prompts).", "prompt")
    if payload.get("n", 1) != 1:
        raise OptionError(f"{OPTIONS_KEY} options need n = 1.", "n")
    if payload.get("stream") and options.detect:
        raise OptionError("detect needs stream = false on the vLLM engine (the reading comes with the response).",
                          f"{OPTIONS_KEY}.detect")
    if payload.get("stream") and options.steer is not None and options.steer.gate:
        raise OptionError("a gated steer needs stream = false on the vLLM engine.", f"{OPTIONS_KEY}.steer.gate")


def _with_plan(payload: dict, plan: Plan, max_tokens: int | None = None) -> bytes:
    body = {**payload, "vllm_xargs": {**(payload.get("vllm_xargs") or {}), **plan.extra_args()}}
    if plan.steer is not None:  # the edited KV is this setting's own (prefix caching keys on the salt)
        body["cache_salt"] = f"sparekit:{plan.steer.method}:{plan.steer.toward}:{plan.steer.strength!r}"
    if max_tokens is not None:
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = max_tokens
    return json.dumps(body).encode()


def _json_object(body: bytes) -> dict | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None  # vLLM answers malformed JSON itself
    return payload if isinstance(payload, dict) else None


async def _read_body(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # as a client that keeps the connection open: wait for disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _call(app: Any, scope: dict, body: bytes) -> tuple[int, list, bytes]:
    """Run vLLM's handler on ``body`` and keep its whole response."""
    parts: dict[str, Any] = {"status": 500, "headers": [], "body": []}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            parts["status"], parts["headers"] = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            parts["body"].append(message.get("body", b""))

    await app(_inner_scope(scope, body), _replay(body), send)
    return parts["status"], parts["headers"], b"".join(parts["body"])


def _inner_scope(scope: dict, body: bytes) -> dict:
    """``scope`` for a rewritten body: its content-length header follows."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}


async def _send_raw(send: Any, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await _send_raw(send, status, [(b"content-type", b"application/json"),
                                   (b"content-length", str(len(body)).encode())], body)
