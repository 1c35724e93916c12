"""Kubernetes: Deployment, Service, HPA on vllm:num_requests_waiting, PodMonitoring, and a KEDA
ScaledObject as the alternative to the HPA."""

from __future__ import annotations

from typing import Any, Literal

from ember.deploy.spec import PROBE_PERIOD_S, DeploySpec

MetricsForm = Literal["managed", "adapter"]
WAITING = "vllm:num_requests_waiting"
# Google Cloud Managed Service for Prometheus serves scraped metrics to the HPA (through the
# Stackdriver custom metrics adapter) as prometheus.googleapis.com|METRIC|KIND. As a Pods metric
# the HPA reads it for its own Deployment's pods only; an External one would sum every such
# series in the project (other services, other clusters).
MANAGED_METRIC = f"prometheus.googleapis.com|{WAITING}|gauge"
# prometheus-adapter cannot serve names with ':'; its usual rule renames them to '_'.
ADAPTER_METRIC = "vllm_num_requests_waiting"
ADAPTER_RULE = (
    'rules: [{seriesQuery: \'vllm:num_requests_waiting{namespace!="",pod!=""}\', '
    "resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}, "
    'name: {matches: "vllm:(.*)", as: "vllm_${1}"}, '
    "metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'}]"
)


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
    name = MANAGED_METRIC if form == "managed" else ADAPTER_METRIC
    metric = {"type": "Pods", "pods": {"metric": {"name": name}, "target": target}}
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


def waiting_query(spec: DeploySpec, namespace: str | None) -> str:
    """PromQL for the requests waiting in this Deployment's pods: the pods' names are the
    Deployment's, then the ReplicaSet's hash and the pod's (Prometheus anchors the regex, so
    NAME-canary-... and NAME-v2-... do not match), in its namespace when known."""
    matchers = [f'pod=~"{spec.name}-[a-z0-9]+-[a-z0-9]+"']
    if namespace:
        matchers.insert(0, f'namespace="{namespace}"')
    return f"sum({WAITING}{{{', '.join(matchers)}}})"


def scaled_object(
    spec: DeploySpec, prometheus_url: str, namespace: str | None = None
) -> dict[str, Any]:
    """KEDA instead of the HPA (KEDA creates its own HPA: deploy one or the other). Never below
    one replica: at zero no pod exports the metric, so this trigger could never wake it."""
    # KEDA divides the query's value by the threshold to get replicas: sum over the pods.
    query = waiting_query(spec, namespace)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "scaleTargetRef": {"name": spec.name},
            "minReplicaCount": max(1, spec.min_instances),
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
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    docs = [deployment(spec), k8s_service(spec), pod_monitoring(spec)]
    if autoscaler == "hpa":
        docs.append(hpa(spec, form))
    elif autoscaler == "keda":
        docs.append(scaled_object(spec, prometheus_url, namespace))
    if namespace:
        for doc in docs:
            doc["metadata"]["namespace"] = namespace
    return docs


def notes(
    autoscaler: Literal["hpa", "keda", "none"], form: MetricsForm, namespace: str | None
) -> list[str]:
    """What the cluster needs beyond these manifests for the autoscaler to see the metric."""
    out: list[str] = []
    if autoscaler == "hpa" and form == "managed":
        out.append(
            "the HPA reads the metric through the Custom Metrics Stackdriver Adapter; install it "
            "once per cluster (Managed Prometheus's HPA guide)"
        )
    if autoscaler == "hpa" and form == "adapter":
        out.append(f"prometheus-adapter needs a rule that serves {ADAPTER_METRIC}: {ADAPTER_RULE}")
    if autoscaler == "keda":
        out.append(
            "--prometheus-url must answer PromQL over these pods' metrics: with Managed "
            "Prometheus (the PodMonitoring here), its frontend service; with your own "
            "Prometheus, one that scrapes the pods with namespace and pod labels"
        )
        if not namespace:
            out.append("give --namespace so that KEDA's query counts only this namespace's pods")
    return out
