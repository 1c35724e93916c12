#!/usr/bin/env bash
# The GPU machine's one entry point: installs the wheels carried in .whl/ (fastapi, uvicorn, pyjwt,
# gguf, moto, Run:ai, obstore, ...; see docs/benchmarks.md), then runs the named stages, each
# under its own time limit, with every log kept under $OUT. Pick stages that fit one call (10 min):
#
#   bash scripts/device_run.sh check            # kernels (the greedy argmax too), engine parity,
#                                               # GGUF, the batch-1 GEMVs, the KV budget's
#                                               # sampled pass (~7 min)
#   bash scripts/device_run.sh fp8weights       # FP8 checkpoints dequantized on CUDA against the
#                                               # CPU reference, the 8B-layer load's peak (~3 min)
#   bash scripts/device_run.sh shapes           # Gemma 2 9B / Gemma 3 4B vs transformers (~8 min
#                                               # on a fresh machine: float32 kernels compile slowly)
#   bash scripts/device_run.sh start serve      # start -> first token, HTTP serving (~6 min)
#   bash scripts/device_run.sh engine           # engine vs transformers (~5 min)
#   bash scripts/device_run.sh load s3          # cold start: disk/page cache, then S3 (~9 min)
#   bash scripts/device_run.sh async            # engine with and without async scheduling, then
#                                               # HTTP without it (~8 min; `serve` is with it)
#   bash scripts/device_run.sh syncs            # where steps wait for the GPU, both schedulers
#                                               # (torch's sync debug mode; ~3 min)
#   bash scripts/device_run.sh sampled          # HTTP with Ollama's default sampling (~4 min)
#   bash scripts/device_run.sh spy              # HTTP at 256 with every graph up front, the
#                                               # server's processes sampled by py-spy (~2 min)
#   bash scripts/device_run.sh startexp         # start -> first token, traced, with and without
#                                               # the ring pinned early and the kernels warmed
#                                               # beside the load, in turn (~3 min)
#   bash scripts/device_run.sh fp8              # --kv-cache-dtype fp8: decode attention over
#                                               # bf16 and fp8 caches, the engine at 1/64/256
#                                               # without and with it, then HTTP with it
#                                               # (~8 min; its kernel cases are in `check`)
#   bash scripts/device_run.sh gemv             # the fused batch-1 GEMVs vs today's pre-op
#                                               # kernels + cuBLAS, then the engine's batch-1
#                                               # decode with EMBER_FUSED_GEMV=0 and =1
#                                               # (~5 min)
#   bash scripts/device_run.sh pin              # pinning and parameter allocation timed apart
#                                               # and zero-copy from the page cache timed
#                                               # (bench_pin.py); warm loads with the ring
#                                               # registered (default) and pinned by
#                                               # cudaHostAlloc; three starts; decode attention
#                                               # over bf16 against fp8 caches (~5 min)
#   bash scripts/device_run.sh tune             # decode tile sweeps over bf16 and fp8 caches
#                                               # (fp8's V widened in registers among them),
#                                               # pieces and tiles at 1-256 sequences, rotary +
#                                               # KV write against the fused store (~5 min)
#   bash scripts/device_run.sh ncu              # Nsight Compute on one decode attention launch:
#                                               # bf16, fp8, fp8 on 3-stage V-early tiles (~1 min)
#   bash scripts/device_run.sh ncuprefill       # Nsight Compute on one causal prefill
#                                               # attention launch (1 x 8192), two tiles (~1 min)
#   bash scripts/device_run.sh startprof        # an EngineCore's start under cProfile, the
#                                               # kernels' first profiling pass included (~1 min)
#   bash scripts/device_run.sh build            # the model's build (on the GPU, on meta, as
#                                               # load_model does it), allocations, KV zeroing,
#                                               # each in a fresh process (~4 min)
#   bash scripts/device_run.sh beside           # the 8B load alone and beside a busy Python
#                                               # thread, at 5 ms and load_model's GIL switch
#                                               # interval (~3 min with the model written)
#   bash scripts/device_run.sh slots            # warm 8B loads with the ring pinned ahead, at
#                                               # 16/20/24/32 ring slots, twice (~4 min)
#   bash scripts/device_run.sh paths            # warm 8B files to one GPU buffer, alternating: the
#                                               # page cache alone, threads that read and copy
#                                               # themselves (8 and 32 MiB), the loader's
#                                               # streamer, copies straight out of the registered
#                                               # page cache (~2 min with the model written)
#   bash scripts/device_run.sh chunks           # the ring's chunk size, 8 against 32 MiB: in one
#                                               # process and in fresh whole loads (~4 min)
#   bash scripts/device_run.sh gc               # the engine's imports frozen before the load
#                                               # against not (EMBER_GC_FREEZE=0): fresh
#                                               # whole loads, then starts, alternating
#                                               # (~5 min with the model written)
#   bash scripts/device_run.sh repeat           # the whole 8B load repeated in one process: a new
#                                               # ring or a kept one, GPU memory reused or new
#                                               # (~2 min with the model written)
#   bash scripts/device_run.sh early            # warm 8B loads with the reads begun before the
#                                               # model's build and a tapered tail, each and
#                                               # both against neither, 20 and 32 slots (~5 min
#                                               # with the model written)
#   bash scripts/device_run.sh coldcopiers      # `ember serve` from a cold page cache, the mapped
#                                               # copiers on (default) and off, in turn (~4 min)
#   bash scripts/device_run.sh target           # the target's row: warm loads, ember against
#                                               # safetensors and Run:ai, twice (~3 min)
#   bash scripts/device_run.sh earlytrace       # one traced load with the reads begun early,
#                                               # one without (~1 min with the model written)
#   bash scripts/device_run.sh mapped           # fresh whole loads: the defaults (4 mapped
#                                               # copiers) against 0 and 2 copiers and the
#                                               # reads begun early, alternating, twice; then
#                                               # traced loads with and without copiers
#                                               # (~4 min with the model written)
#   bash scripts/device_run.sh hybrid           # ring threads and zero-copy threads together,
#                                               # one process, against each alone (~2 min
#                                               # with the model written)
#   bash scripts/device_run.sh sigterm          # ember serve SIGTERMed 0.5-3.5 s after its
#                                               # start: exit time, processes left (~1 min)
#   B_TREE=/tmp/B bash scripts/device_run.sh abtree   # fresh whole loads from this tree
#                                               # and from the tree at $B_TREE, alternating,
#                                               # 3 rounds (~4 min with the model written)
#   bash scripts/device_run.sh layout           # the projections with weights stored [K, N]
#                                               # against [N, K], 1-256 rows (~1 min)
#   bash scripts/device_run.sh l2 blas          # batch-1 projections: a weight pulled into L2
#                                               # beside attention; cuBLAS, cuBLASLt and
#                                               # torch.mv at 1-16 rows (~2 min)
#   bash scripts/device_run.sh overlap          # a 256-row decode layer against two 128-row
#                                               # halves, attention beside matmuls on two
#                                               # streams; the step's matmuls at 64-512 rows,
#                                               # cuBLAS against Triton tiles (~2 min)
#   bash scripts/device_run.sh cold             # start -> first token with the weights evicted
#                                               # from the page cache, without and with their
#                                               # read-ahead, in turn, traced (~4 min)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ember-out}
mkdir -p "$OUT"
if [ -z "${EMBER_SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PATH=/tmp/site/bin:$PATH PYTHONPATH=$PWD:/tmp/site EMBER_HOME=${EMBER_HOME:-/tmp/eh} PYTHONUNBUFFERED=1
status=0

run() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    # INFO lines are dropped except the engine core's, the loader's and the early pinning's
    # (the weights phase also holds building the model and, by default, the kernels' warm-up).
    timeout "$limit" "$@" 2>&1 \
        | grep --line-buffered -v -P " INFO (?!ember\.models\.loader|ember\.loader\.prepin|ember\.engine\.core)" \
        | grep --line-buffered -v "INFO: \|Writing model" | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then
        echo "=== $name: exit $rc"
        status=1
    fi
}

