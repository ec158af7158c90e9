"""Request bodies of the OpenAI API, as far as llamalab serves them, validated by pydantic.

Unknown fields are ignored (clients send many); fields whose other values would change the answer
but are not implemented (n > 1, penalties, echo, ...) are rejected by `unsupported`.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

from llamalab.generate.sampling import SamplingParams

class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the token counts


class GenerationBody(BaseModel):
    """The fields both endpoints share; `None` means the OpenAI default."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # at most 4 strings, each of any length
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # beyond OpenAI, under the names vLLM gives them
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)  # beyond any vocabulary; torch's limit
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False  # generate max_tokens tokens even past the end-of-text token (benchmarks)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
        )

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    # fields of the API this server does not implement, with the values that leave them unused
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {
        "n": (1,), "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
    }

    def unsupported(self) -> str | None:
        """The name of a field set to a value this server cannot honour, if any."""
        return next((name for name, unused in self.UNSUPPORTED.items() if getattr(self, name) not in unused), None)


class CompletionBody(GenerationBody):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)  # the chosen token's and this many alternatives
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    UNSUPPORTED = {**GenerationBody.UNSUPPORTED, "echo": (False,), "suffix": (None, ""), "best_of": (None, 1)}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        """The message as the chat formats take it ("developer" is the newer name of "system")."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or ())
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatBody(GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict] | None = None
    response_format: dict | None = None

    UNSUPPORTED = {**GenerationBody.UNSUPPORTED, "tools": (None, []), "response_format": (None, {"type": "text"})}
