"""``diffusers``: a pretrained diffusers text-to-image pipeline as a diffbench model.

What it wraps: any pipeline ``DiffusionPipeline.from_pretrained`` loads (a local folder
in the diffusers layout, or a hub id when there is internet), whose denoiser is
``pipe.unet`` (Stable Diffusion 1.x/2.x, SDXL, ...) or ``pipe.transformer`` (PixArt,
SD3, ...). ``model.net`` is a :class:`Denoiser` module holding that denoiser as
``net.denoiser``: every pruner works on it, and the pipeline samples with the very same
(possibly pruned) module.

Sampling goes through the pipeline's own ``__call__`` (its text encoder, its CFG, its
VAE decode), with:

- ``latents`` = the harness's noise (paired design: same seed, same noise for every
  variant), ``num_inference_steps`` = ``steps``, ``output_type="pt"`` (images in [0, 1]);
- the scheduler chosen by the ``sampler`` axis (``default`` = the pipeline's own; ``ddim``,
  ``ddpm``, ``euler``, ``euler_a``, ``dpmsolver``, ``pndm``, ``lms``, ``heun``, ``unipc``
  are built ``from_config`` of the pipeline's scheduler, so betas and timestep spacing
  stay the checkpoint's);
- CFG: ``cfg_scale > 1`` is the pipeline's ``guidance_scale`` (with ``negative_prompt``),
  ``1`` = conditional only, ``0`` = unconditional only (the empty prompt, no guidance).
  Pipelines apply guidance only above 1, so scales in (0, 1) are refused. The pipeline
  batches the conditional and unconditional halves itself: ``cfg_batching`` is ignored;
- trajectories: the latents after every step, from ``callback_on_step_end``; the first
  state is the initial latents times the scheduler's ``init_noise_sigma``;
- stochastic samplers get one CPU generator per image, seeded from the harness's
  generator, so samples do not depend on ``batch_size`` or the device.

Caching: the unpruned reference is never copied into the artifact cache (its state is
"pristine": the family reloads it from ``pretrained``); pruned variants store the
denoiser's tensors and shapes (``harness.modelio``), in ``dtype``. A pristine denoiser is
recognised by a fingerprint (per-tensor sum and absolute sum, shapes) taken at load.

Pruning notes: the structured pruner keeps ``to_q/to_k/to_v`` output widths (the attention
heads' inner width) and prunes the residual stream around them; after a shape change
``Denoiser.sync_shapes`` updates the channel attributes diffusers' resamplers assert on.
Noise-prediction metrics (``predict_noise``) and structured pruning need a
``UNet2DConditionModel`` with text conditioning only (SD 1.x/2.x); sampling, magnitude,
random and iterative pruning work with any pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from harness import (
    TORCH_DTYPES,
    ConfigError,
    Dataset,
    DiffusionModel,
    MissingFileError,
    ModelFamily,
    TrainContext,
    net_state,
    offline,
    restore_net,
)
from plugins.models.diffusers_pipeline import SCHEDULERS, Denoiser, DiffusersModel, fingerprint

log = logging.getLogger(__name__)

LAYOUT = "a diffusers pipeline folder (model_index.json, unet/ or transformer/, vae/, text_encoder/, tokenizer/, scheduler/)"


def _looks_local(src: str) -> bool:
    """A filesystem path (exists, or starts like one), not a hub id ``owner/name``."""
    return Path(src).expanduser().exists() or src.startswith((".", "/", "~")) or src.count("/") > 1



@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars, info logs or warnings from diffusers / transformers while loading."""
    import warnings

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = (dlog.get_verbosity(), tlog.get_verbosity())
    bars = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS may forbid re-enabling
            warnings.simplefilter("ignore")
            if bars[0]:
                dlog.enable_progress_bar()
            if bars[1]:
                tlog.enable_progress_bar()


# ---------------------------------------------------------------------------- family


