"""An engine core process's stand-in for tests/engine/test_core_process_exit.py: says it is up,
then sleeps as a core busy loading would."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection


def main(inbox: Connection, outbox: Connection) -> None:
    outbox.send("up")
    time.sleep(60)
