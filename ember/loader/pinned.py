"""Pinned host memory for the loader's ring, pinned the fast way.

cudaHostAlloc (torch's `pin_memory=True`) pinned the ring's 20 x 16 MiB at 0.49-0.67 ms per MiB
on the H200 host, one thread. Anonymous memory on a 2 MiB boundary with transparent huge pages
asked for, touched, then registered with cudaHostRegister pinned the same 320 MiB at 0.10-0.25 ms
per MiB, and host-to-device copies out of either ran at the same ~54.7 GB/s
(`benchmarks/bench_pin.py`, docs/benchmarks.md). In a fresh process's load the readers spent
0.21-0.24 s pinning their slots this way against 0.89-0.94 s with cudaHostAlloc.

Where registering fails (a driver or sandbox that refuses it), the block comes from
cudaHostAlloc instead, with one warning. EMBER_PIN_REGISTER=0 always uses cudaHostAlloc.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import threading
from collections.abc import Callable

import torch

from ember.envflags import env_flag

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+

_HOST_REGISTER_READ_ONLY = 8  # cudaHostRegisterReadOnly: the device only reads the memory

_warned = threading.Event()


class _Mapping(mmap.mmap):
    """Anonymous memory that unregisters itself from CUDA before it is unmapped: torch's storage
    holds the mapping's buffer, so that happens once no tensor or view of it is left."""

    registered = 0  # the address registered with CUDA, if any

    def __del__(self) -> None:
        if self.registered:
            try:  # noqa: SIM105 (at interpreter exit, contextlib may already be gone)
                unregister(self.registered)
            except Exception:  # CUDA torn down at exit: the process is ending anyway
                pass


def _host_mapping(nbytes: int) -> tuple[torch.Tensor, _Mapping]:
    mapping = _Mapping(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError, AttributeError):  # no THP: 4 KiB pages, slower to pin
        mapping.madvise(_MADV_HUGEPAGE)
    whole = torch.frombuffer(mapping, dtype=torch.uint8)  # holds the mapping's buffer
    skip = -whole.data_ptr() % HUGE_PAGE
    block = whole[skip : skip + nbytes]
    # Fault the pages in here, where it is fast, not inside the registration: the kernel
    # populates them in one call, or one byte a page is written. (torch's fill_ over the whole
    # block took 6-8 ms for 32 MiB and ~96 ms on a thread's first call, its intra-op pool
    # starting, against 1-3 ms for either of these on the development machine.)
    try:
        mapping.madvise(_MADV_POPULATE_WRITE, skip, nbytes)
    except (OSError, ValueError):
        block[::4096].fill_(0)
    return block, mapping


def _cuda_register(ptr: int, nbytes: int) -> None:
    rc = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 0)
    if int(rc) != 0:
        raise RuntimeError(f"cudaHostRegister returned {rc}")


def _cuda_register_read_only(ptr: int, nbytes: int) -> None:
    rc = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, _HOST_REGISTER_READ_ONLY)
    if int(rc) != 0:
        raise RuntimeError(f"cudaHostRegister (read-only) returned {rc}")


def _cuda_unregister(ptr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(ptr)


def _cuda_host_alloc(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


# Indirections the tests replace (there is no CUDA in CI). torch's bindings release the GIL.
register: Callable[[int, int], None] = _cuda_register
# (memory the device only reads: a file's pages in the page cache, mapped read-only)
register_read_only: Callable[[int, int], None] = _cuda_register_read_only
unregister: Callable[[int], None] = _cuda_unregister
host_alloc: Callable[[int], torch.Tensor] = _cuda_host_alloc


def pinned_host(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of nbytes of pinned host memory starting on a page boundary (on the
    current CUDA device's context). Registered memory is unregistered once neither the tensor
    nor any view of it is left; copies still reading from it must have finished by then, as
    with any pinned buffer."""
    if env_flag("EMBER_PIN_REGISTER", True):
        try:
            block, mapping = _host_mapping(nbytes)
            register(block.data_ptr(), nbytes)
        except (OSError, RuntimeError, ValueError) as e:
            if not _warned.is_set():
                _warned.set()
                log.warning("registering host memory failed (%s); pinning with cudaHostAlloc", e)
        else:
            mapping.registered = block.data_ptr()
            return block
    return host_alloc(nbytes)
