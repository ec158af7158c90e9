"""Structured output and tool calls on the real model (SmolLM2-135M-Instruct): every constrained answer parses and
validates (jsonschema), constrained and free requests share decode steps, and the `openai` client's tool flow works."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
import uvicorn

from llamalab.inference import load_model
from llamalab.serve import Scheduler, create_app
from llamalab.serve.prompts import chat_prompt
from llamalab.serve.protocol import ChatBody
from llamalab.serve.tools import ToolParser

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
     "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {
        "person": {"type": "object", "properties": {
            "first": {"type": "string", "maxLength": 15},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 15},
                                                         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["city", "zip"], "additionalProperties": False}},
                   "required": ["first", "address"], "additionalProperties": False}},
     "required": ["person"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "number", "minimum": 0,
                                                                          "maximum": 1}},
     "required": ["ok", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                                         "kind": {"enum": ["a", "b"]}},
        "required": ["id", "kind"], "additionalProperties": False}}},
     "required": ["items"], "additionalProperties": False},
    {"type": "object", "properties": {"answer": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                                           {"type": "null"}]}},
     "required": ["answer"], "additionalProperties": False},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 30},
                                      "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                                      "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "horror"]},
                                                 "maxItems": 2}},
     "required": ["title", "year", "genres"], "additionalProperties": False},
]
ASK = "Describe a made-up example as JSON."
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}},
                   "required": ["zone"], "additionalProperties": False}}}


class LiveServer:
    """uvicorn serving `app` in a background thread on a free loopback port."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def smollm2(smollm2_hf_dir):
    loaded = load_model(smollm2_hf_dir)
    return loaded.model, loaded.tokenizer


@pytest.fixture(scope="module")
def server(smollm2):
    """SmolLM2 served in this process; `server.batches` records the rows of every decode step."""
    model, tokenizer = smollm2
    scheduler = Scheduler(model, slots=16, max_seq_len=768)
    live = LiveServer(create_app(scheduler, tokenizer, "smollm2"))
    live.batches = []
    forward = model.forward

    def recording(tokens, *args, **kwargs):
        if tokens.shape[1] == 1:
            live.batches.append(tokens.shape[0])
        return forward(tokens, *args, **kwargs)

    model.forward = recording
    yield live
    live.server.should_exit = True
    live.thread.join(timeout=30)
    model.forward = forward


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


def structured(client, schema, **options):
    options = {"temperature": 0, **options}
    return client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": ASK}], max_tokens=160,
        response_format={"type": "json_schema", "json_schema": {"name": "example", "schema": schema}}, **options)


def free(client, content="Name three colors."):
    return client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}],
                                          max_tokens=24, temperature=0).choices[0].message.content


def test_constrained_answers_validate_and_free_rows_in_the_same_batch_are_untouched(client, server):
    alone = free(client)
    server.batches.clear()
    with ThreadPoolExecutor(len(SCHEMAS) + 2) as pool:
        answers = [pool.submit(structured, client, schema) for schema in SCHEMAS]
        frees = [pool.submit(free, client) for _ in range(2)]
        answers, frees = [a.result() for a in answers], [f.result() for f in frees]
    for schema, answer in zip(SCHEMAS, answers):
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
    assert frees == [alone, alone]  # the masks touched only the constrained rows
    assert max(server.batches) > len(SCHEMAS)  # constrained and free requests decoded in the same steps


def test_json_object_is_any_object_that_parses(client):
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Give a user profile as JSON."}], max_tokens=200,
        temperature=0.8, seed=5, n=3, response_format={"type": "json_object"})
    for choice in answer.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # ran out of tokens: still a prefix of an object
            assert choice.message.content.startswith("{")
    assert any(c.finish_reason == "stop" for c in answer.choices)


def test_sampled_constrained_answers_validate_too(client):
    answer = structured(client, SCHEMAS[5], temperature=1.0, seed=11, n=4)
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[5])


def test_forced_tool_call_through_the_openai_client_flow(client):
    messages = [{"role": "user", "content": "What's the weather like in Paris today?"}]
    first = client.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER, TIME],
                                           tool_choice="required", temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls[:1]
    assert call.type == "function" and call.function.name in ("get_weather", "get_time") and call.id
    arguments = json.loads(call.function.arguments)
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    jsonschema.validate(arguments, schema)
    # the client runs the tool and sends the result back; the model answers in words
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    second = client.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER, TIME],
                                            tool_choice="none", temperature=0, max_tokens=40)
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    named = client.chat.completions.create(model="smollm2", messages=messages[:1], tools=[WEATHER, TIME],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           temperature=0, max_tokens=60, parallel_tool_calls=False)
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])


