"""EngineCore: model + KV cache + scheduler + runner, stepped by its owner.

It runs in-process (tests, the offline LLM API, the server's engine thread); its inputs and
outputs are plain records so that it can move to a process of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.engine.args import KV_CACHE_DTYPES, EngineArgs, default_batched_tokens
from ember.engine.faults import Faults
from ember.engine.kv_cache import KVCacheManager
from ember.engine.messages import CoreInfo, EngineCoreOutput, EngineStats, StartupTimes
from ember.engine.pipeline import StepPipeline
from ember.engine.request import Request, build_request
from ember.engine.runner import ModelRunner
from ember.engine.sampler import SamplerOutput
from ember.engine.scheduler import Scheduler, SchedulerOutput
from ember.engine.startup import init_cuda, load_weights, report_phase
from ember.engine.structured import StructuredDecoding
from ember.engine.warm_kv import WARM_DIR, import_warm_kv
from ember.envflags import env_flag
from ember.errors import InvalidRequestError
from ember.kernel_cache import hash_triton_ahead, wait_triton_hash
from ember.layers.metadata import AttentionMetadata, KVCache, allocate_kv_cache
from ember.loader import mapped_pages
from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.loader import resolve_dtype
from ember.ops import use_triton
from ember.sampling_params import SamplingParams
from ember.startup_trace import trace

log = logging.getLogger(__name__)

# Without an explicit --max-model-len, contexts are capped here on CPU: the reference attention
# and a small KV budget make longer ones impractical there.
CPU_DEFAULT_MAX_MODEL_LEN = 4096
# Steps in a row a lone request may run out of GPU memory before the engine gives up.
MAX_OOM_RETRIES = 3
# After an OOM the batch limits are halved; they double back after this many good steps.
OOM_RELAX_STEPS = 64


@dataclass(slots=True)
class StepTimes:
    """Where step time goes, cumulative seconds: scheduling, running the model (including the
    wait for its result), and bookkeeping after it. For benchmarks and profiling."""

    steps: int = 0
    schedule_s: float = 0.0
    execute_s: float = 0.0
    update_s: float = 0.0
    graph_steps: int = 0  # steps replayed from a CUDA graph
    graph_execute_s: float = 0.0
    graph_schedule_s: float = 0.0  # async scheduling: launching the next step, when a graph

    def add(self, schedule: float, execute: float, update: float, graph: bool) -> None:
        self.steps += 1
        self.schedule_s += schedule
        self.execute_s += execute
        self.update_s += update
        if graph:
            self.graph_steps += 1
            self.graph_execute_s += execute
            self.graph_schedule_s += schedule

    def summary(self) -> str:
        n = max(self.steps, 1)
        graphs = max(self.graph_steps, 1)
        eager = max(self.steps - self.graph_steps, 1)
        return (
            f"{self.steps} steps, per step: schedule {1e3 * self.schedule_s / n:.2f} ms, "
            f"execute {1e3 * self.execute_s / n:.2f} ms, update {1e3 * self.update_s / n:.2f} ms; "
            f"{self.graph_steps} graph steps at {1e3 * self.graph_execute_s / graphs:.2f} ms "
            f"(schedule {1e3 * self.graph_schedule_s / graphs:.2f} ms), "
            f"eager at {1e3 * (self.execute_s - self.graph_execute_s) / eager:.2f} ms "
            f"(schedule {1e3 * (self.schedule_s - self.graph_schedule_s) / eager:.2f} ms)"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(
            "device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu"
        )
    return device


_KV_CACHE_DTYPES = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def resolve_kv_cache_dtype(name: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The KV cache's element type for --kv-cache-dtype `name` ("auto": the model's `dtype`)."""
    if name == "auto":
        return dtype
    kv_dtype = _KV_CACHE_DTYPES.get(name)
    if kv_dtype is None:
        raise InvalidRequestError(
            f"kv_cache_dtype must be {', '.join(KV_CACHE_DTYPES)}, got {name!r}"
        )
    if use_triton(device):  # the Triton kernels' fp8 conversions need Ada or Hopper
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise InvalidRequestError(
                f"--kv-cache-dtype {name} needs a GPU of compute capability 8.9 or newer (Ada, "
                f"Hopper); this one is {major}.{minor}: use --kv-cache-dtype auto"
            )
    return kv_dtype


