"""The OpenAI wire format: request bodies, their checks, and errors shaped as the ``openai`` client reads them.

Requests are strict: a parameter this server does not know is refused (400, naming it)
rather than dropped, so a misplaced option (``"steer"`` at the top level instead of under
``"sparekit"``) cannot pass as an unsteered answer. Sampling parameters are honoured
(seeded per request); the ones without an implementation here (``n`` > 1, ``best_of``,
``logprobs``, ``echo``, ``suffix``) are refused alike.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from sparekit.data.formats import DEFAULT_FORMAT, PromptFormat, apply_chat_template, prompt_format
from sparekit.errors import SparekitError
from sparekit.serve.engine import Engine, Sampling
from sparekit.serve.options import OPTION_KEYS, OPTIONS_KEY

_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(exc: ApiError) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": _ERROR_TYPES.get(exc.status, "error"), "param": exc.param,
                      "code": exc.code}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


# -- request bodies -------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _OpenAIRequest(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None  # an end-user id for the operator's logs; does not change the answer
    sparekit: Any = None  # checked by sparekit.serve.options.parse_options, as the vLLM plugin checks it


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None


class ChatRequest(_OpenAIRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    context: str | list[str] | None = None
    question: str
    prompt_format: str = DEFAULT_FORMAT
    steer: Any = None  # checked by sparekit.serve.options.parse_steer
    detect: bool | str = True  # checked by sparekit.serve.options.parse_detect
    max_tokens: int = 12


# -- checks ----------------------------------------------------------------------------------
def validation_error(exc: RequestValidationError, content_type: str) -> ApiError:
    """One sentence (and the ``param``) for the first problem pydantic found."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, "The request body is not valid JSON.")
    if tuple(first.get("loc", ())) == ("body",) and "json" not in content_type:
        return ApiError(400, "Send the request body as a JSON object with Content-Type: application/json.")
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    if first.get("type") == "extra_forbidden":
        hint = (f' (sparekit options go under "{OPTIONS_KEY}": {{...}}, e.g. extra_body={{"{OPTIONS_KEY}": '
                f'{{"{param}": ...}}}} with the openai client)' if param in OPTION_KEYS else "")
        return ApiError(400, f"Unknown parameter: {param}{hint}.", param)
    return ApiError(400, f"Invalid request: {param or 'body'}: {first.get('msg', 'invalid value')}.", param)


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise ApiError(404, f"The model {requested!r} does not exist on this server; it serves {served!r} "
                            "(GET /v1/models).", "model", "model_not_found")


def check_unsupported(body: CompletionRequest | ChatRequest) -> None:
    """Refuse, alike and by name, every OpenAI parameter this server does not implement."""
    present = {"n": body.n != 1}
    if isinstance(body, CompletionRequest):
        present |= {"best_of": body.best_of not in (None, 1), "logprobs": body.logprobs is not None,
                    "echo": body.echo, "suffix": body.suffix is not None}
    else:
        present |= {"logprobs": body.logprobs, "top_logprobs": body.top_logprobs is not None}
    for param, given in present.items():
        if given:
            raise ApiError(400, f"{param} is not supported by this server; leave it out.", param)


def sampling(body: CompletionRequest | ChatRequest, vocab_size: int) -> Sampling:
    """The request's sampling parameters, range-checked as OpenAI documents them."""
    bounds = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "frequency_penalty": (-2.0, 2.0),
              "presence_penalty": (-2.0, 2.0)}
    for param, (low, high) in bounds.items():
        value = getattr(body, param)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise ApiError(400, f"{param} must be a number from {low:g} to {high:g} (got {value}).", param)
    if body.top_p == 0:
        raise ApiError(400, "top_p must be greater than 0.", "top_p")
    bias: dict[int, float] = {}
    for token, value in (body.logit_bias or {}).items():
        if not token.isdigit() or int(token) >= vocab_size or not -100 <= value <= 100:
            raise ApiError(400, f"logit_bias maps token ids below {vocab_size} to numbers from -100 to 100 "
                                f"(got {token!r}: {value}).", "logit_bias")
        bias[int(token)] = value
    return Sampling(temperature=0.0 if body.temperature is None else body.temperature,
                    top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed,
                    frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
                    logit_bias=bias)


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(strings) > 4 or not all(strings):
        raise ApiError(400, "stop must be up to 4 non-empty strings.", "stop")
    return strings


def resolve_format(name: str, engine: Engine) -> PromptFormat:
    """The requested prompt format, or a 400 that names the valid ones (or says the model has no chat template)."""
    try:
        return prompt_format(name, engine.lm.tokenizer)
    except SparekitError as exc:
        raise ApiError(400, f"{exc}.", "prompt_format") from None


def chat_text(content: str | list[dict[str, Any]]) -> str:
    """A message's text: a string, or OpenAI content parts of type ``text`` (images are refused)."""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"Only text content parts are supported (got type {part.get('type')!r}).",
                           "messages.content")
        texts.append(part["text"])
    return "".join(texts)


#: how a model without a chat template (a base model such as the default Gemma 3 270M) reads a conversation
PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def chat_prompt(tokenizer, messages: list[ChatMessage]) -> tuple[str, tuple[str, ...]]:
    """The prompt text for ``messages`` and the stop strings that end the assistant's turn.

    With the model's chat template when it has one (the template's leading BOS is dropped:
    the engine's tokenizer adds it); else plain ``Role: text`` lines ending in ``Assistant:``.
    """
    turns = [{"role": m.role if m.role != "developer" else "system", "content": chat_text(m.content)}
             for m in messages]
    if not turns:
        raise ApiError(400, "messages must hold at least one message.", "messages")
    if tokenizer.chat_template:
        return apply_chat_template(tokenizer, turns), ()
    lines = "".join(f"{PLAIN_ROLES[t['role']]}: {t['content']}\n" for t in turns)
    return lines + "Assistant:", tuple(f"\n{role}:" for role in ("User", "System"))
