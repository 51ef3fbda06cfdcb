"""What a model variant costs: multiply-accumulates and the share of zero weights.

One MAC counter and one sparsity count for the engine and for pruners alike
(``plugins/pruning`` measures with these too; each caller chooses which weights count).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

#: version of the MAC counting stored with variants (2: attention kernels counted)
MACS_VERSION = 2


def count_macs(net: torch.nn.Module, example_inputs: Sequence[Any]) -> float:
    """Multiply-accumulates of one forward pass of ``net`` on ``example_inputs``
    (torch's FLOP counter / 2), with the attention kernels counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.attention import register_flop_formulas

    # without these formulas attention counts 0 MACs on CPU, and a head-pruned net would
    # look costlier than its parent (its projections are plain linears)
    register_flop_formulas()
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(*example_inputs)
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 2.0


def measure_macs(model: Any) -> float:
    """MACs of one denoiser call of a :class:`harness.base.DiffusionModel` on one sample.

    NaN for models that cannot call their denoiser outside their own sampler
    (``example_inputs`` raises ``NotImplementedError``, e.g. SDXL pipelines).
    """
    try:
        inputs = model.example_inputs(1)
    except NotImplementedError as exc:
        log.info("MACs not measured: %s", exc)
        return float("nan")
    return count_macs(model.net, inputs)


def weight_sparsity(weights: Iterable[torch.Tensor]) -> float:
    """Share of exactly-zero entries among ``weights`` (0 when there are none)."""
    zeros = 0
    total = 0
    with torch.no_grad():
        for w in weights:
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0
