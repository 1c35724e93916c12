"""The numbers of a result: percentiles, TPOT, tokens per chunk, ITL, peaks, arrivals, the table."""

from __future__ import annotations

import json
import math
import random
import statistics
from importlib import resources

import numpy as np
import pytest
from tokenizers import Tokenizer

from ember.bench.arrivals import arrival_offsets
from ember.bench.config import BenchConfig, BenchError
from ember.bench.dataset import FALLBACK_IDS, Prompt, Vocab, lengths, random_prompts
from ember.bench.report import format_result, result_json
from ember.bench.request import RequestRecord, error_message, request_body
from ember.bench.result import summarize
from ember.bench.stats import (
    distribution,
    inter_token_latencies,
    peak_concurrency,
    peak_tokens_per_s,
    percentile,
    tokens_per_chunk,
    tpot,
)


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy(n: int) -> None:
    values = [random.Random(n).random() for _ in range(n)]
    for p in (1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))
    assert percentile([], 99) == 0.0


def test_distribution_is_in_ms_with_population_std() -> None:
    values = [0.010, 0.020, 0.030, 0.100]
    d = distribution(values, (50.0, 99.0))
    assert d.mean == pytest.approx(40.0)
    assert d.median == pytest.approx(25.0)
    assert d.std == pytest.approx(float(np.std(values)) * 1000)
    assert d.percentiles[99.0] == pytest.approx(float(np.percentile(values, 99)) * 1000)
    assert distribution([], (99.0,)).mean == 0.0


def test_tpot_excludes_the_first_token() -> None:
    assert tpot(latency=1.0, ttft=0.1, output_tokens=10) == pytest.approx(0.1)
    assert tpot(latency=1.0, ttft=0.1, output_tokens=1) is None


def test_one_token_per_chunk_when_counts_agree() -> None:
    times = [0.1, 0.2, 0.3]
    assert tokens_per_chunk(times, [], 3) == [1, 1, 1]
    assert inter_token_latencies(times, [1, 1, 1]) == pytest.approx([0.1, 0.1])


def test_hidden_tokens_go_to_the_long_gaps() -> None:
    # Steps of 10 ms; the chunk after a 30 ms gap carried three tokens (two had empty text).
    times = [0.10, 0.11, 0.12, 0.13, 0.16]
    counts = tokens_per_chunk(times, [], 7)
    assert counts == [1, 1, 1, 1, 3]
    assert inter_token_latencies(times, counts) == pytest.approx([0.01] * 6)


def test_per_chunk_usage_is_exact() -> None:
    assert tokens_per_chunk([0.1, 0.2, 0.3], [2, 3, 6], 6) == [2, 1, 3]


def test_tokens_per_chunk_always_sums_to_output_tokens() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 30)
        times = sorted(rng.random() for _ in range(n))
        if rng.random() < 0.1:
            times = [0.5] * n  # all at once: no gap to go by
        total = n + rng.randint(0, 3 * n)
        counts = tokens_per_chunk(times, [], total)
        assert sum(counts) == total and min(counts) >= 1 and len(counts) == n
        assert len(inter_token_latencies(times, counts)) == total - counts[0]


def test_peaks() -> None:
    assert peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1  # touching intervals don't overlap
    assert peak_concurrency([(0, 2), (1, 3), (1.5, 1.6)]) == 3
    assert peak_concurrency([]) == 0
    events = [(10.1, 1), (10.5, 2), (11.2, 4), (11.9, 1), (12.0, 1)]
    assert peak_tokens_per_s(events, t0=10.0) == 5.0
    assert peak_tokens_per_s([], t0=0.0) == 0.0


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(5, math.inf, 1.0, random.Random(0)) == [0.0] * 5


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_gamma_arrivals_have_the_configured_rate_and_shape(burstiness: float) -> None:
    n, rate = 20000, 50.0
    offsets = arrival_offsets(n, rate, burstiness, random.Random(1))
    gaps = [b - a for a, b in zip([0.0, *offsets[:-1]], offsets, strict=True)]
    assert min(gaps) >= 0
    assert offsets[-1] == pytest.approx(n / rate)  # scaled so the run spans exactly n/rate
    assert statistics.fmean(gaps) == pytest.approx(1 / rate)
    # A gamma of shape k has a squared coefficient of variation of 1/k.
    cv2 = statistics.pvariance(gaps) / statistics.fmean(gaps) ** 2
    assert cv2 == pytest.approx(1 / burstiness, rel=0.1)


def test_lengths_stay_in_range() -> None:
    rng = random.Random(0)
    assert lengths(32, 0.0, 4, rng) == [32] * 4
    drawn = lengths(100, 0.25, 2000, rng)
    assert min(drawn) == 75 and max(drawn) == 125
    assert min(lengths(1, 0.9, 100, rng)) >= 1


def test_random_id_prompts_have_exact_lengths_and_are_seeded() -> None:
    config = BenchConfig(num_prompts=5, input_len=40, output_len=7, range_ratio=0.5, seed=3)
    prompts = random_prompts(config, Vocab.load(None))
    assert all(isinstance(p.prompt, list) and len(p.prompt) == p.prompt_len for p in prompts)
    assert all(i in FALLBACK_IDS for p in prompts for i in p.prompt)
    assert all(20 <= p.prompt_len <= 60 and 3 <= p.output_len <= 10 for p in prompts)
    assert prompts == random_prompts(config, Vocab.load(None))