def test_a_streamed_forced_call_arrives_as_tool_call_deltas(client):
    messages = [{"role": "user", "content": "What time is it in Tokyo?"}]
    options = dict(model="smollm2", messages=messages, tools=[WEATHER, TIME], temperature=0, max_tokens=60,
                   tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False)
    whole = client.chat.completions.create(**options).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(stream=True, **options))
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_time"]
    assert calls[0].function.arguments == whole.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_streamed_answer_in_words_with_tools_offered_streams_its_text(client):
    options = dict(model="smollm2", messages=[{"role": "user", "content": "Write a haiku about the sea."}],
                   tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=40)
    whole = client.chat.completions.create(**options).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **options))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if whole.message.tool_calls:  # the model chose a call after all: it comes whole at the end
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        assert streamed == whole.message.content
        assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 3  # piece by piece


def test_tools_reach_a_template_without_tool_support_through_the_system_message(smollm2):
    _, tokenizer = smollm2
    body = ChatBody(messages=[{"role": "user", "content": "weather in Rome?"}], tools=[WEATHER])
    text = tokenizer.decode(chat_prompt(body, tokenizer))
    assert '"name": "get_weather"' in text and "<tool_call>" in text
    assert text.index("get_weather") < text.index("weather in Rome?")
    history = ChatBody(messages=[
        {"role": "user", "content": "weather in Rome?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 degrees"}], tools=[WEATHER])
    text = tokenizer.decode(chat_prompt(history, tokenizer))
    assert '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}' in text
    assert "<tool_response>\n18 degrees\n</tool_response>" in text


TOOL_TEMPLATE = (  # a Hermes/Qwen-style template that renders the tools and the structured history itself
    "{% if tools %}<|im_start|>system\nTools: {% for t in tools %}"
    "{{ t.function.name }}={{ t.function.parameters | tojson }};{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[call {{ c.function.name }}({{ c.function.arguments | tojson }})]{% endfor %}"
    "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


def test_a_template_that_reads_tools_renders_them_itself(smollm2):
    import copy

    _, tokenizer = smollm2
    templated = copy.copy(tokenizer)
    templated.chat_template = TOOL_TEMPLATE
    body = ChatBody(messages=[
        {"role": "user", "content": "weather in Rome?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 degrees"}], tools=[WEATHER])
    text = templated.decode(chat_prompt(body, templated))
    parameters = json.dumps(WEATHER["function"]["parameters"])
    assert f"Tools: get_weather={parameters};" in text and "You may call functions" not in text
    assert '[call get_weather({"city": "Rome", "unit": "celsius"})]' in text  # the history, structured
    assert "tool\n18 degrees" in text
    assert "Tools:" not in templated.decode(chat_prompt(body.model_copy(update={"tool_choice": "none"}), templated))


def test_tool_parser_reads_tagged_and_bare_calls():
    parser = ToolParser([WEATHER, TIME])
    content, calls = parser.parse('Let me check.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n'
                                  '</tool_call>')
    assert content == "Let me check." and [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"zone": "UTC"}
    _, calls = parser.parse('{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}')
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}  # Llama 3.1's form
    assert parser.parse('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>')[1] == []  # not an offered tool
    assert parser.parse("no call here") == ("no call here", [])


def test_streamed_text_is_held_only_from_a_possible_tool_call_on():
    from llamalab.serve.responses import ChatResponses

    responses = ChatResponses("m", logprobs=False, tools=ToolParser([WEATHER, TIME]))
    pieces = ["Sure", ", let me", " check. <", "tool_", 'call>\n{"name": "get_time", ', '"arguments": {"zone": "UTC"}}',
              "\n</tool_call>"]
    deltas = [responses.delta(0, None, piece, [], None)["delta"] for piece in pieces]
    last = responses.delta(0, None, "", [], "stop")
    assert [d.get("content") for d in deltas[:3]] == ["Sure", ", let me", " check. "]
    assert all("content" not in d for d in deltas[3:])  # held from the "<" on
    (call,) = last["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "get_time" and last["finish_reason"] == "tool_calls"
    assert json.loads(call["function"]["arguments"]) == {"zone": "UTC"}
