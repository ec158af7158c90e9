"""The OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions; /tokenize, /detokenize
and /tokenizer_info in vLLM's shapes (lm-evaluation-harness tokenizes through them); /health.

Each request is tokenized, checked and submitted to the `Scheduler` as one sequence per choice (several
prompts, `n`, `best_of`); their outputs come back from the scheduler thread through the event loop and leave
as one JSON body or as server-sent events. Every refusal is an OpenAI-style error body with a 4xx status
naming the field at fault; none of them touches other requests.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from llamalab.errors import ContextLengthError, LlamalabError, ServerBusyError, TokenizerError
from llamalab.serve.choices import (
    Collected,
    Streamed,
    answer_usage,
    best_of,
    events,
    gather,
    submit_all,
)
from llamalab.serve.prompts import Grammars, chat_prompt, completion_prompts
from llamalab.serve.protocol import APIError, ChatBody, CompletionBody, FieldError, GenerationBody
from llamalab.serve.request import Request
from llamalab.serve.responses import ChatResponses, CompletionResponses, Responses
from llamalab.serve.scheduler import Scheduler
from llamalab.serve.tools import ToolParser
from llamalab.tokenizer import Tokenizer

__all__ = ["APIError", "create_app"]

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (chat defaults to the rest of the context)


class TokenizeBody(BaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # BOS as the tokenizer adds it; special-token text is always a special id


class DetokenizeBody(BaseModel):
    model: str | None = None
    tokens: list[int] = Field(max_length=2**20)


def create_app(scheduler: Scheduler, tokenizer: Tokenizer, model_name: str, api_key: str | None = None,
               max_body_bytes: int = 4 * 2**20) -> FastAPI:
    """The FastAPI app serving `scheduler`'s model; it starts and stops the scheduler thread with itself."""
    check_vocabulary_fits(tokenizer, scheduler.model.args.vocab_size)
    grammars = Grammars(tokenizer, scheduler.vocab_size)

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

    def check_model(body) -> None:
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        return {"status": "ok", **scheduler.stats()}

    @app.get("/metrics")
    async def metrics():
        """Prometheus' text format: requests, KV cache, tokens, latencies (key-free like /health: no content)."""
        return Response(scheduler.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=auth)
    async def models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "llamalab",
                "max_model_len": scheduler.max_seq_len}
        return {"object": "list", "data": [card]}

    @app.post("/tokenize", dependencies=auth)
    async def tokenize(body: TokenizeBody):
        check_model(body)
        _check_unicode(body)
        bos = None if body.add_special_tokens else False
        tokens = await asyncio.to_thread(tokenizer.encode, body.prompt, bos=bos, eos=None if bos is None else False,
                                         allow_special=True)
        return {"count": len(tokens), "max_model_len": scheduler.max_seq_len, "tokens": tokens, "token_strs": None}

    @app.post("/detokenize", dependencies=auth)
    async def detokenize(body: DetokenizeBody):
        check_model(body)
        bad = [t for t in body.tokens if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise FieldError("tokens", f"token ids {bad[:5]} are outside [0, {tokenizer.vocab_size})")
        return {"prompt": await asyncio.to_thread(tokenizer.decode, body.tokens)}

    @app.get("/tokenizer_info", dependencies=auth)
    async def tokenizer_info():
        def piece(token_id):
            return None if token_id is None else tokenizer.id_to_piece(token_id)

        return {"tokenizer_class": type(tokenizer).__name__, "bos_token": piece(tokenizer.bos_id),
                "eos_token": piece(tokenizer.eos_id), "pad_token": piece(tokenizer.pad_id),
                "add_bos_token": tokenizer.add_bos, "add_eos_token": tokenizer.add_eos,
                "chat_template": tokenizer.chat_template, "model_max_length": scheduler.max_seq_len,
                "vocab_size": tokenizer.vocab_size}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionBody, http: HTTPRequest):
        check_model(body)
        _check_unicode(body)
        prompts = await asyncio.to_thread(completion_prompts, body, tokenizer)
        max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        ranked = body.candidates > body.n  # best_of: every token's log-probability decides
        top = body.logprobs if body.logprobs is not None else (0 if ranked else None)
        echo_logprobs = body.logprobs if body.echo else None
        sequences = [(prompt, None) for prompt in prompts for _ in range(body.candidates)]
        requests = make_requests(body, sequences, max_tokens, top, echo_logprobs)
        responses = CompletionResponses(model_name, logprobs=body.logprobs is not None, echo=body.echo)
        if body.stream:
            return stream(body, requests, responses, body.n)
        choices = await gather(requests, submit(requests), http)
        return responses.whole(best_of(choices, body.candidates, body.n), answer_usage(requests, body.candidates))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatBody, http: HTTPRequest):
        check_model(body)
        _check_unicode(body)
        prompt = await asyncio.to_thread(chat_prompt, body, tokenizer)
        grammar = await asyncio.to_thread(grammars.for_chat, body)
        max_tokens = body.max_completion_tokens or body.max_tokens or max(scheduler.max_seq_len - len(prompt), 1)
        top = (body.top_logprobs or 0) if body.logprobs else None
        sequences = [(prompt, grammar) for _ in range(body.n)]
        requests = make_requests(body, sequences, max_tokens, top)
        tools = ToolParser([t.model_dump() for t in body.tools]) if body.calls_tools else None
        responses = ChatResponses(model_name, logprobs=body.logprobs, tools=tools)
        if body.stream:
            return stream(body, requests, responses, 1)
        choices = await gather(requests, submit(requests), http)
        return responses.whole(choices, answer_usage(requests, 1))

    def make_requests(body: GenerationBody, sequences: list[tuple[list[int], str | None]], max_tokens: int,
                      top_logprobs: int | None, prompt_logprobs: int | None = None) -> list[Request]:
        """One scheduler request per sequence, checked against the server's limits; the i-th draws from seed + i."""
        check_limits(body, [prompt for prompt, _ in sequences], max_tokens)
        return [Request(prompt, max_tokens, tokenizer, _no_sink, params=body.sampling_params(seed_offset=i),
                        stop=body.stop_strings(), top_logprobs=top_logprobs, ignore_eos=body.ignore_eos,
                        prompt_logprobs=prompt_logprobs, constraint=grammars.constraint(grammar))
                for i, (prompt, grammar) in enumerate(sequences)]

    def check_limits(body: GenerationBody, prompts: list[list[int]], max_tokens: int) -> None:
        """Refuse what the server could never run: too many sequences, too many tokens, unknown biased ids."""
        most = max(scheduler.slots, scheduler.max_waiting)
        if len(prompts) > most:
            raise FieldError("n", f"the request asks for {len(prompts)} sequences (prompts × n or best_of); this "
                                  f"server takes at most {most} at once")
        longest = max(len(p) for p in prompts)
        if longest + max_tokens > scheduler.max_seq_len:
            raise ContextLengthError(
                f"this model's context is {scheduler.max_seq_len} tokens, but {longest} prompt tokens + {max_tokens} "
                "completion tokens were requested; shorten the prompt or max_tokens")
        budget = scheduler.slots * scheduler.max_seq_len  # the whole KV cache
        if len(prompts) * max_tokens > budget:
            raise FieldError("max_tokens", f"{len(prompts)} sequences × max_tokens {max_tokens} exceeds the "
                                           f"{budget} tokens this server can hold at once; lower n or max_tokens")
        bad = [t for t in body.bias_ids() if t >= scheduler.vocab_size]
        if bad:
            raise FieldError("logit_bias", f"token ids {bad[:5]} are outside the vocabulary of {scheduler.vocab_size}")

    def submit(requests: list[Request]) -> Collected:
        """Queue the sequences of a non-streamed answer; their outputs gather in the returned Collected."""
        collected = Collected(asyncio.get_running_loop(), len(requests))
        for i, request in enumerate(requests):
            request.sink = collected.sink(i)
        submit_all(scheduler, requests)
        return collected

    def stream(body: GenerationBody, requests: list[Request], responses: Responses, per_prompt: int):
        """Queue the sequences of a streamed answer and send their chunks as they come."""
        streamed = Streamed(asyncio.get_running_loop())
        for i, request in enumerate(requests):
            request.sink = streamed.sink(i)
        submit_all(scheduler, requests)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(events(requests, streamed, responses, include_usage, per_prompt),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _no_sink(output) -> None:
    """A request's sink until the app connects it to its answer."""


def _check_unicode(body: BaseModel) -> None:
    """Raise UnicodeEncodeError (a 400) for text no tokenizer can encode: JSON escapes may spell lone surrogates."""
    json.dumps(body.model_dump(), ensure_ascii=False).encode("utf-8")


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
        return APIError(400, str(e), param=getattr(e, "param", None), code=code).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, e: RequestValidationError):
        errors = e.errors()
        if errors and errors[0]["type"] == "json_invalid":
            detail, where = errors[0].get("ctx", {}).get("error", ""), errors[0]["loc"][-1]
            return APIError(400, f"the body is not valid JSON ({detail} at character {where})").response()
        fields = [".".join(str(part) for part in err["loc"][1:]) or _model_check_param(err) for err in errors]
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


def _model_check_param(error: dict) -> str:
    """The field a check over the whole body names (protocol.FieldError), else "body"."""
    return getattr(error.get("ctx", {}).get("error"), "param", "body")


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
