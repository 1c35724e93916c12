"""Test helpers: random checkpoints, tiny saved models, one-step prefill logits, and servers on
loopback (an HTTP server with Range support, moto's S3)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import transformers
from torch import nn

from ember.layers.metadata import AttentionMetadata
from ember.models import CausalLM


def random_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Mixed dtypes and shapes: scalars, empty tensors, odd sizes, and a few larger than the
    tests' 64 KiB chunks."""
    gen = torch.Generator().manual_seed(seed)

    def floats(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    return {
        "big.f32": floats(300, 257),  # ~300 KB: spans several chunks
        "big.bf16": floats(513, 129).to(torch.bfloat16),
        "mid.f16": floats(77, 33).to(torch.float16),
        "ids.i64": torch.randint(-(2**40), 2**40, (1000,), generator=gen),
        "mask.bool": torch.rand(37, 5, generator=gen) > 0.5,
        "bytes.u8": torch.randint(0, 256, (4099,), generator=gen, dtype=torch.uint8),
        "small.i32": torch.randint(-100, 100, (3, 1, 7), generator=gen, dtype=torch.int32),
        "scalar.f32": floats(),
        "empty.f16": torch.empty(0, 4, dtype=torch.float16),
        "f64": torch.randn(11, generator=gen, dtype=torch.float64),
        "fp8": floats(64, 3).to(torch.float8_e4m3fn),
    }


def tiny_llama(path: Path, seed: int = 0, max_shard_size: str | None = None) -> nn.Module:
    """A tiny untied Llama with random weights saved with transformers; returns the HF model."""
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(path), **kwargs)
    return model


def prefill_logits(model: CausalLM, tokens: list[int], block_size: int = 4) -> torch.Tensor:
    """Logits of one prefill step of one sequence through a fresh paged cache."""
    cfg = model.config
    n = len(tokens)
    blocks = -(-n // block_size)
    shape = (blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    dtype = next(model.parameters()).dtype
    kv = [
        (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
        for _ in range(cfg.num_hidden_layers)
    ]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([n], dtype=torch.int32),
        block_tables=torch.arange(blocks, dtype=torch.int32)[None],
        slot_mapping=torch.arange(n, dtype=torch.int64),
        max_query_len=n,
        max_seq_len=n,
        query_start_loc_cpu=[0, n],
        seq_lens_cpu=[n],
    )
    with torch.inference_mode():
        ids = torch.tensor(tokens, dtype=torch.int64)
        hidden = model(ids, torch.arange(n, dtype=torch.int64), kv, meta)
        return model.compute_logits(hidden)


@dataclass
class RangeServer:
    """Serves a directory over HTTP with HEAD, GET and single Range requests (206)."""

    root: Path
    token: str | None = None  # when set, requests must carry "Authorization: Bearer TOKEN"
    prefix: str = ""  # URL path prefix mapped onto root, e.g. "/org/name/resolve/main"
    delay_s: float = 0.0  # per GET, to slow the source down
    rate_bps: float = 0.0  # when set, each range's body is sent at this many bytes/s
    requests: list[str] = field(default_factory=list)
    port: int = 0


@contextmanager
def serve_http(server: RangeServer) -> Iterator[RangeServer]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and body:
                self._send(body, server.rate_bps if status == 206 else 0.0)

        def _send(self, body: bytes, rate_bps: float) -> None:
            step = 8192 if rate_bps else len(body)
            try:
                for at in range(0, len(body), step):
                    self.wfile.write(body[at : at + step])
                    if rate_bps:
                        self.wfile.flush()
                        threading.Event().wait(step / rate_bps)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up on this range

        def _serve(self, body: bool) -> None:
            server.requests.append(f"{self.command} {self.path} {self.headers.get('Range')}")
            if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                self._reply(401, {})
                return
            rel = self.path.split("?", 1)[0].removeprefix(server.prefix).lstrip("/")
            path = server.root / rel
            if not self.path.startswith(server.prefix) or not rel or not path.is_file():
                self._reply(404, {})
                return
            data = path.read_bytes()
            rng = self.headers.get("Range")
            if not rng:
                self._reply(200, {"Accept-Ranges": "bytes"}, data)
                return
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            assert match, rng
            first = int(match[1])
            last = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            if body and server.delay_s:
                threading.Event().wait(server.delay_s)
            headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
            self._reply(206, headers, data[first : last + 1])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = httpd.server_port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
