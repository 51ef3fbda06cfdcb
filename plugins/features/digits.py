"""``digits``: the embedded default's digit classifier, penultimate layer (64-d)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import FeatureExtractor, unit_length_kernel_features
from plugins.metrics.digits_classifier import ClassifierConfig, load_classifier


@dataclass
class DigitsFeaturesOptions:
    epochs: int = field(default=ClassifierConfig.epochs, metadata={"help": "training epochs of the classifier (part of its cache key)"})
    seed: int = field(default=ClassifierConfig.seed, metadata={"help": "seed of the classifier's initialisation and shuffling"})


class DigitsFeatures(FeatureExtractor):
    """Penultimate-layer features (64-d) of a small CNN digit classifier trained on the dataset's train split.

    The classifier (``plugins/metrics/digits_classifier.py``: three 3x3 convolutions,
    a 64-wide linear layer whose pre-activation outputs are the features, a linear
    head; ~0.985 held-out accuracy on ``digits``) is trained once on the ``train``
    split of the dataset the extractor serves (the built-in ``digits`` dataset with its
    default options when it serves none) and cached as a ``classifier`` artifact. Images
    in [0, 1] are averaged to one channel if the dataset has one, and resized to its
    image size (bilinear, antialiased), as the classifier was trained.

    Kernel scaling: unit length (:func:`harness.unit_length_kernel_features`). The raw
    features have a mean norm of 47 (47.0 on the digits' reference split, 47.3 on the
    train split), so KID's cubic kernel ``(x.y / 64 + 1)^3`` is dominated by a few large
    inner products. Measured with clean-fid's ``kernel_distance`` (KID, not x1000) of
    64 random real training digits against the reference split, 5 draws: -297 to +413
    (s.d. 272) on the raw features, -0.029 to -0.002 (s.d. 0.010) after scaling each
    vector to length sqrt(64).
    """

    name = "digits"
    dim = 64
    Options = DigitsFeaturesOptions

    def setup(self, device: Any = "cpu", cache: Any = None, dataset: Any = None) -> None:
        """Train or load the classifier of ``dataset`` (the default ``digits`` dataset if ``None``)."""
        if dataset is None:
            from plugins.datasets.digits import DigitsDataset

            dataset = DigitsDataset()
        super().setup(device, cache, dataset)
        opts = self.options or DigitsFeaturesOptions()
        self.classifier = load_classifier(dataset, cache, ClassifierConfig(epochs=opts.epochs, seed=opts.seed))

    def __call__(self, images: Any) -> Any:
        import torch

        return torch.from_numpy(self.classifier.features(images, self.device)).reshape(len(images), self.dim)

    def fingerprint(self) -> dict[str, Any]:
        """Name, version, options and the classifier's artifact key (its dataset and training)."""
        return {**super().fingerprint(), "classifier": self.classifier.key}

    def kernel_features(self, features: Any) -> Any:
        """Each vector scaled to length sqrt(64) (see the class docstring for why)."""
        return unit_length_kernel_features(features)
