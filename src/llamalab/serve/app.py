"""The OpenAI-compatible HTTP API: GET /v1/models, POST /v1/completions and /v1/chat/completions, GET /health.

Each request is tokenized, checked and submitted to the `Scheduler`; its outputs come back from the
scheduler thread through an asyncio queue and leave as one JSON body or as server-sent events.
Every refusal is an OpenAI-style error body with a 4xx status; none of them touches other requests.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from llamalab.errors import ContextLengthError, LlamalabError, ServerBusyError, TokenizerError
from llamalab.serve.protocol import ChatBody, CompletionBody, GenerationBody
from llamalab.serve.request import Output, Request
from llamalab.serve.responses import ChatResponses, CompletionResponses, Responses, usage
from llamalab.serve.scheduler import Scheduler
from llamalab.tokenizer import Tokenizer, encode_dialog

DISCONNECT_POLL_S = 0.5  # how often a non-streamed request checks that its client is still there
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (chat defaults to the rest of the context)


class APIError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with a status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def create_app(scheduler: Scheduler, tokenizer: Tokenizer, model_name: str, api_key: str | None = None,
               max_body_bytes: int = 4 * 2**20) -> FastAPI:
    """The FastAPI app serving `scheduler`'s model; it starts and stops the scheduler thread with itself."""
    check_vocabulary_fits(tokenizer, scheduler.model.args.vocab_size)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    hidden_docs = dict(docs_url=None, redoc_url=None, openapi_url=None) if api_key else {}
    app = FastAPI(title="llamalab", lifespan=lifespan, **hidden_docs)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)
    auth = [Depends(_bearer_auth(api_key))] if api_key else []
    if api_key:
        _add_docs(app, auth)
    created = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", **scheduler.stats()}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "llamalab",
                "max_model_len": scheduler.max_seq_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionBody, http: HTTPRequest):
        _check_unicode(body)
        prompt = await asyncio.to_thread(_completion_prompt, body.prompt, tokenizer)
        responses = CompletionResponses(model_name, logprobs=body.logprobs is not None)
        return await generate(body, prompt, body.max_tokens or DEFAULT_MAX_TOKENS, body.logprobs, responses, http)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatBody, http: HTTPRequest):
        _check_unicode(body)
        prompt = await asyncio.to_thread(encode_dialog, tokenizer, [m.as_dict() for m in body.messages])
        max_tokens = body.max_completion_tokens or body.max_tokens or max(scheduler.max_seq_len - len(prompt), 1)
        top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        responses = ChatResponses(model_name, logprobs=body.logprobs)
        return await generate(body, prompt, max_tokens, top_logprobs, responses, http)

    async def generate(body: GenerationBody, prompt: list[int], max_tokens: int, top_logprobs: int | None,
                       responses: Responses, http: HTTPRequest):
        """Submit the request; answer with the whole completion or stream it."""
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        if (field := body.unsupported()) is not None:
            raise APIError(400, f"'{field}' is not supported by this server; leave it at its default", param=field)
        loop = asyncio.get_running_loop()
        received = Streamed(loop) if body.stream else Collected(loop)
        request = Request(prompt, max_tokens, tokenizer, received.add, params=body.sampling_params(),
                          stop=body.stop_strings(), top_logprobs=top_logprobs, ignore_eos=body.ignore_eos)
        scheduler.submit(request)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_events(request, received, responses, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        outputs = await _wait(request, received, http)
        if outputs[-1].error is not None:
            raise APIError(500, outputs[-1].error, type="server_error")
        return responses.whole(outputs, usage(len(prompt), len(request.tokens)))

    return app


# -- producing the answer ------------------------------------------------------------------------------
class Streamed:
    """The outputs of a streamed request, handed from the scheduler thread to the event loop one by one."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def add(self, output: Output) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, output)

    async def next(self) -> list[Output]:
        """The next output and every other one already there."""
        outputs = [await self.queue.get()]
        while not self.queue.empty():
            outputs.append(self.queue.get_nowait())
        return outputs


async def _events(request: Request, streamed: Streamed, responses: Responses,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of a streamed request; if the client leaves, Starlette cancels this and the slot is freed."""
    try:
        finished = False
        while not finished:
            outputs = await streamed.next()  # what the scheduler produced meanwhile goes out in one write
            events = []
            for output in outputs:
                if output.error is not None:
                    events.append(_event(APIError(500, output.error, type="server_error").body()))
                elif (chunk := responses.chunk(output)) is not None:
                    events.append(_event(chunk))
                finished = output.finish_reason is not None
            if finished and include_usage:
                events.append(_event(responses.usage_chunk(usage(len(request.prompt), len(request.tokens)))))
            if events:
                yield "".join(events)
        yield "data: [DONE]\n\n"
    finally:
        request.cancel()


class Collected:
    """The outputs of a non-streamed request, gathered in the scheduler thread; the event loop is woken once."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.outputs, self.done = loop, [], asyncio.Event()

    def add(self, output: Output) -> None:
        self.outputs.append(output)
        if output.finish_reason is not None:
            self.loop.call_soon_threadsafe(self.done.set)


async def _wait(request: Request, collected: Collected, http: HTTPRequest) -> list[Output]:
    """All outputs of a non-streamed request; every DISCONNECT_POLL_S, check that the client is still there."""
    try:
        while True:
            try:
                await asyncio.wait_for(collected.done.wait(), DISCONNECT_POLL_S)
                return collected.outputs
            except TimeoutError:
                if await http.is_disconnected():
                    raise APIError(499, "the client closed the connection") from None
    finally:
        request.cancel()


def _event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _check_unicode(body: GenerationBody) -> None:
    """Raise UnicodeEncodeError (a 400) for text no tokenizer can encode: JSON escapes may spell lone surrogates."""
    json.dumps(body.model_dump(), ensure_ascii=False).encode("utf-8")


def _completion_prompt(prompt: str | list, tokenizer: Tokenizer) -> list[int]:
    """Token ids of a completion prompt: text (with BOS) or ids as given; a list must hold exactly one prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(400, f"got {len(prompt)} prompts; this server completes one prompt per request",
                           param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, bos=True)
    if not prompt:
        raise APIError(400, "the prompt is empty; give text or at least one token id", param="prompt")
    if not all(0 <= i < tokenizer.vocab_size for i in prompt):
        raise APIError(400, f"prompt token ids must be in [0, {tokenizer.vocab_size})", param="prompt")
    return list(prompt)


# -- errors and limits ---------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    """Answer every refusal with an OpenAI-style error body."""

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return e.response()

    @app.exception_handler(LlamalabError)
    async def llamalab_error(_, e: LlamalabError):
        if isinstance(e, ServerBusyError):
            return APIError(429, str(e), type="rate_limit_error", code="server_busy").response()
        code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
        return APIError(400, str(e), code=code).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, e: RequestValidationError):
        errors = e.errors()
        if errors and errors[0]["type"] == "json_invalid":
            detail, where = errors[0].get("ctx", {}).get("error", ""), errors[0]["loc"][-1]
            return APIError(400, f"the body is not valid JSON ({detail} at character {where})").response()
        fields = [".".join(str(part) for part in err["loc"][1:]) or "body" for err in errors]
        problems = [f"{field}: {err['msg']}" for field, err in zip(fields, errors)][:3]
        return APIError(400, "invalid request: " + "; ".join(problems), param=fields[0] if fields else None).response()

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return APIError(e.status_code, str(e.detail), type="invalid_request_error").response()

    @app.exception_handler(UnicodeError)
    async def unicode_error(_, e: UnicodeError):  # JSON may carry lone surrogates ("\\ud800") no tokenizer encodes
        return APIError(400, f"the text is not valid Unicode ({getattr(e, 'reason', e)}); send UTF-8 text").response()

    @app.exception_handler(Exception)
    async def server_error(_, e: Exception):  # a bug: still an OpenAI-style body, not Starlette's plain text
        return APIError(500, f"internal error ({type(e).__name__}); the server keeps running",
                        type="server_error").response()


