"""Matrix files and overrides that several test modules run."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"
QUICKSTART = REPO / "benchmarks" / "quickstart.toml"

#: the synthetic matrix cut to reference x 2 seeds + magnitude@0.5 x 2 seeds = 4 cells
SMALL = [
    'matrix.pruning_method=["none", "magnitude"]',
    "matrix.pruning_rate=[0.5]",
    "matrix.cfg_scale=[1.0]",
    "matrix.seed=[0, 1]",
]
