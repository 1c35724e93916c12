"""Capturing a family of CUDA graphs (one per input size) that share one memory pool."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


@torch.inference_mode()
def capture_graphs(
    sizes: Iterable[int], forward: Callable[[int], torch.Tensor], device: torch.device
) -> tuple[dict[int, torch.cuda.CUDAGraph], dict[int, torch.Tensor]]:
    """Capture `forward(size)` for every size on a side stream, largest first so that the
    smaller graphs reuse the largest one's pool. Each size runs once eagerly before its capture,
    so Triton compiles and the allocator settles outside the graph. Returns the graphs and the
    static output tensors they write."""
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    outputs: dict[int, torch.Tensor] = {}
    pool = torch.cuda.graph_pool_handle()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for size in sorted(sizes, reverse=True):
            forward(size)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                outputs[size] = forward(size)
            graphs[size] = graph
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    return graphs, outputs
