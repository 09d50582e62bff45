"""Ollama's inference API translated to an OpenAI server's and back (worker_agent/ollama_openai.py):
the request fields, one answer, and the streamed lines built from SSE bytes however they are split."""

from __future__ import annotations

import json

import pytest

from worker_agent.ollama_openai import Timer, error_message, ollama_answer, ollama_stream, openai_request, sse_events


def test_chat_request_maps_options_format_images_and_tools():
    body = {"model": "tiny", "stream": False, "format": "json", "tools": [{"type": "function", "function": {"name": "f"}}],
            "options": {"num_predict": 7, "temperature": 0.2, "stop": ["\n"], "seed": 3, "num_ctx": 2048, "top_k": 5},
            "messages": [{"role": "user", "content": "look", "images": ["QUJD"]},
                         {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                         {"role": "tool", "content": "42", "tool_name": "f"}]}
    out = openai_request("api/chat", body, "/models/tiny.gguf")
    assert out["model"] == "/models/tiny.gguf" and out["stream"] is False
    assert out["max_tokens"] == 7 and out["temperature"] == 0.2 and out["stop"] == ["\n"] and out["seed"] == 3
    assert out["top_k"] == 5 and "num_ctx" not in out  # the server's context is fixed at its start
    assert out["response_format"] == {"type": "json_object"}
    assert out["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}
    assert json.loads(out["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert out["messages"][2]["name"] == "f" and out["tools"] == body["tools"]


def test_generate_request_streams_by_default_puts_system_first_and_drops_unlimited_num_predict():
    out = openai_request("api/generate", {"prompt": "hi", "system": "be brief", "options": {"num_predict": -1}}, "m")
    assert out == {"model": "m", "prompt": "be brief\n\nhi", "stream": True}


@pytest.mark.parametrize(("endpoint", "body", "sent"), [
    ("api/embed", {"input": ["a", "b"]}, ["a", "b"]),
    ("api/embeddings", {"prompt": "a"}, "a"),
])
def test_embedding_requests(endpoint, body, sent):
    assert openai_request(endpoint, body, "m") == {"model": "m", "input": sent}


def test_one_chat_answer_becomes_ollamas_with_counts_and_tool_calls():
    answer = {"choices": [{"message": {"content": "hey", "tool_calls": [
        {"function": {"name": "f", "arguments": "{\"x\": 1}"}}]}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6}}
    out = ollama_answer("api/chat", answer, "tiny", Timer())
    assert out["message"] == {"role": "assistant", "content": "hey", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}
    assert out["done"] is True and out["done_reason"] == "length" and out["model"] == "tiny"
    assert out["prompt_eval_count"] == 4 and out["eval_count"] == 6 and out["total_duration"] >= 0
    assert out["created_at"].endswith("Z")


def test_embedding_answers_in_index_order():
    answer = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 2}}
    assert ollama_answer("api/embed", answer, "m", Timer())["embeddings"] == [[1.0], [2.0]]
    assert ollama_answer("api/embeddings", answer, "m", Timer()) == {"embedding": [1.0]}


def _sse(*events) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def chunk(content=None, finish=None, text=None):
    choice = {"delta": {} if content is None else {"content": content}, "finish_reason": finish}
    if text is not None:
        choice = {"text": text, "finish_reason": finish}
    return {"choices": [choice]}


@pytest.mark.parametrize("split", [1, 7, 10_000])
def test_streamed_chat_lines_one_per_token_whatever_the_byte_boundaries(split):
    raw = b": ping\n\n" + _sse(chunk(""), chunk("He"), chunk("llo"), chunk(finish="stop"), b"[DONE]")
    pieces = [raw[i:i + split] for i in range(0, len(raw), split)]
    lines = list(ollama_stream("api/chat", sse_events(pieces), "tiny", Timer()))
    assert [x["message"]["content"] for x in lines] == ["He", "llo", ""]
    assert [x["done"] for x in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 3  # the "" piece was a token too
    assert lines[-1]["eval_duration"] >= 0 and lines[-1]["prompt_eval_duration"] >= 0


def test_streamed_generate_ends_with_length_and_context():
    raw = _sse(chunk(text="a"), chunk(text="b", finish="length"), b"[DONE]")
    lines = list(ollama_stream("api/generate", sse_events([raw]), "tiny", Timer()))
    assert [x["response"] for x in lines] == ["a", "b", ""]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["context"] == []


def test_streamed_tool_calls_are_put_together_on_the_last_line():
    deltas = [{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "get", "arguments": "{\"a\""}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                            "finish_reason": "tool_calls"}]}]
    lines = list(ollama_stream("api/chat", sse_events([_sse(*deltas)]), "m", Timer()))
    assert lines[-1]["message"]["tool_calls"] == [{"function": {"name": "get", "arguments": {"a": 1}}}]
    assert lines[-1]["done_reason"] == "stop"


def test_an_error_event_becomes_ollamas_error_line():
    lines = list(ollama_stream("api/chat", sse_events([_sse(chunk("x"), {"error": {"message": "boom"}})]), "m", Timer()))
    assert lines[-1] == {"error": "boom"}


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"error": {"message": "bad model", "type": "x"}}', "bad model"),
    (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', '[{"loc": ["body"], "msg": "field required"}]'),
    (b"Internal Server Error", "Internal Server Error"),
    (b"", "HTTP 500"),
])
def test_error_message_of_a_backend(raw, message):
    assert error_message(500, raw) == message
