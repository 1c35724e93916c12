"""Drive a benchmark: find the model, build the prompts, send them on schedule, summarize."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import time
from datetime import datetime
from typing import Any

from ember import __version__
from ember.bench.arrivals import arrival_offsets
from ember.bench.client import ConnectError, HttpClient
from ember.bench.config import BenchConfig, BenchError
from ember.bench.dataset import Prompt, Vocab, random_prompts
from ember.bench.request import RequestRecord, error_message, request_body, send
from ember.bench.result import BenchResult, summarize


async def run_benchmark(config: BenchConfig) -> BenchResult:
    """Run one benchmark against config.base_url. Failed requests are counted in the result;
    BenchError is raised only when the run cannot start (bad config, server unreachable)."""
    config.check()
    headers = {"user-agent": f"ember-bench/{__version__}"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    _raise_open_file_limit(config.max_concurrency or config.num_prompts)
    client = HttpClient(config.base_url, headers)
    try:
        model = await _resolve_model(client, config)
        vocab = Vocab.load(config.tokenizer)
        prompts = random_prompts(config, vocab)
        # Bodies are serialized before the clock starts so the client does less during the run.
        bodies = [request_body(config, model, p) for p in prompts]
        offsets = arrival_offsets(
            len(prompts), config.request_rate, config.burstiness, random.Random(config.seed + 1)
        )
        date = datetime.now().strftime("%Y%m%d-%H%M%S")
        records, duration = await _drive(client, config, prompts, bodies, offsets)
    finally:
        await client.aclose()
    return summarize(config, model, date, records, duration)


def _raise_open_file_limit(connections: int) -> None:
    """One socket per request in flight: lift the soft descriptor limit (often 1024) toward the
    hard one rather than fail requests with 'too many open files'."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = connections + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            target = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # not Unix, or not allowed: run with what we have
        pass


async def _resolve_model(client: HttpClient, config: BenchConfig) -> str:
    """Check that the server answers (any status will do when the model is given) and pick the
    first model it lists when it is not."""
    try:
        async with client.request("GET", "/v1/models") as resp:
            body = await resp.read()
    except ConnectError as e:
        raise BenchError(
            f"{e}. Is the server running? Start one with 'ember serve MODEL', or pass the "
            "right --base-url"
        ) from e
    except (OSError, asyncio.IncompleteReadError) as e:
        raise BenchError(f"{config.base_url} did not answer GET /v1/models: {e!r}") from e
    if config.model is not None:
        return config.model
    if resp.status != 200:
        raise BenchError(
            f"no --model given and GET {config.base_url}/v1/models answered {resp.status}: "
            f"{error_message(body)}; pass --model"
        )
    try:
        data: Any = json.loads(body)
        return str(data["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BenchError(
            f"no --model given and {config.base_url}/v1/models lists no model; pass --model"
        ) from e


async def _drive(
    client: HttpClient,
    config: BenchConfig,
    prompts: list[Prompt],
    bodies: list[bytes],
    offsets: list[float],
) -> tuple[list[RequestRecord], float]:
    sem = asyncio.Semaphore(config.max_concurrency or len(prompts))
    progress = Progress(len(prompts), config.progress)
    chat = config.is_chat

    async def one(prompt: Prompt, body: bytes) -> RequestRecord:
        async with sem:
            try:
                rec = await asyncio.wait_for(
                    send(client, config.endpoint, body, prompt, chat), config.request_timeout_s
                )
            except asyncio.TimeoutError:
                rec = RequestRecord(prompt.prompt_len, prompt.output_len)
                rec.error = f"timed out after {config.request_timeout_s:.0f} s"
        progress.update()
        return rec

    # The prompts are garbage the collector need never scan again: freezing them keeps GC
    # pauses, which would land in the measured latencies, short.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    try:
        tasks = []
        for prompt, body, offset in zip(prompts, bodies, offsets, strict=True):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(prompt, body)))
        records = list(await asyncio.gather(*tasks))
    finally:
        duration = time.perf_counter() - start
        gc.unfreeze()
        progress.close()
    return records, duration


class Progress:
    """tqdm on stderr when it is installed, else a plain counter line."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=sys.stderr)
        except ImportError:
            self._print()

    def _print(self) -> None:
        sys.stderr.write(f"\r{self.done}/{self.total} requests done")
        sys.stderr.flush()

    def update(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._enabled and (self.done == self.total or self.done % 10 == 0):
            self._print()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            sys.stderr.write("\n")
