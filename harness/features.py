"""Feature extractors: the plugin kind that maps images to feature vectors, and the cached features of the real images.

Every distribution metric (``fid``, ``kid``, ``prdc``, ``cmmd``, ``fid_inf``) compares the
features of a cell's samples with those of the dataset's real ``reference`` split, so
the extractor is a plugin of its own (``bench_register_features``, ``bench list
features``), and any metric, built-in or third-party, reaches one by name::

    from harness import get_feature_extractor, reference_features

    extractor = get_feature_extractor("digits", ctx)   # ctx: the MetricContext (device, cache, dataset)
    fake = extractor(ctx.samples)                      # float N x extractor.dim, on the CPU
    real, label = reference_features(ctx, extractor)   # cached per (dataset, extractor, options, n)

Built-ins (``plugins/features``): ``digits`` (the embedded default's digit classifier,
penultimate layer), ``inception`` (clean-fid's Inception-V3 pool features) and ``clip``
(open_clip image embeddings). A dataset names the extractor its metrics default to in
``Dataset.default_features``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from harness.base import Plugin
from harness.cache import canonical_json, stable_hash
from harness.options import options_dict

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from harness.base import Dataset
    from harness.cache import ArtifactCache

#: artifact kind of the cached features of a dataset's reference split
REFERENCE_FEATURES_KIND = "reference_features"


class FeatureExtractor(Plugin):
    """Images -> feature vectors: ``extractor(images)`` is a float N x ``dim`` tensor.

    Contract:

    - ``name``: what a metric's ``features`` option and ``bench list features`` call it;
      ``dim``: the feature width (an instance whose width depends on its options sets
      ``self.dim`` in ``__init__``).
    - ``__call__(images)``: float N x C x H x W in [0, 1], any channel count and size (the
      extractor resizes, converts channels and normalises for its network itself);
      returns a CPU float tensor N x ``dim``, the same for the same images. N = 0 gives
      0 x ``dim``.
    - ``setup(device, cache, dataset)`` is called once, before the first call, by
      :func:`get_feature_extractor`: where to compute, the artifact cache for anything the
      extractor builds (the ``digits`` classifier is trained once and cached) and the
      dataset it serves (``None`` outside a run). Missing weights raise
      :class:`harness.MissingFileError` (a one-line error naming the file and option).
    - ``fingerprint()``: what makes two extractors give the same features (name,
      ``version``, options; an override adds what it loaded, e.g. the weights file's
      hash). It keys the cached reference features and names them in each row's
      ``reference`` column. Bump ``version`` when the preprocessing changes.
    - ``kernel_features(features)``: the features as kernel metrics (``kid``) see them.
      KID's cubic kernel ``(x.y / d + 1)^3`` assumes inner products of order 1 per
      dimension, as Inception's pool features have; an extractor with other scales
      rescales here (``digits`` and ``clip``: each vector to length sqrt(d), so x.y / d is
      the cosine). Default: unchanged. The Frechet distance, PRDC and CMMD use the
      features as returned.
    """

    dim: ClassVar[int] = 0
    version: ClassVar[str] = "1"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.device: Any = "cpu"
        self.cache: ArtifactCache | None = None
        self.dataset: Dataset | None = None

    @classmethod
    def kind_name(cls) -> str:
        return "features"

    def setup(self, device: Any = "cpu", cache: ArtifactCache | None = None, dataset: Dataset | None = None) -> None:
        """Where to compute, the cache for what the extractor builds, the dataset it serves."""
        self.device, self.cache, self.dataset = device, cache, dataset

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these features (JSON-able); overrides add loaded weights' hashes."""
        return {"name": self.name, "version": self.version, "options": options_dict(self.options)}

    def kernel_features(self, features: torch.Tensor) -> torch.Tensor:
        """The features as kernel metrics see them (see the class docstring); default: unchanged."""
        return features


