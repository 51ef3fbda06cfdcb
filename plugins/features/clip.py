"""``clip``: open_clip image embeddings of the ``clip_score`` metric's model, L2-normalised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import FeatureExtractor, unit_length_kernel_features
from plugins.metrics.clip_score import (
    CLIPScoreOptions,
    _check_names,
    get_clip,
    resolve_clip_weights,
)


class CLIPFeatures(FeatureExtractor):
    """open_clip image embeddings (ViT-B-32 / openai by default: 512-d), each scaled to length 1.

    The model, its weights and its preprocessing are ``clip_score``'s (same options
    ``model_name``, ``pretrained``, ``weights``, ``batch_size``; same look-up: the
    ``weights`` option, ``DIFFBENCH_CLIP_WEIGHTS``, else the tag through open_clip, see
    ``plugins/metrics/clip_score.py``; one model per process shared with the metric):
    8-bit images, grayscale repeated to RGB, open_clip's own resize / crop /
    normalisation, ``encode_image``, then L2 normalisation, as CMMD's reference code
    does (Jayasumana et al. 2024, google-research ``cmmd/embedding.py``). ``dim``
    is the model's embedding width. Kernel features: each vector scaled to length
    sqrt(dim), so KID's cubic kernel sees the cosine.
    """

    name = "clip"
    dim = 512
    Options = CLIPScoreOptions

    def __init__(self, **options: Any) -> None:
        import open_clip

        super().__init__(**options)
        opts = self.options or CLIPScoreOptions()
        _check_names(opts)  # one-line ConfigError for an unknown architecture or tag
        self.dim = int(open_clip.get_model_config(opts.model_name)["embed_dim"])

    def setup(self, device: Any = "cpu", cache: Any = None, dataset: Any = None) -> None:
        """Load the model (a one-line MissingFileError without weights) and hash a local weights file."""
        from plugins.features.inception import _file_sha256

        super().setup(device, cache, dataset)
        opts = self.options or CLIPScoreOptions()
        self.clip = get_clip(opts, device)
        local = resolve_clip_weights(opts)
        self.weights_sha256 = _file_sha256(Path(local)) if local is not None else None

    def __call__(self, images: Any) -> Any:
        """N x dim float64 unit vectors, on the CPU."""
        return self.clip.image_features(images, (self.options or CLIPScoreOptions()).batch_size).double()

    def fingerprint(self) -> dict[str, Any]:
        """Name, version, model and tag, and a local weights file's SHA-256 (in place of its path)."""
        fp = super().fingerprint()
        fp["options"] = {k: v for k, v in fp["options"].items() if k != "weights"}
        return {**fp, "weights_sha256": self.weights_sha256}

    def kernel_features(self, features: Any) -> Any:
        """Each vector scaled to length sqrt(dim): KID's ``x.y / dim`` is then the cosine."""
        return unit_length_kernel_features(features)

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """Random weights of the small ViT-S-32 (no download), so the checks run offline."""
        import open_clip
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model("ViT-S-32")
        path = folder / "vit-s-32-random.bin"
        torch.save(model.state_dict(), path)
        return {"options": {"model_name": "ViT-S-32", "pretrained": "", "weights": str(path)}}
