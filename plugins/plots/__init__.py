"""Built-in plots plugins (registered through the `bench` entry-point group)."""

from __future__ import annotations

from harness import hookimpl


@hookimpl
def bench_register_plots(register):  # noqa: ANN001, ANN201 - signature fixed by the hook spec
    """Register the built-in plots; modules are imported here, not at import time."""
    from plugins.plots import pruning, synthetic, trajectory, visual

    for cls in (
        trajectory.TrajectoryHeatmaps,
        trajectory.TrajectoryRadar,
        trajectory.TimeDependent,
        trajectory.NoisePredictionPlot,
        trajectory.DimensionalityPlot,
        trajectory.FIDvsSize,
        trajectory.SizeDependent,
        pruning.PruningCurves,
        pruning.PruningPareto,
        pruning.PruningSummary,
        pruning.PruningJSON,
        synthetic.SyntheticCurve,
        visual.SampleGrids,
        visual.DenoisingPlot,
        visual.LatentSpacePlot,
        visual.AttentionPlot,
    ):
        register(cls)
