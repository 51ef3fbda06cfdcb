"""The existing metrics and samplers against their peer implementations, on the same inputs.

Each test computes one quantity twice: through diffbench, and through the package or
formula diffbench follows, called directly (issue 16, item 5):

- ``lpips`` vs the ``lpips`` package (Zhang et al. 2018) loading the same torchvision
  AlexNet file by its own code path, on the images mapped to [-1, 1];
- ``clip_score`` vs open_clip's ``encode_image`` / ``encode_text`` and its own
  ``preprocess`` transform, with cosines of both signs;
- the Frechet distance with fewer samples than dimensions (singular covariances) and
  full-rank, vs a 50-digit mpmath reference;
- one DDIM step and one DDPM step of :func:`harness.run_sampler` vs diffusers'
  ``DDIMScheduler.step`` / ``DDPMScheduler.step`` driven with the same alphas, timestep
  pair, eps and noise.

The metric networks have random weights of the real architectures, written to temporary
folders (``tests/_weights.py``); mpmath ships with torch (through sympy).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.base import Conditions, MetricContext
from harness.diffusion import NoiseSchedule, run_sampler
from plugins.metrics import clip_score as clip_mod
from plugins.metrics._frechet import feature_stats, frechet_distance
from plugins.metrics.clip_score import CLIPScore
from plugins.metrics.lpips_metric import LPIPS


def ctx_of(samples: torch.Tensor, **kw) -> MetricContext:
    return MetricContext(cell=None, device="cpu", generator=torch.Generator().manual_seed(0), samples=samples, **kw)


def smooth_images(n: int, channels: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """n pictures in [0, 1] with structure at several scales (upsampled noise plus fine noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, channels, 4, 4, generator=g), size=size, mode="bilinear")
    return (0.8 * coarse + 0.2 * torch.rand(n, channels, *size, generator=g)).clamp(0, 1)


# -------------------------------------------------------------------------- lpips


@pytest.mark.parametrize("channels", [3, 1])
def test_lpips_equals_the_lpips_package_on_minus_one_to_one_inputs(
    alexnet_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channels: int
) -> None:
    """Per sample, to float32 tolerance (rtol 1e-5, atol 1e-7; observed: at most 3e-8 apart, values ~0.15).

    64 x 64 images, so diffbench's ``min_size`` upsampling is not involved; grey images
    are repeated to RGB, the convention of every LPIPS user (the package needs 3 channels).
    """
    import lpips

    # the package loads the backbone itself: torchvision's AlexNet from torch's cache
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(alexnet_file, cache / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notice about lpips' `pretrained=True` call
        peer = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=False, verbose=False).eval()
    assert torch.equal(peer.net.slice1[0].weight, torch.load(alexnet_file)["features.0.weight"])

    samples, refs = smooth_images(5, channels, (64, 64), seed=1), smooth_images(5, channels, (64, 64), seed=2)
    metric = LPIPS(net="alex", backbone_weights=str(alexnet_file))
    ours = torch.tensor([metric.compute(ctx_of(s[None], reference_samples=r[None])) for s, r in zip(samples, refs)])
    rgb = (lambda x: x.repeat(1, 3, 1, 1)) if channels == 1 else (lambda x: x)
    with torch.no_grad():
        theirs = peer(rgb(samples) * 2 - 1, rgb(refs) * 2 - 1).reshape(-1)
    assert bool((theirs > 1e-3).all()) and float(theirs.std()) > 0  # five distinct, non-trivial distances
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    mean = metric.compute(ctx_of(samples, reference_samples=refs))  # the metric is the per-sample mean
    assert mean == pytest.approx(float(theirs.mean()), rel=1e-6)


# --------------------------------------------------------------------- clip_score


def pil_picture(image01: torch.Tensor) -> Image.Image:
    """The 8-bit PIL image of a C x H x W picture in [0, 1] (round half up, as torchvision's save_image)."""
    array = np.clip(image01.permute(1, 2, 0).numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)  # grey -> mode "L"


