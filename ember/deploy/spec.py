"""One deploy configuration and the rules that derive its numbers: platform concurrency, the
startup probe from the model's size, and the warnings where settings contradict each other."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

# Fixed start-up cost before weights move: container start, imports, CUDA init, KV allocation and
# warm-up (seconds). Weights add size / load_gbps on top.
BASE_START_S = 20.0
# The startup probe allows this multiple of the expected load time before it gives up.
PROBE_MARGIN = 2.0
PROBE_PERIOD_S = 5
# Cloud Run kills a container whose startup probe has not passed after failureThreshold x
# periodSeconds, and that product may not exceed 240 s. GPU instances need 4 CPU and 16 GiB.
CLOUDRUN_MAX_STARTUP_S = 240
CLOUDRUN_GPU_MIN_CPU = 4.0
CLOUDRUN_GPU_MIN_MEMORY_GIB = 16.0
_MEMORY_UNITS = {
    "Ki": 2**-20,
    "Mi": 2**-10,
    "Gi": 1.0,
    "Ti": 2**10,
    "M": 1e6 / 2**30,
    "G": 1e9 / 2**30,
}


class DeployError(ValueError):
    """A deploy option ember cannot use; the message says which and what to do."""


@dataclass(slots=True)
class TuneAdvice:
    """What `ember tune` recommends, read back from its JSON."""

    num_parallel: int
    concurrency: int
    hpa_target: int
    load_time_s: float | None = None


def read_tune(path: Path) -> TuneAdvice:
    try:
        data = json.loads(path.read_text())
        rec = data["recommended"]
        return TuneAdvice(
            num_parallel=int(rec["num_parallel"]),
            concurrency=int(rec["concurrency"]),
            hpa_target=int(rec["hpa_target"]),
            load_time_s=data.get("load_time_s"),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DeployError(
            f"cannot read a tune result from {path} ({e!r}); write one with 'ember tune "
            "--base-url URL -o FILE'"
        ) from None


@dataclass(slots=True)
class DeploySpec:
    name: str = "ember"
    image: str = "ember:latest"
    model_path: str = "/models/model"  # where the model lives inside the image
    port: int = 8080
    gpu_type: str = "nvidia-l4"
    gpu_count: int = 1
    cpu: str = "8"
    memory: str = "32Gi"
    num_parallel: int = 4
    max_queue: int = 512
    model_instances: int = 1  # model copies in one container (Ollama's OLLAMA_MAX_LOADED_MODELS)
    batch_size: int | None = None  # ideal batch size; None: num_parallel
    concurrency: int | None = None  # None: by the rule, or from the tune result
    min_instances: int = 0
    max_instances: int = 3
    gpu_quota: int | None = None  # GPUs the project may use in the region
    model_size_gb: float = 0.0
    load_gbps: float = 2.0  # weights read rate in GB/s, for the startup probe
    load_time_s: float | None = None  # measured start-up time; overrides the estimate
    startup_timeout_s: int | None = None  # None: sized from the load time
    request_timeout_s: int = 600
    drain_timeout_s: float = 8.0
    service_account: str | None = None
    zonal_redundancy: bool = False
    hpa_target: int | None = None  # vllm:num_requests_waiting per pod
    extra_env: tuple[tuple[str, str], ...] = ()

    def check_numbers(self) -> None:
        """What the flags' types cannot see: numbers that contradict each other, or a tune
        result's (a file anyone may have edited) that no server could run with."""
        if self.min_instances > self.max_instances:
            raise DeployError(
                f"--min-instances {self.min_instances} is above --max-instances "
                f"{self.max_instances}; lower the one or raise the other"
            )
        if min(self.num_parallel, self.platform_concurrency, self.waiting_target) < 1:
            raise DeployError(
                f"num_parallel {self.num_parallel}, concurrency {self.platform_concurrency} and "
                f"hpa_target {self.waiting_target} must be >= 1; fix --num-parallel, "
                "--concurrency, --hpa-target or the --tune file"
            )

    def check_name(self) -> None:
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?", self.name):
            raise DeployError(
                f"service name {self.name!r} must be lowercase letters, digits and '-', start "
                "with a letter and be at most 49 characters; pass --name"
            )

    def apply_tune(self, advice: TuneAdvice, *, keep_num_parallel: bool = False) -> None:
        """Measured numbers win over the rule; flags the user gave explicitly are kept (those
        left unset are None; num_parallel has a default, so the caller says if it was given)."""
        if not keep_num_parallel:
            self.num_parallel = advice.num_parallel
        if self.concurrency is None:
            self.concurrency = advice.concurrency
        if self.hpa_target is None:
            self.hpa_target = advice.hpa_target
        if self.load_time_s is None and advice.load_time_s:
            self.load_time_s = advice.load_time_s

    @property
    def platform_concurrency(self) -> int:
        """(instances x parallel) + (instances x ideal batch): enough in flight to keep every
        batch slot busy plus one batch waiting, so a slot never idles between requests."""
        if self.concurrency is not None:
            return self.concurrency
        batch = self.batch_size if self.batch_size is not None else self.num_parallel
        return self.model_instances * self.num_parallel + self.model_instances * batch

    @property
    def expected_load_s(self) -> float:
        if self.load_time_s is not None:
            return self.load_time_s
        return BASE_START_S + self.model_size_gb / self.load_gbps

    @property
    def startup_budget_s(self) -> int:
        if self.startup_timeout_s is not None:
            return self.startup_timeout_s
        return math.ceil(self.expected_load_s * PROBE_MARGIN / PROBE_PERIOD_S) * PROBE_PERIOD_S

    @property
    def startup_failure_threshold(self) -> int:
        return max(1, math.ceil(self.startup_budget_s / PROBE_PERIOD_S))

    @property
    def waiting_target(self) -> int:
        """HPA target for vllm:num_requests_waiting per pod: half a batch waiting means the pod
        is full and the next request waits; scale before the queue holds a whole batch."""
        if self.hpa_target is not None:
            return self.hpa_target
        return max(1, self.num_parallel // 2)

    def serve_args(self) -> list[str]:
        """The container's args (the image's ENTRYPOINT is `ember`): serve --model-path."""
        return ["serve", self.model_path, "--host", "0.0.0.0", "--port", str(self.port)]

    def env(self) -> list[tuple[str, str]]:
        pairs = [
            ("EMBER_NUM_PARALLEL", str(self.num_parallel)),
            ("OLLAMA_NUM_PARALLEL", str(self.num_parallel)),
            ("EMBER_MAX_QUEUE", str(self.max_queue)),
            ("EMBER_DRAIN_TIMEOUT", f"{self.drain_timeout_s:g}"),
        ]
        return pairs + list(self.extra_env)

    def startup_threshold_for(self, platform: str) -> int:
        """failureThreshold, capped on Cloud Run at its 240 s startup limit."""
        if platform == "cloudrun":
            return min(self.startup_failure_threshold, CLOUDRUN_MAX_STARTUP_S // PROBE_PERIOD_S)
        return self.startup_failure_threshold

    def warnings(self, platform: str = "k8s") -> list[str]:
        out: list[str] = []
        if platform == "cloudrun":
            out += self._cloudrun_warnings()
        conc = self.platform_concurrency
        if conc > 2 * self.num_parallel * self.model_instances:
            out.append(
                f"concurrency {conc} is above 2x num_parallel ({self.num_parallel}): requests "
                "will queue inside an instance instead of starting new ones; lower --concurrency "
                "or raise --num-parallel (measure with 'ember tune')"
            )
        if self.gpu_quota is not None and self.max_instances * self.gpu_count > self.gpu_quota:
            out.append(
                f"max instances {self.max_instances} x {self.gpu_count} GPU exceeds the GPU quota "
                f"{self.gpu_quota}: the autoscaler will fail to start instances; lower "
                "--max-instances or request more quota"
            )
        if self.startup_budget_s < self.expected_load_s <= CLOUDRUN_MAX_STARTUP_S or (
            platform != "cloudrun" and self.startup_budget_s < self.expected_load_s
        ):
            what = "measured" if self.load_time_s is not None else "estimated"
            out.append(
                f"startup probe allows {self.startup_budget_s} s but the {what} load time is "
                f"{self.expected_load_s:.0f} s: instances will be killed before they are ready; "
                "raise --startup-timeout or drop it to size the probe automatically"
            )
        if self.min_instances > self.max_instances:
            out.append(
                f"min instances {self.min_instances} is above max instances {self.max_instances}"
            )
        return out

    def _cloudrun_warnings(self) -> list[str]:
        out: list[str] = []
        if self.expected_load_s > CLOUDRUN_MAX_STARTUP_S:
            out.append(
                f"the load time {self.expected_load_s:.0f} s exceeds Cloud Run's "
                f"{CLOUDRUN_MAX_STARTUP_S} s startup limit: instances will never become ready; "
                "use a smaller model, faster storage (--load-gbps) or Kubernetes"
            )
        cpu, mem = _cpus(self.cpu), _gib(self.memory)
        if cpu is not None and cpu < CLOUDRUN_GPU_MIN_CPU:
            out.append(f"Cloud Run GPU instances need at least 4 CPUs; --cpu is {self.cpu}")
        if mem is not None and mem < CLOUDRUN_GPU_MIN_MEMORY_GIB:
            out.append(
                f"Cloud Run GPU instances need at least 16Gi memory; --memory is {self.memory}"
            )
        return out


def _cpus(text: str) -> float | None:
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def _gib(text: str) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", text.strip())
    if not m:
        return None
    return float(m.group(1)) * (
        _MEMORY_UNITS.get(m.group(2), 1 / 2**30) if m.group(2) else 1 / 2**30
    )
