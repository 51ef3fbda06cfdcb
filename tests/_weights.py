"""Randomly initialised weights of the real metric networks, in the files their loaders read.

No pretrained weights can be downloaded in the tests, so these write the real
architectures with random weights (see tests/test_real_metrics.py for what each file is);
``tests/conftest.py`` exposes them as session fixtures ``inception_dir``,
``alexnet_file`` and ``small_clip_file``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from plugins.metrics import fid as fid_mod


def random_fid_inception() -> nn.Module:
    from cleanfid import inception_pytorch as ip

    inc = ip._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inc.Mixed_5b = ip.FIDInceptionA(192, pool_features=32)
    inc.Mixed_5c = ip.FIDInceptionA(256, pool_features=64)
    inc.Mixed_5d = ip.FIDInceptionA(288, pool_features=64)
    inc.Mixed_6b = ip.FIDInceptionC(768, channels_7x7=128)
    inc.Mixed_6c = ip.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6d = ip.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6e = ip.FIDInceptionC(768, channels_7x7=192)
    inc.Mixed_7b = ip.FIDInceptionE_1(1280)
    inc.Mixed_7c = ip.FIDInceptionE_2(2048)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # He init keeps activations O(1) through the 90-odd layers
        for m in inc.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0, math.sqrt(2 / fan_in), generator=g)
    return inc


class TorchscriptInception(nn.Module):
    """The interface of NVIDIA's file: ``layers`` (pool features) and ``forward(x, return_features)``."""

    def __init__(self, inc: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            inc.Conv2d_1a_3x3, inc.Conv2d_2a_3x3, inc.Conv2d_2b_3x3, nn.MaxPool2d(3, 2),
            inc.Conv2d_3b_1x1, inc.Conv2d_4a_3x3, nn.MaxPool2d(3, 2),
            inc.Mixed_5b, inc.Mixed_5c, inc.Mixed_5d, inc.Mixed_6a, inc.Mixed_6b, inc.Mixed_6c,
            inc.Mixed_6d, inc.Mixed_6e, inc.Mixed_7a, inc.Mixed_7b, inc.Mixed_7c,
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


def save_inception(folder: Path) -> Path:
    """Write a random clean-fid Inception TorchScript file into ``folder``; return the folder."""
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated, but it is clean-fid's format
        scripted = torch.jit.script(TorchscriptInception(random_fid_inception()).eval())
    scripted.save(str(folder / fid_mod.INCEPTION_FILE))
    return folder


def save_alexnet(path: Path) -> Path:
    """A torchvision AlexNet state dict (what ``alexnet-owt-7be5be79.pth`` is), random weights."""
    import torchvision

    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def save_random_clip(model_name: str, path: Path) -> Path:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(model_name)
    torch.save(model.state_dict(), path)
    return path
