"""Response bodies of the OpenAI API: a whole completion or its streamed chunks, for both endpoints.

A request may have several choices (several prompts, `n`); each is one scheduler `Request` whose outputs
are gathered under the choice's `index`.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from llamalab.serve.request import Output, Request, TokenInfo
from llamalab.serve.tools import TOOL_CALL_OPEN, ToolParser


@dataclass
class Choice:
    """One finished sequence: its index in the answer, its request and everything it produced."""

    index: int
    request: Request
    outputs: list[Output]

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs)

    @property
    def tokens(self) -> list[TokenInfo]:
        return [o.token for o in self.outputs if o.token is not None]

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[-1].finish_reason if self.outputs else None

    @property
    def logprob(self) -> float:
        """The sum of the log-probabilities of its tokens (what best_of ranks by)."""
        return sum(t.logprob or 0.0 for t in self.tokens)


class Responses:
    """The bodies answering one request; subclasses shape a choice the way their endpoint does."""

    object: str
    chunk_object: str
    id_prefix: str

    def __init__(self, model: str, logprobs: bool):
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model, self.logprobs = model, logprobs

    def whole(self, choices: list[Choice], usage: dict) -> dict:
        """The non-streamed answer."""
        return self._envelope(self.object, [self.choice(c) for c in choices], usage)

    def chunk(self, index: int, request: Request, output: Output) -> dict | None:
        """One streamed chunk of choice `index`, or None when the output carries nothing to send."""
        if not (output.text or output.finish_reason or (self.logprobs and output.token)):
            return None
        tokens = [output.token] if output.token is not None else []
        delta = self.delta(index, request, output.text, tokens, output.finish_reason)
        return self._envelope(self.chunk_object, [delta])

    def usage_chunk(self, usage: dict) -> dict:
        """The last streamed chunk when the client asked for `stream_options.include_usage`."""
        return self._envelope(self.chunk_object, [], usage)

    def choice(self, choice: Choice) -> dict:
        raise NotImplementedError

    def delta(self, index: int, request: Request, text: str, tokens: list[TokenInfo],
              finish_reason: str | None) -> dict:
        raise NotImplementedError

    def _envelope(self, obj: str, choices: list[dict], usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body


class CompletionResponses(Responses):
    """/v1/completions: choices carry `text`, log-probabilities in the legacy four-list layout.

    With `echo` the prompt comes first: its text, and (with logprobs) each prompt token with a null
    log-probability for the first one, as OpenAI's legacy API and lm-evaluation-harness expect.
    """

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str, logprobs: bool, echo: bool = False):
        super().__init__(model, logprobs)
        self.echo = echo
        self.offsets: dict[int, int] = {}  # per choice: characters already sent (`text_offset`)

    def choice(self, choice: Choice) -> dict:
        return self.delta(choice.index, choice.request, choice.text, choice.tokens, choice.finish_reason)

    def delta(self, index, request, text, tokens, finish_reason):
        entries = [(t.text, t.logprob, _likeliest_by_text(t.top)) for t in tokens]
        if index not in self.offsets:  # the choice's first piece: with echo, the prompt goes first
            self.offsets[index] = 0
            if self.echo and request.prompt_infos is None:
                text = request.tokenizer.decode(request.prompt) + text
            elif self.echo:
                prompt = request.prompt_infos
                text = "".join(p.text for p in prompt) + text
                entries = [(p.text, p.logprob, None if i == 0 else _likeliest_by_text(p.top))
                           for i, p in enumerate(prompt)] + entries
        logprobs = self._logprobs(index, entries)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def _logprobs(self, index: int, entries: list[tuple[str, float | None, dict | None]]) -> dict | None:
        if not self.logprobs:
            return None
        offsets = []
        for text, _, _ in entries:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(text)
        return {
            "tokens": [text for text, _, _ in entries],
            "token_logprobs": [logprob for _, logprob, _ in entries],
            "top_logprobs": [top for _, _, top in entries],
            "text_offset": offsets,
        }


class ChatResponses(Responses):
    """/v1/chat/completions: an assistant `message` (chunks: `delta`), log-probabilities as `content` items;
    with tools, text the model wrote as tool calls comes back as `tool_calls`."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, model: str, logprobs: bool, tools: ToolParser | None = None):
        super().__init__(model, logprobs)
        self.tools = tools
        self.role_sent: set[int] = set()
        self.held: dict[int, str] = {}  # streamed text held back while it may be a tool call, per choice
        self.spoke: set[int] = set()  # choices that streamed some content already

    def choice(self, choice: Choice) -> dict:
        message = {"role": "assistant", "content": choice.text}
        finish_reason = choice.finish_reason
        if self.tools is not None:
            content, calls = self.tools.parse(choice.text)
            if calls:
                message = {"role": "assistant", "content": content or None, "tool_calls": calls}
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        return {"index": choice.index, "message": message, "logprobs": self._logprobs(choice.tokens),
                "finish_reason": finish_reason}

    def delta(self, index, request, text, tokens, finish_reason):
        delta = {} if index in self.role_sent else {"role": "assistant", "content": ""}
        self.role_sent.add(index)
        if self.tools is not None:
            text, calls, finish_reason = self._tool_delta(index, text, finish_reason)
            if calls:
                delta["tool_calls"] = calls
        if text:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": self._logprobs(tokens), "finish_reason": finish_reason}

    def _tool_delta(self, index: int, text: str, finish_reason: str | None) -> tuple[str, list[dict], str | None]:
        """Streamed text that cannot belong to a tool call goes out at once; from a call's possible start on it is
        held, and parsed into `tool_calls` deltas at the end."""
        held = self.held.get(index, "") + text
        if finish_reason is None:
            if TOOL_CALL_OPEN in held or (index not in self.spoke and held.lstrip().startswith("{")):
                self.held[index] = held  # a call (tagged, or a bare JSON object) may be under way
                return "", [], None
            keep = next((n for n in range(min(len(held), len(TOOL_CALL_OPEN) - 1), 0, -1)
                         if TOOL_CALL_OPEN.startswith(held[-n:])), 0)  # the tail that may begin a tag
            if index not in self.spoke and not held.strip():
                keep = len(held)  # leading blanks: wait for the first visible character
            self.held[index], out = held[len(held) - keep:], held[: len(held) - keep]
            if out:
                self.spoke.add(index)
            return out, [], None
        self.held.pop(index, None)
        content, calls = self.tools.parse(held)
        if not calls:
            return held, [], finish_reason
        deltas = [{"index": i, **call} for i, call in enumerate(calls)]
        return content, deltas, "tool_calls" if finish_reason == "stop" else finish_reason

    def _logprobs(self, tokens: list[TokenInfo]) -> dict | None:
        if not self.logprobs:
            return None
        return {"content": [
            {**_token_entry(t.text, t.logprob), "top_logprobs": [_token_entry(text, lp) for text, lp in t.top]}
            for t in tokens if not t.stop  # the chat API lists no end-of-turn token
        ]}


def _likeliest_by_text(top: list[tuple[str, float]]) -> dict[str, float]:
    """Text → log-probability; tokens with the same text (e.g. stray bytes) keep the likeliest one's."""
    by_text: dict[str, float] = {}
    for text, logprob in top:
        by_text.setdefault(text, logprob)
    return by_text


def _token_entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
