"""Built-in feature extractors (registered through the `bench` entry-point group)."""

from __future__ import annotations

from harness import hookimpl


@hookimpl
def bench_register_features(register):  # noqa: ANN001, ANN201 - signature fixed by the hook spec
    """Register the built-in feature extractors; modules are imported here, not at import time."""
    from plugins.features.clip import CLIPFeatures
    from plugins.features.digits import DigitsFeatures
    from plugins.features.inception import InceptionFeatures

    for cls in (DigitsFeatures, InceptionFeatures, CLIPFeatures):
        register(cls)