for stage in "$@"; do
    case $stage in
        check)
            run correctness 240 python3 scripts/gpu_check.py --section correctness --section fused \
                --section argmax
            run engine-check 260 python3 scripts/gpu_check.py --section engine --section gguf \
                --section engine-extras
            run gemv-peak 200 python3 scripts/gpu_check.py --section gemv --section peak
            ;;
        fp8weights) run fp8-weights 300 python3 scripts/gpu_check.py --section fp8-weights ;;
        shapes) run shapes 540 python3 scripts/gpu_check.py --section shapes --tmp /tmp ;;
        engine) run engine 300 python3 benchmarks/bench_engine.py ;;
        serve) run serve 300 python3 benchmarks/bench_serve.py ;;
        start) run start 200 python3 benchmarks/bench_serve.py --real-weights --starts 3 --start-only ;;
        load) run load 540 python3 benchmarks/bench_load.py --sweep ;;
        s3) run s3 240 python3 benchmarks/bench_s3.py ;;
        async)
            run sync-engine 150 python3 benchmarks/bench_engine.py --skip-transformers \
                --batches 64 256 --no-async-scheduling
            run async-engine 150 python3 benchmarks/bench_engine.py --skip-transformers \
                --batches 64 256
            run sync-serve 240 python3 benchmarks/bench_serve.py --no-async-scheduling
            ;;
        syncs)
            for mode in --no-async-scheduling ""; do
                run "syncs${mode:+-sync}" 120 python3 -W default benchmarks/bench_engine.py \
                    --skip-transformers --batches 256 --sync-debug $mode
            done
            ;;
        sampled) run sampled 240 python3 benchmarks/bench_serve.py --ollama-sampling ;;
        startexp)
            run startexp 400 python3 benchmarks/bench_serve.py --real-weights --starts 7 \
                --start-only --start-env EMBER_STARTUP_TRACE=1 \
                --start-env "EMBER_STARTUP_TRACE=1 EMBER_PREPIN=0 EMBER_WARM_BESIDE_LOAD=0"
            ;;
        pin)
            run pin 120 python3 benchmarks/bench_pin.py
            run pin-load 240 python3 benchmarks/bench_load.py --warm-env EMBER_PIN_REGISTER=0 \
                --repeats 3
            run pin-start 200 python3 benchmarks/bench_serve.py --real-weights --starts 3 \
                --start-only --start-env EMBER_STARTUP_TRACE=1
            run decode-fp8 120 python3 scripts/gpu_check.py --section decode-fp8
            ;;
        gemv)
            run gemv 200 python3 scripts/gpu_check.py --section gemv
            run gemv-base-engine 150 env EMBER_FUSED_GEMV=0 python3 benchmarks/bench_engine.py --skip-transformers \
                --batches 2
            run gemv-engine 150 env EMBER_FUSED_GEMV=1 python3 benchmarks/bench_engine.py \
                --skip-transformers --batches 2
            ;;
        fp8)
            run decode-fp8 120 python3 scripts/gpu_check.py --section decode-fp8
            run fp8-base-engine 150 python3 benchmarks/bench_engine.py --skip-transformers \
                --batches 64 256
            run fp8-engine 150 python3 benchmarks/bench_engine.py --skip-transformers \
                --batches 64 256 --kv-cache-dtype fp8
            run fp8-serve 240 python3 benchmarks/bench_serve.py --kv-cache-dtype fp8
            ;;
        tune)
            run tune 150 python3 scripts/gpu_check.py --section tune
            run tune-fp8 150 python3 scripts/gpu_check.py --section tune-fp8
            run tune-splits 150 python3 scripts/gpu_check.py --section tune-splits \
                --section splits-policy
            run rotary-store 60 python3 scripts/gpu_check.py --section rotary-store
            ;;
        ncu)
            # Nsight Compute on one decode attention launch at 256 x 640 keys: bf16, fp8 (its
            # default: V widened in registers, 5 stages), and gpu_check's V_EARLY tiles (3
            # stages) (works on the Firecracker machines; not gVisor).
            ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
            for case in bf16 fp8 fp8-v-early; do
                flags="--kv ${case%%-*}"
                [ "$case" = fp8-v-early ] && flags="$flags --v-early"
                run "ncu-$case" 120 "$ncu" --clock-control none -k regex:paged_attention \
                    --launch-skip 2 --launch-count 1 --section SpeedOfLight \
                    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
                    --section SchedulerStats python3 scripts/ncu_attention.py $flags
            done
            ;;
        ncuprefill)
            # Nsight Compute on one causal prefill attention launch, 1 x 8192 tokens: the
            # default tiles and 64-row tiles on one warpgroup (two CTAs an SM).
            ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
            for tile in default "64 64 4 3"; do
                flags="--prefill --batch 1 --ctx 8192"
                [ "$tile" != default ] && flags="$flags --tile $tile"
                run "ncu-prefill-${tile// /-}" 120 "$ncu" --clock-control none \
                    -k regex:paged_attention --launch-skip 2 --launch-count 1 \
                    --section SpeedOfLight --section ComputeWorkloadAnalysis \
                    --section MemoryWorkloadAnalysis --section WarpStateStats \
                    --section Occupancy --section SchedulerStats --section InstructionStats \
                    python3 scripts/ncu_attention.py $flags
            done
            ;;
        l2) run l2 120 python3 scripts/gpu_check.py --section l2 ;;
        blas) run blas 150 python3 scripts/gpu_check.py --section blas ;;
        paths) run paths 400 python3 benchmarks/bench_stream_paths.py ;;
        layout) run layout 120 python3 scripts/gpu_check.py --section layout ;;
        startprof) run startprof 150 python3 benchmarks/profile_start.py --runs 2 ;;
        build) run build 300 python3 benchmarks/profile_build.py ;;
        slots) run slots 400 python3 benchmarks/bench_load.py --slots-sweep 16 20 24 32 --repeats 2 ;;
        chunks)
            # 8 MiB chunks (a ring that fits the CPU's L3) against today's 32 MiB: in one
            # process, then whole loads in fresh processes with the ring pinned ahead, alternating
            run chunks-paths 200 python3 benchmarks/bench_stream_paths.py --zero-copy-mib \
                --streamer-slots 20 32
            for round in 1 2; do
                for mib in 8 32; do
                    run "chunks-load-$mib-$round" 100 python3 benchmarks/bench_load.py \
                        --slots-sweep 20 --chunk-mib $mib --repeats 1
                done
            done
            ;;
        repeat) run load-repeat 200 python3 benchmarks/bench_load_repeat.py --rounds 3 ;;
        early)
            # the readers filling the ring while the model is built (EMBER_EARLY_READS) and the
            # load's last chunks cut to 4 MiB (EMBER_LOAD_TAPER), each and both, against neither:
            # fresh whole loads with the ring pinned ahead at 20 and 32 slots, alternating
            run early-load 420 python3 benchmarks/bench_load.py --slots-sweep 20 32 \
                --warm-env EMBER_EARLY_READS=1 --warm-env EMBER_LOAD_TAPER=1 \
                --warm-env "EMBER_EARLY_READS=1 EMBER_LOAD_TAPER=1" --repeats 2
            # then one load with both, traced in 25 ms buckets (reads during the build?)
            run early-trace 100 python3 benchmarks/bench_load.py --slots-sweep 20 --repeats 1 \
                --warm-env "EMBER_EARLY_READS=1 EMBER_LOAD_TAPER=1 BENCH_LOAD_TRACE=1" ;;
        target)
            # the target's one-run row: ember against safetensors and Run:ai, warm, twice (ember's
            # loads see the caller's environment: EMBER_MAPPED_COPIERS=N sets the copiers, 0
            # turns them off)
            run target 200 python3 benchmarks/bench_load.py --warm-only --repeats 2 ;;
        earlytrace)
            run early-trace 100 python3 benchmarks/bench_load.py --slots-sweep 20 --repeats 1 \
                --warm-env "EMBER_EARLY_READS=1 BENCH_LOAD_TRACE=1" --warm-env BENCH_LOAD_TRACE=1 ;;
        mapped)
            # mapped copiers beside the ring's readers: fresh whole loads with the ring pinned
            # ahead, the defaults (4 copiers of 16 threads) against 0 and 2 copiers and the
            # reads begun before the build, alternating, twice; then one traced load with and
            # without copiers (`env $(python3 scripts/best_env.py $OUT/mapped-load.log)` names
            # the winner for a later stage)
            run mapped-load 300 python3 benchmarks/bench_load.py --slots-sweep 20 \
                --warm-env EMBER_MAPPED_COPIERS=0 --warm-env EMBER_MAPPED_COPIERS=2 \
                --warm-env EMBER_EARLY_READS=1 --repeats 2
            run mapped-trace 100 python3 benchmarks/bench_load.py --slots-sweep 20 --repeats 1 \
                --warm-env BENCH_LOAD_TRACE=1 \
                --warm-env "BENCH_LOAD_TRACE=1 EMBER_MAPPED_COPIERS=0" ;;
        hybrid)
            # the ring's threads and zero-copy threads at once, one process, against each alone
            run hybrid 300 python3 benchmarks/bench_stream_paths.py --threads 16 --chunk-mib 32 \
                --zero-copy-mib 32 --zero-copy-threads 4 8 --repeats 2 \
                --hybrid 16+1/32 16+2/32 16+4/32 14+2/32 12+4/32 16+2/32u 16+4/32u ;;
        sigterm)
            # `ember serve` of the 8B shape SIGTERMed while it starts: exit time, children left
            run sigterm 150 python3 benchmarks/bench_serve.py --real-weights \
                --sigterm-after 0.5 1.5 2.5 3.5 ;;
        abtree)
            # fresh whole loads with the ring pinned ahead, from this tree (A) and from the tree
            # at $B_TREE (B: e.g. a branch unpacked by `git archive`), alternating, 3 rounds;
            # both read this tree's .bench model
            for round in 1 2 3; do
                run "abtree-A-$round" 120 python3 benchmarks/bench_load.py --slots-sweep 20 \
                    --repeats 1
                run "abtree-B-$round" 120 python3 "${B_TREE:?set B_TREE}/benchmarks/bench_load.py" \
                    --slots-sweep 20 --repeats 1
            done
            ;;
        gc)
            # the engine process's imports frozen before its load (the default) against left
            # to the collector (EMBER_GC_FREEZE=0): whole loads in fresh processes with the
            # ring pinned ahead, then starts, alternating (start 1 compiles Triton's kernels)
            run gc-load 200 python3 benchmarks/bench_load.py --slots-sweep 20 \
                --warm-env EMBER_GC_FREEZE=0 --repeats 3
            run gc-start 300 python3 benchmarks/bench_serve.py --real-weights --starts 7 \
                --start-only --start-env EMBER_STARTUP_TRACE=1 \
                --start-env "EMBER_STARTUP_TRACE=1 EMBER_GC_FREEZE=0"
            ;;
        beside)
            run beside 400 python3 benchmarks/bench_load_beside.py --device cuda --layers 32 \
                --vocab 128256 --shards 4 --dir .bench/llama-3.1-8b-random --repeats 2
            ;;
        overlap) run overlap 200 python3 scripts/gpu_check.py --section overlap --section gemm ;;
        coldcopiers)
            # `ember serve` from a cold page cache (its prefetch beside the imports, then the
            # buffered load) with the default mapped copiers against none, in turn (start 1
            # compiles Triton's kernels)
            run cold-copiers 400 python3 benchmarks/bench_serve.py --real-weights --starts 7 \
                --start-only --cold --start-env EMBER_STARTUP_TRACE=1 \
                --start-env "EMBER_STARTUP_TRACE=1 EMBER_MAPPED_COPIERS=0"
            ;;
        cold)
            run cold 400 python3 benchmarks/bench_serve.py --real-weights --starts 7 \
                --start-only --cold --start-env "EMBER_STARTUP_TRACE=1 EMBER_PREFETCH_WEIGHTS=0" \
                --start-env EMBER_STARTUP_TRACE=1
            ;;
        spy)
            run spy 240 python3 benchmarks/bench_serve.py --capture-all-graphs \
                --py-spy "$OUT/serve-stacks.txt"
            run spy-summary 60 python3 benchmarks/stacks.py "$OUT/serve-stacks.txt" --top 30
            ;;
        *)
            echo "unknown stage '$stage': check shapes engine serve start load s3 async syncs sampled spy startexp fp8 gemv pin tune ncu ncuprefill l2 blas layout overlap cold coldcopiers startprof build beside slots chunks paths gc abtree"
            status=2
            ;;
    esac
done
exit $status
