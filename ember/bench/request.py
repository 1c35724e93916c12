"""One streamed request: its JSON body, and the timings read from its SSE stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.bench.client import HttpClient
from ember.bench.config import BenchConfig
from ember.bench.dataset import Prompt

try:  # about 3x faster than json on the small chunks of a stream
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(slots=True)
class RequestRecord:
    """What the client saw of one request. Times are seconds; offsets count from the send."""

    prompt_len: int  # input tokens: the server's usage when it reports one, else as sent
    output_len: int  # max_tokens asked for
    success: bool = False
    error: str = ""
    start_time: float = 0.0  # time.perf_counter() at the send
    ttft: float = 0.0  # to the first chunk with content
    latency: float = 0.0  # to the end of the stream ([DONE])
    output_tokens: int = 0  # usage.completion_tokens, else the number of content chunks
    chunk_times: list[float] = field(default_factory=list)  # offset of each content chunk
    # Cumulative completion_tokens at each content chunk, when the server reports usage per chunk
    # (vLLM's continuous_usage_stats); otherwise empty and tokens per chunk are estimated.
    chunk_usage: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)  # tokens carried by each content chunk
    itl: list[float] = field(default_factory=list)  # one gap per output token after the first


def request_body(config: BenchConfig, model: str, prompt: Prompt) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.is_chat:
        body["messages"] = [{"role": "user", "content": prompt.prompt}]
        # vLLM reads max_completion_tokens, Ollama's /v1 reads max_tokens
        body["max_completion_tokens"] = prompt.output_len
        body["max_tokens"] = prompt.output_len
    else:
        body["prompt"] = prompt.prompt
        body["max_tokens"] = prompt.output_len
    if config.ignore_eos:
        body["ignore_eos"] = True  # a vLLM extra; ember honours it, other servers ignore it
    if config.top_k is not None:
        body["top_k"] = config.top_k  # a vLLM extra, as above
    if config.top_p is not None:
        body["top_p"] = config.top_p
    return _dumps(body)


async def send(
    client: HttpClient, path: str, body: bytes, prompt: Prompt, chat: bool
) -> RequestRecord:
    """Send one request and read its stream; failures are recorded, never raised."""
    rec = RequestRecord(prompt_len=prompt.prompt_len, output_len=prompt.output_len)
    usage: dict[str, Any] | None = None
    start = rec.start_time = time.perf_counter()
    end = 0.0
    try:
        async with client.request("POST", path, body) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {error_message(await resp.read())}"
                return rec
            async for line in resp.lines():
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    end = time.perf_counter()
                    continue  # read on to the end of the body so the connection can be reused
                now = time.perf_counter()
                data = _loads(payload)
                if "error" in data:
                    rec.error = f"error in stream: {error_message(payload)}"
                    return rec
                if data.get("usage"):
                    usage = data["usage"]
                choices = data.get("choices")
                if choices and _content(choices[0], chat):
                    rec.chunk_times.append(now - start)
                    if usage is not None and data.get("usage"):
                        rec.chunk_usage.append(int(usage.get("completion_tokens") or 0))
        if end == 0.0:
            end = time.perf_counter()
    except Exception as e:
        rec.error = f"{type(e).__name__}: {e}"
        return rec
    rec.latency = end - start
    rec.ttft = rec.chunk_times[0] if rec.chunk_times else rec.latency
    if len(rec.chunk_usage) != len(rec.chunk_times):
        rec.chunk_usage = []
    if usage is not None:
        rec.prompt_len = int(usage.get("prompt_tokens") or rec.prompt_len)
        rec.output_tokens = int(usage.get("completion_tokens") or 0)
    else:
        rec.output_tokens = len(rec.chunk_times)
    rec.success = True
    return rec


def _content(choice: dict[str, Any], chat: bool) -> bool:
    if not chat:
        return bool(choice.get("text"))
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"))


def error_message(body: bytes) -> str:
    """The message of an OpenAI-style ({"error": {"message"}}), Ollama-style ({"error": "..."})
    or FastAPI-style ({"detail"}) error body, else the start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:300]
    return str(data)[:300]
