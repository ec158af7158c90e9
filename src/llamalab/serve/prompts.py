"""What a request asks the model to continue: completion prompts as token ids (fill-in-the-middle with a
`suffix`), chat dialogs with their tools, and the grammar a structured answer must follow."""
from __future__ import annotations

import threading

from llamalab.errors import ConfigError
from llamalab.generate.constrained import ANY_JSON_OBJECT, GrammarCompiler, TokenConstraint
from llamalab.serve.protocol import ChatBody, CompletionBody, FieldError
from llamalab.serve.tools import dialog_without_tool_support, forced_call_grammar
from llamalab.tokenizer import Tokenizer, encode_dialog
from llamalab.tokenizer.chat import template_renders_tools

# prefix / suffix / middle tokens of fill-in-the-middle models, in the prefix-suffix-middle order
FIM_TOKENS = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
              ("<PRE>", "<SUF>", "<MID>"))


def completion_prompts(body: CompletionBody, tokenizer: Tokenizer) -> list[list[int]]:
    """Token ids of each prompt: text encoded (BOS as the tokenizer adds it), ids checked against the vocabulary."""
    prompts = []
    for i, prompt in enumerate(body.prompts()):
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt)  # BOS as the tokenizer adds it
        else:
            bad = [t for t in prompt if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise FieldError("prompt", f"prompt {i}: token ids {bad[:5]} are outside [0, {tokenizer.vocab_size})")
            ids = list(prompt)
        if not ids:
            raise FieldError("prompt", f"prompt {i} is empty; give text or at least one token id")
        prompts.append(ids if body.suffix is None else fill_in_the_middle(tokenizer, ids, body.suffix))
    return prompts


def fill_in_the_middle(tokenizer: Tokenizer, prefix: list[int], suffix: str) -> list[int]:
    """`<prefix token> prefix <suffix token> suffix <middle token>`: the model then writes the middle."""
    special = tokenizer.special_tokens
    names = next((names for names in FIM_TOKENS if all(n in special for n in names)), None)
    if names is None:
        raise FieldError("suffix", "this model has no fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, "
                                   "<fim_middle>), so it cannot complete before a suffix; drop 'suffix'")
    bos = [prefix[0]] if prefix[0] == tokenizer.bos_id else []
    pre, suf, mid = (special[n] for n in names)
    return bos + [pre] + prefix[len(bos):] + [suf] + tokenizer.encode(suffix, bos=False) + [mid]


def chat_prompt(body: ChatBody, tokenizer: Tokenizer) -> list[int]:
    """The dialog's ids in the chat format, with the tools the model is offered."""
    messages = [m.as_dict() for m in body.messages]
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.calls_tools else None
    if template_renders_tools(tokenizer.chat_template):
        return encode_dialog(tokenizer, messages, tools=tools)
    return encode_dialog(tokenizer, dialog_without_tool_support(messages, tools))


class Grammars:
    """The grammar compiler of the served tokenizer, built on first use (about a second for a large vocabulary)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compiler: GrammarCompiler | None = None
        self._lock = threading.Lock()

    @property
    def compiler(self) -> GrammarCompiler:
        with self._lock:
            if self._compiler is None:
                self._compiler = GrammarCompiler(self.tokenizer, self.vocab_size, self.tokenizer.stop_ids)
            return self._compiler

    def for_chat(self, body: ChatBody) -> str | None:
        """The grammar a chat answer must follow (response_format, or a call tool_choice forces), else None."""
        forced = body.forced_tool if body.tools else False
        if forced:
            tools = [t.model_dump(exclude_none=True) for t in body.tools]
            name = forced if isinstance(forced, str) else None
            return self._checked("tools", lambda: self.compiler.lark(
                forced_call_grammar(tools, name, body.parallel_tool_calls)))
        fmt = body.response_format
        if fmt is None or fmt.type == "text":
            return None
        schema = ANY_JSON_OBJECT if fmt.type == "json_object" else fmt.json_schema.schema_
        return self._checked("response_format", lambda: self.compiler.json_schema(schema))

    def constraint(self, grammar: str | None) -> TokenConstraint | None:
        return None if grammar is None else self.compiler.constraint(grammar)

    @staticmethod
    def _checked(param: str, build):
        try:
            return build()
        except ConfigError as e:
            raise FieldError(param, str(e)) from None
