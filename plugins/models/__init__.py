"""Built-in models plugins (registered through the `bench` entry-point group)."""

from __future__ import annotations

from collections.abc import Callable

from harness import hookimpl


@hookimpl
def bench_register_models(register: Callable[[type], None]) -> None:
    """Register the built-in model families (imported here: nothing heavy at import time)."""
    from plugins.models.diffusers_model import DiffusersFamily
    from plugins.models.synthetic import SyntheticFamily
    from plugins.models.unet import UNetFamily

    for cls in (UNetFamily, SyntheticFamily, DiffusersFamily):
        register(cls)
