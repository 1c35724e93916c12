"""The Triton backend must import everywhere, also where Triton or CUDA is missing (CI's CPU)."""

from __future__ import annotations

import inspect

import torch

from ember.ops import attention_ref, triton_attention, triton_kv


def test_modules_import_and_report_availability() -> None:
    assert triton_attention.available() is triton_kv.available()
    if not torch.cuda.is_available():
        assert triton_attention.available() is False


def test_signatures_match_the_reference() -> None:
    ref = inspect.signature(attention_ref.paged_attention_ref)
    assert inspect.signature(triton_attention.paged_attention_triton) == ref
    assert inspect.signature(triton_kv.write_kv_triton) == inspect.signature(attention_ref.write_kv)
