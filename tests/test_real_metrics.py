"""The real metrics (fid, clip_score, lpips) through their real loading code, offline.

No pretrained weights are available here, so each test writes randomly initialised
weights of the real architecture, in the file format the loader expects, to a
temporary folder:

- fid: clean-fid's Inception is NVIDIA's TorchScript file ``inception-2015-12-05.pt``
  whose ``layers`` submodule maps N x 3 x 299 x 299 in [-1, 1] to N x 2048. We script
  the same architecture (clean-fid's FID-Inception port of the 2015-12-05 TF graph,
  ``cleanfid.inception_pytorch``: torchvision Inception-v3 with the FID blocks) with
  random weights and save it with ``torch.jit.save``; clean-fid's own ``InceptionV3W``
  loads it, which the tests check.
- lpips: a torchvision AlexNet ``state_dict`` saved with ``torch.save`` (what
  ``alexnet-owt-7be5be79.pth`` is), and a features-only VGG-16 one.
- clip_score: an open_clip ``state_dict`` of ``ViT-S-32`` (fast) and ``ViT-B-32`` (slow).

Caches point at temporary folders and downloads are off (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.base import Conditions, Dataset, ImageBatch, MetricContext
from harness.cache import ArtifactCache
from harness.errors import ConfigError, MissingFileError
from harness.features import clear_memo
from plugins.features import inception as inception_mod
from plugins.features.inception import InceptionFeatures
from plugins.metrics import clip_score as clip_mod
from plugins.metrics import lpips_metric as lpips_mod
from plugins.metrics.clip_score import CLIPScore
from plugins.metrics.fid import FID
from plugins.metrics.lpips_metric import LPIPS
from _weights import save_random_clip


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty torch / HF caches, no downloads, no weights from the user's environment."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in (inception_mod.ENV_VAR, clip_mod.ENV_VAR, lpips_mod.ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(inception_mod, "CLEANFID_CACHE", tmp_path / "no-cleanfid-cache" / inception_mod.INCEPTION_FILE)
    clear_memo()  # no extractor loaded by another test under other settings


def ctx_of(samples: torch.Tensor, **kw) -> MetricContext:
    return MetricContext(cell=None, device="cpu", generator=torch.Generator().manual_seed(0), samples=samples, **kw)


def digits_like(n: int, seed: int = 0) -> torch.Tensor:
    """n grey 16 x 16 images in [0, 1]: a bright random blob on a dark background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = 4 + 8 * torch.rand(n, 2, generator=g)
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 8).unsqueeze(1)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------- fid





