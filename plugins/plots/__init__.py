"""Built-in plots plugins (registered through the `bench` entry-point group)."""

from __future__ import annotations

from harness import hookimpl


@hookimpl
def bench_register_plots(register):  # noqa: ANN001, ANN201 - signature fixed by the hook spec
    """Register the built-in plots; modules are imported here, not at import time."""
    from plugins.plots import (
        attention,
        latent_space,
        pruning,
        pruning_exports,
        pruning_pareto,
        sample_size,
        synthetic,
        trajectory,
        trajectory_curves,
        visual,
    )

    for cls in (
        trajectory.TrajectoryHeatmaps,
        trajectory.TrajectoryRadar,
        trajectory_curves.TimeDependent,
        trajectory_curves.NoisePredictionPlot,
        trajectory_curves.DimensionalityPlot,
        trajectory_curves.FIDvsSize,
        trajectory_curves.SizeDependent,
        pruning.PruningCurves,
        pruning_pareto.PruningPareto,
        pruning_exports.PruningSummary,
        pruning_exports.PruningJSON,
        synthetic.SyntheticCurve,
        sample_size.SampleSizeBias,
        visual.SampleGrids,
        visual.DenoisingPlot,
        latent_space.LatentSpacePlot,
        attention.AttentionPlot,
    ):
        register(cls)
