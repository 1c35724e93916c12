"""The tune plot: output throughput and p99 TTFT against concurrency, the knee marked."""

from __future__ import annotations

from pathlib import Path

from ember.deploy.pyplot import load_pyplot
from ember.tune.knee import LevelPoint, Recommendation


def plot(points: list[LevelPoint], rec: Recommendation, path: Path) -> bool:
    """Write the PNG; False (with a message) when matplotlib is missing."""
    plt = load_pyplot()
    if plt is None:
        return False
    xs = [p.concurrency for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [p.output_tok_s for p in points], "o-", color="tab:blue")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tokens/s", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax2 = ax.twinx()
    ax2.plot(xs, [p.ttft_p99_ms for p in points], "s--", color="tab:red")
    ax2.set_ylabel("p99 TTFT (ms)", color="tab:red")
    ax.axvline(rec.knee, color="gray", linestyle=":", label=f"knee = {rec.knee}")
    ax.legend(loc="upper left")
    ax.set_title("ember tune")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
