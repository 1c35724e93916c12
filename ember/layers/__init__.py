"""Building blocks of the model architectures: norms, rotary, linear, activation, attention.

Import from the modules themselves (ember.layers.norm, ...); this package stays empty so that
ember.ops can import ember.layers.metadata without a cycle.
"""
