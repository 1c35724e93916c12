"""Object stores: weights from an S3-compatible server to the device, ember's loader beside Run:ai
Model Streamer's S3 path and the server's own ceiling, all against one server on loopback.

One run on the GPU machine, no network needed (< 4 minutes for the default shape):
  1. writes random-weight safetensors with a real shape (bench_load's writer): Qwen2.5-0.5B by
     default (0.99 GB bf16 in one file, as published), or Llama-3.1-8B with --layers N;
  2. starts moto's S3 server (ThreadedMotoServer) on 127.0.0.1 and uploads the model folder;
  3. reads it, each in a fresh process and twice, timed from after CUDA init to the last byte on
     the device:
       - ember: load_model("s3://bucket/prefix") onto the device;
       - Run:ai: runai_model_streamer.SafetensorsStreamer over the s3:// shards (the S3 client
         of runai-model-streamer-s3), CPU tensors then .to(device), as vLLM's runai_streamer
         load format does on one GPU;
       - ceiling: --threads threads of --range-mib MiB range GETs over keep-alive connections
         into one buffer each, then dropped: what the server gives a client that does nothing
         else;
     every load is spot-checked against the files;
  4. prints GB/s, ember over Run:ai, and each one's share of the ceiling.

Stock moto answers a range GET by reading the whole object and slicing it (moto/s3/responses.py:
get_object, then _handle_range_header), so every ranged reader is quadratic in the object size and
the figures would measure that; here a plain `bytes=a-b` GET of a stored key reads just its range
(one pread of moto's spilled buffer). Both loaders and the ceiling see the same server either way;
--stock-moto keeps moto as it is.

    python benchmarks/bench_s3.py                                     # Qwen2.5-0.5B onto CUDA
    python benchmarks/bench_s3.py --shape llama-3.1-8b --layers 4     # 3.8 GB of 8B-shaped layers
    python benchmarks/bench_s3.py --device cpu --layers 2             # a smoke test
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_load import check, llama_8b_config, reference, weight_paths, write_model
from benchmarks.common import QWEN25_05B
from ember.models import load_model

MiB = 1024 * 1024
CHILD_TIMEOUT_S = 150
SHARDS = {"qwen2.5-0.5b": 1, "llama-3.1-8b": 4}  # as the published checkpoints are cut
# What vLLM's docs have users set for Run:ai on an S3-compatible store (with AWS_ENDPOINT_URL):
# path-style requests, no instance-metadata lookups. Everything else stays at Run:ai's defaults.
RUNAI_ENV = {"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "AWS_EC2_METADATA_DISABLED": "true"}


def model_config(shape: str, layers: int | None) -> dict[str, Any]:
    if shape == "llama-3.1-8b":
        return llama_8b_config(layers or 32, 128256)
    return QWEN25_05B | {"num_hidden_layers": layers or QWEN25_05B["num_hidden_layers"]}


# --- the server -------------------------------------------------------------------------------


@dataclass
class Served:
    """Range GETs the server answered directly, and their bytes: how each reader asks."""

    requests: int = 0
    nbytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


SERVED = Served()


def serve_ranges_directly() -> None:
    """Make moto's S3 server answer a signed `GET key` with `Range: bytes=a-b` (no query but
    x-id) by reading bytes a..b of the stored object, instead of the whole object sliced per
    request. Anything else (anonymous requests, which moto refuses for private keys, included)
    takes moto's own path."""
    from moto.s3.responses import S3Response

    original = S3Response.key_response

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        spec = request.headers.get("range", "")
        query = parse_qs(urlsplit(full_url).query)
        simple = request.method == "GET" and not set(query) - {"x-id"}
        signed = "Authorization" in request.headers
        if not (simple and signed and spec.startswith("bytes=")):
            return original(self, request, full_url, headers)
        first, _, last = spec.removeprefix("bytes=").partition("-")
        if not (first.isdigit() and last.isdigit()):
            return original(self, request, full_url, headers)
        self.setup_class(request, full_url, headers)
        key = self.backend.get_object(self.bucket_name, self.parse_key_name())
        begin, end = int(first), int(last)
        if key is None or begin > end or begin >= key.size:
            return original(self, request, full_url, headers)
        end = min(end, key.size - 1)
        buffer = key._value_buffer  # a SpooledTemporaryFile: on disk once past a few MB
        if getattr(buffer, "_rolled", False):
            data = os.pread(buffer.fileno(), end - begin + 1, begin)
        else:
            with key.lock:
                buffer.seek(begin)
                data = buffer.read(end - begin + 1)
        out = dict(key.response_dict)
        out |= {"content-range": f"bytes {begin}-{end}/{key.size}", "accept-ranges": "bytes"}
        out["content-length"] = str(len(data))
        with SERVED.lock:
            SERVED.requests += 1
            SERVED.nbytes += len(data)
        return 206, out, data

    S3Response.key_response = key_response  # type: ignore[method-assign]


