"""The contract checks of feature extractors (:class:`FeatureExtractorContract`, re-exported by harness.testing)."""

from __future__ import annotations

from typing import Any, ClassVar

from harness.testing import _NameContract, _skip_if_missing_weights


class FeatureExtractorContract(_NameContract):
    """Checks of the FeatureExtractor contract; set ``extractor_cls`` (and ``extractor_options``).

    The extractor is set up on the CPU with an empty cache and the stand-in dataset
    (1 channel, 16 x 16, 10 labels), then fed grayscale and RGB images of two sizes.
    """

    extractor_cls: ClassVar[type] = None  # type: ignore[assignment]
    extractor_options: ClassVar[dict[str, Any]] = {}

    cls_attr: ClassVar[str] = "extractor_cls"

    def _extractor(self, cache: Any) -> Any:
        from harness.testing.stand_ins import tiny_dataset

        try:
            extractor = self._cls()(**self._options())
            extractor.setup(device="cpu", cache=cache, dataset=tiny_dataset(16))
        except Exception as exc:
            _skip_if_missing_weights(exc)
            raise
        return extractor

    @staticmethod
    def _images(n: int, channels: int, size: int, seed: int = 0) -> Any:
        import torch

        return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))

    def _features(self, extractor: Any, images: Any) -> Any:
        try:
            return extractor(images)
        except Exception as exc:
            _skip_if_missing_weights(exc)
            raise

    def test_features_are_n_by_dim_on_any_input(self, bench_tmp_cache: Any) -> None:
        import torch

        extractor = self._extractor(bench_tmp_cache)
        dim = extractor.dim
        assert isinstance(dim, int) and dim > 0, f"{self.extractor_cls.__name__}.dim must be a positive int, got {dim!r}"
        for channels, size in ((1, 16), (3, 16), (1, 32), (3, 24)):
            images = self._images(5, channels, size)
            before = images.clone()
            feats = self._features(extractor, images)
            assert isinstance(feats, torch.Tensor) and feats.is_floating_point(), "features must be a float tensor"
            assert tuple(feats.shape) == (5, dim), (
                f"{channels} x {size} x {size} images gave features of shape {tuple(feats.shape)}, expected (5, {dim})")
            assert feats.device.type == "cpu", "features must be returned on the CPU"
            assert torch.isfinite(feats).all(), "features hold NaN or inf"
            assert torch.equal(images, before), "the extractor changed its input images"
        empty = self._features(extractor, self._images(0, 1, 16))
        assert tuple(empty.shape) == (0, dim), f"no images gave shape {tuple(empty.shape)}, expected (0, {dim})"

    def test_deterministic_and_independent_of_the_batch(self, bench_tmp_cache: Any) -> None:
        import torch

        extractor = self._extractor(bench_tmp_cache)
        images = self._images(6, 3, 16, seed=1)
        a, b = self._features(extractor, images), self._features(extractor, images)
        assert torch.equal(a, b), "the same images gave different features"
        part = self._features(extractor, images[:2])
        torch.testing.assert_close(part, a[:2], rtol=1e-4, atol=1e-5,
                                   msg="an image's features depend on the other images of its batch")

    def test_fingerprint_and_kernel_features(self, bench_tmp_cache: Any) -> None:
        import torch

        from harness.cache import canonical_json

        extractor = self._extractor(bench_tmp_cache)
        fp = extractor.fingerprint()
        assert isinstance(fp, dict) and fp.get("name") == self.extractor_cls.name, (
            "fingerprint() must be a dict naming the extractor (start from super().fingerprint())")
        canonical_json(fp)  # JSON-able: it keys the cached reference features
        feats = self._features(extractor, self._images(4, 1, 16))
        kf = extractor.kernel_features(feats)
        assert tuple(kf.shape) == tuple(feats.shape) and torch.isfinite(kf).all(), "kernel_features must keep N x dim"