@dataclass
class Options:
    """Options of the ``diffusers`` model family (``[model]`` keys)."""

    pretrained: str = field(
        default="", metadata={"help": "local pipeline folder or hub id (env DIFFBENCH_DIFFUSERS_MODEL if empty)"}
    )
    dtype: Literal["fp32", "fp16", "bf16"] = field(default="fp32", metadata={"help": "weights and sampling dtype"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (branch, tag or commit)"})
    variant: str | None = field(default=None, metadata={"help": "weight file variant, e.g. 'fp16'"})
    resolution: int | None = field(default=None, metadata={"help": "image size; default: the denoiser's native size"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt when cfg_scale > 1"})
    attention: Literal["sdpa", "eager", "xformers"] = field(
        default="sdpa", metadata={"help": "attention implementation of the denoiser"}
    )
    attention_slicing: bool = field(default=False, metadata={"help": "slice attention (less memory, slower)"})
    vae_tiling: bool = field(default=False, metadata={"help": "decode latents in tiles (large images, less memory)"})
    finetune_lr: float = field(default=1e-5, metadata={"help": "learning rate of pruners' fine-tuning"})
    finetune_batch_size: int = field(default=4, metadata={"help": "images per fine-tuning step"})

    def __post_init__(self) -> None:
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise ValueError(f"finetune_lr must be a positive finite number, got {self.finetune_lr}")
        if self.finetune_batch_size < 1:
            raise ValueError(f"finetune_batch_size must be >= 1, got {self.finetune_batch_size}")
        src = self.pretrained or os.environ.get("DIFFBENCH_DIFFUSERS_MODEL", "")
        if not src:
            raise ValueError(
                'pretrained: the diffusers model needs a pipeline: set pretrained = "PATH_OR_HUB_ID" '
                "or DIFFBENCH_DIFFUSERS_MODEL"
            )
        path = Path(src).expanduser()
        if _looks_local(src) and not (path / "model_index.json").is_file():
            raise ValueError(f"pretrained: {path} is not a diffusers pipeline folder (no model_index.json); expected {LAYOUT}")
        self.pretrained = src  # resolved once: the family's source and cache identity


@dataclass
class _Loaded:
    """A loaded pipeline, its pristine denoiser (never modified) and facts about them."""

    pipe: Any
    pristine: nn.Module
    fingerprint: str
    scheduler: Any


_PIPES: dict[str, _Loaded] = {}
_PIPES_LOCK = threading.Lock()


class DiffusersFamily(ModelFamily):
    """A pretrained diffusers pipeline (Stable Diffusion & co.): sample, prune, measure."""

    name = "diffusers"
    trainable = False
    supports_sizes = False
    samplers: ClassVar[tuple[str, ...]] = tuple(SCHEDULERS)
    Options = Options

    # -- loading --------------------------------------------------------------------
    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """A tiny random Stable Diffusion pipeline of the real classes, saved in ``folder``."""
        from harness.testing import tiny_sd_pipeline

        return {"options": {"pretrained": str(tiny_sd_pipeline(folder / "tiny_sd"))}}

    def source(self) -> str:
        """The pipeline: ``pretrained``, or ``DIFFBENCH_DIFFUSERS_MODEL`` (resolved by ``Options``)."""
        return self.options.pretrained

    def config_key(self) -> dict[str, Any]:
        key = super().config_key()
        src = Path(self.source()).expanduser()
        index = src / "model_index.json"
        if index.is_file():  # local weights: a changed folder is a different model
            st = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(src.glob("*/*.safetensors"))]
            key["files"] = hashlib.sha256(repr(st).encode()).hexdigest()[:16]
        # what only changes speed or memory is not part of the model's identity
        for k in ("attention", "attention_slicing", "vae_tiling"):
            key["options"].pop(k, None)
        return key

    def _load(self) -> _Loaded:
        """(pipeline, pristine denoiser on CPU, its fingerprint), loaded once per process."""
        o = self.options
        src = self.source()
        memo = repr((src, o.dtype, o.revision, o.variant))
        with _PIPES_LOCK:
            if memo in _PIPES:
                return _PIPES[memo]
        path = Path(src).expanduser()
        local = _looks_local(src)  # a local folder's layout was checked by Options
        from diffusers import DiffusionPipeline

        kwargs: dict[str, Any] = {"torch_dtype": TORCH_DTYPES[o.dtype]}
        if o.revision:
            kwargs["revision"] = o.revision
        if o.variant:
            kwargs["variant"] = o.variant
        if local or offline():
            kwargs["local_files_only"] = True
        try:
            with _quiet():
                pipe = DiffusionPipeline.from_pretrained(str(path) if local else src, **kwargs)
        except Exception as exc:  # OSError, EnvironmentError, ValueError from the hub client
            where = f"{path}" if local else f"hub id '{src}'"
            hint = "" if local else " (offline: download it once, or point pretrained at a local folder)"
            raise MissingFileError(
                f"model.pretrained: cannot load {where}{hint}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            ) from None
        if getattr(pipe, "safety_checker", None) is not None:
            pipe.safety_checker = None  # samples are measured, not shown: keep them unfiltered
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if not isinstance(denoiser, nn.Module):
            raise ConfigError(f"model.pretrained: {type(pipe).__name__} has no unet or transformer denoiser")
        self._configure(pipe, denoiser)
        denoiser.eval().requires_grad_(False)
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module):
                comp.eval().requires_grad_(False)
        out = _Loaded(pipe, denoiser, fingerprint(denoiser), pipe.scheduler)
        with _PIPES_LOCK:
            return _PIPES.setdefault(memo, out)

    def _configure(self, pipe: Any, denoiser: nn.Module) -> None:
        o = self.options
        if o.attention == "xformers":
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as exc:
                raise ConfigError(f"model.attention: 'xformers' is not usable here ({exc}); valid: sdpa, eager") from None
        elif hasattr(denoiser, "set_attn_processor"):
            from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

            try:
                denoiser.set_attn_processor(AttnProcessor2_0() if o.attention == "sdpa" else AttnProcessor())
            except Exception:  # processors of special blocks (e.g. joint attention) stay as they are
                log.info("diffusers: keeping %s's own attention processors", type(denoiser).__name__)
        if o.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
            pipe.enable_attention_slicing()
        if o.vae_tiling and hasattr(pipe, "vae") and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()

    def _wrap(self, denoiser: nn.Module, info: dict[str, Any]) -> DiffusersModel:
        loaded = self._load()
        native = int(loaded.pristine.config.get("sample_size", 64)) * int(getattr(loaded.pipe, "vae_scale_factor", 8))
        resolution = self.options.resolution or native
        return DiffusersModel(loaded.pipe, Denoiser(denoiser), self.options, resolution, info, loaded.scheduler)

    def build(self, dataset: Dataset) -> DiffusersModel:
        """The pretrained model (a private copy of the denoiser; the pipeline is shared)."""
        pristine = self._load().pristine
        n = sum(p.numel() for p in pristine.parameters())
        info = {"size_factor": None, "size_tier": "full", "param_ratio": 1.0, "num_params": n, "teacher_params": n,
                "pretrained": self.source()}
        return self._wrap(copy.deepcopy(pristine), info)

    # -- (de)serialisation ----------------------------------------------------------
    def state(self, model: DiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert isinstance(model, DiffusersModel)
        pristine_fp = self._load().fingerprint
        meta: dict[str, Any] = {"family": self.name, "pretrained": self.source(), "info": model.info}
        if fingerprint(model.net.denoiser) == pristine_fp:
            meta["pristine"] = True
            return {}, meta
        tensors, net_meta = net_state(model.net)
        meta["net"] = net_meta
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], dataset: Dataset) -> DiffusersModel:
        model = self._wrap(copy.deepcopy(self._load().pristine), dict(meta.get("info") or {}))
        if not meta.get("pristine"):
            restore_net(model.net, tensors, meta.get("net") or {})
            model.net.sync_shapes()
        model.net.eval()
        return model

    # -- fine-tuning (pruners) ------------------------------------------------------
    def finetune(self, model: DiffusionModel, dataset: Dataset, steps: int, ctx: TrainContext) -> DiffusionModel:
        """Denoising-loss fine-tuning of the denoiser on the dataset's train split (latents).

        AdamW (``finetune_lr``), ``finetune_batch_size`` images per step drawn with
        ``ctx.generator``, t uniform over the training timesteps, epsilon (or v) target as
        the scheduler's ``prediction_type`` says. The VAE and text encoder stay frozen.
        """
        assert isinstance(model, DiffusersModel)
        if steps <= 0:
            return model
        model._text_only_unet()
        o = self.options
        batch = dataset.load("train")
        prompts = model._prompts(batch.conditions)
        net = model.net
        params = [p for p in net.parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=o.finetune_lr, weight_decay=0.0)
        gen = ctx.generator
        v_pred = model.base_scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
        net.train()
        try:
            for _ in range(int(steps)):
                idx = torch.randint(0, len(batch.images), (min(o.finetune_batch_size, len(batch.images)),), generator=gen)
                x0 = model.encode(batch.images[idx])
                cond = model.encode_conditions([prompts[int(i)] for i in idx])  # type: ignore[arg-type]
                noise = torch.randn(x0.shape, generator=gen).to(x0.device)
                t = torch.randint(0, model.num_timesteps, (len(idx),), generator=gen).to(x0.device)
                x_t = model.add_noise(x0, noise, t)
                target = noise
                if v_pred:
                    abar = model._alphas_cumprod(x0.device)[t].view(-1, 1, 1, 1)
                    target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
                pred = net(x_t.to(model.dtype), t, cond).float()
                loss = torch.nn.functional.mse_loss(pred, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for p in params:
                p.requires_grad_(False)
            net.eval()
        return model
