"""Visual diagnostics: metrics that attach a small array to their row, for the image figures.

The image figures of ``bench plot`` (sample grids, denoising strips, latent-space PCA,
attention maps) are drawn from the Parquet results alone, so these "metrics" store what
the figures need in the row's ``blob`` column: the ``.npy`` bytes of one small array
(:func:`harness.schema.encode_blob`; read it back with :func:`harness.schema.decode_blob`).
Their ``value`` is a count or a descriptive number, **not a quality score**:
``higher_is_better`` is True only because the column needs a value. Layouts and
formulas: ``docs/metrics.md`` ("Visual diagnostics").

==========================  ==========================================================
row ``metric``              ``blob``
==========================  ==========================================================
``sample_grid``             uint8 (n, C, H, W): the first n samples, 0..255
``sample_grid_conditions``  str (n,): each sample's requested class ("3") or prompt
``denoising_strip``         float16 (S, C, H, W): S sampler states of one sample, decoded
                            to [0, 1], from x_K (noise) to x_0 (the sample)
``latent_pca``              float32 (n, 2): samples projected on the reference's 2 PCs
``attention_maps``          float16 (heads, Q, K): one row per timestep (``timestep`` set)
==========================  ==========================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness import CellError, Conditions, Metric, MetricContext, encode_blob
from plugins._fixtures import TINY_UNET

__all__ = [
    "VISUAL_METRICS",
    "AttentionMaps",
    "DenoisingStrip",
    "LatentPCA",
    "SampleGrid",
    "attention_timesteps",
    "condition_strings",
    "kept_states",
    "pca_basis",
]

#: the second row of ``sample_grid``: the samples' conditions as strings
SAMPLE_GRID_CONDITIONS = "sample_grid_conditions"


def _at_least(minimum: int, options: Any, *keys: str) -> None:
    """The one range check of the visual metrics' options: counts >= 1, indices >= 0."""
    for key in keys:
        if getattr(options, key) < minimum:
            raise ValueError(f"{key} must be >= {minimum}, got {getattr(options, key)}")


def condition_strings(conditions: Conditions | None, n: int) -> list[str] | None:
    """The first ``n`` conditions as text: the class label (``"3"``) or else the prompt."""
    if conditions is None:
        return None
    if conditions.labels is not None:
        return [str(int(v)) for v in torch.as_tensor(conditions.labels)[:n].tolist()]
    if conditions.prompts is not None:
        return [str(p) for p in conditions.prompts[:n]]
    return None


# ---------------------------------------------------------------------------- sample grid


@dataclass
class SampleGridOptions:
    """Options of ``sample_grid``."""

    num_images: int = field(default=64, metadata={"help": "keep the first this many samples (an 8 x 8 grid)"})

    def __post_init__(self) -> None:
        _at_least(1, self, "num_images")


