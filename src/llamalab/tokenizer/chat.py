"""Chat formats: a dialog → the ids that prompt the assistant's reply.

Llama 2 chat wraps each user turn in `[INST] ... [/INST]` (the system prompt inside `<<SYS>>`)
and each user/assistant exchange in BOS ... EOS; Llama 3 gives every message a role header and
ends it with `<|eot_id|>`. A Jinja2 `chat_template` stored with the tokenizer takes precedence.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from llamalab.errors import ChatFormatError, TokenizerError
from llamalab.files import read_json
from llamalab.tokenizer.base import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


def encode_dialog(tokenizer: Tokenizer, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
    """Ids of a dialog ready for generating the assistant's reply, in the tokenizer's chat format
    (`tools`: function definitions for a chat template that renders them)."""
    if tokenizer.chat_template:
        _check_messages(messages)
        text = render_chat_template(tokenizer.chat_template, messages, tokenizer, tools=tools)
        return tokenizer.encode(text, bos=False, allow_special=True)
    if "<|start_header_id|>" in tokenizer.special_tokens:
        return encode_llama3_dialog(tokenizer, messages)
    return encode_llama2_dialog(tokenizer, messages)


def encode_llama2_dialog(tokenizer: Tokenizer, messages: list[Message]) -> list[int]:
    """Meta's Llama 2 chat format: `<s>[INST] user [/INST] answer </s>` per exchange, then the open turn."""
    _check_messages(messages)
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise ChatFormatError("a Llama 2 dialog needs a user message after the system message")
        system, first, *rest = messages
        messages = [{"role": first["role"], "content": B_SYS + system["content"] + E_SYS + first["content"]}, *rest]
    roles = [m["role"] for m in messages]
    if roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]):
        raise ChatFormatError(
            f"Llama 2 chat needs roles system (optional), then user/assistant alternating; got {roles}")
    if roles[-1] != "user":
        raise ChatFormatError("the last message of a Llama 2 dialog must be the user's")
    ids = []
    for prompt, answer in zip(messages[::2], messages[1::2]):
        exchange = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += tokenizer.encode(exchange, bos=True, eos=True)
    return ids + tokenizer.encode(f"{B_INST} {messages[-1]['content'].strip()} {E_INST}", bos=True, eos=False)


def encode_llama3_dialog(tokenizer: Tokenizer, messages: list[Message]) -> list[int]:
    """Meta's Llama 3 chat format: `<|begin_of_text|>`, each message as header + content + `<|eot_id|>`, then an
    open assistant header."""
    _check_messages(messages)
    ids = [tokenizer.bos_id]
    for message in messages:
        ids += _llama3_header(tokenizer, message["role"])
        ids += tokenizer.encode(message["content"].strip(), bos=False) + [tokenizer.special_tokens["<|eot_id|>"]]
    return ids + _llama3_header(tokenizer, "assistant")


def _llama3_header(tokenizer: Tokenizer, role: str) -> list[int]:
    """`<|start_header_id|>role<|end_header_id|>` and the blank line that follows it."""
    special = tokenizer.special_tokens
    role_ids = tokenizer.encode(role, bos=False)
    newlines = tokenizer.encode("\n\n", bos=False)
    return [special["<|start_header_id|>"], *role_ids, special["<|end_header_id|>"], *newlines]


def render_chat_template(template: str, messages: list[Message], tokenizer: Tokenizer,
                         add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
    """Render a Hugging Face chat template in a sandbox, with the names and options such templates expect
    (without `add_generation_prompt` a dialog that ends in an answer is rendered as it stands: training data)."""
    import jinja2  # imported on first use: a tenth of a second of every start that never renders a chat
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    specials = {
        f"{name}_token": tokenizer.id_to_piece(token_id)
        for name, token_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id))
        if token_id is not None
    }
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **specials, **({'tools': tools} if tools else {}))
    except jinja2.TemplateError as e:
        raise ChatFormatError(f"the chat template failed: {e}") from None


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template reads a `tools` variable (it shows function definitions to the model itself)."""
    if not template:
        return False
    import jinja2
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return "tools" in meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(template))
    except jinja2.TemplateError:
        return False


def read_chat_template(folder: Path) -> str | None:
    """The chat template saved beside a tokenizer: `chat_template.jinja`, else `tokenizer_config.json`'s entry."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = read_json(folder / "tokenizer_config.json", TokenizerError, default={}).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    return template if isinstance(template, str) else None


def _check_messages(messages: list[Message]) -> None:
    if not messages:
        raise ChatFormatError("the dialog is empty; give at least one user message")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ChatFormatError(f"message {i} must be a dict with string 'role' and 'content', got {message!r}")


def _raise_exception(message: str):
    raise ChatFormatError(f"the chat template rejected the dialog: {message}")


def _tojson(value, indent=None, separators=None, sort_keys=False) -> str:
    """JSON as chat templates expect it: non-ASCII kept, keys in their order (jinja2's own filter sorts and escapes)."""
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
