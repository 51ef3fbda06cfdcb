"""An example third-party diffbench plugin package.

It registers a pruner (``layer_magnitude``), two metrics (``brightness_gap`` and
``feature_mean_gap``, which computes on any registered feature extractor) and a feature
extractor (``patch_stats``). Installing the package (``pip install
./examples/diffbench-example-plugin``) is all it takes for them to appear in ``bench
list`` and be usable in a matrix.
"""

from harness import hookimpl


@hookimpl
def bench_register_pruners(register):  # noqa: ANN001, ANN201
    from diffbench_example.pruner import LayerMagnitudePruner

    register(LayerMagnitudePruner)


@hookimpl
def bench_register_metrics(register):  # noqa: ANN001, ANN201
    from diffbench_example.feature_gap import FeatureMeanGap
    from diffbench_example.metric import BrightnessGap

    register(BrightnessGap)
    register(FeatureMeanGap)


@hookimpl
def bench_register_features(register):  # noqa: ANN001, ANN201
    from diffbench_example.features import PatchStats

    register(PatchStats)