def unit_length_kernel_features(features: torch.Tensor) -> torch.Tensor:
    """Each row scaled to length sqrt(d): ``x.y / d`` becomes the cosine of x and y.

    For extractors whose feature norms are far from Inception's (KID's cubic kernel
    would then be dominated by a few large inner products): the kernel sees directions
    only, in [-1, 1], whatever the network's scale.
    """
    f = features.double()
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12) * float(f.shape[1]) ** 0.5 if len(f) else f


#: loaded extractors and reference features of this process (a run's cells share them)
_LOADED: dict[str, FeatureExtractor] = {}
_REFERENCE: dict[str, tuple[Any, str]] = {}


def get_feature_extractor(name: str, ctx: Any = None, **options: Any) -> FeatureExtractor:
    """The registered extractor ``name`` with ``options``, set up for ``ctx``; one per process.

    :param ctx: a :class:`harness.MetricContext` (its ``device``, ``cache`` and
        ``dataset``), or ``None``: CPU, no cache, no dataset.
    :raises harness.errors.PluginError: unknown name (one line with the valid names).
    :raises harness.ConfigError: invalid options (one line naming the option).
    """
    from harness.registry import build_registry

    cls = build_registry().get("features", name, where="get_feature_extractor")
    device = getattr(ctx, "device", "cpu")
    cache = getattr(ctx, "cache", None)
    dataset = getattr(ctx, "dataset", None)
    key = canonical_json({
        "cls": f"{cls.__module__}.{cls.__qualname__}", "options": options, "device": str(device),
        "cache": str(cache.root.resolve()) if cache is not None else None,
        "dataset": dataset.config_key() if dataset is not None else None,
    })
    if key not in _LOADED:
        extractor = cls(**options)
        extractor.setup(device=device, cache=cache, dataset=dataset)
        _LOADED[key] = extractor
    return _LOADED[key]


def _real_images(ctx: Any) -> Any:
    if ctx.real_images is not None:
        return ctx.real_images
    if ctx.dataset is None:
        raise ValueError("reference features need ctx.real_images or ctx.dataset (the real reference images)")
    return ((ctx.dataset.load("reference").images.float() + 1) / 2).clamp(0, 1)


def reference_features(ctx: Any, extractor: FeatureExtractor) -> tuple[torch.Tensor, str]:
    """``(features, label)`` of the real reference images: float N x dim, and what to store in ``reference``.

    The features are an artifact of ``ctx.cache`` (kind ``reference_features``) keyed by
    the dataset's content, the extractor's :meth:`~FeatureExtractor.fingerprint` and the
    number of images, so a run computes them once per (dataset, extractor, options, n);
    they are memoised in the process too. The label reads
    ``"<dataset>:reference@<size>px/<extractor>:<key12>"``. Without a dataset (a
    contract test's in-memory images) nothing is cached and the label says ``in-memory``.
    """
    import torch

    real = _real_images(ctx)
    if ctx.dataset is None:
        return extractor(real), f"in-memory@{real.shape[-1]}px/{extractor.name}"
    config = {"dataset": ctx.dataset.config_key(), "split": "reference", "num_images": len(real),
              "features": extractor.fingerprint()}
    cache = ctx.cache
    memo = f"{cache.root.resolve() if cache is not None else 'mem'}:{stable_hash(config, 20)}"
    if memo not in _REFERENCE:
        if cache is None:
            feats, key = extractor(real), stable_hash(config, 16)
        else:
            art = cache.get_or_create(REFERENCE_FEATURES_KIND, config,
                                      lambda: ({"features": extractor(real).contiguous()}, {"num_images": len(real)}))
            feats, key = art.tensors["features"], art.key
        label = f"{ctx.dataset.name}:reference@{getattr(ctx.dataset, 'image_size', '?')}px/{extractor.name}:{key[:12]}"
        _REFERENCE[memo] = (feats, label)
    feats, label = _REFERENCE[memo]
    return torch.as_tensor(feats), label


def clear_memo() -> None:
    """Forget the extractors and reference features loaded in this process (tests use this)."""
    _LOADED.clear()
    _REFERENCE.clear()