@pytest.fixture(scope="module")
def open_clip_peer(small_clip_file: Path) -> tuple[Any, Any, Any]:
    """open_clip's own model, eval transform and tokenizer for the random ViT-S-32 file."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=str(small_clip_file))
    return model.eval(), preprocess, open_clip.get_tokenizer("ViT-S-32")


def clip_options(small_clip_file: Path) -> dict[str, str]:
    return {"model_name": "ViT-S-32", "pretrained": "", "weights": str(small_clip_file)}


PROMPTS = [
    "a handwritten digit 3", "a photo of a cat", "a red circle on a white background",
    "static noise", "the number seven", "a blue square", "a landscape at dusk", "a zero",
]  # fmt: skip


def test_clip_score_clamps_each_sample_like_open_clip_cosines(small_clip_file: Path, open_clip_peer: tuple) -> None:
    """clip_score = mean_i max(100 cos_i, 0), cos_i from open_clip directly (rel 1e-6; observed: equal).

    The random model gives cosines of both signs, so clamping the mean instead of each
    sample would give a different number.
    """
    model, preprocess, tokenizer = open_clip_peer
    images = smooth_images(len(PROMPTS), 3, (32, 32), seed=4)  # two of eight cosines < 0
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(pil_picture(x)) for x in images])), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(PROMPTS)), dim=-1)
    cos = (img * txt).sum(dim=-1).double()
    assert bool((cos < 0).any()) and bool((cos > 0).any())  # the case this test is about
    per_sample = float((100 * cos).clamp(min=0).mean())
    after_mean = max(float(100 * cos.mean()), 0.0)
    assert abs(per_sample - after_mean) > 0.1

    value = CLIPScore(**clip_options(small_clip_file)).compute(ctx_of(images, conditions=Conditions(prompts=PROMPTS)))
    assert value == pytest.approx(per_sample, rel=1e-6)


@pytest.mark.parametrize(
    ("channels", "size"),
    [(1, (16, 16)), (3, (40, 30)), (3, (256, 300))],  # digits-like grey, non-square up- and downscaled
)
def test_clip_preprocessing_equals_open_clips_transform_of_the_pil_image(
    small_clip_file: Path, open_clip_peer: tuple, channels: int, size: tuple[int, int]
) -> None:
    """diffbench's [0, 1] tensor -> model input equals open_clip's ``preprocess(PIL image)``.

    Exactly on pictures already on the 8-bit grid. On arbitrary floats the two 8-bit
    pictures differ only at exact ties (k + 0.5 after scaling: diffbench rounds half to
    even, ``pil_picture`` half up; one pixel of 691,200 in the 256 x 300 case), so at most
    one 8-bit level survives the resize, 1 / 255 / std in normalised units.
    """
    _, preprocess, _ = open_clip_peer
    clip = clip_mod.get_clip(clip_mod.CLIPScoreOptions(**clip_options(small_clip_file)), "cpu")
    images = smooth_images(3, channels, size, seed=4)
    on_grid = (images * 255).round() / 255
    ours, theirs = clip.preprocess(on_grid), torch.stack([preprocess(pil_picture(x)) for x in on_grid])
    assert ours.shape == theirs.shape == (3, 3, 224, 224)
    assert torch.equal(ours, theirs)

    diff = (clip.preprocess(images) - torch.stack([preprocess(pil_picture(x)) for x in images])).abs()
    one_level = 1 / 255 / min(clip.model.visual.preprocess_cfg["std"])
    assert float(diff.max()) <= one_level + 1e-6
    assert int((diff > 0).sum()) <= 1e-4 * diff.numel()


# ---------------------------------------------------------------- Frechet distance


TraceSqrt = Callable[[mpmath.matrix, mpmath.matrix], mpmath.mpf]


def mp_centred(features: np.ndarray) -> tuple[list, mpmath.matrix]:
    """Mean (list) and centred copy (N x D matrix) of a float64 feature matrix, at mpmath precision."""
    n, d = features.shape
    a = mpmath.matrix(features.tolist())  # every float64 is exact in mpmath
    mu = [mpmath.fsum(a[i, j] for i in range(n)) / n for j in range(d)]
    for i in range(n):
        for j in range(d):
            a[i, j] -= mu[j]
    return mu, a


def mp_frechet(f1: np.ndarray, f2: np.ndarray, trace_sqrt: TraceSqrt) -> mpmath.mpf:
    """||mu1 - mu2||^2 + Tr C1 + Tr C2 - 2 trace_sqrt(A1, A2), all at mpmath's precision.

    A1, A2 are the centred feature matrices, C_k = A_k^T A_k / (n_k - 1).
    """
    (mu1, a1), (mu2, a2) = mp_centred(f1), mp_centred(f2)
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    tr1 = mpmath.fsum(a1[i, j] ** 2 for i in range(n1) for j in range(d)) / (n1 - 1)
    tr2 = mpmath.fsum(a2[i, j] ** 2 for i in range(n2) for j in range(d)) / (n2 - 1)
    return mpmath.fsum((x - y) ** 2 for x, y in zip(mu1, mu2)) + tr1 + tr2 - 2 * trace_sqrt(a1, a2)


def trace_sqrt_nuclear(a1: mpmath.matrix, a2: mpmath.matrix) -> mpmath.mpf:
    """Tr((C1 C2)^(1/2)) = ||A1 A2^T||_* / sqrt((n1 - 1)(n2 - 1)), the nuclear norm.

    C1 C2 = A1^T (A1 A2^T) A2 / ((n1-1)(n2-1)) has the nonzero eigenvalues of
    M M^T with M = A1 A2^T / sqrt(...), whose square roots are M's singular values; an
    n1 x n2 SVD, cheap when n < D and blind to the D - n zero eigenvalues.
    """
    return mpmath.fsum(mpmath.svd_r(a1 * a2.T, compute_uv=False)) / mpmath.sqrt((a1.rows - 1) * (a2.rows - 1))


def trace_sqrt_sqrtm(a1: mpmath.matrix, a2: mpmath.matrix) -> mpmath.mpf:
    """Tr(sqrtm(C1 C2)), the textbook formula (needs C1 C2 invertible: full rank)."""
    c1, c2 = a1.T * a1 / (a1.rows - 1), a2.T * a2 / (a2.rows - 1)
    root = mpmath.sqrtm(c1 * c2)
    return mpmath.re(mpmath.fsum(root[i, i] for i in range(root.rows)))


def gaussian_features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two n x d feature sets with correlated, unequal scales and different means."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    f1 = rng.standard_normal((n, d)) @ mix * rng.uniform(0.2, 3.0, d)
    f2 = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d) + 0.3
    return f1, f2


def frechet_relative_error(n: int, d: int, trace_sqrt: TraceSqrt) -> float:
    f1, f2 = gaussian_features(n, d, seed=n + d)
    with mpmath.workdps(50):
        reference = mp_frechet(f1, f2, trace_sqrt)
        ours = frechet_distance(*feature_stats(f1), *feature_stats(f2))
        return float(abs(mpmath.mpf(ours) - reference) / reference)


def test_frechet_distance_full_rank_matches_a_50_digit_reference() -> None:
    """n = 200 > d = 8 vs Tr(sqrtm(C1 C2)) at 50 digits: rel 1e-12 (observed 3e-16)."""
    assert frechet_relative_error(200, 8, trace_sqrt_sqrtm) < 1e-12


def test_frechet_distance_with_fewer_samples_than_dimensions_matches_a_50_digit_reference() -> None:
    """n = 20 < d = 64 (ranks 19 of 64) vs the nuclear-norm form at 50 digits: rel 1e-12.

    The D - n + 1 zero eigenvalues of C1^(1/2) C2 C1^(1/2) come out of float64 ``eigh``
    as +-1e-16 noise; summing their square roots cost 1-2e-8 relative until
    ``_frechet`` set them to 0 (clean-fid's sqrtm-based function: 2.6e-8).
    """
    for n, d in ((20, 64), (10, 64), (32, 128)):
        assert frechet_relative_error(n, d, trace_sqrt_nuclear) < 1e-12, (n, d)


# ------------------------------------------------------- one DDIM / DDPM step


def eps_of(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    """A fixed smooth stand-in for a noise prediction network, of x and t."""
    return torch.sin(1.3 * x + 0.03 * t.view(-1, 1, 1, 1).float()) * 1.5


def trajectory(sampler: str, schedule: NoiseSchedule, steps: int, clip: bool) -> tuple[torch.Tensor, list[int]]:
    """diffbench's states x_K .. x_0 for 4 x 1 x 5 x 5 noise (DDPM noise from a generator seeded 7)."""
    noise = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, dtype=torch.long)
    _, states, ts = run_sampler(
        eps_of, schedule, noise, labels, labels, cfg_scale=1.0, sampler=sampler, steps=steps,
        record_trajectory=True, generator=torch.Generator().manual_seed(7), clip_sample=clip,
    )  # fmt: skip
    return states, ts


