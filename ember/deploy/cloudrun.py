"""Cloud Run: a serving.knative.dev/v1 Service with a GPU, and the matching `gcloud run deploy`."""

from __future__ import annotations

import shlex
from typing import Any

from ember.deploy.spec import PROBE_PERIOD_S, DeployError, DeploySpec


def service(spec: DeploySpec) -> dict[str, Any]:
    spec.check_name()
    template_annotations = {
        "autoscaling.knative.dev/minScale": str(spec.min_instances),
        "autoscaling.knative.dev/maxScale": str(spec.max_instances),
        # GPUs need instance-based billing: CPU stays allocated between requests.
        "run.googleapis.com/cpu-throttling": "false",
        "run.googleapis.com/startup-cpu-boost": "true",
        "run.googleapis.com/gpu-zonal-redundancy-disabled": str(not spec.zonal_redundancy).lower(),
    }
    container: dict[str, Any] = {
        "image": spec.image,
        # As on Kubernetes: --model-path takes effect (the image's CMD serves its own folder).
        "args": spec.serve_args(),
        "ports": [{"name": "http1", "containerPort": spec.port}],
        "env": [{"name": k, "value": v} for k, v in spec.env()],
        "resources": {
            "limits": {
                "cpu": spec.cpu,
                "memory": spec.memory,
                "nvidia.com/gpu": str(spec.gpu_count),
            }
        },
        "startupProbe": {
            "httpGet": {"path": "/health", "port": spec.port},
            "initialDelaySeconds": 0,
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 2,
            "failureThreshold": spec.startup_threshold_for("cloudrun"),
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": spec.port},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
    }
    template_spec: dict[str, Any] = {
        "containerConcurrency": spec.platform_concurrency,
        "timeoutSeconds": spec.request_timeout_s,
        "nodeSelector": {"run.googleapis.com/accelerator": spec.gpu_type},
        "containers": [container],
    }
    if spec.service_account:
        template_spec["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "annotations": {"run.googleapis.com/launch-stage": "BETA"},
        },
        "spec": {
            "template": {
                "metadata": {"annotations": template_annotations},
                "spec": template_spec,
            }
        },
    }


# gcloud splits list flags on commas; `^D^` first makes D the separator instead.
_DELIMITERS = "@|;#~+%!"


def gcloud_list(items: list[str]) -> str:
    """A gcloud list or dict flag's value, safe for items that hold commas."""
    if not any("," in item for item in items):
        return ",".join(items)
    for d in _DELIMITERS:
        if not any(d in item for item in items):
            return f"^{d}^" + d.join(items)
    raise DeployError(
        "every gcloud delimiter appears in the --env values; deploy with the YAML instead"
    )


def gcloud_command(spec: DeploySpec, region: str | None = None) -> str:
    """The same service as `gcloud run deploy` flags (probes need the YAML, or --startup-probe
    flags in newer gcloud; the YAML is the reference)."""
    args = [
        "gcloud", "run", "deploy", spec.name,
        f"--image={spec.image}",
        f"--port={spec.port}",
        f"--cpu={spec.cpu}",
        f"--memory={spec.memory}",
        f"--gpu={spec.gpu_count}",
        f"--gpu-type={spec.gpu_type}",
        "--no-cpu-throttling",
        "--gpu-zonal-redundancy" if spec.zonal_redundancy else "--no-gpu-zonal-redundancy",
        f"--concurrency={spec.platform_concurrency}",
        f"--min-instances={spec.min_instances}",
        f"--max-instances={spec.max_instances}",
        f"--timeout={spec.request_timeout_s}",
        "--set-env-vars=" + gcloud_list([f"{k}={v}" for k, v in spec.env()]),
        "--args=" + gcloud_list(spec.serve_args()),
    ]  # fmt: skip
    if spec.service_account:
        args.append(f"--service-account={spec.service_account}")
    if region:
        args.append(f"--region={region}")
    return " ".join(shlex.quote(a) for a in args)
