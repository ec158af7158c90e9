"""Tool calls: the tools shown to the model, its calls parsed back into OpenAI `tool_calls`, and a forced call.

A chat template that reads `tools` (Llama 3.1's, Qwen's, Hermes') renders the definitions and the structured
history itself. For one that does not (SmolLM2's plain ChatML), the definitions go into the system message in
the Hermes convention — a call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` — and earlier
calls and tool results become text the template can hold. Either way a call in that form, or a whole answer
that is one `{"name", "arguments" | "parameters"}` object (Llama 3.1's form), is parsed back.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S)


def tool_system_prompt(tools: list[dict]) -> str:
    """The Hermes-style instructions and definitions for a template that cannot render tools itself."""
    definitions = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return ("You may call functions to help with the user's request. The functions, as JSON schemas, are:\n"
            f"<tools>\n{definitions}\n</tools>\n"
            "To call a function, answer with its name and arguments as a JSON object inside tags:\n"
            f'{TOOL_CALL_OPEN}\n{{"name": <function name>, "arguments": <arguments object>}}\n{TOOL_CALL_CLOSE}')


def render_call(call: dict) -> str:
    """An earlier call of the history in the tagged text form."""
    function = call["function"]
    body = json.dumps({"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def dialog_without_tool_support(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The dialog for a template without tools: definitions in the system message, calls and results as text."""
    plain = []
    for message in messages:
        if message.get("tool_calls"):
            calls = "\n".join(render_call(c) for c in message["tool_calls"])
            plain.append({"role": "assistant", "content": "\n".join(filter(None, [message["content"], calls]))})
        elif message["role"] == "tool":
            plain.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        else:
            plain.append({"role": message["role"], "content": message["content"]})
    if tools:
        instructions = tool_system_prompt(tools)
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + instructions}
        else:
            plain.insert(0, {"role": "system", "content": instructions})
    return plain


def forced_call_grammar(tools: list[dict], name: str | None, parallel: bool) -> str:
    """A Lark grammar (llguidance's dialect) whose sentences are tagged calls of `name` (or of any tool)."""
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    schema = {"anyOf": [
        {"type": "object", "properties": {"name": {"const": f["name"]},
                                          "arguments": f.get("parameters") or {"type": "object"}},
         "required": ["name", "arguments"], "additionalProperties": False}
        for f in chosen]}
    repeat = "+" if parallel else ""
    return (f"start: (call){repeat}\n"
            f'call: "{TOOL_CALL_OPEN}\\n" body "\\n{TOOL_CALL_CLOSE}"\n'
            f"body: %json {json.dumps(schema)}\n")


class ToolParser:
    """Turns a finished answer into (content, tool_calls) for the tools the request offered."""

    def __init__(self, tools: list[dict]):
        self.names = {t["function"]["name"] for t in tools}

    def parse(self, text: str) -> tuple[str, list[dict]]:
        calls, spans = [], []
        for match in _TAGGED.finditer(text):
            call = self._call(match.group(1))
            if call is not None:
                calls.append(call)
                spans.append(match.span())
        if not calls:
            whole = self._call(text.strip())
            return ("", [whole]) if whole is not None else (text, [])
        content = text
        for start, end in reversed(spans):
            content = content[:start] + content[end:]
        return content.strip(), calls

    def _call(self, body: str) -> dict | None:
        """An OpenAI tool call from one JSON object naming an offered tool, else None."""
        try:
            value: Any = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": value["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}}
