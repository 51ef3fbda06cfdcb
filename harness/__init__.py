"""diffbench's core: plugin contract, matrix files, planner, runner, caches and store.

``harness.__all__`` is the public API: everything a plugin may import, and the only
names the built-in plugins use (``tests/test_public_api.py`` fails on any other
import), so a third party relies on exactly the surface the built-ins rely on. A plugin
needs one import line, e.g. ``from harness import Pruner, hookimpl``; contract tests
use ``harness.testing``.

- plugin contract (``harness.base``): the base classes, the contexts handed to them,
  ``options_dict``, and the executor's ``Worker`` / ``WorkUnit`` protocols
- hooks (``harness.hookspecs``): ``hookimpl``, ``hookspec``
- errors (``harness.errors``): one-line user errors and ``did_you_mean``
- diffusion maths (``harness.diffusion``) and training loops (``harness.training``)
- model save/restore (``harness.modelio``), attention helpers (``harness.attention``) and
  what a variant costs: MACs and sparsity (``harness.sizes``)
- hashing and the artifact cache (``harness.cache``), the result schema
  (``harness.schema``), ``offline`` (``harness.env``), ``load_results`` (``harness.results``)
  and the plugin registry (``harness.registry``)
- what every plot needs (``harness.plotting``): the house style, rows grouped by variant
  with readable labels, seed statistics and footnotes naming the axes averaged over

Names resolve lazily (module ``__getattr__``, PEP 562): ``import harness`` loads no
torch, pyarrow or pandas, so ``bench --help`` and entry-point discovery stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (resolved on first access, then cached)
_API: dict[str, str] = {
    **dict.fromkeys(
        ["Plugin", "Conditions", "Dataset", "DiffusionModel", "Executor", "ImageBatch", "Metric",
         "ModelFamily", "Plot", "Pruner", "SampleOutput",
         "Worker", "WorkUnit"],
        "harness.base",
    ),
    **dict.fromkeys(["MetricContext", "PruneContext", "TrainContext"], "harness.contexts"),
    "options_dict": "harness.options",
    **dict.fromkeys(["hookimpl", "hookspec"], "harness.hookspecs"),
    **dict.fromkeys(["UserError", "ConfigError", "MissingFileError", "CellError", "did_you_mean"], "harness.errors"),
    **dict.fromkeys(
        ["NoiseSchedule", "ScheduledDiffusionModel", "run_sampler", "guided_eps", "resolve_cfg_batching",
         "TORCH_DTYPES"],
        "harness.diffusion",
    ),
    **dict.fromkeys(
        ["TrainConfig", "DistillConfig", "TrainReport", "train_ddpm", "distill", "finetune", "evaluate_loss"],
        "harness.training",
    ),
    **dict.fromkeys(["net_state", "restore_net", "count_params", "register_module_type"], "harness.modelio"),
    **dict.fromkeys(["HeadPrunedAttention", "qkv_weights", "register_flop_formulas"], "harness.attention"),
    **dict.fromkeys(["count_macs", "measure_macs", "weight_sparsity", "in_module", "protected_modules",
                     "prunable_weights", "WeightRef"], "harness.sizes"),
    **dict.fromkeys(["stable_hash", "canonical_json", "ArtifactCache"], "harness.cache"),
    **dict.fromkeys(["COLUMNS", "encode_blob", "decode_blob"], "harness.schema"),
    **dict.fromkeys(
        ["plot_style", "new_figure", "footnote", "wrap_lines", "save_figure", "fmt_num", "ok_rows",
         "BenchmarkPlot", "Variant", "variant_of", "variant_label", "variant_columns", "variant_groups", "seed_stats",
         "seeds_phrase", "spread_note", "averaged_note"],
        "harness.plotting",
    ),
    **dict.fromkeys(["FeatureExtractor", "get_feature_extractor", "reference_features",
                     "unit_length_kernel_features"], "harness.features"),
    "offline": "harness.env",
    "load_results": "harness.results",
    **dict.fromkeys(["build_registry", "get_plugin_manager"], "harness.registry"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), so the package import is cheap."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
