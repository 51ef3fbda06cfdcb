"""An example third-party diffbench plugin package.

It registers one pruner (``layer_magnitude``) and one metric (``brightness_gap``).
Installing the package (``pip install ./examples/diffbench-example-plugin``) is all it
takes for both to appear in ``bench list`` and be usable in a matrix.
"""

from harness import hookimpl


@hookimpl
def bench_register_pruners(register):  # noqa: ANN001, ANN201
    from diffbench_example.pruner import LayerMagnitudePruner

    register(LayerMagnitudePruner)


@hookimpl
def bench_register_metrics(register):  # noqa: ANN001, ANN201
    from diffbench_example.metric import BrightnessGap

    register(BrightnessGap)
