"""The seed's "expected relationship between pruning rate and accuracy" figure.

It is drawn from the rows of the ``synthetic_quality`` metric of the ``synthetic`` model
plugin: a parametric curve plus seeded noise, NOT a measurement. The figure says so in
its title, in red, so that it cannot be mistaken for a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness import (
    BenchmarkPlot,
    averaged_note,
    fmt_num,
    footnote,
    new_figure,
    plot_style,
    save_figure,
    spread_note,
)
from plugins.plots import _style as st
from plugins.plots.pruning import RATE_LABEL, curve_stats, pruning_groups

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

METRIC = "synthetic_quality"
SYNTHETIC_LABEL = "SYNTHETIC (parametric curve + noise, not a measurement)"


class SyntheticCurve(BenchmarkPlot):
    """SYNTHETIC expected quality vs pruning rate per method (mean ± s.d. band over seeds).

    Writes ``synthetic/expected_pruning_curve.png`` from ``synthetic_quality`` rows (of
    the teacher's pruned variants; rate 0 = the unpruned model), a panel per CFG scale.
    """

    name = "synthetic_curve"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        import pandas as pd

        groups = [g for g in pruning_groups(df) if g.base is None]
        if not groups:
            return []
        g = groups[0]
        methods = [m for m in g.methods if (g.pruned.loc[g.pruned["pruning_method"] == m, "metric"] == METRIC).any()]
        if not methods:
            return []
        stats = {m: curve_stats(g, m, METRIC) for m in methods}
        cfgs = sorted(pd.concat(stats.values())["cfg_scale"].unique())
        styles = st.method_styles(methods)
        with plot_style():
            fig = new_figure(5.6 * len(cfgs) + 2.2, 4.8)
            axes = st.panel_grid(fig, len(cfgs), len(cfgs))
            for ax, cfg in zip(axes, cfgs):
                for m in methods:
                    part = stats[m][np.isclose(stats[m]["cfg_scale"], cfg)].sort_values("pruning_rate")
                    st.errorbar(ax, part["pruning_rate"], part["mean"], part["std"], band=True, label=m,
                                markersize=6, **styles[m])
                ax.text(0.5, 0.5, "SYNTHETIC", transform=ax.transAxes, ha="center", va="center", rotation=25,
                        fontsize=44, color="firebrick", alpha=0.09, fontweight="bold", zorder=0)
                ax.set_xlabel(RATE_LABEL)
                ax.set_ylabel("expected quality (synthetic units)")
                ax.set_xlim(0, max(float(s["pruning_rate"].max()) for s in stats.values()))
                ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
                if len(cfgs) > 1:
                    ax.set_title(f"CFG {fmt_num(cfg)}", fontsize=10)
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right center", title="method")
            fig.suptitle(f"{SYNTHETIC_LABEL}\nExpected relationship between pruning rate and quality",
                         color="firebrick", fontsize=14)
            seeds = spread_note(pd.concat(stats.values())).replace("error bars / bands", "bands")
            footnote(fig, [
                "SYNTHETIC: values come from the `synthetic_quality` metric of the `synthetic` plugin, a parametric "
                "curve of the cell's axes plus seeded Gaussian noise. Never report them as measurements.",
                seeds,
                averaged_note(g.rows(), ["cfg_scale", "pruning_rate", "pruning_method"]),
            ])
            path = save_figure(fig, Path(out_dir) / "synthetic" / "expected_pruning_curve.png")
        return [path]
