"""``fid``: clean-fid's FID (Inception-v3 pool features), with offline-friendly weights.

Weights: clean-fid's feature extractor is NVIDIA's TorchScript port of the TensorFlow
Inception graph, the file ``inception-2015-12-05.pt`` (~92 MB, from
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt).
It is looked up, in order:

1. the option ``[metrics.fid] weights = "PATH"`` (the file, or a folder holding it);
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
from typing import Any, ClassVar

from harness import Metric, MetricContext, MissingFileError
from plugins.metrics._common import (
    cache_root,
    download_weights,
    local_weights,
    memoised,
    to_uint8_rgb,
    to_unit,
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
        f'set [metrics.fid] weights = "/path/to/{INCEPTION_FILE}" or {ENV_VAR}=/path/to/{INCEPTION_FILE} '
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


class InceptionFeatures:
    """clean-fid's "clean" Inception features: same maths as ``cleanfid.inception_torchscript.InceptionV3W``.

    Images (float N x C x H x W in [0, 1], C = 1 or 3) are quantised to 8 bits, as an
    image file would be (clean-fid's reference pipeline reads PNGs), grayscale is
    repeated to RGB (as ``PIL.Image.convert("RGB")`` does), each channel is resized to
    299 x 299 with PIL bicubic on float values (``cleanfid.resize.build_resizer("clean")``),
    then mapped from [0, 255] to [-1, 1] and fed to the TorchScript ``layers``.
    """

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
        self._lock = threading.Lock()

    @staticmethod
    def resize(images01: Any) -> Any:
        """float N x C x H x W in [0, 1] -> float N x 3 x 299 x 299 in [0, 255], the clean-fid way."""
        import numpy as np
        import torch
        from cleanfid.resize import build_resizer

        u8 = to_uint8_rgb(images01, "fid")
        fn_resize = build_resizer("clean")
        out = np.stack([fn_resize(img) for img in u8]) if len(u8) else np.zeros((0, 299, 299, 3), np.float32)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def __call__(self, images01: Any, batch_size: int = 32) -> Any:
        """N x 2048 float64 numpy features."""
        import numpy as np
        import torch

        feats = []
        for i in range(0, len(images01), batch_size):
            x = self.resize(images01[i : i + batch_size]).to(self.device)
            with torch.no_grad(), self._lock:
                f = self.base.layers.forward((x - 128) / 128).reshape(x.shape[0], 2048)
            feats.append(f.double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 2048))


_EXTRACTORS: dict[tuple[str, float, int, str], InceptionFeatures] = {}
_STATS: dict[str, tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def get_inception(weights: str | None, device: Any) -> InceptionFeatures:
    """The feature extractor for ``weights`` on ``device``, loaded once per process."""
    path = resolve_inception_weights(weights).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size, str(device))
    return memoised(_EXTRACTORS, _LOCK, key, lambda: InceptionFeatures(path, device))


@dataclass
class FIDOptions:
    weights: str | None = field(
        default=None,
        metadata={"help": f"local {INCEPTION_FILE} (file or folder); else ${ENV_VAR}, the download caches, a download"},
    )
    batch_size: int = field(default=32, metadata={"help": "images per Inception forward pass"})


class FID(Metric):
    """Frechet Inception Distance (clean-fid) between the samples and the dataset's real reference images.

    fid = ||mu_s - mu_r||^2 + Tr(C_s + C_r - 2 (C_s C_r)^(1/2)) over the 2048-dim pool
    features of clean-fid's Inception-v3 (``inception-2015-12-05.pt``, "clean" resizing:
    8-bit quantisation, PIL bicubic to 299 x 299), samples (s) against the real
    ``reference`` split (r, ``ctx.real_images``; its statistics are a cached artifact
    keyed by the dataset and the weights file's SHA-256; each row names it in ``reference``
    and its image count in ``num_reference``). Uses ``_frechet.frechet_distance`` (exact,
    agrees with clean-fid's to 1e-6 relative, 4-5x faster). Lower is better; strongly biased upwards for fewer than a few
    thousand images, so compare at equal ``num_samples``. Weights: see ``[metrics.fid]
    weights`` / ``DIFFBENCH_INCEPTION_WEIGHTS`` in ``plugins/metrics/fid.py``.
    """

    name = "fid"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "real_images"})
    Options = FIDOptions

    def _opts(self) -> FIDOptions:
        return self.options or FIDOptions()

    def reference_stats(self, ctx: MetricContext, extractor: InceptionFeatures) -> tuple[Any, Any, str, int]:
        """``(mu, sigma, reference, num_images)`` of the real reference images.

        Computed once per (dataset content incl. split and image size, extractor file) and
        cached as a ``reference_stats`` artifact; ``reference`` names it
        (``"<dataset>:reference@<size>px/inception-<sha8>:<artifact key>"``).
        """
        from harness import stable_hash
        from plugins.metrics._frechet import cached_feature_stats, feature_stats

        opts = self._opts()

        def real_images01() -> Any:
            if ctx.real_images is not None:
                return ctx.real_images
            if ctx.dataset is None:
                raise ValueError("fid needs ctx.real_images or ctx.dataset (the real reference images)")
            return to_unit(ctx.dataset.load("reference").images)

        extractor_name = f"inception-{extractor.sha256[:8]}"
        if ctx.dataset is None:  # nothing identifies the real images: no caching
            real = real_images01()
            mu, sigma = feature_stats(extractor(real, opts.batch_size))
            return mu, sigma, f"in-memory@{real.shape[-1]}px/{extractor_name}", len(real)
        config = {
            "features": "cleanfid-inception-2015-12-05-clean",
            "weights_sha256": extractor.sha256,
            "split": "reference",
            "dataset": ctx.dataset.config_key(),
        }
        label = f"{ctx.dataset.name}:reference@{getattr(ctx.dataset, 'image_size', '?')}px/{extractor_name}"
        memo_key = f"{cache_root(ctx.cache)}:{stable_hash(config, 20)}"

        def load() -> tuple[Any, Any, str, int]:
            mu, sigma, num_images, key = cached_feature_stats(
                ctx.cache, "reference_stats", config, real_images01, lambda real: extractor(real, opts.batch_size)
            )
            return mu, sigma, f"{label}:{(key or stable_hash(config, 16))[:12]}", num_images

        return memoised(_STATS, _LOCK, memo_key, load)

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        """One row; ``reference`` / ``num_reference`` say which statistics it was measured against."""
        from plugins.metrics._frechet import feature_stats, frechet_distance

        opts = self._opts()
        extractor = get_inception(opts.weights, ctx.device)
        mu_r, sigma_r, reference, num_reference = self.reference_stats(ctx, extractor)
        mu_s, sigma_s = feature_stats(extractor(ctx.samples, opts.batch_size))
        value = frechet_distance(mu_s, sigma_s, mu_r, sigma_r)
        return [{"metric": self.name, "value": value, "reference": reference, "num_reference": num_reference}]
