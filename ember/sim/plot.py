"""The simulation timeline as a PNG: load, instances (ready and starting) and queue over time."""

from __future__ import annotations

from pathlib import Path

from ember.deploy.pyplot import load_pyplot
from ember.sim.fleet import SimResult


def plot_timeline(result: SimResult, path: Path, title: str = "ember simulate") -> bool:
    plt = load_pyplot()
    if plt is None:
        return False
    t = [row[0] / 60.0 for row in result.timeline]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    axes[0].plot(t, [row[1] for row in result.timeline], color="tab:blue")
    axes[0].set_ylabel("requests/s")
    axes[1].step(t, [row[2] for row in result.timeline], where="post", label="ready")
    axes[1].step(
        t, [row[2] + row[3] for row in result.timeline], where="post", label="ready + starting"
    )
    axes[1].set_ylabel("instances")
    axes[1].legend(loc="upper left")
    axes[2].plot(t, [row[4] for row in result.timeline], color="tab:red")
    axes[2].set_ylabel("queued")
    axes[2].set_xlabel("minutes")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
