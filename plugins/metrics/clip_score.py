"""``clip_score``: prompt adherence measured with an open_clip model, with offline-friendly weights.

Weights: ``model_name`` (default ``ViT-B-32``) and ``pretrained`` (default ``openai``)
name an open_clip architecture and weight tag, as in
``open_clip.create_model("ViT-B-32", pretrained="openai")``. They are looked up, in order:

1. the option ``[metrics.clip_score] weights = "PATH"``, a local checkpoint of that
   architecture (an open_clip state dict: ``open_clip_pytorch_model.bin``,
   ``open_clip_model.safetensors`` or a ``torch.save``'d ``state_dict``);
2. the environment variable ``DIFFBENCH_CLIP_WEIGHTS`` (same);
3. otherwise open_clip resolves the ``pretrained`` tag itself: the Hugging Face cache
   (``HF_HOME`` / ``HF_HUB_CACHE``) or a download (none when ``HF_HUB_OFFLINE=1``).

With a local file the tag still supplies what the checkpoint does not record: the
QuickGELU activation (the OpenAI weights need it) and the image normalisation. A
configured path that does not exist, or a tag that can be neither found nor
downloaded, is a one-line :class:`harness.errors.MissingFileError` naming the file
to fetch, the option and the variable. The tokenizer of the built-in architectures
ships with open_clip (no download).
"""

from __future__ import annotations

import logging
import pickle
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness import ConfigError, Metric, MetricContext, MissingFileError, did_you_mean
from plugins.metrics._common import local_weights, memoised, to_uint8_rgb

log = logging.getLogger(__name__)

ENV_VAR = "DIFFBENCH_CLIP_WEIGHTS"


@dataclass
class CLIPScoreOptions:
    model_name: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture"})
    pretrained: str = field(
        default="openai", metadata={"help": "open_clip weight tag (sets QuickGELU and normalisation)"}
    )
    weights: str | None = field(
        default=None, metadata={"help": f"local checkpoint of model_name; else ${ENV_VAR}, else the tag's download"}
    )
    batch_size: int = field(default=32, metadata={"help": "images per forward pass"})


def _remote_file(model_name: str, pretrained: str) -> str:
    """Where the weights of a tag come from, for error messages."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if cfg.get("hf_hub"):
        parts = cfg["hf_hub"].split("/")  # "org/repo/" or "org/repo/file"
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "open_clip_pytorch_model.bin"
        return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    return cfg.get("url") or f"the '{pretrained}' weights of {model_name}"


def _how_to_fix(model_name: str, pretrained: str) -> str:
    source = _remote_file(model_name, pretrained)
    return (
        f'set [metrics.clip_score] weights = "/path/to/checkpoint" (cmmd: feature_options = {{weights = "..."}}) '
        f'or {ENV_VAR}=/path/to/checkpoint '
        f"(download: {source})"
    )


def _check_names(opts: CLIPScoreOptions) -> dict[str, Any]:
    """Validate model_name / pretrained; return the tag's config (may be empty)."""
    import open_clip

    models = open_clip.list_models()
    if opts.model_name not in models:
        raise ConfigError(
            f"metrics.clip_score.model_name: unknown open_clip model '{opts.model_name}'"
            f"{did_you_mean(opts.model_name, models)}"
        )
    tag_cfg = open_clip.get_pretrained_cfg(opts.model_name, opts.pretrained) if opts.pretrained else {}
    if opts.pretrained and not tag_cfg and not Path(opts.pretrained).expanduser().is_file():
        tags = open_clip.list_pretrained_tags_by_model(opts.model_name)
        raise ConfigError(
            f"metrics.clip_score.pretrained: '{opts.pretrained}' is not a weight tag of {opts.model_name}"
            f"{did_you_mean(opts.pretrained, tags)}; valid: {', '.join(tags) or '(none)'}"
        )
    return tag_cfg


def resolve_clip_weights(opts: CLIPScoreOptions) -> Path | None:
    """The local checkpoint from the option or the env var, or None (open_clip resolves the tag)."""
    return local_weights(
        opts.weights, "[metrics.clip_score] weights", ENV_VAR, "clip_score: CLIP weights file",
        lambda: _how_to_fix(opts.model_name, opts.pretrained),
    )