def test_fid_features_match_cleanfid_pipeline(inception_dir: Path, tmp_path: Path) -> None:
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.utils import ResizeDataset
    from PIL import Image

    images = digits_like(2)
    # resizing: identical to clean-fid reading the same images as 8-bit PNG files
    files = []
    for i, img in enumerate(images):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((img[0] * 255).round().to(torch.uint8).numpy()).save(files[-1])
    cleanfid_resized = torch.stack([ResizeDataset(files, mode="clean")[i] for i in range(len(files))])
    resized = InceptionFeatures.resize(images)
    assert resized.shape == (2, 3, 299, 299)
    assert torch.equal(resized, cleanfid_resized)
    # features: identical to clean-fid's own loader of the same file
    extractor = InceptionFeatures(weights=str(inception_dir))
    extractor.setup()
    ours = extractor(images).numpy()
    with pytest.warns(FutureWarning):
        theirs = InceptionV3W(str(inception_dir), download=False)(resized).detach().double().numpy()
    assert ours.shape == (2, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert np.isfinite(ours).all() and ours.std() > 1e-3


class _TinyDataset(Dataset):
    name = "tiny_blobs"

    def load(self, split: str) -> ImageBatch:
        return ImageBatch(digits_like(8, seed=1) * 2 - 1, Conditions(labels=torch.zeros(8, dtype=torch.long)))


@pytest.mark.slow  # Inception-v3 on 16 images and 2048 x 2048 eigendecompositions: ~35 s on 2 cores
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 8 samples in 2048 dims: rank-deficient covariances
def test_fid_identical_is_zero_and_shifted_is_larger(inception_dir: Path, tmp_path: Path) -> None:
    dataset, cache = _TinyDataset(), ArtifactCache(tmp_path / "cache")
    real = (dataset.load("reference").images + 1) / 2
    metric = FID(weights=str(inception_dir / inception_mod.INCEPTION_FILE))
    [identical] = metric.compute(ctx_of(real.clone(), real_images=real, dataset=dataset, cache=cache))
    [shifted] = metric.compute(ctx_of((real + 0.5).clamp(0, 1), real_images=real, dataset=dataset, cache=cache))
    identical, shifted = identical["value"], shifted["value"]
    assert identical < 1e-3 * shifted
    assert shifted > 0
    assert len(list((tmp_path / "cache" / "reference_features").glob("*/meta.json"))) == 1


def test_fid_missing_weights_option(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / inception_mod.INCEPTION_FILE
    with pytest.raises(MissingFileError) as exc:
        FID(weights=str(missing)).compute(ctx_of(digits_like(2), real_images=digits_like(2)))
    msg = one_line(exc)
    assert str(missing) in msg and "[metrics.fid] weights" in msg and "DIFFBENCH_INCEPTION_WEIGHTS" in msg


def test_fid_missing_weights_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(inception_mod.ENV_VAR, str(tmp_path / "empty-folder"))
    with pytest.raises(MissingFileError) as exc:
        FID().compute(ctx_of(digits_like(2), real_images=digits_like(2)))
    assert f"from {inception_mod.ENV_VAR}" in one_line(exc)
    monkeypatch.delenv(inception_mod.ENV_VAR)
    with pytest.raises(MissingFileError) as exc:  # offline, nothing in torch's cache
        FID().compute(ctx_of(digits_like(2), real_images=digits_like(2)))
    msg = one_line(exc)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / inception_mod.INCEPTION_FILE
    assert str(expected) in msg and "downloads are off" in msg and "[metrics.fid] weights" in msg


def test_fid_rejects_a_file_that_is_not_torchscript(tmp_path: Path) -> None:
    bad = tmp_path / inception_mod.INCEPTION_FILE
    bad.write_bytes(b"not a model")
    with pytest.raises(MissingFileError, match="is not a TorchScript Inception file"):
        FID(weights=str(bad)).compute(ctx_of(digits_like(2), real_images=digits_like(2)))


# -------------------------------------------------------------------------- lpips





def test_lpips_zero_for_identical_and_grows_with_noise(alexnet_file: Path) -> None:
    ref = digits_like(6)
    metric = LPIPS(backbone_weights=str(alexnet_file))
    eps = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))

    def lp(samples: torch.Tensor) -> float:
        return metric.compute(ctx_of(samples, reference_samples=ref))

    assert lp(ref.clone()) == pytest.approx(0.0, abs=1e-7)
    values = [lp((ref + s * eps).clamp(0, 1)) for s in (0.05, 0.2, 0.5)]
    assert 0 < values[0] < values[1] < values[2]


