"""Ollama's inference API spoken to an OpenAI-compatible server (llama.cpp's, vLLM's), and its answers back.

Requests: `/api/chat` -> `/v1/chat/completions`, `/api/generate` -> `/v1/completions` (the prompt as
given: these servers apply no Ollama template; `system` goes first), `/api/embed` and
`/api/embeddings` -> `/v1/embeddings`; Ollama's `options` map to the OpenAI fields of the same
meaning (`num_predict` -> `max_tokens`, ...). Answers: one JSON object, or for `stream` (Ollama's
default for chat and generate) NDJSON lines built one per SSE event as it arrives, `message.content`
or `response` carrying the delta and a last line with `done: true`, `done_reason` and Ollama's
counts and durations (nanoseconds, measured here). Shapes: Ollama's docs/api.md and api/types.go.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

# Ollama option -> OpenAI request field (the same meaning on llama.cpp's and vLLM's servers).
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed", "stop": "stop",
            "num_predict": "max_tokens", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty", "repeat_penalty": "repeat_penalty", "min_p": "min_p"}

OPENAI_PATH = {"api/chat": "v1/chat/completions", "api/generate": "v1/completions",
               "api/embed": "v1/embeddings", "api/embeddings": "v1/embeddings"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _sampling(body: dict) -> dict:
    out = {}
    for option, value in (body.get("options") or {}).items():
        field = _OPTIONS.get(option)
        if field is None or value is None:
            continue
        if field == "max_tokens" and isinstance(value, int) and value < 0:
            continue  # Ollama's -1: until the model stops
        out[field] = value
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return out


def _message(m: dict) -> dict:
    """An Ollama chat message in OpenAI's form (images as data-URL content parts, tool arguments as JSON text)."""
    out = {"role": m.get("role", "user"), "content": m.get("content") or ""}
    if m.get("images"):
        out["content"] = [{"type": "text", "text": out["content"]}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}} for img in m["images"]]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                              "function": {"name": c.get("function", {}).get("name", ""),
                                           "arguments": json.dumps(c.get("function", {}).get("arguments") or {})}}
                             for i, c in enumerate(m["tool_calls"])]
    if m.get("tool_name"):
        out["name"] = m["tool_name"]
    return out


def openai_request(endpoint: str, body: dict, model_id: str) -> dict:
    """The OpenAI request for an Ollama one (`endpoint`: api/chat, api/generate, api/embed, api/embeddings)."""
    if endpoint == "api/chat":
        out = {"model": model_id, "messages": [_message(m) for m in body.get("messages") or []],
               "stream": body.get("stream", True) is not False, **_sampling(body)}
        if body.get("tools"):
            out["tools"] = body["tools"]
        return out
    if endpoint == "api/generate":
        prompt = body.get("prompt") or ""
        if body.get("system"):
            prompt = f"{body['system']}\n\n{prompt}"
        out = {"model": model_id, "prompt": prompt, "stream": body.get("stream", True) is not False,
               **_sampling(body)}
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
        return out
    if endpoint == "api/embed":
        return {"model": model_id, "input": body.get("input", "")}
    if endpoint == "api/embeddings":
        return {"model": model_id, "input": body.get("prompt", "")}
    raise ValueError(f"no OpenAI translation for {endpoint}")


def _done_reason(finish: str | None) -> str:
    return "length" if finish == "length" else "stop"  # Ollama says stop for a tool call too


def _tool_calls(calls: list[dict]) -> list[dict]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = {"arguments": args}
        out.append({"function": {"name": fn.get("name", ""), "arguments": parsed}})
    return out


