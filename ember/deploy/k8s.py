"""Kubernetes: Deployment, Service, HPA on vllm:num_requests_waiting, PodMonitoring, and a KEDA
ScaledObject as the alternative to the HPA."""

from __future__ import annotations

from typing import Any, Literal

from ember.deploy.spec import PROBE_PERIOD_S, DeploySpec

MetricsForm = Literal["managed", "adapter"]
WAITING = "vllm:num_requests_waiting"
# Google Cloud Managed Service for Prometheus exposes scraped metrics to the HPA as external
# metrics named prometheus.googleapis.com|METRIC|KIND.
MANAGED_METRIC = f"prometheus.googleapis.com|{WAITING}|gauge"
# prometheus-adapter cannot serve names with ':'; its usual rule renames them to '_'.
ADAPTER_METRIC = "vllm_num_requests_waiting"


def _labels(spec: DeploySpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name}


def deployment(spec: DeploySpec, replicas: int | None = None) -> dict[str, Any]:
    spec.check_name()
    port = spec.port
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": PROBE_PERIOD_S}
    container = {
        "name": "ember",
        "image": spec.image,
        "args": spec.serve_args(),
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": k, "value": v} for k, v in spec.env()],
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": spec.gpu_count},
            "limits": {"memory": spec.memory, "nvidia.com/gpu": spec.gpu_count},
        },
        "startupProbe": {**probe, "failureThreshold": spec.startup_failure_threshold},
        "readinessProbe": {**probe, "failureThreshold": 1},
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod_spec = {
        # The kubelet sends SIGTERM, then SIGKILL after the grace period: leave the drain time
        # plus a margin for the readiness probe to take the pod out of the Service.
        "terminationGracePeriodSeconds": int(spec.drain_timeout_s) + 2 * PROBE_PERIOD_S,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "nodeSelector": {"cloud.google.com/gke-accelerator": spec.gpu_type},
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "replicas": max(1, spec.min_instances) if replicas is None else replicas,
            "selector": {"matchLabels": _labels(spec)},
            "template": {"metadata": {"labels": _labels(spec)}, "spec": pod_spec},
        },
    }


def k8s_service(spec: DeploySpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "selector": _labels(spec),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def hpa(spec: DeploySpec, form: MetricsForm = "managed") -> dict[str, Any]:
    target = {"type": "AverageValue", "averageValue": str(spec.waiting_target)}
    if form == "managed":
        metric = {
            "type": "External",
            "external": {"metric": {"name": MANAGED_METRIC}, "target": target},
        }
    else:
        metric = {"type": "Pods", "pods": {"metric": {"name": ADAPTER_METRIC}, "target": target}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": max(1, spec.min_instances),
            "maxReplicas": spec.max_instances,
            "metrics": [metric],
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 300},
                "scaleUp": {"stabilizationWindowSeconds": 0},
            },
        },
    }


def pod_monitoring(spec: DeploySpec) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.googleapis.com/v1",
        "kind": "PodMonitoring",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "selector": {"matchLabels": _labels(spec)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }


def scaled_object(spec: DeploySpec, prometheus_url: str) -> dict[str, Any]:
    """KEDA instead of the HPA (KEDA creates its own HPA: deploy one or the other)."""
    # KEDA divides the query's value by the threshold to get replicas: sum over the pods.
    query = f'sum({WAITING}{{pod=~"{spec.name}-.*"}})'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "scaleTargetRef": {"name": spec.name},
            "minReplicaCount": spec.min_instances,
            "maxReplicaCount": spec.max_instances,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": query,
                        "threshold": str(spec.waiting_target),
                    },
                }
            ],
        },
    }


def manifests(
    spec: DeploySpec,
    autoscaler: Literal["hpa", "keda", "none"] = "hpa",
    form: MetricsForm = "managed",
    prometheus_url: str = "http://prometheus.monitoring:9090",
) -> list[dict[str, Any]]:
    docs = [deployment(spec), k8s_service(spec), pod_monitoring(spec)]
    if autoscaler == "hpa":
        docs.append(hpa(spec, form))
    elif autoscaler == "keda":
        docs.append(scaled_object(spec, prometheus_url))
    return docs
