"""``inception``: clean-fid's Inception-V3 pool features (2048-d), with offline-friendly weights.

Weights: clean-fid's feature extractor is NVIDIA's TorchScript port of the TensorFlow
Inception graph, the file ``inception-2015-12-05.pt`` (~92 MB, from
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt).
It is looked up, in order:

1. the option ``weights = "PATH"`` (the file, or a folder holding it; ``[metrics.fid]
   weights`` sets it for ``fid``);
2. the environment variable ``DIFFBENCH_INCEPTION_WEIGHTS`` (same);
3. ``$TORCH_HOME/hub/checkpoints/inception-2015-12-05.pt`` (torch's download cache),
   then ``/tmp/inception-2015-12-05.pt`` (where clean-fid itself downloads it);
4. otherwise it is downloaded into (3), unless ``DIFFBENCH_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1``.

A configured path that does not exist, or a failed/forbidden download, is a one-line
:class:`harness.errors.MissingFileError` naming the file, the option and the variable.
The loaded file must be a TorchScript module with a ``layers`` submodule mapping
N x 3 x 299 x 299 inputs in [-1, 1] to N x 2048 features (what clean-fid's
``InceptionV3W`` calls in "clean" mode).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import FeatureExtractor, MissingFileError
from plugins.metrics._common import (
    download_weights,
    local_weights,
    memoised,
    to_uint8_rgb,
)

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
ENV_VAR = "DIFFBENCH_INCEPTION_WEIGHTS"
CLEANFID_CACHE = Path("/tmp") / INCEPTION_FILE  # clean-fid's own download folder on Linux/macOS


def _hub_path() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _how_to_fix() -> str:
    return (
        f'set [metrics.fid] weights = "/path/to/{INCEPTION_FILE}" (kid, prdc, fid_inf: feature_options = '
        f'{{weights = "..."}}) or {ENV_VAR}=/path/to/{INCEPTION_FILE} '
        f"(download: {INCEPTION_URL})"
    )


def resolve_inception_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """The local Inception file: option, env var, download caches, else download (see module doc)."""
    what = "fid: Inception weights file"
    path = local_weights(weights, "[metrics.fid] weights", ENV_VAR, what, _how_to_fix, INCEPTION_FILE)
    if path is not None:
        return path
    target = _hub_path()
    for candidate in (target, CLEANFID_CACHE):
        if candidate.is_file():
            return candidate
    return download_weights(INCEPTION_URL, target, what, _how_to_fix)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionNet:
    """The loaded TorchScript file on one device (shared by the extractors of a process)."""

    def __init__(self, path: Path, device: Any) -> None:
        import torch

        self.path = Path(path)
        self.device = device
        try:
            with warnings.catch_warnings():
                # "torch.jit.load is deprecated": but TorchScript is clean-fid's format
                warnings.simplefilter("ignore", FutureWarning)
                base = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:
            raise MissingFileError(
                f"fid: {self.path} is not a TorchScript Inception file ({type(exc).__name__}: {exc}); {_how_to_fix()}"
            ) from None
        if not hasattr(base, "layers"):
            raise MissingFileError(f"fid: {self.path} has no 'layers' submodule, so it is not clean-fid's Inception")
        self.base = base.eval().to(device)
        self.sha256 = _file_sha256(self.path)
        self.lock = threading.Lock()


_NETS: dict[tuple[str, float, int, str], InceptionNet] = {}
_LOCK = threading.Lock()


def get_inception_net(weights: str | None, device: Any) -> InceptionNet:
    """The network of ``weights`` (resolved as in the module doc) on ``device``, loaded once per process."""
    path = resolve_inception_weights(weights).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size, str(device))
    return memoised(_NETS, _LOCK, key, lambda: InceptionNet(path, device))


@dataclass
class InceptionOptions:
    weights: str | None = field(
        default=None,
        metadata={"help": f"local {INCEPTION_FILE} (file or folder); else ${ENV_VAR}, the download caches, a download"},
    )
    batch_size: int = field(default=32, metadata={"help": "images per Inception forward pass"})


class InceptionFeatures(FeatureExtractor):
    """clean-fid's Inception-V3 pool features (2048-d, "clean" resizing), as its ``InceptionV3W`` computes them.

    Images (float N x C x H x W in [0, 1], C = 1 or 3) are quantised to 8 bits, as an
    image file would be (clean-fid's reference pipeline reads PNGs), grayscale is
    repeated to RGB (as ``PIL.Image.convert("RGB")`` does), each channel is resized to
    299 x 299 with PIL bicubic on float values (``cleanfid.resize.build_resizer("clean")``),
    then mapped from [0, 255] to [-1, 1] and fed to the TorchScript ``layers``. Weights:
    the ``weights`` option, ``DIFFBENCH_INCEPTION_WEIGHTS``, the download caches (see
    ``plugins/features/inception.py``). Kernel features: unchanged, the raw pool
    features that clean-fid's and torch-fidelity's KID use.
    """

    name = "inception"
    dim = 2048
    Options = InceptionOptions

    def setup(self, device: Any = "cpu", cache: Any = None, dataset: Any = None) -> None:
        """Resolve and load the weights file (a one-line MissingFileError if there is none)."""
        super().setup(device, cache, dataset)
        self.net = get_inception_net((self.options or InceptionOptions()).weights, device)

    @staticmethod
    def resize(images01: Any) -> Any:
        """float N x C x H x W in [0, 1] -> float N x 3 x 299 x 299 in [0, 255], the clean-fid way."""
        import numpy as np
        import torch
        from cleanfid.resize import build_resizer

        u8 = to_uint8_rgb(images01, "inception features")
        fn_resize = build_resizer("clean")
        out = np.stack([fn_resize(img) for img in u8]) if len(u8) else np.zeros((0, 299, 299, 3), np.float32)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def __call__(self, images: Any) -> Any:
        """N x 2048 float64 features, on the CPU."""
        import torch

        batch_size = (self.options or InceptionOptions()).batch_size
        feats = [torch.zeros(0, self.dim, dtype=torch.float64)]
        for i in range(0, len(images), batch_size):
            x = self.resize(images[i : i + batch_size]).to(self.net.device)
            with torch.no_grad(), self.net.lock:
                f = self.net.base.layers.forward((x - 128) / 128).reshape(x.shape[0], self.dim)
            feats.append(f.double().cpu())
        return torch.cat(feats)

    def fingerprint(self) -> dict[str, Any]:
        """Name, version, options and the weights file's SHA-256 (in place of its path)."""
        fp = super().fingerprint()
        fp["options"] = {k: v for k, v in fp["options"].items() if k != "weights"}
        return {**fp, "weights_sha256": self.net.sha256}

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """A small random TorchScript file of the weights file's interface, so the checks run in seconds.

        ``layers`` maps N x 3 x 299 x 299 to N x 2048 like the real file, through one
        strided convolution; tests/test_real_metrics.py checks the real architecture
        (random weights) against clean-fid's own loader.
        """
        import torch
        from torch import nn

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            layers = nn.Sequential(nn.Conv2d(3, 8, 13, stride=13), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                   nn.Linear(128, cls.dim))
        holder = nn.Module()
        holder.layers = layers
        with warnings.catch_warnings():  # "torch.jit.script is deprecated": but it is the file's format
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(holder.eval()).save(str(folder / INCEPTION_FILE))
        return {"options": {"weights": str(folder / INCEPTION_FILE)}}
