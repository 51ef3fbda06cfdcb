"""Built-in pruning plugins (registered through the `bench` entry-point group).

``magnitude``, ``random`` and ``iterative`` zero individual weights (unstructured),
``structured`` removes channels physically (torch-pruning), ``attention_heads`` removes
whole self-attention heads. Shared scope, protection and measurement: ``_common``.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import hookimpl


@hookimpl
def bench_register_pruners(register: Callable[[type], None]) -> None:
    """Register the five built-in pruners (imported here: nothing happens at import time)."""
    from plugins.pruning.attention_heads import AttentionHeadPruner
    from plugins.pruning.iterative import IterativePruner
    from plugins.pruning.magnitude import MagnitudePruner
    from plugins.pruning.random import RandomPruner
    from plugins.pruning.structured import StructuredPruner

    for cls in (MagnitudePruner, RandomPruner, StructuredPruner, IterativePruner, AttentionHeadPruner):
        register(cls)