def _device_batched_tokens(device: torch.device) -> int:
    if device.type != "cuda":
        return default_batched_tokens(None)
    props = torch.cuda.get_device_properties(device)
    return default_batched_tokens(props.total_memory, props.name)


class EngineCore:
    def __init__(self, args: EngineArgs) -> None:
        began_at = time.monotonic()
        args = args.resolved()  # a URI: config and tokenizer files fetched, weights to stream
        self.args = args
        self.startup = StartupTimes(began_at=began_at)
        self.device = resolve_device(args.device)
        if use_triton(self.device):
            hash_triton_ahead()  # off the first profiling pass's path (kernel_cache.py)
        self.startup.cuda_init_s = init_cuda(args, self.device)
        trace("CUDA initialised")
        self.max_num_batched_tokens = (
            _device_batched_tokens(self.device)
            if args.max_num_batched_tokens is None
            else args.max_num_batched_tokens
        )
        model_dir = Path(args.model)
        self.model_config = ModelConfig.from_dir(model_dir)
        self.dtype = resolve_dtype(args.dtype, self.model_config, self.device)
        self.kv_dtype = resolve_kv_cache_dtype(args.kv_cache_dtype, self.dtype, self.device)
        if args.seed is None:
            torch.seed()  # random, as vLLM's seed=None
        else:
            torch.manual_seed(args.seed)
        self.block_size = args.block_size
        t0 = time.monotonic()
        # The profiling run's first pass pays for loading Triton's kernels and cuBLAS's first
        # calls; made beside the load, the measured run after it is the fast second pass.
        # On the H200, torch imported -> KV cache sized took 1.78-2.03 s with it and the ring
        # pinned early, 2.05-2.19 s without (docs/benchmarks.md, 2026-12-03); the weights phase
        # itself gets longer, as the kernels' first calls share it. EMBER_WARM_BESIDE_LOAD=0: off.
        beside = env_flag("EMBER_WARM_BESIDE_LOAD", True)
        self._kernels_warmed = False  # set by _warm_kernels once its pass went through
        warm = self._warm_kernels if beside and use_triton(self.device) else None
        self.model = load_weights(args, model_dir, self.dtype, self.device, self.startup, warm)
        self.load_weights_s = self.startup.load_weights_s = time.monotonic() - t0
        trace("weights loaded")
        report_phase(args, "kv_cache")
        t0 = time.monotonic()
        self.max_model_len = self._resolve_max_model_len()
        num_blocks = self._num_blocks()
        self.kv_caches = self._allocate_kv(num_blocks)
        self.max_model_len = min(self.max_model_len, num_blocks * self.block_size)
        self.kv = KVCacheManager(num_blocks, self.block_size, args.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, args.max_num_seqs, self.max_num_batched_tokens)
        self.startup.kv_cache_s = time.monotonic() - t0
        trace("KV cache allocated")
        report_phase(args, "graph_capture")
        self.runner = ModelRunner(
            self.model,
            self.kv_caches,
            self.block_size,
            self.device,
            max_num_seqs=args.max_num_seqs,
            max_model_len=self.max_model_len,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enforce_eager=args.enforce_eager,
        )
        self.graph_capture_s = self.startup.graph_capture_s = self.runner.capture(
            args.capture_all_graphs
        )
        trace("CUDA graphs captured")
        self.runner.sampler.structured = StructuredDecoding(model_dir, self.model_config.vocab_size)
        trace("structured decoding ready")
        self.warm_blocks = 0  # prefix blocks loaded from the model's warm_kv/ folder
        if (model_dir / WARM_DIR).is_dir():
            self.warm_blocks = import_warm_kv(self, model_dir / WARM_DIR)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.step_times = StepTimes()
        self.faults = Faults.from_env()
        self.consecutive_ooms = 0
        self._oom_capped = False  # the scheduler's limits are lowered after an OOM
        self._ok_steps = 0  # good steps since the last OOM or relaxation
        pipelined = args.async_scheduling
        if pipelined is None:
            pipelined = self.device.type == "cuda"
        self.pipeline = StepPipeline(self) if pipelined else None
        mapped_pages.release()  # the load's page-cache registrations, kept off the start's path
        trace("engine ready")
        log.info("engine start-up: %s", self.startup.summary())
        log.info(
            "engine ready: %s on %s (%s), max_model_len=%d, kv blocks=%d x %d tokens (%s)",
            args.weights or model_dir,
            self.device,
            self.dtype,
            self.max_model_len,
            num_blocks,
            self.block_size,
            self.kv_dtype,
        )

    # --- sizing -------------------------------------------------------------------------------

    def _resolve_max_model_len(self) -> int:
        model_max = self.model_config.max_context_len
        if self.args.max_model_len is not None:
            if self.args.max_model_len < 1:
                raise InvalidRequestError(
                    f"max_model_len must be positive, got {self.args.max_model_len}"
                )
            if self.args.max_model_len > model_max:
                # Positions past the model's rope table do not exist; Ollama clamps the same way.
                log.warning(
                    "max_model_len %d is longer than the model's context (%d: "
                    "max_position_embeddings, scaled as its rope scaling says); using %d",
                    self.args.max_model_len,
                    model_max,
                    model_max,
                )
                return model_max
            return self.args.max_model_len
        if self.device.type == "cpu":
            return min(model_max, CPU_DEFAULT_MAX_MODEL_LEN)
        return model_max

    def _kv_bytes_per_block(self) -> int:
        c = self.model_config
        elem = torch.empty((), dtype=self.kv_dtype).element_size()
        return 2 * c.num_hidden_layers * self.block_size * c.num_key_value_heads * c.head_dim * elem

    def _num_blocks(self) -> int:
        if self.args.num_kv_blocks is not None:
            return self.args.num_kv_blocks
        per_block = self._kv_bytes_per_block()
        blocks_per_seq = -(-self.max_model_len // self.block_size)
        # Every sequence at full length, and as much again for the prefix cache, is all a cache
        # can use; a small model on a big GPU would otherwise spend many seconds zeroing the rest.
        useful = 2 * self.args.max_num_seqs * blocks_per_seq
        if self.device.type == "cuda":
            num = min(useful, self._cuda_kv_budget() // per_block)
        else:
            num = min(useful, int(self.args.kv_cache_memory_gb * 2**30) // per_block)
        if num < blocks_per_seq:
            if num < 1:
                raise InvalidRequestError(
                    "no memory is left for the KV cache; lower --max-model-len, raise "
                    "--gpu-memory-utilization, or use a smaller model"
                )
            log.warning("KV cache holds %d tokens, less than max_model_len", num * self.block_size)
        return num

    def _cuda_kv_budget(self) -> int:
        """Bytes left for the KV cache: gpu_memory_utilization of the GPU, less what is in use
        now, less the peak of a forward pass at the largest step (measured by running one when
        Triton is there, which also compiles the prefill kernels before the first request).

        Once the kernels were warmed beside the load, the measuring pass runs a few layers only
        (ModelConfig.memory_sample_layers: the same peak): the whole 8B stack at 8192 tokens
        took ~0.15 s of an H200's start."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(self.device)
        if use_triton(self.device):
            torch.cuda.reset_peak_memory_stats(self.device)
            self._profile_run(sample_layers=self._kernels_warmed)
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - base
            torch.cuda.empty_cache()
        else:
            peak = self._activation_reserve_bytes()
        free, total = torch.cuda.mem_get_info(self.device)
        # Headroom for the CUDA graphs' pool and the sampler's buffers at the largest batch.
        headroom = 256 * 2**20 + 3 * self.args.max_num_seqs * self.model_config.vocab_size * 4
        budget = int(total * self.args.gpu_memory_utilization) - (total - free) - peak - headroom
        log.info(
            "GPU memory: %.1f GiB total, %.1f GiB in use, forward peak %.2f GiB -> KV budget %.1f GiB",
            total / 2**30,
            (total - free) / 2**30,
            peak / 2**30,
            max(budget, 0) / 2**30,
        )
        return budget

    def _warm_kernels(self, model: CausalLM) -> None:
        """The profiling run on the loader's helper thread, while weights stream into `model`
        (values not final: only the kernels' first calls count). Threads start on device 0."""
        t0 = time.monotonic()
        with torch.cuda.device(self.device):
            self._profile_run(model)
        self._kernels_warmed = True
        log.info("kernels warmed beside the weights' load in %.2f s", time.monotonic() - t0)
        trace("kernels warmed beside the weights' load")

    @torch.inference_mode()
    def _profile_run(self, model: CausalLM | None = None, *, sample_layers: bool = False) -> None:
        """One forward pass over max_num_batched_tokens prompt tokens against a one-block cache:
        writes are skipped (slot -1) and reads see block 0, so it touches no real cache. With
        sample_layers, through ModelConfig.memory_sample_layers only."""
        wait_triton_hash()
        model = self.model if model is None else model
        tokens = self.max_num_batched_tokens
        num_seqs = max(1, min(self.args.max_num_seqs, tokens // 256 or 1))
        lens = [tokens // num_seqs] * num_seqs
        lens[-1] += tokens - sum(lens)
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        dev = self.device
        blocks = -(-max(lens) // self.block_size)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
            block_tables=torch.zeros((num_seqs, blocks), dtype=torch.int32, device=dev),
            slot_mapping=torch.full((tokens,), -1, dtype=torch.int64, device=dev),
            max_query_len=max(lens),
            max_seq_len=max(lens),
            query_start_loc_cpu=starts,
            seq_lens_cpu=lens,
        )
        layers = self.model_config.memory_sample_layers() if sample_layers else None
        caches = self._allocate_kv(1)
        ids = torch.zeros(tokens, dtype=torch.int64, device=dev)
        positions = torch.cat([torch.arange(n, device=dev) for n in lens])
        if layers is None:
            hidden = model(ids, positions, caches, meta)
        else:
            with model.layers_subset(layers):
                hidden = model(ids, positions, caches[: len(layers)], meta)
        logits = model.compute_logits(hidden[torch.tensor(starts[1:], device=dev) - 1])
        torch.softmax(logits, dim=-1)

    def _activation_reserve_bytes(self) -> int:
        c = self.model_config
        tokens = self.max_num_batched_tokens
        elem = torch.empty((), dtype=self.dtype).element_size()
        per_token = (4 * c.hidden_size + 3 * c.intermediate_size) * elem
        logits = self.args.max_num_seqs * c.vocab_size * 4 * 4
        return tokens * per_token + logits + 512 * 2**20

    def _allocate_kv(self, num_blocks: int) -> list[KVCache]:
        c = self.model_config
        shape = (num_blocks, self.block_size, c.num_key_value_heads, c.head_dim)
        return allocate_kv_cache(
            c.num_hidden_layers, shape, self.kv_dtype, self.device, zero=self.device.type != "cuda"
        )

    # --- requests -----------------------------------------------------------------------------

    def make_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        eos_token_ids: frozenset[int],
        arrival_time: float | None = None,
    ) -> Request:
        """Validate and build a request; raises InvalidRequestError with a message for users."""
        return build_request(
            request_id,
            prompt_token_ids,
            params,
            eos_token_ids,
            self.max_model_len,
            self.model_config.vocab_size,
            arrival_time,
        )

    @property
    def info(self) -> CoreInfo:
        return CoreInfo(
            max_model_len=self.max_model_len,
            vocab_size=self.model_config.vocab_size,
            num_kv_blocks=self.kv.num_blocks,
            block_size=self.block_size,
            load_weights_s=self.load_weights_s,
            device=str(self.device),
            startup=self.startup,
        )

    def add_request(self, req: Request) -> None:
        self.scheduler.add(req)

    def abort(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            if self.scheduler.abort(rid) is not None:
                self.runner.sampler.forget(rid)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[EngineCoreOutput]:
        if self.pipeline is not None:
            outputs = self.pipeline.step()
        else:
            t0 = time.perf_counter()
            sched = self.scheduler.schedule()
            outputs = self.run_step(sched, time.perf_counter() - t0) if sched else []
        self.capture_graph(idle=False)  # a size a batch of this step wanted, if any
        return outputs

    def has_pending_graphs(self) -> bool:
        return self.runner.has_pending_graphs()

    def capture_graph(self, idle: bool) -> bool:
        """Capture one CUDA graph left from start-up: after a step, one that a batch wanted;
        when idle, any. Never while a step is in flight. Returns whether one was captured."""
        if self.pipeline is not None and self.pipeline.inflight is not None:
            return False
        if not (self.runner.wants_capture() or (idle and self.runner.has_pending_graphs())):
            return False
        return self.runner.capture_next()

    def run_step(self, sched: SchedulerOutput, schedule_s: float) -> list[EngineCoreOutput]:
        """Run a scheduled step to its end: the model, sampling, and the scheduler's update."""
        t1 = time.perf_counter()
        try:
            self.faults.before_step()
            reqs, sampled = self.runner.execute(sched)
        except torch.cuda.OutOfMemoryError as e:
            self.recover_from_oom(e)
            return []
        self.after_good_step()
        t2 = time.perf_counter()
        outputs = self.finish_step(sched, reqs, sampled)
        self.step_times.add(
            schedule_s, t2 - t1, time.perf_counter() - t2, self.runner.last_step_graph
        )
        return outputs

    def after_good_step(self) -> None:
        if self.consecutive_ooms or self._oom_capped:
            self._relax_after_oom()

    def finish_step(
        self, sched: SchedulerOutput, reqs: list[Request], sampled: SamplerOutput | None
    ) -> list[EngineCoreOutput]:
        """Advance the scheduler by a step's sampled tokens; the outputs for the API side."""
        tokens = (
            {r.request_id: t for r, t in zip(reqs, sampled.token_ids, strict=True)}
            if sampled
            else {}
        )
        advanced = self.scheduler.update(sched, tokens)
        outputs: list[EngineCoreOutput] = []
        row_of = {r.request_id: i for i, r in enumerate(reqs)}
        for req in advanced:
            if len(req.output_token_ids) == 1:
                self.prompt_tokens_total += req.num_prompt_tokens
            self.generation_tokens_total += 1
            row = None
            if sampled is not None and sampled.logprobs is not None:
                row = sampled.logprobs[row_of[req.request_id]]  # None unless params.logprobs
            if req.finished:
                self.runner.sampler.forget(req.request_id)
            prompt_logprobs = None
            if req.params.prompt_logprobs is not None and not req.prompt_logprobs_sent:
                prompt_logprobs, req.prompt_logprobs_sent = req.prompt_logprobs, True
            outputs.append(
                EngineCoreOutput(
                    request_id=req.request_id,
                    new_token_ids=[req.output_token_ids[-1]],
                    new_logprobs=[row] if row is not None else None,
                    finish_reason=req.finish_reason,
                    stop_reason=req.stop_reason,
                    num_cached_tokens=max(req.num_cached_tokens, 0),
                    first_scheduled_time=req.first_scheduled_time,
                    prompt_logprobs=prompt_logprobs,
                )
            )
        return outputs

    def recover_from_oom(self, error: torch.cuda.OutOfMemoryError) -> None:
        """The model step ran out of GPU memory, so nothing of it counts: preempt the newest half
        of the running requests (recomputed later, as when KV blocks run out) and let the next
        step retry with a smaller batch. A request alone that keeps failing re-raises: the engine
        stops and the server exits for a restart."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.consecutive_ooms += 1
        s = self.scheduler
        running = len(s.running)
        if running <= 1 and self.consecutive_ooms > MAX_OOM_RETRIES:
            raise error
        victims = s.preempt_newest(running // 2 if running > 1 else 0)
        # Cap the batch, or the next step would admit the preempted requests straight back.
        s.max_num_seqs = max(1, len(s.running))
        s.max_num_batched_tokens = max(self.block_size, s.max_num_batched_tokens // 2)
        self._oom_capped = True
        self._ok_steps = 0
        log.warning(
            "out of GPU memory in a step of %d request(s); preempted %d, retrying with at most "
            "%d sequences and %d tokens a step",
            running,
            len(victims),
            s.max_num_seqs,
            s.max_num_batched_tokens,
        )

    def _relax_after_oom(self) -> None:
        """After OOM_RELAX_STEPS good steps in a row, double the caps back towards the
        configured limits."""
        self.consecutive_ooms = 0
        self._ok_steps += 1
        if self._ok_steps < OOM_RELAX_STEPS:
            return
        self._ok_steps = 0
        s, args = self.scheduler, self.args
        s.max_num_seqs = min(args.max_num_seqs, 2 * s.max_num_seqs)
        s.max_num_batched_tokens = min(self.max_num_batched_tokens, 2 * s.max_num_batched_tokens)
        limits = (args.max_num_seqs, self.max_num_batched_tokens)
        self._oom_capped = (s.max_num_seqs, s.max_num_batched_tokens) != limits

    def stats(self, num_unfinished: int | None = None) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            num_unfinished=len(s.requests) if num_unfinished is None else num_unfinished,
            kv_cache_usage=self.kv.usage,
            num_used_blocks=self.kv.num_used_blocks,
            num_total_blocks=self.kv.num_blocks,
            prefix_cache_queries=self.kv.prefix_queries,
            prefix_cache_hits=self.kv.prefix_hits,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions_total=s.num_preemptions,
        )
