"""Request bodies of the OpenAI API, validated by pydantic: a refused value names its field (`param`).

Unknown fields are ignored (clients send many). Limits the body alone decides are checked here; those that
need the tokenizer or the scheduler (token ids in range, the context, the number of sequences) in the app.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator, model_validator

from llamalab.errors import LlamalabError
from llamalab.generate.sampling import MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_TOKENS, MAX_PENALTY, SamplingParams

MAX_CHOICES = 128  # n and best_of: sequences one prompt may ask for
MAX_TOP_LOGPROBS = 20


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


class FieldError(LlamalabError, ValueError):
    """A value refused by a check over several fields; `param` names the field to fix."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the token counts


class GenerationBody(BaseModel):
    """The fields both endpoints share; `None` means the OpenAI default."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # at most 4 strings, each of any length
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    presence_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    logit_bias: dict[str, float] | None = None  # token id (as a string, JSON keys are) → bias in [-100, 100]
    # beyond OpenAI, under the names vLLM gives them
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)  # beyond any vocabulary; torch's limit
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False  # generate max_tokens tokens even past the end-of-text token (benchmarks)

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_ids(cls, biases: dict[str, float] | None) -> dict[str, float] | None:
        if biases is None:
            return None
        if len(biases) > MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"{len(biases)} entries; at most {MAX_LOGIT_BIAS_TOKENS} tokens can be biased")
        for key, bias in biases.items():
            if not key.strip().isdigit():
                raise ValueError(f"key {key!r} is not a token id (a non-negative integer)")
            if not abs(bias) <= MAX_LOGIT_BIAS:
                raise ValueError(f"bias {bias} of token {key} is outside [-100, 100]")
        return biases

    def bias_ids(self) -> dict[int, float]:
        return {int(key): bias for key, bias in (self.logit_bias or {}).items()}

    def sampling_params(self, seed_offset: int = 0) -> SamplingParams:
        """The sampler of one sequence; the i-th of several draws from `seed + i` when a seed is given."""
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=self.bias_ids(),
            seed=None if self.seed is None else (self.seed + seed_offset) % 2**64,
        )

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionBody(GenerationBody):
    prompt: str | Annotated[list[int], Field(min_length=1)] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # the chosen token's and this many alternatives
    echo: bool = False  # the prompt before the completion (with logprobs: every prompt token's log-probability)
    suffix: str | None = None  # fill-in-the-middle: the text after the completion
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)  # draw this many, answer the n likeliest

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt):
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("a prompt list must hold at least one prompt, and a token-id prompt at least one id")
        return prompt

    @model_validator(mode="after")
    def _choices(self):
        if self.best_of is not None and self.best_of < self.n:
            raise FieldError("best_of", f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.stream and self.candidates > self.n:
            raise FieldError("best_of", "best_of > n cannot be streamed: the n best are known only at the end")
        if self.max_tokens == 0 and not self.echo:
            raise FieldError("max_tokens", "max_tokens 0 generates nothing; use it with echo (to score the prompt)")
        return self

    @property
    def candidates(self) -> int:
        """Sequences drawn per prompt."""
        return self.best_of or self.n

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request, each text or token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's convention)

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, arguments: str) -> str:
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ValueError(f"arguments must be a JSON object as text: {e}") from None
        if not isinstance(value, dict):
            raise ValueError("arguments must be a JSON object as text")
        return arguments


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    @model_validator(mode="after")
    def _tool_fields(self):
        if self.role == "tool" and not self.tool_call_id:
            raise FieldError("messages", "a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise FieldError("messages", "only assistant messages carry tool_calls")
        return self

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or ())

    def as_dict(self) -> dict[str, Any]:
        """The message as chat templates take it ("developer" is the newer name of "system")."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                for c in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        return message


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] | bool = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise FieldError("response_format", "type json_schema needs a json_schema object with a schema")
        return self


class ChatBody(GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self):
        if self.max_tokens == 0:
            raise FieldError("max_tokens", "max_tokens must be at least 1 for chat completions")
        names = [t.function.name for t in self.tools or ()]
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise FieldError("tool_choice", f"tool_choice names {self.tool_choice.function.name!r}: not a tool")
        if self.tool_choice == "required" and not names:
            raise FieldError("tool_choice", "tool_choice 'required' needs tools")
        if len(set(names)) != len(names):
            raise FieldError("tools", "two tools share a name")
        if self.calls_tools and self.response_format is not None and self.response_format.type != "text":
            raise FieldError("response_format", "response_format cannot be combined with tools the model may call")
        return self

    @property
    def calls_tools(self) -> bool:
        """The model is offered the tools (tools given and tool_choice is not "none")."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def forced_tool(self) -> str | None | bool:
        """The name of the tool the model must call, True for any tool ("required"), else False."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice == "required"