def test_lpips_backbone_from_env_var(alexnet_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = digits_like(4)
    noisy = (ref + 0.2).clamp(0, 1)
    by_option = LPIPS(backbone_weights=str(alexnet_file)).compute(ctx_of(noisy, reference_samples=ref))
    monkeypatch.setenv(lpips_mod.ENV_VAR, str(alexnet_file))
    assert LPIPS().compute(ctx_of(noisy, reference_samples=ref)) == pytest.approx(by_option, rel=1e-6)


def test_lpips_vgg_with_features_only_state_dict(tmp_path: Path) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    path = tmp_path / "vgg16-features.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    ref = digits_like(3)
    metric = LPIPS(net="vgg", backbone_weights=str(path))
    assert metric.compute(ctx_of(ref.clone(), reference_samples=ref)) == pytest.approx(0.0, abs=1e-7)
    assert metric.compute(ctx_of((ref + 0.3).clamp(0, 1), reference_samples=ref)) > 0


def test_lpips_missing_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = digits_like(2)
    missing = tmp_path / "alexnet.pth"
    with pytest.raises(MissingFileError) as exc:
        LPIPS(backbone_weights=str(missing)).compute(ctx_of(ref, reference_samples=ref))
    msg = one_line(exc)
    assert str(missing) in msg and "[metrics.lpips] backbone_weights" in msg and lpips_mod.ENV_VAR in msg
    with pytest.raises(MissingFileError) as exc:  # offline, nothing in torch's cache
        LPIPS().compute(ctx_of(ref, reference_samples=ref))
    msg = one_line(exc)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in msg
    assert "download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg


def test_lpips_rejects_a_checkpoint_of_another_network(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    ref = digits_like(2)
    with pytest.raises(MissingFileError, match="lacks 'features.0.weight'"):
        LPIPS(backbone_weights=str(wrong)).compute(ctx_of(ref, reference_samples=ref))


# --------------------------------------------------------------------- clip_score








PROMPTS = ["a handwritten digit 3", "a handwritten digit 7"]


def test_clip_score_range_and_determinism(small_clip_file: Path) -> None:
    opts = {"model_name": "ViT-S-32", "pretrained": "", "weights": str(small_clip_file)}
    ctx = ctx_of(digits_like(2), conditions=Conditions(prompts=PROMPTS))
    first = CLIPScore(**opts).compute(ctx)
    assert 0.0 <= first <= 100.0
    assert CLIPScore(**opts).compute(ctx) == first  # deterministic (and the model is memoised)
    cos = clip_mod.get_clip(clip_mod.CLIPScoreOptions(**opts), "cpu").cosine(digits_like(2), PROMPTS)
    assert cos.shape == (2,) and bool(((cos >= -1) & (cos <= 1)).all())
    assert first == pytest.approx(float((100 * cos.clamp(min=0)).mean()), rel=1e-6)


def test_clip_score_weights_from_env_var(small_clip_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_of(digits_like(2), conditions=Conditions(prompts=PROMPTS))
    by_option = CLIPScore(model_name="ViT-S-32", pretrained="", weights=str(small_clip_file)).compute(ctx)
    monkeypatch.setenv(clip_mod.ENV_VAR, str(small_clip_file))
    assert CLIPScore(model_name="ViT-S-32", pretrained="").compute(ctx) == by_option


@pytest.mark.slow  # ViT-B-32: 151 M parameters to initialise, save and run
def test_clip_score_vit_b_32_openai_layout(tmp_path: Path) -> None:
    path = save_random_clip("ViT-B-32", tmp_path / "open_clip_pytorch_model.bin")
    ctx = ctx_of(digits_like(2), conditions=Conditions(prompts=PROMPTS))
    value = CLIPScore(weights=str(path)).compute(ctx)  # default model_name / pretrained tag
    assert 0.0 <= value <= 100.0
    model = clip_mod.get_clip(clip_mod.CLIPScoreOptions(weights=str(path)), "cpu").model
    assert model.visual.preprocess_cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_clip_score_missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_of(digits_like(2), conditions=Conditions(prompts=PROMPTS))
    missing = tmp_path / "clip.bin"
    with pytest.raises(MissingFileError) as exc:
        CLIPScore(weights=str(missing)).compute(ctx)
    msg = one_line(exc)
    assert str(missing) in msg and "[metrics.clip_score] weights" in msg and clip_mod.ENV_VAR in msg
    monkeypatch.setenv(clip_mod.ENV_VAR, str(missing))
    with pytest.raises(MissingFileError, match=f"from {clip_mod.ENV_VAR}"):
        CLIPScore().compute(ctx)
    monkeypatch.delenv(clip_mod.ENV_VAR)
    with pytest.raises(MissingFileError) as exc:  # offline, empty HF cache
        CLIPScore().compute(ctx)
    msg = one_line(exc)
    assert "timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin" in msg
    assert "[metrics.clip_score] weights" in msg and clip_mod.ENV_VAR in msg


def test_clip_score_bad_names_are_config_errors() -> None:
    ctx = ctx_of(digits_like(2), conditions=Conditions(prompts=PROMPTS))
    with pytest.raises(ConfigError, match="did you mean 'ViT-B-32'"):
        CLIPScore(model_name="ViT-B-23").compute(ctx)
    with pytest.raises(ConfigError, match="not a weight tag of ViT-B-32.*did you mean 'openai'"):
        CLIPScore(pretrained="opneai").compute(ctx)
    with pytest.raises(ConfigError, match="would be random"):
        CLIPScore(pretrained="").compute(ctx)


def test_clip_score_needs_prompts() -> None:
    with pytest.raises(ValueError, match="prompts"):
        CLIPScore().compute(ctx_of(digits_like(2), conditions=Conditions(labels=torch.zeros(2))))
