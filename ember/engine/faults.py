"""Fault injection for tests: make the engine fail the way a GPU can, on a CPU.

EMBER_TEST_FAULTS is a comma-separated list of `kind@step`: before the model runs its `step`-th
step (counted from 1, warm-up included), `oom` raises a (fake) torch.cuda.OutOfMemoryError and
`crash` a RuntimeError. Unset, it costs one integer increment per step.
"""

from __future__ import annotations

import os

import torch

ENV = "EMBER_TEST_FAULTS"


class Faults:
    def __init__(self, spec: str = "") -> None:
        self.steps = 0
        self._at: dict[int, str] = {}
        for item in spec.split(","):
            kind, _, step = item.strip().partition("@")
            if kind:
                if kind not in ("oom", "crash") or not step.isdigit():
                    raise ValueError(f"{ENV}: bad fault {item!r}; use oom@N or crash@N")
                self._at[int(step)] = kind

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get(ENV, ""))

    def before_step(self) -> None:
        self.steps += 1
        kind = self._at.pop(self.steps, None) if self._at else None
        if kind == "oom":
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({ENV}, step {self.steps})")
        if kind == "crash":
            raise RuntimeError(f"engine crash injected by {ENV} at step {self.steps}")