def check_vocabulary_fits(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Refuse a tokenizer with ids the model has no embedding for (every prompt using them would fail)."""
    if tokenizer.vocab_size > model_vocab_size:
        raise TokenizerError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model_vocab_size}; "
                             "use the tokenizer the model was trained with")


def _add_docs(app: FastAPI, auth: list) -> None:
    """/openapi.json and /docs behind the API key (FastAPI's own routes would serve them to anyone)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi():
        return app.openapi()

    @app.get("/docs", dependencies=auth, include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="llamalab")


def _bearer_auth(api_key: str):
    """A dependency that lets a request through only with `Authorization: Bearer <api_key>`."""

    async def check(http: HTTPRequest):
        scheme, _, token = http.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                           type="invalid_request_error", code="invalid_api_key")

    return check


class BodyLimit:
    """ASGI middleware: read the whole body first and refuse one over `max_bytes` with 413.

    An oversized body is read to its end (up to `drain_bytes`) before the answer, so that the client,
    which sends the body before it reads a response, gets the 413 instead of a reset connection.
    """

    def __init__(self, app, max_bytes: int, drain_bytes: int = 64 * 2**20):
        self.app, self.max_bytes, self.drain_bytes = app, max_bytes, drain_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more and size <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size <= self.max_bytes:
                chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if size > self.max_bytes:
            error = APIError(413, f"request body over {self.max_bytes} bytes; send a shorter prompt")
            return await error.response()(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
