"""matplotlib for the PNGs of `ember tune` and `ember simulate`: an optional extra."""

from __future__ import annotations

import sys
from typing import Any


def load_pyplot() -> Any | None:
    """matplotlib.pyplot on the headless Agg backend, or None (with a message on stderr) when
    the `deploy` extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "no plot: matplotlib is not installed (pip install 'ember-serve[deploy]')",
            file=sys.stderr,
        )
        return None
    return plt
