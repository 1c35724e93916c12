"""Rendered manifests validate offline: built-in kinds against Kubernetes' own schemas (strict),
custom resources against the JSON Schemas kept in ember/deploy/schemas; warnings fire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ember.deploy import cloudrun, k8s
from ember.deploy.schemas import validate_custom
from ember.deploy.spec import DeploySpec, read_tune
from ember.deploy.yamlout import dump_all

kv = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")
K8S_VERSION = "1.30.0"

CONFIGS = [
    DeploySpec(),
    DeploySpec(name="qwen-7b", gpu_type="nvidia-rtx-pro-6000", num_parallel=16, min_instances=1,
               max_instances=8, model_size_gb=15.2, service_account="sa@p.iam.gserviceaccount.com",
               zonal_redundancy=True, extra_env=(("EMBER_CONTEXT_LENGTH", "8192"),)),
    DeploySpec(name="llama", gpu_type="nvidia-l4", gpu_count=1, concurrency=6, hpa_target=3,
               load_time_s=95.0, drain_timeout_s=25.0),
]  # fmt: skip


def roundtrip(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What kubectl would read: our YAML text parsed back must equal the documents."""
    parsed = list(yaml.safe_load_all(dump_all(docs)))
    assert parsed == docs
    return parsed


def check(doc: dict[str, Any]) -> None:
    if doc["apiVersion"] in ("apps/v1", "v1", "autoscaling/v2"):
        kv.validate(doc, K8S_VERSION, strict=True)
    else:
        validate_custom(doc)


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: s.name)
@pytest.mark.parametrize("autoscaler", ["hpa", "keda"])
@pytest.mark.parametrize("form", ["managed", "adapter"])
def test_k8s_manifests_validate(spec: DeploySpec, autoscaler: Any, form: Any) -> None:
    docs = roundtrip(k8s.manifests(spec, autoscaler, form))
    kinds = [d["kind"] for d in docs]
    assert kinds[:3] == ["Deployment", "Service", "PodMonitoring"]
    assert kinds[3] == ("HorizontalPodAutoscaler" if autoscaler == "hpa" else "ScaledObject")
    for doc in docs:
        check(doc)
    pod = docs[0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > spec.drain_timeout_s
    c = pod["containers"][0]
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/live"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == spec.gpu_count
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_hpa_metric_forms() -> None:
    """Both forms are Pods metrics: the HPA averages its own Deployment's pods (an External
    metric would sum every ember or vLLM series in the project)."""
    spec = DeploySpec(hpa_target=5)
    managed = k8s.hpa(spec, "managed")["spec"]["metrics"][0]
    assert managed["type"] == "Pods"
    assert managed["pods"]["metric"]["name"] == (
        "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"
    )
    assert managed["pods"]["target"] == {"type": "AverageValue", "averageValue": "5"}
    adapter = k8s.hpa(spec, "adapter")["spec"]["metrics"][0]
    assert adapter["type"] == "Pods" and adapter["pods"]["target"]["averageValue"] == "5"
    assert any("vllm_num_requests_waiting" in n for n in k8s.notes("hpa", "adapter", None))


def test_keda_never_scales_to_zero_and_counts_only_its_pods() -> None:
    """At zero replicas no pod exports the metric, so a Prometheus trigger could never wake
    the Deployment; the query matches this Deployment's pods in its namespace only."""
    import re

    spec = DeploySpec(name="myllm", min_instances=0)
    docs = k8s.manifests(spec, "keda", namespace="serving")
    scaled = docs[-1]
    assert scaled["spec"]["minReplicaCount"] == 1
    assert all(d["metadata"]["namespace"] == "serving" for d in docs)
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert 'namespace="serving"' in query
    pattern = re.search(r'pod=~"([^"]+)"', query)
    assert pattern is not None
    regex = re.compile(pattern.group(1))  # Prometheus anchors its regexes: fullmatch
    assert regex.fullmatch("myllm-7d9f8c6b5-x2k4q")
    for other in ("myllm-canary-7d9f8c6b5-x2k4q", "myllm-v2-5d7f8c9b4-abcde", "other-7d9f-x2k4q"):
        assert not regex.fullmatch(other), other
    assert any("--namespace" in n for n in k8s.notes("keda", "managed", None))


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: s.name)
def test_cloudrun_service_validates(spec: DeploySpec) -> None:
    (doc,) = roundtrip([cloudrun.service(spec)])
    validate_custom(doc)
    tmpl = doc["spec"]["template"]
    ann = tmpl["metadata"]["annotations"]
    assert ann["run.googleapis.com/cpu-throttling"] == "false"
    assert ann["autoscaling.knative.dev/maxScale"] == str(spec.max_instances)
    assert (
        ann["run.googleapis.com/gpu-zonal-redundancy-disabled"]
        == str(not spec.zonal_redundancy).lower()
    )
    assert tmpl["spec"]["nodeSelector"]["run.googleapis.com/accelerator"] == spec.gpu_type
    assert tmpl["spec"]["containerConcurrency"] == spec.platform_concurrency
    probe = tmpl["spec"]["containers"][0]["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert spec.expected_load_s <= budget <= 240  # Cloud Run's startup limit
    cmd = cloudrun.gcloud_command(spec, "us-central1")
    assert f"--concurrency={spec.platform_concurrency}" in cmd and "--no-cpu-throttling" in cmd
    assert f"--gpu-type={spec.gpu_type}" in cmd and "--region=us-central1" in cmd


def test_schema_rejects_a_typo() -> None:
    doc = cloudrun.service(DeploySpec())
    doc["spec"]["template"]["spec"]["containerConcurency"] = 8
    with pytest.raises(Exception, match="containerConcurency"):
        validate_custom(doc)
    bad = cloudrun.service(DeploySpec(gpu_type="nvidia-h100"))
    with pytest.raises(Exception, match="nvidia-h100"):
        validate_custom(bad)


def test_concurrency_rule() -> None:
    assert DeploySpec(num_parallel=4).platform_concurrency == 8  # 1 x 4 + 1 x 4
    assert DeploySpec(num_parallel=4, batch_size=2, model_instances=2).platform_concurrency == 12
    assert DeploySpec(num_parallel=4, concurrency=5).platform_concurrency == 5


def test_warnings_fire() -> None:
    assert DeploySpec(num_parallel=4).warnings() == []
    w = DeploySpec(num_parallel=4, concurrency=9).warnings()
    assert len(w) == 1 and "above 2x num_parallel" in w[0]
    w = DeploySpec(max_instances=5, gpu_count=1, gpu_quota=3).warnings()
    assert len(w) == 1 and "quota" in w[0]
    w = DeploySpec(load_time_s=120.0, startup_timeout_s=60).warnings()
    assert len(w) == 1 and "startup probe allows 60 s" in w[0] and "measured" in w[0]
    assert DeploySpec(load_time_s=120.0).warnings() == []  # sized automatically


def test_tune_result_drives_the_manifests(tmp_path: Path) -> None:
    tune = tmp_path / "tune.json"
    rec = {"num_parallel": 12, "concurrency": 20, "hpa_target": 4, "knee": 12, "reason": ""}
    tune.write_text(json.dumps({"levels": [], "recommended": rec, "load_time_s": 70.0}))
    spec = DeploySpec()
    spec.apply_tune(read_tune(tune))
    assert (spec.num_parallel, spec.platform_concurrency, spec.waiting_target) == (12, 20, 4)
    assert spec.startup_budget_s >= 70


def test_cli_prints_yaml_warnings_and_gcloud(tmp_path: Path) -> None:
    out = tmp_path / "svc.yaml"
    cmd = [sys.executable, "-m", "ember.cli", "deploy", "cloudrun", "--num-parallel", "2",
           "--concurrency", "10", "--load-time", "200", "--startup-timeout", "100", "-o", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "above 2x num_parallel" in r.stderr and "startup probe allows 100 s" in r.stderr
    assert "gcloud run deploy ember" in r.stdout
    validate_custom(yaml.safe_load(out.read_text()))
    r = subprocess.run(
        [sys.executable, "-m", "ember.cli", "deploy", "k8s", "--autoscaler", "keda"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [d["kind"] for d in yaml.safe_load_all(r.stdout)][-1] == "ScaledObject"


def test_cloudrun_limits_warn() -> None:
    w = DeploySpec(model_size_gb=600.0, load_gbps=2.0).warnings("cloudrun")
    assert len(w) == 1 and "240 s startup limit" in w[0]
    w = DeploySpec(cpu="2", memory="8Gi").warnings("cloudrun")
    assert len(w) == 2 and "4 CPUs" in w[0] and "16Gi" in w[1]
    assert DeploySpec(cpu="2", memory="8Gi").warnings("k8s") == []


def _deploy(*argv: str) -> tuple[int, str]:
    """`ember deploy ...` in this process: (exit code, stderr)."""
    import contextlib
    import io

    from ember.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["deploy", *argv])
        except SystemExit as e:  # argparse's check of a flag's type
            code = int(e.code or 0)
    return code, err.getvalue()


@pytest.mark.parametrize("target", ["cloudrun", "k8s"])
@pytest.mark.parametrize(
    "flags",
    [
        ["--num-parallel", "0"],
        ["--num-parallel", "-4"],
        ["--max-instances", "0"],
        ["--min-instances", "-1"],
        ["--gpus", "0"],
        ["--port", "0"],
        ["--port", "70000"],
        ["--concurrency", "0"],
        ["--timeout", "0"],
        ["--load-gbps", "0"],
        ["--min-instances", "3", "--max-instances", "2"],
    ],
)
def test_deploy_rejects_numbers_no_service_could_run(target: str, flags: list[str]) -> None:
    code, err = _deploy(target, *flags)
    assert code == 2 and "error:" in err and flags[-2] in err and "Traceback" not in err


def test_an_explicit_num_parallel_beats_the_tune_result(tmp_path: Path) -> None:
    tune = tmp_path / "tune.json"
    rec = {"num_parallel": 4, "concurrency": 8, "hpa_target": 2}
    tune.write_text(json.dumps({"levels": [], "recommended": rec}))
    out = tmp_path / "svc.yaml"

    def num_parallel(*flags: str) -> str:
        assert _deploy("cloudrun", "--tune", str(tune), *flags, "-o", str(out))[0] == 0
        container = yaml.safe_load(out.read_text())["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"]}["EMBER_NUM_PARALLEL"]

    assert num_parallel("--num-parallel", "16") == "16"
    assert num_parallel("--num-parallel", "4") == "4"
    rec["num_parallel"] = 6
    tune.write_text(json.dumps({"levels": [], "recommended": rec}))
    assert num_parallel() == "6"


def _gcloud_flag(cmd: str, flag: str) -> list[str]:
    """A gcloud list flag's items as gcloud reads them: split on commas, or on D after `^D^`."""
    import shlex

    value = next(a for a in shlex.split(cmd) if a.startswith(flag + "="))[len(flag) + 1 :]
    if value.startswith("^"):
        delimiter, _, value = value[1:].partition("^")
        return value.split(delimiter)
    return value.split(",")


def test_gcloud_command_keeps_env_values_with_commas() -> None:
    extra = (("EMBER_ORIGINS", "a.com,b.com"), ("EMBER_NOTE", "x@y|z"))
    spec = DeploySpec(extra_env=extra)
    cmd = cloudrun.gcloud_command(spec)
    env = dict(item.split("=", 1) for item in _gcloud_flag(cmd, "--set-env-vars"))
    assert env == dict(spec.env())
    plain = cloudrun.gcloud_command(DeploySpec())
    assert "--set-env-vars=EMBER_NUM_PARALLEL=4," in plain  # the usual form when it can be


def test_cloudrun_serves_the_model_path_it_was_given() -> None:
    spec = DeploySpec(model_path="/models/qwen2.5-7b-instruct", port=9000)
    (doc,) = roundtrip([cloudrun.service(spec)])
    container = doc["spec"]["template"]["spec"]["containers"][0]
    assert (
        container["args"]
        == k8s.deployment(spec)["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert container["args"][:2] == ["serve", "/models/qwen2.5-7b-instruct"]
    assert _gcloud_flag(cloudrun.gcloud_command(spec), "--args") == container["args"]
