"""Argument parsing and entry points of `ember build` and `ember deploy`.

Heavy imports stay inside the run functions so that `ember --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ember.argtypes import integer, number
from ember.deploy.spec import DeployError, DeploySpec


def _kv(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {raw!r}")
    return key, value


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model directory or store name")
    p.add_argument(
        "-o", "--output", type=Path, default=None, help="context folder (default: ./build-NAME)"
    )
    p.add_argument("--base-image", default=None, help="CUDA PyTorch base image")
    p.add_argument(
        "--warm-prompts",
        type=Path,
        default=None,
        help='JSON lines ({"messages": [...]} or {"prompt": "..."}): their KV blocks are computed '
        "in the image (ember warm) and loaded into the prefix cache at start",
    )
    p.add_argument(
        "--kernel-cache",
        type=Path,
        default=None,
        help="bake compiled GPU kernels into the image: the kernels/triton folder of ember's "
        "home after one 'ember serve' on the target GPU type (skips ~9 s of compiling at "
        "every cold start)",
    )
    p.add_argument(
        "--wheel",
        type=Path,
        default=None,
        help="install ember from this wheel instead of its source tree",
    )
    p.add_argument("--num-parallel", type=integer(1), default=None, help="bake EMBER_NUM_PARALLEL")
    p.add_argument("--max-queue", type=integer(0), default=None, help="bake EMBER_MAX_QUEUE")
    p.add_argument(
        "--env",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bake another EMBER_*/OLLAMA_* setting (repeatable)",
    )


def run_build(args: argparse.Namespace) -> int:
    import os

    from ember.config import ServeConfig
    from ember.deploy.build import DEFAULT_BASE_IMAGE, write_context
    from ember.errors import EmberError

    settings = list(args.env)
    if args.num_parallel is not None:
        settings.append(("EMBER_NUM_PARALLEL", str(args.num_parallel)))
    if args.max_queue is not None:
        settings.append(("EMBER_MAX_QUEUE", str(args.max_queue)))
    try:
        if Path(args.model).is_dir():
            model_dir, name = Path(args.model), Path(args.model).resolve().name
        else:
            store = ServeConfig.from_sources({}, os.environ).model_store()
            local = store.resolve(args.model)
            model_dir, name = local.path, local.name.split(":")[0].rsplit("/", 1)[-1]
        out = args.output or Path(f"build-{name}")
        ctx = write_context(
            model_dir,
            out,
            args.base_image or DEFAULT_BASE_IMAGE,
            settings,
            args.warm_prompts,
            args.wheel,
            name,
            args.kernel_cache,
        )
    except DeployError as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 2
    except EmberError as e:  # the model name did not resolve
        print(f"ember: error: {e.message}", file=sys.stderr)
        return 2
    except OSError as e:  # the context was removed again (see write_context)
        print(f"Error: cannot write the build context: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {ctx.directory}: model {ctx.model_name} ({ctx.model_bytes / 1e9:.2f} GB) at {ctx.model_path}"
    )
    print(f"next: docker build -t IMAGE {ctx.directory} && docker push IMAGE")
    return 0


def _add_spec_arguments(p: argparse.ArgumentParser) -> None:
    d = DeploySpec()
    p.add_argument("--name", default=d.name, help="service name (default: %(default)s)")
    p.add_argument(
        "--image", default=d.image, help="image built from 'ember build' (default: %(default)s)"
    )
    p.add_argument("--model-path", default=d.model_path, help="model folder inside the image")
    p.add_argument("--port", type=integer(1, 65535), default=d.port)
    p.add_argument(
        "--gpu-type",
        default=d.gpu_type,
        help="nvidia-l4, nvidia-rtx-pro-6000 (Cloud Run), or a GKE accelerator",
    )
    p.add_argument("--gpus", type=integer(1), default=d.gpu_count, help="GPUs per instance")
    p.add_argument("--cpu", default=d.cpu)
    p.add_argument("--memory", default=d.memory)
    p.add_argument(
        "--num-parallel",
        type=integer(1),
        default=None,
        help=f"requests one instance runs at once (default: --tune's, else {d.num_parallel})",
    )
    p.add_argument("--max-queue", type=integer(0), default=d.max_queue)
    p.add_argument("--model-instances", type=integer(1), default=d.model_instances)
    p.add_argument(
        "--batch-size",
        type=integer(1),
        default=None,
        help="ideal batch size (default: num_parallel)",
    )
    p.add_argument(
        "--concurrency",
        type=integer(1),
        default=None,
        help="requests per instance (default: the rule, or --tune)",
    )
    p.add_argument("--min-instances", type=integer(0), default=d.min_instances)
    p.add_argument("--max-instances", type=integer(1), default=d.max_instances)
    p.add_argument(
        "--gpu-quota", type=integer(0), default=None, help="GPUs your quota allows; warn above it"
    )
    p.add_argument(
        "--model-size-gb",
        type=number(0),
        default=d.model_size_gb,
        help="weights size, for the startup probe",
    )
    p.add_argument(
        "--load-gbps",
        type=number(0, strict=True),
        default=d.load_gbps,
        help="weights load rate in GB/s (default: %(default)s)",
    )
    p.add_argument(
        "--load-time",
        type=number(0, strict=True),
        default=None,
        help="measured start-up seconds (overrides the estimate)",
    )
    p.add_argument(
        "--startup-timeout",
        type=integer(1),
        default=None,
        help="startup probe budget in s (default: 2x the load time)",
    )
    p.add_argument(
        "--timeout", type=integer(1), default=d.request_timeout_s, help="request timeout in s"
    )
    p.add_argument(
        "--drain-timeout",
        type=number(0),
        default=d.drain_timeout_s,
        help="ember's SIGTERM drain time in s",
    )
    p.add_argument("--service-account", default=None)
    p.add_argument(
        "--hpa-target", type=integer(1), default=None, help="vllm:num_requests_waiting per pod"
    )
    p.add_argument(
        "--tune",
        type=Path,
        default=None,
        help="'ember tune' JSON: measured concurrency and targets",
    )
    p.add_argument("--env", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "-o", "--output", type=Path, default=None, help="write the YAML here (default: stdout)"
    )


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    cr = sub.add_parser("cloudrun", help="Cloud Run service YAML and the gcloud command")
    _add_spec_arguments(cr)
    cr.add_argument("--region", default=None)
    cr.add_argument(
        "--zonal-redundancy", action="store_true", help="keep GPU zonal redundancy (costs more)"
    )
    k8s = sub.add_parser("k8s", help="Kubernetes Deployment, Service, HPA or KEDA, PodMonitoring")
    _add_spec_arguments(k8s)
    k8s.add_argument("--autoscaler", choices=["hpa", "keda", "none"], default="hpa")
    k8s.add_argument(
        "--metrics",
        choices=["managed", "adapter"],
        default="managed",
        help="HPA metric source: Managed Prometheus (Stackdriver adapter) or prometheus-adapter",
    )
    k8s.add_argument(
        "--prometheus-url",
        default="http://prometheus.monitoring:9090",
        help="KEDA's Prometheus: one that has these pods' metrics (with Managed Prometheus, its "
        "frontend service)",
    )
    k8s.add_argument(
        "--namespace",
        default=None,
        help="the namespace to deploy to (set on every manifest and in KEDA's query)",
    )


def spec_from_args(args: argparse.Namespace) -> DeploySpec:
    from ember.deploy.spec import read_tune

    given_parallel = args.num_parallel is not None
    spec = DeploySpec(
        name=args.name, image=args.image, model_path=args.model_path, port=args.port,
        gpu_type=args.gpu_type, gpu_count=args.gpus, cpu=args.cpu, memory=args.memory,
        num_parallel=args.num_parallel if given_parallel else DeploySpec().num_parallel,
        max_queue=args.max_queue,
        model_instances=args.model_instances, batch_size=args.batch_size,
        concurrency=args.concurrency, min_instances=args.min_instances,
        max_instances=args.max_instances, gpu_quota=args.gpu_quota,
        model_size_gb=args.model_size_gb, load_gbps=args.load_gbps, load_time_s=args.load_time,
        startup_timeout_s=args.startup_timeout, request_timeout_s=args.timeout,
        drain_timeout_s=args.drain_timeout, service_account=args.service_account,
        zonal_redundancy=getattr(args, "zonal_redundancy", False), hpa_target=args.hpa_target,
        extra_env=tuple(args.env),
    )  # fmt: skip
    if args.tune is not None:
        spec.apply_tune(read_tune(args.tune), keep_num_parallel=given_parallel)
    spec.check_numbers()
    return spec


def run_deploy(args: argparse.Namespace) -> int:
    from ember.deploy import cloudrun, k8s
    from ember.deploy.yamlout import dump, dump_all

    try:
        spec = spec_from_args(args)
        if args.target == "cloudrun":
            text = dump(cloudrun.service(spec))
        else:
            docs = k8s.manifests(
                spec, args.autoscaler, args.metrics, args.prometheus_url, args.namespace
            )
            text = dump_all(docs)
    except DeployError as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 2
    for w in spec.warnings("cloudrun" if args.target == "cloudrun" else "k8s"):
        print(f"warning: {w}", file=sys.stderr)
    if args.target == "k8s":
        for note in k8s.notes(args.autoscaler, args.metrics, args.namespace):
            print(f"note: {note}", file=sys.stderr)
    if args.output is not None:
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.target == "cloudrun":
        target = args.output or "service.yaml"
        print(
            f"\n# deploy: gcloud run services replace {target}\n# or: "
            + cloudrun.gcloud_command(spec, args.region),
            file=sys.stderr if args.output is None else sys.stdout,
        )
    return 0