class Timer:
    """Ollama's durations (nanoseconds) of one request: load (0 here: the server loaded the model
    already), prompt evaluation until the first token, evaluation after it, and the total."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.first: int | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def counts(self, usage: dict | None, tokens: int) -> dict:
        end = time.perf_counter_ns()
        first = self.first or end
        usage = usage or {}
        return {"total_duration": end - self.start, "load_duration": 0,
                "prompt_eval_count": int(usage.get("prompt_tokens") or 0), "prompt_eval_duration": first - self.start,
                "eval_count": int(usage.get("completion_tokens") or tokens), "eval_duration": end - first}


def ollama_answer(endpoint: str, answer: dict, model: str, timer: Timer) -> dict:
    """The Ollama answer for an OpenAI one (not streamed)."""
    if endpoint in ("api/embed", "api/embeddings"):
        vectors = [d.get("embedding") or [] for d in sorted(answer.get("data") or [], key=lambda d: d.get("index", 0))]
        if endpoint == "api/embeddings":
            return {"embedding": vectors[0] if vectors else []}
        usage = answer.get("usage") or {}
        counts = timer.counts(usage, 0)
        return {"model": model, "embeddings": vectors, "total_duration": counts["total_duration"],
                "load_duration": 0, "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}
    choice = (answer.get("choices") or [{}])[0]
    timer.token()
    counts = timer.counts(answer.get("usage"), 1)
    out = {"model": model, "created_at": now_iso()}
    if endpoint == "api/chat":
        msg = choice.get("message") or {}
        out["message"] = {"role": "assistant", "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            out["message"]["tool_calls"] = _tool_calls(msg["tool_calls"])
    else:
        out["response"] = choice.get("text") or ""
    return {**out, "done": True, "done_reason": _done_reason(choice.get("finish_reason")), **counts}


def sse_events(chunks: Iterable[bytes]) -> Iterator[dict | None]:
    """The JSON of each `data:` line of an SSE stream as it arrives; None for `data: [DONE]`."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            event = _data(line)
            if event is not _NOTHING:
                yield event
    if pending:
        event = _data(pending)
        if event is not _NOTHING:
            yield event


_NOTHING = object()


def _data(line: bytes):
    line = line.strip()
    if not line.startswith(b"data:"):
        return _NOTHING  # comments (keep-alives), event names, blank separators
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return _NOTHING


def ollama_stream(endpoint: str, events: Iterable[dict | None], model: str, timer: Timer) -> Iterator[dict]:
    """Ollama's streamed lines for OpenAI stream events (api/chat or api/generate)."""
    tokens, finish, usage = 0, None, None
    calls: dict[int, dict] = {}  # streamed tool calls, by index, put together for the last line
    for event in events:
        if event is None:
            break
        if "error" in event:
            err = event["error"]
            yield {"error": err.get("message", str(err)) if isinstance(err, dict) else str(err)}
            return
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            finish = choice.get("finish_reason") or finish
            if endpoint == "api/chat":
                delta = choice.get("delta") or {}
                for call in delta.get("tool_calls") or []:
                    slot = calls.setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
                    fn = call.get("function") or {}
                    slot["function"]["name"] += fn.get("name") or ""
                    slot["function"]["arguments"] += fn.get("arguments") or ""
                text = delta.get("content")
            else:
                text = choice.get("text")
            if text is not None:
                timer.token()
                tokens += 1  # llama.cpp sends a token that ends mid-character as "": counted, not sent
            if text:
                yield _line(endpoint, model, text, done=False)
    last = {**_line(endpoint, model, "", done=True), "done_reason": _done_reason(finish), **timer.counts(usage, tokens)}
    if calls:
        last["message"]["tool_calls"] = _tool_calls([calls[i] for i in sorted(calls)])
    if endpoint == "api/generate":
        last["context"] = []
    yield last


def _line(endpoint: str, model: str, text: str, *, done: bool) -> dict:
    if endpoint == "api/chat":
        return {"model": model, "created_at": now_iso(), "message": {"role": "assistant", "content": text}, "done": done}
    return {"model": model, "created_at": now_iso(), "response": text, "done": done}


def error_message(status: int, raw: bytes) -> str:
    """A backend's error answer as one line of text (OpenAI's {error: {message}}, FastAPI's {detail}, or the body)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:500] or f"HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error") or body.get("detail") or body.get("message")
        if isinstance(err, dict):
            err = err.get("message") or json.dumps(err)
        if err:
            return err if isinstance(err, str) else json.dumps(err)[:500]
    return json.dumps(body)[:500]