# --- readers, each timed in a fresh process ---------------------------------------------------


def load_ember(uri: str, device: torch.device) -> object:
    return load_model(uri, torch.bfloat16, device)


def load_runai(uri: str, device: torch.device) -> object:
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    out: dict[str, torch.Tensor] = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(sorted(list_safetensors(uri)))  # listed through boto3, as vLLM does
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.to(device, copy=True)  # the tensor is a view of a reused buffer
    return out


def read_ceiling(uri: str, root: Path, threads: int, block: int) -> int:
    """Every shard, in `block`-byte range GETs (SigV4-signed) on `threads` keep-alive
    connections, each read into its thread's one buffer and dropped; returns the bytes read."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    env = os.environ
    signer = S3SigV4Auth(
        Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]), "s3", env["AWS_REGION"]
    )
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    host, port = endpoint.hostname or "127.0.0.1", endpoint.port
    base = "/" + uri.removeprefix("s3://")
    jobs = [
        (f"{base}/{p.name}", off, min(block, p.stat().st_size - off))
        for p in weight_paths(root)
        for off in range(0, p.stat().st_size, block)
    ]
    local = threading.local()

    def get(job: tuple[str, int, int]) -> int:
        path, offset, length = job
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, port, timeout=60)
            local.buf = memoryview(bytearray(block))
        request = AWSRequest("GET", f"{endpoint.geturl()}{path}")
        request.headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        signer.add_auth(request)
        local.conn.request("GET", path, headers=dict(request.headers.items()))
        resp = local.conn.getresponse()
        if resp.status != 206:
            raise RuntimeError(f"GET {path} {offset}+{length}: HTTP {resp.status} {resp.read()!r}")
        done = 0
        while done < length:
            got = resp.readinto(local.buf[done:length])
            if not got:
                raise RuntimeError(f"GET {path} {offset}+{length}: ended after {done} bytes")
            done += got
        return done

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(get, jobs))


READERS = {
    "ceiling": "server ceiling: {threads} x {range_mib} MiB range GETs",
    "ember": "ember load_model(s3://...)",
    "runai": "Run:ai SafetensorsStreamer(s3://...) + .to()",
}


def child(key: str, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    # Imports happen before the clock starts, as ember's do at the top of this file.
    if key == "runai":
        import runai_model_streamer  # noqa: F401 (and boto3)
    if key == "ceiling":
        import botocore.auth  # noqa: F401
    if device.type == "cuda":
        torch.empty(1, device=device)
        torch.cuda.synchronize()
    start = time.perf_counter()
    loaded: object = None
    nbytes = 0  # the loaders' bytes are the checkpoint's weight bytes, known to the parent
    if key == "ceiling":
        nbytes = read_ceiling(args.uri, args.dir, args.threads, args.range_mib * MiB)
    else:
        loaded = (load_ember if key == "ember" else load_runai)(args.uri, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if loaded is not None:
        reference(args.dir, args.layers_written)
        check(loaded)
    print(json.dumps({"seconds": seconds, "bytes": nbytes}))


@dataclass
class Result:
    key: str
    seconds: float
    nbytes: int

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9


def timed(
    key: str, env: dict[str, str], weight_bytes: int, args: argparse.Namespace
) -> Result | None:
    cmd = [sys.executable, __file__, "--child", key, "--uri", args.uri, "--dir", str(args.dir)]
    cmd += ["--layers-written", str(args.layers_written), "--device", args.device]
    cmd += ["--threads", str(args.threads), "--range-mib", str(args.range_mib)]
    label = READERS[key].format(**vars(args))
    before = (SERVED.requests, SERVED.nbytes)
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"  {label:<48} FAILED: over {CHILD_TIMEOUT_S} s", flush=True)
        return None
    if proc.returncode != 0:
        print(f"  {label:<48} FAILED: {proc.stderr.strip()[-3000:]}", flush=True)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    result = Result(key, float(out["seconds"]), int(out["bytes"]) or weight_bytes)
    line = f"{result.seconds:7.2f} s {result.gbps:7.2f} GB/s"
    gets, got = SERVED.requests - before[0], SERVED.nbytes - before[1]
    if gets:
        line += f"  ({gets} range GETs of {got / gets / MiB:.1f} MiB on average)"
    print(f"  {label:<48} {line}", flush=True)
    return result


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", choices=list(SHARDS), default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, help="default: the shape's own (24 / 32)")
    ap.add_argument("--shards", type=int, help="default: as published (1 / 4)")
    ap.add_argument("--dir", type=Path, help="default: .bench/<shape>-<layers>l-random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=2, help="fresh processes per reader")
    ap.add_argument("--threads", type=int, default=16, help="connections of the ceiling reader")
    ap.add_argument("--range-mib", type=int, default=16, help="range size of the ceiling reader")
    ap.add_argument("--stock-moto", action="store_true", help="moto's own (whole-object) ranges")
    ap.add_argument("--no-runai", action="store_true")
    ap.add_argument("--child", choices=list(READERS), help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    ap.add_argument("--layers-written", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return

    device = torch.device(args.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; cpus: {os.cpu_count()}")
    cfg = model_config(args.shape, args.layers)
    args.layers_written = cfg["num_hidden_layers"]
    args.dir = args.dir or Path(f".bench/{args.shape}-{args.layers_written}l-random")
    t0 = time.perf_counter()
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    nbytes = write_model(args.dir, cfg, args.shards or SHARDS[args.shape], gen_device)
    paths = weight_paths(args.dir)
    print(f"model: {args.shape}, {args.layers_written} layers, {nbytes / 1e9:.2f} GB in ", end="")
    print(f"{len(paths)} shards ({time.perf_counter() - t0:.1f} s)")

    from tests.loader.s3server import serve_s3  # moto and boto3: only this process needs them

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per range GET
    if not args.stock_moto:
        serve_ranges_directly()
    with serve_s3() as s3:
        t0 = time.perf_counter()
        args.uri = s3.upload(args.dir, f"{args.shape}-{args.layers_written}l")
        ranges = "moto's own" if args.stock_moto else "read directly"
        print(f"server: moto on {s3.endpoint}, ranges {ranges}; uploaded {args.uri} ", end="")
        print(f"({time.perf_counter() - t0:.1f} s)", flush=True)
        env = dict(os.environ) | s3.env(args.dir.parent)
        keys = ["ceiling", "ember"] + (
            [] if args.no_runai or not runai_s3_available() else ["runai"]
        )
        results: list[Result] = []
        print(f"each read in a fresh process, {args.runs} rounds:")
        for _ in range(args.runs):
            for key in keys:
                result = timed(key, runai_env(env) if key == "runai" else env, nbytes, args)
                if result is not None:
                    results.append(result)
    summarize(results, args)


def runai_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with what vLLM sets for Run:ai on an S3-compatible server; without an empty
    AWS_PROFILE, which boto3 (Run:ai lists the prefix through it) takes for a profile named ''."""
    out = env | RUNAI_ENV
    if not out.get("AWS_PROFILE"):
        out.pop("AWS_PROFILE", None)
    return out


def runai_s3_available() -> bool:
    try:
        import runai_model_streamer  # noqa: F401
        import runai_model_streamer_s3  # noqa: F401
    except Exception as exc:
        print(
            f"Run:ai Model Streamer with S3 not available ({exc}); pip install runai-model-streamer-s3"
        )
        return False
    return True


def summarize(results: list[Result], args: argparse.Namespace) -> None:
    best: dict[str, Result] = {}
    for r in results:
        if r.key not in best or r.seconds < best[r.key].seconds:
            best[r.key] = r
    ceiling = best.get("ceiling")
    print(f"\nsummary (best of {args.runs}; device {args.device}):")
    print(f"  {'reader':<48} {'s':>7} {'GB/s':>7} {'of ceiling':>11}")
    for key, r in best.items():
        share = f"{r.gbps / ceiling.gbps:.0%}" if ceiling else "-"
        label = READERS[key].format(**vars(args))
        print(f"  {label:<48} {r.seconds:7.2f} {r.gbps:7.2f} {share:>11}")
    if "ember" in best and "runai" in best:
        print(f"  ember / Run:ai: x{best['ember'].gbps / best['runai'].gbps:.2f}")


if __name__ == "__main__":
    main()
