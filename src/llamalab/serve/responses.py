"""Response bodies of the OpenAI API: a whole completion or its streamed chunks, for both endpoints."""
from __future__ import annotations

import time
import uuid

from llamalab.serve.request import Output, TokenInfo


class Responses:
    """The bodies answering one request; subclasses shape a choice the way their endpoint does."""

    object: str
    chunk_object: str
    id_prefix: str

    def __init__(self, model: str, logprobs: bool):
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model, self.logprobs = model, logprobs

    def whole(self, outputs: list[Output], usage: dict) -> dict:
        """The non-streamed answer: all outputs joined into one choice."""
        text = "".join(o.text for o in outputs)
        tokens = [o.token for o in outputs if o.token is not None]
        return self._envelope(self.object, [self.choice(text, tokens, outputs[-1].finish_reason)], usage)

    def chunk(self, output: Output) -> dict | None:
        """One streamed chunk, or None when the output carries nothing to send."""
        if not (output.text or output.finish_reason or (self.logprobs and output.token)):
            return None
        tokens = [output.token] if output.token is not None else []
        return self._envelope(self.chunk_object, [self.delta(output.text, tokens, output.finish_reason)])

    def usage_chunk(self, usage: dict) -> dict:
        """The last streamed chunk when the client asked for `stream_options.include_usage`."""
        return self._envelope(self.chunk_object, [], usage)

    def choice(self, text: str, tokens: list[TokenInfo], finish_reason: str) -> dict:
        raise NotImplementedError

    def delta(self, text: str, tokens: list[TokenInfo], finish_reason: str | None) -> dict:
        raise NotImplementedError

    def _envelope(self, obj: str, choices: list[dict], usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body


class CompletionResponses(Responses):
    """/v1/completions: choices carry `text`, log-probabilities in the legacy four-list layout."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str, logprobs: bool):
        super().__init__(model, logprobs)
        self.offset = 0  # characters of completion text before the next token (`text_offset`)

    def choice(self, text, tokens, finish_reason):
        return {"index": 0, "text": text, "logprobs": self._logprobs(tokens), "finish_reason": finish_reason}

    delta = choice  # a chunk's choice looks like a whole one

    def _logprobs(self, tokens: list[TokenInfo]) -> dict | None:
        if not self.logprobs:
            return None
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(t.text)
        return {
            "tokens": [t.text for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [_likeliest_by_text(t.top) for t in tokens],
            "text_offset": offsets,
        }


class ChatResponses(Responses):
    """/v1/chat/completions: an assistant `message` (chunks: `delta`), log-probabilities as `content` items."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, model: str, logprobs: bool):
        super().__init__(model, logprobs)
        self.role_sent = False

    def choice(self, text, tokens, finish_reason):
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": self._logprobs(tokens), "finish_reason": finish_reason}

    def delta(self, text, tokens, finish_reason):
        delta = {} if self.role_sent else {"role": "assistant", "content": ""}
        self.role_sent = True
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": self._logprobs(tokens), "finish_reason": finish_reason}

    def _logprobs(self, tokens: list[TokenInfo]) -> dict | None:
        if not self.logprobs:
            return None
        return {"content": [
            {**_token_entry(t.text, t.logprob), "top_logprobs": [_token_entry(text, lp) for text, lp in t.top]}
            for t in tokens
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