class CLIPModel:
    """An open_clip model with its tokenizer and image normalisation, ready to score."""

    def __init__(self, opts: CLIPScoreOptions, device: Any) -> None:
        import open_clip

        tag_cfg = _check_names(opts)
        local = resolve_clip_weights(opts)
        if local is None and not opts.pretrained:
            raise ConfigError(
                "metrics.clip_score: neither weights nor pretrained is set, so the model would be random; "
                f'set [metrics.clip_score] weights = "/path/to/checkpoint", {ENV_VAR}, or pretrained = "openai"'
            )
        preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        kwargs: dict[str, Any] = {
            "device": device,
            "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
            "force_preprocess_cfg": preprocess,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # QuickGELU notices: handled through force_quick_gelu
            if local is not None:
                try:  # open_clip reads the file with torch.load(weights_only=True) or safetensors
                    model = open_clip.create_model(opts.model_name, pretrained=str(local), **kwargs)
                except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, EOFError) as exc:
                    # one line (torch's own message spans several and suggests weights_only=False)
                    raise MissingFileError(
                        f"clip_score: cannot load {local} as an open_clip checkpoint of {opts.model_name} "
                        f"({type(exc).__name__}; only tensors are read, pickled objects are refused); "
                        + _how_to_fix(opts.model_name, opts.pretrained)
                    ) from None
            else:
                try:
                    model = open_clip.create_model(opts.model_name, pretrained=opts.pretrained, **kwargs)
                except RuntimeError as exc:
                    if "download" not in str(exc).lower():
                        raise
                    raise MissingFileError(
                        f"clip_score: cannot find or download the '{opts.pretrained}' weights of "
                        f"{opts.model_name} (offline?); " + _how_to_fix(opts.model_name, opts.pretrained)
                    ) from None
        self.model = model.eval()
        self.device = device
        self.tokenizer = open_clip.get_tokenizer(opts.model_name)
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        self.lock = threading.Lock()

    def preprocess(self, images01: Any) -> Any:
        """Float N x C x H x W in [0, 1] -> the model's normalised input, via open_clip's own transform.

        Images go through 8-bit PIL images (grayscale repeated to RGB), exactly as an
        image file would reach CLIP in the reference implementations.
        """
        import torch
        from PIL import Image

        u8 = to_uint8_rgb(images01)
        return torch.stack([self.transform(Image.fromarray(img)) for img in u8])

    def image_features(self, images01: Any, batch_size: int = 32) -> Any:
        """L2-normalised image embeddings, float N x embed_dim on the CPU (the ``clip`` feature extractor)."""
        import torch
        import torch.nn.functional as F

        out = [torch.zeros(0, int(self.model.visual.output_dim))]
        for i in range(0, len(images01), batch_size):
            pixels = self.preprocess(images01[i : i + batch_size]).to(self.device)
            with torch.no_grad(), self.lock:
                out.append(F.normalize(self.model.encode_image(pixels).float(), dim=-1).cpu())
        return torch.cat(out)

    def cosine(self, images01: Any, prompts: list[str], batch_size: int = 32) -> Any:
        """Cosine similarity of each image with its prompt (float N tensor)."""
        import torch
        import torch.nn.functional as F

        out = []
        for i in range(0, len(prompts), batch_size):
            pixels = self.preprocess(images01[i : i + batch_size]).to(self.device)
            tokens = self.tokenizer(prompts[i : i + batch_size]).to(self.device)
            with torch.no_grad(), self.lock:
                img = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
                txt = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            out.append((img * txt).sum(dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0)


_MODELS: dict[tuple[Any, ...], CLIPModel] = {}
_LOCK = threading.Lock()


def get_clip(opts: CLIPScoreOptions, device: Any) -> CLIPModel:
    """The CLIP model for these options on ``device``, loaded once per process."""
    local = resolve_clip_weights(opts)
    stamp = (str(local.resolve()), local.stat().st_mtime, local.stat().st_size) if local else None
    key = (opts.model_name, opts.pretrained, stamp, str(device))
    return memoised(_MODELS, _LOCK, key, lambda: CLIPModel(opts, device))


class CLIPScore(Metric):
    """CLIP score: how well the samples match their prompts, 100 * max(cos(image, prompt), 0) averaged.

    clip_score = (1/N) sum_i 100 * max(cos(E_I(x_i), E_T(p_i)), 0), with E_I / E_T the
    open_clip image / text encoders (``model_name``, ``pretrained`` or local
    ``weights``), x_i the samples (8-bit, grayscale repeated to RGB, open_clip's own
    resize / crop / normalisation) and p_i their prompts (``ctx.conditions.prompts``).
    In [0, 100]; higher is better. Deterministic (eval mode, no sampling).
    """

    name = "clip_score"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "conditions"})
    Options = CLIPScoreOptions

    def compute(self, ctx: MetricContext) -> float:
        opts = self.options or CLIPScoreOptions()
        prompts = ctx.conditions.prompts if ctx.conditions is not None else None
        if not prompts:
            raise ValueError("clip_score needs text prompts in ctx.conditions.prompts")
        if len(prompts) != len(ctx.samples):
            raise ValueError(f"clip_score: {len(ctx.samples)} samples but {len(prompts)} prompts")
        cos = get_clip(opts, ctx.device).cosine(ctx.samples, list(prompts), opts.batch_size)
        return float((100 * cos.clamp(min=0)).mean())