class SampleGrid(Metric):
    """The first samples of the cell as 8-bit images, for the sample-grid figures (diagnostic).

    Rows: ``sample_grid`` (value = number of images kept; blob = uint8 (n, C, H, W),
    ``round(255 * sample)``) and ``sample_grid_conditions`` (value = the same n; blob =
    a fixed-width string array (n,) of each sample's requested class label, or its
    prompt for text-conditioned models; left out when the samples have no conditions).
    The value is a count, not a quality score.
    """

    name = "sample_grid"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "conditions"})
    Options: ClassVar[Any] = SampleGridOptions

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        if ctx.samples is None:
            raise CellError(f"metric '{self.name}': the context has no samples")
        samples = torch.as_tensor(ctx.samples)
        n = min(int(samples.shape[0]), self.options.num_images)
        images = (samples[:n].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        rows: list[dict[str, Any]] = [{"metric": self.name, "value": float(n), "blob": encode_blob(images)}]
        texts = condition_strings(ctx.conditions, n)
        if texts is not None:
            rows.append({"metric": SAMPLE_GRID_CONDITIONS, "value": float(len(texts)),
                         "blob": encode_blob(np.array(texts, dtype=str))})
        return rows


# ---------------------------------------------------------------------------- denoising strip


def kept_states(num_states: int, count: int) -> list[int]:
    """Indices of ``count`` evenly spaced states among ``num_states`` (first and last kept).

    With ``count <= num_states`` the rounded indices are distinct, so a figure can
    recompute them from the stored strip's length: ``kept_states(steps + 1, S)``.
    """
    count = max(1, min(int(count), int(num_states)))
    if count == 1:
        return [num_states - 1]
    return [int(i) for i in np.linspace(0, num_states - 1, count).round().astype(int)]


@dataclass
class DenoisingStripOptions:
    """Options of ``denoising_strip``."""

    num_steps: int = field(default=8, metadata={"help": "sampler states kept, evenly spaced from x_K to x_0"})
    sample_index: int = field(default=0, metadata={"help": "which sample (its trajectory must be recorded)"})

    def __post_init__(self) -> None:
        _at_least(1, self, "num_steps")
        _at_least(0, self, "sample_index")


class DenoisingStrip(Metric):
    """The sampler states x_K .. x_0 of one sample, decoded to images (diagnostic).

    Row ``denoising_strip``: value = number of states kept (S); blob = float16
    (S, C, H, W) in [0, 1]: the states at indices ``kept_states(K + 1, S)`` of the
    trajectory (index 0 = the initial noise x_K, index K = the final sample x_0),
    decoded with the model's ``decode`` (clamped to [0, 1]). Sample ``sample_index``
    has the same noise and condition in every variant (paired design), so the strips of
    the teacher and its students are directly comparable.
    """

    name = "denoising_strip"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"trajectories", "model"})
    Options: ClassVar[Any] = DenoisingStripOptions

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        if ctx.trajectories is None:
            raise CellError(f"metric '{self.name}': the context has no trajectories")
        traj = torch.as_tensor(ctx.trajectories)
        i = self.options.sample_index
        if i >= traj.shape[1]:
            raise CellError(
                f"metric '{self.name}': sample_index {i} is not among the {traj.shape[1]} recorded trajectories "
                "(raise [sampling] trajectory_samples or lower metrics.denoising_strip.sample_index)"
            )
        idx = kept_states(int(traj.shape[0]), self.options.num_steps)
        states = traj[idx, i].float()
        images = _decode(ctx, states)
        return [{"metric": self.name, "value": float(len(idx)),
                 "blob": encode_blob(images.clamp(0, 1).cpu().numpy().astype(np.float16))}]


