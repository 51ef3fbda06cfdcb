"""The ``diffusers`` family's model: a loaded pipeline behind the ``DiffusionModel`` contract.

:class:`Denoiser` holds the pipeline's denoiser (``pipe.unet`` or ``pipe.transformer``)
as the module pruners work on; :class:`DiffusersModel` samples through the pipeline's
own ``__call__``. How sampling maps the harness's conventions (noise, CFG scales,
samplers, trajectories, generators) onto the pipeline is in
:mod:`plugins.models.diffusers_model`'s docstring; loading and caching are the family's.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from harness import Conditions, DiffusionModel, SampleOutput

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