def test_tokenizer_vocab_skips_special_tokens_and_sizes_text() -> None:
    path = resources.files("ember.registry").joinpath("data/tiny_tokenizer.json")
    vocab = Vocab.load(str(path))
    assert len(vocab.ids) == 995 and max(vocab.ids) == 994  # 995..999 are special
    config = BenchConfig(num_prompts=3, input_len=24, prompt_format="text")
    tok = Tokenizer.from_file(str(path))
    for p in random_prompts(config, vocab):
        assert isinstance(p.prompt, str)
        assert len(tok.encode(p.prompt, add_special_tokens=False).ids) == pytest.approx(24, abs=1)
    with pytest.raises(BenchError, match=r"tokenizer\.json"):
        Vocab.load("/nonexistent")


def test_request_bodies() -> None:
    prompt = Prompt([5, 6, 7], 3, 9)
    body = json.loads(request_body(BenchConfig(ignore_eos=True), "m", prompt))
    assert body["prompt"] == [5, 6, 7] and body["max_tokens"] == 9 and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.0 and "top_k" not in body and "top_p" not in body
    sampled = BenchConfig(temperature=0.8, top_k=40, top_p=0.9)
    body = json.loads(request_body(sampled, "m", prompt))
    assert (body["temperature"], body["top_k"], body["top_p"]) == (0.8, 40, 0.9)
    chat = BenchConfig(endpoint="/v1/chat/completions")
    body = json.loads(request_body(chat, "m", Prompt("hi there", 2, 4)))
    assert body["messages"] == [{"role": "user", "content": "hi there"}]
    assert body["max_completion_tokens"] == 4 and "ignore_eos" not in body


def test_config_errors_name_the_setting() -> None:
    for kwargs, words in [
        ({"request_rate": 0.0}, "request_rate"),
        ({"burstiness": -1.0}, "burstiness"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"range_ratio": 1.0}, "range_ratio"),
        ({"endpoint": "/v1/chat/completions", "prompt_format": "ids"}, "chat takes text"),
        ({"dataset": "sharegpt"}, "random"),
    ]:
        with pytest.raises(BenchError, match=words):
            BenchConfig(**kwargs).check()  # type: ignore[arg-type]


def test_error_messages_from_each_api_family() -> None:
    assert error_message(b'{"error": {"message": "bad model", "type": "x"}}') == "bad model"
    assert error_message(b'{"error": "model not found"}') == "model not found"
    assert error_message(b'{"detail": "Not Found"}') == "Not Found"
    assert error_message(b"<html>502</html>") == "<html>502</html>"


def _record(start: float, ttft: float, gap: float, n: int) -> RequestRecord:
    times = [ttft + i * gap for i in range(n)]
    return RequestRecord(
        prompt_len=32,
        output_len=n,
        success=True,
        start_time=start,
        ttft=ttft,
        latency=times[-1],
        output_tokens=n,
        chunk_times=times,
    )


def test_summary_and_table_layout() -> None:
    config = BenchConfig(num_prompts=3, max_concurrency=2, request_rate=4.0)
    failed = RequestRecord(32, 8, error="HTTP 404: model 'x' not found")
    records = [_record(0.0, 0.1, 0.01, 8), _record(0.05, 0.2, 0.02, 8), failed]
    result = summarize(config, "tiny", "20250101-000000", records, duration_s=2.0)
    assert (result.completed, result.failed) == (2, 1)
    assert result.total_input_tokens == 64 and result.total_output_tokens == 16
    assert result.output_throughput == pytest.approx(8.0)
    assert result.max_concurrent_requests == 2
    assert result.ttft.mean == pytest.approx(150.0)
    assert result.tpot.mean == pytest.approx(15.0)
    assert result.itl.median == pytest.approx(15.0)
    assert result.errors == ["HTTP 404: model 'x' not found"]

    lines = format_result(result).splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    labels = [line if line.startswith("-") else line[:40].rstrip() for line in lines[1:-1]]
    assert labels == [
        "Successful requests:",
        "Failed requests:",
        "Maximum request concurrency:",
        "Request rate configured (RPS):",
        "Benchmark duration (s):",
        "Total input tokens:",
        "Total generated tokens:",
        "Request throughput (req/s):",
        "Output token throughput (tok/s):",
        "Peak output token throughput (tok/s):",
        "Peak concurrent requests:",
        "Total token throughput (tok/s):",
        "---------------Time to First Token----------------",
        "Mean TTFT (ms):",
        "Median TTFT (ms):",
        "P99 TTFT (ms):",
        "-----Time per Output Token (excl. 1st token)------",
        "Mean TPOT (ms):",
        "Median TPOT (ms):",
        "P99 TPOT (ms):",
        "---------------Inter-token Latency----------------",
        "Mean ITL (ms):",
        "Median ITL (ms):",
        "P99 ITL (ms):",
    ]
    rows = {line[:40].rstrip(): line[41:] for line in lines if not line.startswith(("-", "="))}
    assert rows["Successful requests:"] == "2         "  # vLLM's {:<10}, trailing spaces included
    assert rows["Output token throughput (tok/s):"] == "8.00      "
    assert rows["Peak concurrent requests:"] == "2.00      "
    assert rows["Mean TTFT (ms):"] == "150.00    "

    saved = result_json(result, detailed=True)
    assert saved["request_rate"] == 4.0 and saved["max_concurrency"] == 2
    assert saved["mean_ttft_ms"] == pytest.approx(150.0) and "p99_itl_ms" in saved
    assert saved["errors"][2].startswith("HTTP 404")
    assert "errors" not in result_json(result)
    json.dumps(saved, allow_nan=False)
