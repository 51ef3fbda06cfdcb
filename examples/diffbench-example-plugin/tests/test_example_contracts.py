"""The example plugin checks itself with diffbench's contract tests."""

from diffbench_example.metric import BrightnessGap
from diffbench_example.pruner import LayerMagnitudePruner

from harness.testing import MetricContract, PrunerContract


class TestLayerMagnitude(PrunerContract):
    pruner_cls = LayerMagnitudePruner


class TestBrightnessGap(MetricContract):
    metric_cls = BrightnessGap
