"""Stage 2, samples: the images (and trajectories) of one variant under one cell's sampling.

A sample set is a ``samples`` artifact keyed by its variant's key, the sampler, steps,
CFG scale, seeds, number of samples and the timing settings (batch size, CFG batching,
warm-up, device: they change the measured generation time, not the images). A set drawn
with trajectories also serves a request without them.

Paired design: sample i's initial noise and condition depend only on (benchmark seed,
cell seed, i), so every variant and CFG scale of a seed sees the same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from harness.base import Conditions, DiffusionModel
from harness.diffusion import TORCH_DTYPES, resolve_cfg_batching
from harness.errors import CellError
from harness.planner import Cell, VariantSpec
from harness.session import Session, generator
from harness.variants import VariantStage

log = logging.getLogger(__name__)

#: bytes of initial noise kept for reuse across cells (the first sets drawn; no eviction)
NOISE_MEMO_BYTES = 64 * 2**20


@dataclass
class SampleSet:
    """One sampling of one variant (images in [0, 1] on CPU).

    ``images`` and ``conditions`` are ``None`` in a statistics-only set
    (:meth:`SampleStage.stats`: the reference's timings when no metric reads its images).
    """

    key: str
    images: torch.Tensor | None
    conditions: Conditions | None
    trajectory: torch.Tensor | None
    timesteps: list[int] | None
    stats: dict[str, float]


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA's ``OutOfMemoryError`` or an allocator message)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def sample_with_backoff(model: DiffusionModel, noise: torch.Tensor, conditions: Conditions, batch_size: int,
                        **kwargs: Any) -> tuple[Any, int]:
    """``model.sample`` with ``batch_size``, halved after each out-of-memory error (down to 1).

    Samples do not depend on the batch size (the contract of ``sample``), so a retry draws
    the same images. Returns ``(output, batch size that worked)``.
    """
    bs = max(1, int(batch_size))
    while True:
        try:
            return model.sample(noise, conditions, batch_size=bs, **kwargs), bs
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_out_of_memory(exc) or bs == 1:
                raise
            if noise.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("sampling ran out of memory at batch size %d; retrying with %d", bs, bs // 2)
            bs //= 2


@contextlib.contextmanager
def sampling_mode(model: DiffusionModel, device: torch.device, dtype: str, compile_mode: str) -> Iterator[None]:
    """Autocast the denoiser to ``dtype`` (fp16/bf16) and/or ``torch.compile`` it, for sampling only.

    The variant's weights stay as they are; autocast runs the network's matmuls and
    convolutions in the lower precision. ``compile_mode`` is ``torch.compile``'s mode
    (``none`` = eager); the model's ``compiled(mode)`` context swaps in the compiled module.
    """
    with contextlib.ExitStack() as stack:
        if dtype != "fp32":
            stack.enter_context(torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[dtype]))
        if compile_mode != "none":
            stack.enter_context(model.compiled(compile_mode))
        yield


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), or the process's peak resident set
    size (CPU: no allocator statistics, an upper bound)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class SampleStage:
    """Draws (or loads) the sample sets of one session."""

    def __init__(self, session: Session, variants: VariantStage) -> None:
        self.s = session
        self.variants = variants
        self._noise: dict[tuple[Any, ...], torch.Tensor] = {}
        self._noise_bytes = 0
        self._stats: dict[str, SampleSet] = {}

    # -- keys ---------------------------------------------------------------------
    def config(self, variant_key: str, cell: Cell, trajectory: bool) -> dict[str, Any]:
        """What identifies a sample set (hashed into its key)."""
        s, ds = cell.sampling, self.s.dataset(cell.variant)
        return {
            "variant": variant_key,
            "sampler": cell.axes["sampler"],
            "steps": cell.axes["steps"],
            "cfg_scale": cell.axes["cfg_scale"],
            "seed": cell.axes["seed"],
            "bench_seed": self.s.cfg.benchmark.seed,
            "num_samples": s.num_samples,
            "trajectory_samples": s.trajectory_samples if trajectory else 0,
            "dataset": ds.config_key(),
            # how the conditions are drawn; entered only once a dataset has changed it, so
            # the keys of stored sets stay valid
            **({"conditions": ds.conditions_version} if ds.conditions_version != 1 else {}),
            # options added later enter the key only when not at their default (stored keys stay valid)
            **({"dtype": s.dtype} if s.dtype != "fp32" else {}),
            # generation_time and peak_memory_mb are measured with the samples: a new batch
            # size, CFG batching, warm-up or device draws (and times) them again
            "timing": {
                "batch_size": s.batch_size,
                "cfg_batching": resolve_cfg_batching(s.cfg_batching, self.s.device),
                "warmup": s.warmup,
                "device": self.s.device.type,
                **({"compile": s.compile} if s.compile != "none" else {}),
            },
        }

    def key(self, spec: VariantSpec, cell: Cell, trajectory: bool) -> str:
        return self.s.cache.key("samples", self.config(self.variants.key(spec), cell, trajectory))

    def is_stored(self, spec: VariantSpec, cell: Cell, trajectory: bool) -> bool:
        """Whether a set that serves this request is cached (one with trajectories serves both)."""
        exists = self.s.cache.exists
        return exists("samples", self.key(spec, cell, True)) or (
            not trajectory and exists("samples", self.key(spec, cell, False)))

    # -- sets ---------------------------------------------------------------------
    def get(self, spec: VariantSpec, cell: Cell, trajectory: bool) -> SampleSet:
        """The sample set of ``spec`` under ``cell``'s sampling (loaded, or drawn and cached)."""
        key_traj = self.key(spec, cell, True)
        if not trajectory and self.s.cache.exists("samples", key_traj):
            art = self.s.cache.load("samples", key_traj)  # a set with trajectories serves too
        else:
            config = self.config(self.variants.key(spec), cell, trajectory)
            art = self.s.cache.get_or_create("samples", config, lambda: self.draw(spec, cell, trajectory))
        return SampleSet(
            key=art.key,
            images=art.tensors["images"],
            conditions=self.conditions(cell, cell.sampling.num_samples),
            trajectory=art.tensors.get("trajectory"),
            timesteps=art.meta.get("timesteps"),
            stats=dict(art.meta["stats"]),
        )

    def stats(self, spec: VariantSpec, cell: Cell, trajectory: bool) -> SampleSet:
        """Only the key, timesteps and statistics of a set (its tensors are not read):
        every cell asks for its reference's timings (``speedup``)."""
        key_traj, key_plain = self.key(spec, cell, True), self.key(spec, cell, False)
        for key in (key_traj,) if trajectory else (key_traj, key_plain):
            if key in self._stats:
                return self._stats[key]
            if self.s.cache.exists("samples", key):
                meta = self.s.cache.load_meta("samples", key)
                found = SampleSet(key, None, None, None, meta.get("timesteps"), dict(meta["stats"]))
                self._stats[key] = found
                return found
        full = self.get(spec, cell, trajectory)
        return dataclasses.replace(full, images=None, conditions=None, trajectory=None)

    def conditions(self, cell: Cell, n: int) -> Conditions:
        """Paired design: the conditions depend only on (benchmark seed, cell seed).

        ``Dataset.sample_conditions`` is a pure function of its freshly seeded generator
        (the Dataset contract), so every cell of a seed gets the same conditions.
        """
        gen = self.s.generator(cell.axes["seed"], "conditions")
        return self.s.dataset(cell.variant).sample_conditions(n, gen)

    def noise(self, cell: Cell, shape: tuple[int, ...], n: int) -> torch.Tensor:
        """Paired design: sample i's initial noise depends only on (benchmark seed, cell seed, i).

        One seeded generator per sample; memoised (up to ``NOISE_MEMO_BYTES``) because
        every cell of a seed draws the same noise. Callers get a clone.
        """
        memo_key = (cell.axes["seed"], tuple(shape), n)
        found = self._noise.get(memo_key)
        if found is None:
            found = torch.empty((n, *shape))
            for i in range(n):
                found[i] = torch.randn(shape, generator=self.s.generator(cell.axes["seed"], "noise", i))
            size = found.numel() * found.element_size()
            if self._noise_bytes + size <= NOISE_MEMO_BYTES:
                self._noise[memo_key] = found
                self._noise_bytes += size
        return found.clone()

    # -- drawing ------------------------------------------------------------------
    def draw(self, spec: VariantSpec, cell: Cell, trajectory: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Draw and time a sample set now (no cache): its tensors and metadata."""
        model = self.variants.get(spec).model
        s, device = cell.sampling, self.s.device
        n = s.num_samples
        conditions = self.conditions(cell, n)
        noise = self.noise(cell, tuple(model.sample_shape), n)
        kwargs = dict(cfg_scale=cell.axes["cfg_scale"], sampler=cell.axes["sampler"], steps=cell.axes["steps"],
                      cfg_batching=s.cfg_batching)
        batch_size = s.batch_size
        with sampling_mode(model, device, s.dtype, s.compile):
            if s.warmup:
                m = min(n, 4)
                _, batch_size = sample_with_backoff(model, noise[:m].to(device), conditions.slice(0, m), batch_size,
                                                    record_trajectory=False, generator=generator(0, "warmup"), **kwargs)
            while True:  # an out-of-memory retry re-times the whole set
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                out, used = sample_with_backoff(model, noise.to(device), conditions, batch_size,
                                                record_trajectory=trajectory,
                                                generator=self.s.generator(cell.axes["seed"], "sampler"), **kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - t0
                if used == batch_size:
                    break
                batch_size = used
        images = out.images.detach().float().cpu()
        if not torch.isfinite(images).all():
            raise CellError(f"sampling produced non-finite values ({int((~torch.isfinite(images)).sum())} entries)")
        tensors = {"images": images.contiguous()}
        if trajectory and out.trajectory is not None:
            m = min(n, s.trajectory_samples)
            tensors["trajectory"] = out.trajectory[:, :m].detach().float().cpu().contiguous()
        meta = {
            "stats": {"generation_time": elapsed / n, "peak_memory_mb": peak_memory_mb(device),
                      "sampling_seconds": elapsed},
            "timesteps": list(out.timesteps) if out.timesteps is not None else None,
            "device": str(device),
            "batch_size_used": batch_size,
        }
        return tensors, meta
