"""Tokenization: chat templates (jinja2), encode, decode and streaming detokenization."""

from ember.tokenizer.detokenizer import IncrementalDetokenizer
from ember.tokenizer.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer", "Tokenizer"]