def with_our_alphas(scheduler: Any, schedule: NoiseSchedule) -> Any:
    """``scheduler`` (built from our betas) with its alphas_cumprod set to ours, in float64 as run_sampler uses."""
    ours = torch.tensor([schedule.alpha_bar_of(t) for t in range(schedule.timesteps)], dtype=torch.float64)
    # the same betas mean the same schedule; diffusers' float32 cumprod agrees to rounding
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), ours, rtol=0, atol=2e-6)
    scheduler.alphas_cumprod = ours
    return scheduler


SCHEDULES = [("cosine", 50, 8), ("linear", 50, 8), ("cosine", 1000, 10), ("linear", 1000, 10)]  # kind, T, steps


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize(("kind", "T", "steps"), SCHEDULES)
def test_each_ddim_step_equals_diffusers_ddim_scheduler_step(kind: str, T: int, steps: int, clip: bool) -> None:
    """Each step x_t -> x_prev (eta = 0), from diffbench's own x_t, to float32 rounding (observed: bitwise equal).

    diffusers' DDIM steps by T // num_inference_steps, which is chosen to give our timestep
    pairs (evenly spaced here: 49 -> 42 -> ... and 999 -> 888 -> ...); the last step goes to alpha_bar = 1
    (``set_alpha_to_one``). diffbench re-derives eps from the clipped x0, which is
    diffusers' ``use_clipped_model_output=True``.
    """
    from diffusers import DDIMScheduler

    schedule = NoiseSchedule(kind, T)
    states, ts = trajectory("ddim", schedule, steps, clip)
    scheduler = DDIMScheduler(
        num_train_timesteps=T, trained_betas=schedule.betas.numpy(), clip_sample=clip, set_alpha_to_one=True
    )
    scheduler = with_our_alphas(scheduler, schedule)
    scheduler.set_timesteps(T // (ts[0] - ts[1]))
    assert ts[1:] == [t - T // scheduler.num_inference_steps for t in ts[:-1]]  # the same timestep pairs
    for i, t in enumerate(ts):
        x = states[i]
        eps = eps_of(x, torch.full((len(x),), t))
        theirs = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(states[i + 1], theirs, rtol=1e-6, atol=1e-6, msg=f"step {i} (t = {t})")
    if clip:  # the first x0 estimate is clipped there, so diffusers' default (the raw eps) differs
        first = scheduler.step(eps_of(states[0], torch.full((4,), ts[0])), ts[0], states[0]).prev_sample
        assert float((first - states[1]).abs().max()) > 1e-2


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize(("kind", "T", "steps"), SCHEDULES)
def test_each_ddpm_step_equals_diffusers_ddpm_scheduler_step(kind: str, T: int, steps: int, clip: bool) -> None:
    """Each ancestral step with the same noise, from diffbench's own x_t, to float32 rounding (observed: bitwise equal).

    diffusers gets our timesteps as custom timesteps (its previous timestep is the next in
    the list, -1 after the last: alpha_bar = 1) and a generator seeded like ours; both
    draw one N x C x H x W normal per step but the last, so the draws line up.
    """
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule(kind, T)
    states, ts = trajectory("ddpm", schedule, steps, clip)
    scheduler = DDPMScheduler(
        num_train_timesteps=T, trained_betas=schedule.betas.numpy(), clip_sample=clip, variance_type="fixed_small"
    )
    scheduler.set_timesteps(timesteps=ts)
    scheduler = with_our_alphas(scheduler, schedule)
    generator = torch.Generator().manual_seed(7)
    for i, t in enumerate(ts):
        x = states[i]
        theirs = scheduler.step(eps_of(x, torch.full((len(x),), t)), t, x, generator=generator).prev_sample
        torch.testing.assert_close(states[i + 1], theirs, rtol=1e-6, atol=1e-6, msg=f"step {i} (t = {t})")
