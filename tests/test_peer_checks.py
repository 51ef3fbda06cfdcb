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
from pathlib import Path

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
    """Per sample, float32 tolerance (rtol 1e-5, atol 1e-7; observed: identical values).

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
def open_clip_peer(small_clip_file: Path):  # noqa: ANN201
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


def test_clip_score_clamps_each_sample_like_open_clip_cosines(small_clip_file: Path, open_clip_peer) -> None:  # noqa: ANN001
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
    small_clip_file: Path, open_clip_peer, channels: int, size: tuple[int, int]  # noqa: ANN001
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
