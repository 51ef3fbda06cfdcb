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
    Conditions,
    ConfigError,
    Dataset,
    DiffusionModel,
    MissingFileError,
    ModelFamily,
    SampleOutput,
    TrainContext,
    net_state,
    offline,
    restore_net,
)

log = logging.getLogger(__name__)

#: sampler axis value -> diffusers scheduler class name (built from the pipeline's config)
SCHEDULERS: dict[str, str | None] = {
    "default": None,
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}

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


# ---------------------------------------------------------------------------- network


class Denoiser(nn.Module):
    """``model.net`` of a diffusers model: ``forward(x_t, t, cond) -> eps`` around the
    pipeline's denoiser (``self.denoiser``, shared with the pipeline)."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t, encoder_hidden_states=cond, return_dict=False)[0]

    def ignored_layers(self) -> list[nn.Module]:
        """Modules pruners leave alone: time/class/added embeddings and the output layer
        (a UNet's ``conv_out``, a transformer's ``proj_out``)."""
        d = self.denoiser
        names = ["time_embedding", "class_embedding", "add_embedding", "time_embed"]
        names.append("conv_out" if isinstance(getattr(d, "conv_out", None), nn.Module) else "proj_out")
        return [getattr(d, n) for n in names if isinstance(getattr(d, n, None), nn.Module)]

    def structured_ignored_layers(self) -> list[nn.Module]:
        """What the structured pruner must also keep: attention q/k/v output widths (heads)."""
        from diffusers.models.attention_processor import Attention

        out: list[nn.Module] = []
        for m in self.denoiser.modules():
            if isinstance(m, Attention):
                out += [x for x in (m.to_q, m.to_k, m.to_v) if x is not None]
        return out

    def sync_shapes(self) -> None:
        """After channels were removed: update the width attributes diffusers asserts on."""
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.upsampling import Upsample2D

        for m in self.denoiser.modules():
            if isinstance(m, (Downsample2D, Upsample2D)) and getattr(m, "conv", None) is not None:
                conv = m.conv
                m.channels = getattr(conv, "in_channels", m.channels)
                m.out_channels = getattr(conv, "out_channels", m.out_channels)
            elif isinstance(m, ResnetBlock2D):
                m.in_channels = m.conv1.in_channels
                m.out_channels = m.conv2.out_channels


def fingerprint(net: nn.Module) -> str:
    """A cheap content hash: per tensor its name, shape, sum and absolute sum (float64)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            t64 = t.detach().double()
            h.update(f"{name}:{tuple(t.shape)}:{float(t64.sum()):.17g}:{float(t64.abs().sum()):.17g};".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- model


class DiffusersModel(DiffusionModel):
    """A diffusers pipeline behind the :class:`harness.base.DiffusionModel` contract."""

    def __init__(
        self, pipe: Any, net: Denoiser, options: Any, resolution: int, info: dict[str, Any], base_scheduler: Any
    ) -> None:
        self.pipe = pipe
        self.base_scheduler = base_scheduler  # the checkpoint's scheduler (``sampler = "default"``)
        self.net = net
        self.options = options
        self.resolution = int(resolution)
        self.info = dict(info)
        vsf = int(getattr(pipe, "vae_scale_factor", 8))
        channels = int(net.denoiser.config.in_channels)
        self.sample_shape = (channels, self.resolution // vsf, self.resolution // vsf)
        self._train_scheduler: Any = None

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        return f"DiffusersModel({type(self.pipe).__name__}, {type(self.net.denoiser).__name__}, {n} params)"

    # -- plumbing -------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @property
    def protected_modules(self) -> tuple[str, ...]:  # type: ignore[override]
        ids = {id(m) for m in self.net.ignored_layers()}
        return tuple(name for name, m in self.net.named_modules() if id(m) in ids and name)

    def to(self, device: Any) -> DiffusersModel:
        self.net.to(device)
        for name, comp in self.pipe.components.items():
            if isinstance(comp, nn.Module) and comp is not self.net.denoiser:
                comp.to(device)
        return self

    @contextlib.contextmanager
    def compiled(self, mode: str) -> Iterator[None]:
        """The pipeline samples with ``torch.compile(denoiser)`` inside the block."""
        eager = self.net.denoiser
        self.net.denoiser = torch.compile(eager, mode=None if mode == "default" else mode)
        try:
            yield
        finally:
            self.net.denoiser = eager
            self._bind()

    def _bind(self) -> None:
        """Make the pipeline sample with this model's denoiser (variants share a pipeline)."""
        attr = "unet" if hasattr(self.pipe, "unet") else "transformer"
        if getattr(self.pipe, attr) is not self.net.denoiser:
            setattr(self.pipe, attr, self.net.denoiser)

    def _text_only_unet(self) -> None:
        cfg = self.net.denoiser.config
        if type(self.net.denoiser).__name__ != "UNet2DConditionModel" or cfg.get("addition_embed_type"):
            raise NotImplementedError(
                f"model.diffusers: noise prediction outside the pipeline needs a text-conditioned "
                f"UNet2DConditionModel (SD 1.x/2.x); {type(self.pipe).__name__} has "
                f"{type(self.net.denoiser).__name__}"
            )

    # -- conditions -----------------------------------------------------------------
    def _prompts(self, conditions: Conditions | list[str]) -> list[str]:
        if isinstance(conditions, list):
            return [str(p) for p in conditions]
        if conditions.prompts is not None:
            return list(conditions.prompts)
        raise ValueError("model.diffusers is text-conditioned: the dataset must give prompts")

    def encode_conditions(self, conditions: Conditions) -> torch.Tensor:
        self._text_only_unet()
        prompts = self._prompts(conditions)
        with torch.no_grad():
            emb = self.pipe.encode_prompt(prompts, self.device, 1, False)[0]
        return emb.to(self.dtype)

    def null_condition(self, n: int) -> torch.Tensor:
        return self.encode_conditions([""] * n)  # type: ignore[arg-type]

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        self._text_only_unet()
        out = self.net(x_t.to(self.dtype), t, cond)
        if self.base_scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
            # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(abar) v + sqrt(1 - abar) x_t
            abar = self._alphas_cumprod(x_t.device)[t].view(-1, 1, 1, 1).to(out.dtype)
            out = abar.sqrt() * out + (1 - abar).sqrt() * x_t.to(out.dtype)
        return out.float()

    # -- forward process ------------------------------------------------------------
    def _noise_scheduler(self) -> Any:
        if self._train_scheduler is None:
            from diffusers import DDPMScheduler

            self._train_scheduler = DDPMScheduler.from_config(self.base_scheduler.config)
        return self._train_scheduler

    def _alphas_cumprod(self, device: Any) -> torch.Tensor:
        return self._noise_scheduler().alphas_cumprod.to(device)

    @property
    def num_timesteps(self) -> int:  # type: ignore[override]
        return int(self.base_scheduler.config.num_train_timesteps)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self._alphas_cumprod(x0.device)[t].view(-1, 1, 1, 1).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents (the VAE posterior mean, scaled as the pipeline does)."""
        import torch.nn.functional as F

        vae = self.pipe.vae
        x = images.to(self.device, vae.dtype)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x.float(), size=(self.resolution, self.resolution), mode="bilinear",
                              antialias=True, align_corners=False).to(vae.dtype)
        out = []
        with torch.no_grad():
            for s in range(0, len(x), 8):
                lat = vae.encode(x[s : s + 8]).latent_dist.mean
                shift = vae.config.get("shift_factor") or 0.0
                out.append((lat - shift) * vae.config.scaling_factor)
        return torch.cat(out).float()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        with torch.no_grad():
            img = vae.decode(x0.to(self.device, vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]
        return ((img.float() + 1) / 2).clamp(0, 1)

    def example_inputs(self, n: int = 2) -> tuple[Any, ...]:
        self._text_only_unet()
        x = torch.zeros((n, *self.sample_shape), device=self.device, dtype=self.dtype)
        t = torch.full((n,), self.num_timesteps // 2, dtype=torch.long, device=self.device)
        return x, t, self.null_condition(n)

    # -- sampling -------------------------------------------------------------------
    def scheduler_for(self, sampler: str) -> Any:
        """A fresh scheduler for the ``sampler`` axis value, from the pipeline's config."""
        import diffusers

        if sampler not in SCHEDULERS:
            raise ValueError(f"sampler {sampler!r} is not valid; valid: {', '.join(SCHEDULERS)}")
        base = self.base_scheduler
        cls_name = SCHEDULERS[sampler] or type(base).__name__
        return getattr(diffusers, cls_name).from_config(base.config)

    def sample(
        self,
        noise: torch.Tensor,
        conditions: Conditions,
        *,
        cfg_scale: float,
        sampler: str,
        steps: int,
        cfg_batching: str = "auto",
        record_trajectory: bool = False,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> SampleOutput:
        """Sample through the pipeline from ``noise`` (latents, N x C x h x w); see module doc."""
        cfg_scale = float(cfg_scale)
        if 0.0 < cfg_scale < 1.0 or cfg_scale < 0:
            raise ValueError(
                f"cfg_scale {cfg_scale:g}: diffusers pipelines apply guidance only above 1; valid: 0, 1 or > 1"
            )
        if tuple(noise.shape[1:]) != self.sample_shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected N x {self.sample_shape}")
        n = int(noise.shape[0])
        prompts = self._prompts(conditions)
        if len(prompts) != n:
            raise ValueError(f"{n} noise tensors but {len(prompts)} prompts")
        if cfg_scale == 0.0:
            prompts, guidance, negative = [""] * n, 1.0, None
        else:
            guidance = cfg_scale
            negative = self.options.negative_prompt if cfg_scale > 1.0 and self.options.negative_prompt else None
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
        bs = max(1, int(batch_size or n))
        self._bind()
        scheduler = self.scheduler_for(sampler)
        self.pipe.scheduler = scheduler
        self.pipe.set_progress_bar_config(disable=True)
        images: list[torch.Tensor] = []
        states: list[list[torch.Tensor]] = []
        was_training = self.net.training
        self.net.eval()
        try:
            for s in range(0, n, bs):
                e = min(n, s + bs)
                gens = [torch.Generator().manual_seed(int(v)) for v in seeds[s:e]]
                negatives = [negative] * (e - s) if negative else None
                chunk, chunk_states = self._sample_chunk(
                    scheduler, noise[s:e], prompts[s:e], negatives, guidance, int(steps), gens, record_trajectory
                )
                images.append(chunk)
                states.append(chunk_states)
        finally:
            self.net.train(was_training)
        timesteps = [int(round(float(t))) for t in scheduler.timesteps]
        trajectory = None
        if record_trajectory:
            trajectory = torch.cat([torch.stack(chunk) for chunk in states], dim=1)
        return SampleOutput(images=torch.cat(images).contiguous(), trajectory=trajectory, timesteps=timesteps)


    def _sample_chunk(
        self,
        scheduler: Any,
        noise: torch.Tensor,
        prompts: list[str],
        negatives: list[str] | None,
        guidance: float,
        steps: int,
        generators: list[torch.Generator],
        record_trajectory: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One pipeline call: CPU images in [0, 1] and (if recorded) the latents x_K .. x_0."""
        chunk_states: list[torch.Tensor] = []
        latents = noise.to(device=self.device, dtype=self.dtype)
        if record_trajectory:
            sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
            chunk_states.append((latents.float() * sigma).cpu())

        def keep(_pipe: Any, _i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            chunk_states.append(kw["latents"].detach().float().cpu())
            return kw

        kwargs: dict[str, Any] = dict(
            prompt=prompts,
            negative_prompt=negatives,
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=latents,
            generator=generators,
            output_type="pt",
            return_dict=False,
        )
        if record_trajectory:
            kwargs["callback_on_step_end"] = keep
            kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
        with torch.inference_mode():
            out = self.pipe(**kwargs)[0]
        return torch.as_tensor(out).float().cpu().clamp(0, 1), chunk_states


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