def _decode(ctx: MetricContext, x: torch.Tensor) -> torch.Tensor:
    """Model space -> [0, 1] as the model decodes (pixel models: (x + 1) / 2, clamped)."""
    model = ctx.model
    if model is not None:
        try:
            with torch.inference_mode():
                return model.decode(x.to(model.device)).float().cpu()
        except NotImplementedError:
            pass
    return ((x + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------- latent PCA


def pca_basis(reference: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """The mean, the first ``k`` principal axes (k x D) and their explained variance ratio.

    ``reference`` is N x D. Axes come from the SVD of the centred data (float64); each
    axis' sign is fixed so that its largest-magnitude entry is positive, so the basis is
    the same whichever LAPACK ran. Ratio = sum of the k largest squared singular values
    over the sum of all of them.
    """
    r = np.asarray(reference, dtype=np.float64)
    mean = r.mean(axis=0)
    _, s, vt = np.linalg.svd(r - mean, full_matrices=False)
    total = float((s**2).sum())
    if vt.shape[0] < k or not total > 0:
        raise ValueError(f"PCA needs at least {k} reference samples with non-zero variance")
    axes = vt[:k].copy()
    for j in range(k):
        if axes[j, np.argmax(np.abs(axes[j]))] < 0:
            axes[j] = -axes[j]
    return mean, axes, float((s[:k] ** 2).sum() / total)


@dataclass
class LatentPCAOptions:
    """Options of ``latent_pca``."""

    num_points: int = field(default=256, metadata={"help": "project the first this many samples"})

    def __post_init__(self) -> None:
        _at_least(1, self, "num_points")


class LatentPCA(Metric):
    """The samples projected on the first 2 principal components of the reference's (diagnostic).

    The basis is fitted on every reference sample (flattened to C*H*W pixels, centred
    on the reference mean); the cell's first ``num_points`` samples are projected on it,
    so all variants of a (CFG scale, seed) share one coordinate system (the reference
    cell projects its own samples). Row ``latent_pca``: value = explained variance
    ratio of the 2 components on the reference samples; blob = float32 (n, 2).
    """

    name = "latent_pca"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "reference_samples"})
    Options: ClassVar[Any] = LatentPCAOptions

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        if ctx.samples is None or ctx.reference_samples is None:
            raise CellError(f"metric '{self.name}': the context lacks samples or reference_samples")
        ref = torch.as_tensor(ctx.reference_samples).flatten(1).double().cpu().numpy()
        x = torch.as_tensor(ctx.samples)[: self.options.num_points].flatten(1).double().cpu().numpy()
        try:
            mean, axes, ratio = pca_basis(ref, 2)
        except ValueError as exc:
            raise CellError(f"metric '{self.name}': {exc}") from None
        points = ((x - mean) @ axes.T).astype(np.float32)
        return [{"metric": self.name, "value": ratio, "blob": encode_blob(points)}]


# ---------------------------------------------------------------------------- attention


def attention_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` evenly spaced training timesteps from T-1 (noisy) down to 0 (clean)."""
    grid = np.linspace(num_timesteps - 1, 0, max(1, min(count, num_timesteps))).round().astype(int)
    return list(dict.fromkeys(int(t) for t in grid))


@dataclass
class AttentionMapsOptions:
    """Options of ``attention_maps``."""

    timesteps: int = field(default=3, metadata={"help": "evenly spaced training timesteps from T-1 to 0"})
    block: int = field(default=0, metadata={"help": "which attention block, in call order (0 = the first)"})
    sample_index: int = field(default=0, metadata={"help": "which sample's condition and reference image"})

    def __post_init__(self) -> None:
        _at_least(1, self, "timesteps")
        _at_least(0, self, "block", "sample_index")


class AttentionMaps(Metric):
    """Self-attention weights of one attention block at a few timesteps (diagnostic).

    For models that expose ``attention_maps(x_t, t, cond)`` (the ``unet`` family): the
    input at timestep t is the reference's sample ``sample_index`` noised by the forward
    process, ``x_t = add_noise(encode(x_0), eps, t)``, with ``eps`` drawn from the
    metric's generator (it depends only on the benchmark and cell seeds), and the
    sample's own condition (one conditional call, no guidance). Every variant of a
    (CFG scale, seed) thus sees the identical input, and differences in the maps are the
    model's. One row per timestep: ``attention_maps`` with ``timestep`` = t, value =
    normalised attention entropy (mean over heads and queries of
    ``-sum_k p log p / log K``: 1 = uniform, 0 = one key), blob = float16
    (heads, Q, K) weights of block ``block`` (rows sum to 1 over the K keys; Q = K =
    the block's H' x W' positions, row-major). A model without attention (no
    ``attention_maps`` method, or no attention block) gives no rows.
    """

    name = "attention_maps"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"model", "reference_samples", "conditions"})
    Options: ClassVar[Any] = AttentionMapsOptions

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """The contract's model: a tiny UNet (the stand-in model has no attention, so no rows)."""
        return {"model": TINY_UNET}

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        model = ctx.model
        capture = getattr(model, "attention_maps", None)
        if model is None or not callable(capture):
            return []
        if ctx.reference_samples is None or ctx.conditions is None:
            raise CellError(f"metric '{self.name}': the context lacks reference_samples or conditions")
        o = self.options
        ref = torch.as_tensor(ctx.reference_samples)
        if o.sample_index >= ref.shape[0]:
            raise CellError(f"metric '{self.name}': sample_index {o.sample_index} >= {ref.shape[0]} samples")
        ts = attention_timesteps(int(model.num_timesteps), o.timesteps)
        n = len(ts)
        dev = model.device
        with torch.inference_mode():
            x0 = model.encode(ref[o.sample_index : o.sample_index + 1].float().to(dev) * 2 - 1)
            eps = torch.randn(tuple(x0.shape[1:]), generator=ctx.generator).to(dev)
            t = torch.tensor(ts, dtype=torch.long, device=dev)
            x_t = model.add_noise(x0.expand(n, *x0.shape[1:]), eps.expand(n, *eps.shape), t)
            cond = model.encode_conditions(ctx.conditions.slice(o.sample_index, o.sample_index + 1))
            cond = cond.expand(n, *cond.shape[1:]) if isinstance(cond, torch.Tensor) else cond
        maps = capture(x_t, t, cond)
        if not maps:
            return []
        if o.block >= len(maps):
            raise CellError(f"metric '{self.name}': block {o.block} does not exist; the model has "
                            f"{len(maps)} attention block(s) (valid: 0..{len(maps) - 1})")
        weights = maps[o.block].float()  # n, heads, Q, K
        keys = weights.shape[-1]
        p = weights.clamp_min(0)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # n, heads, Q
        norm = entropy.mean(dim=(1, 2)) / math.log(keys) if keys > 1 else torch.zeros(n)
        return [
            {"metric": self.name, "value": float(norm[j]), "timestep": float(ts[j]),
             "blob": encode_blob(weights[j].cpu().numpy().astype(np.float16))}
            for j in range(n)
        ]


VISUAL_METRICS = (SampleGrid, DenoisingStrip, LatentPCA, AttentionMaps)
