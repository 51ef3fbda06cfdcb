"""The domain feature extractor of the embedded default: a small CNN digit classifier.

It is trained on the dataset's ``train`` split and is an artifact of the cache (kind
``classifier``; safetensors weights + JSON metadata holding the held-out accuracy on the
``reference`` split), so a second run trains nothing; it is memoised in-process, keyed by
artifact key, so the cells of a run load it once. Its penultimate features are the
``digits`` feature extractor (``plugins/features/digits.py``), whose features of the
real ``reference`` split are cached by :func:`harness.reference_features`.

Inputs are images in [0, 1] (``MetricContext.samples``); the classifier is trained on
the dataset's images mapped from [-1, 1] to [0, 1], so real and generated images are
seen on the same scale. Features are the pre-activation outputs of the penultimate
(``feature_dim``-wide) linear layer: pre-activation so that no unit is identically
zero after a ReLU, which would make the feature covariance singular.

Architecture (any ``image_size`` >= 8, any channel count)::

    conv3x3(C, w0) ReLU maxpool2
    conv3x3(w0, w1) ReLU maxpool2
    conv3x3(w1, w2) ReLU adaptive-avgpool(2x2) flatten
    linear(4 w2, feature_dim)            <- features
    ReLU linear(feature_dim, num_classes) <- logits

Training: Adam with a one-cycle learning-rate schedule, cross-entropy, random
+-``shift`` pixel translations, on CPU and on one thread (so the weights depend on
neither the device nor the core count, and because these tiny convolutions run faster
on one thread than on contended intra-op threads), initialised and shuffled from a
generator seeded with ``seed`` (the global RNG state is left untouched). About 3 s of
CPU for the ~1,440 training digits; ~0.985 held-out accuracy on the reference split.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness import ArtifactCache, Dataset, MetricContext, stable_hash
from plugins.metrics._common import memoised, stored_artifact, to_unit

log = logging.getLogger(__name__)

CLASSIFIER_KIND = "classifier"
CLASSIFIER_VERSION = 2  # bump when the architecture or training code changes


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training hyper-parameters (all part of the artifact key)."""

    widths: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 64
    epochs: int = 15
    batch_size: int = 64
    lr: float = 5e-3
    shift: int = 1
    seed: int = 0


class DigitNet(nn.Module):
    """The CNN itself; see the module docstring for the layers."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int], feature_dim: int) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w0, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w0, w1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * w2, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Classifier:
    """A trained digit classifier: ``features`` and ``predict`` on images in [0, 1].

    :ivar key: the artifact key (or an in-memory hash when there is no cache).
    :ivar meta: the artifact metadata (``reference_accuracy``, ``train_time_s``, ...).
    """

    def __init__(self, net: DigitNet, image_size: int, channels: int, key: str, meta: dict[str, Any]) -> None:
        self.net = net.eval()
        self.image_size = image_size
        self.channels = channels
        self.key = key
        self.meta = meta
        self._lock = threading.Lock()

    def _prepare(self, images01: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images01).float()
        if x.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            if self.channels == 1:
                x = x.mean(dim=1, keepdim=True)  # RGB samples of a grayscale dataset
            else:
                raise ValueError(f"the classifier expects {self.channels} channels, got {x.shape[1]}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x

    @torch.no_grad()
    def _run(self, images01: torch.Tensor, fn: str, device: Any, batch_size: int) -> torch.Tensor:
        x = self._prepare(images01)
        with self._lock:  # one module shared by the cells of this process
            net = self.net.to(device)
            outs = [getattr(net, fn)(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images01: torch.Tensor, device: Any = "cpu", batch_size: int = 1024) -> np.ndarray:
        """Penultimate-layer features, float64 N x ``feature_dim``."""
        return self._run(images01, "embed", device, batch_size).double().numpy()

    def logits(self, images01: torch.Tensor, device: Any = "cpu", batch_size: int = 1024) -> torch.Tensor:
        return self._run(images01, "forward", device, batch_size)

    def predict(self, images01: torch.Tensor, device: Any = "cpu", batch_size: int = 1024) -> torch.Tensor:
        """Predicted class labels, long N."""
        return self.logits(images01, device, batch_size).argmax(dim=1)


# ------------------------------------------------------------------------- training


def _labels(batch: Any, split: str) -> torch.Tensor:
    labels = batch.conditions.labels
    if labels is None:
        raise ValueError(f"the digit classifier needs class labels, but the '{split}' split has none")
    return torch.as_tensor(labels).long()


def _shifted(x: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by a random offset in [-shift, shift]^2 (zero fill)."""
    if shift <= 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    offsets = [(dy, dx) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)]
    views = torch.stack([padded[..., dy : dy + h, dx : dx + w] for dy, dx in offsets])
    pick = torch.randint(len(offsets), (x.shape[0],), generator=g)
    return views[pick, torch.arange(x.shape[0])]


def train_classifier(dataset: Dataset, config: ClassifierConfig) -> tuple[DigitNet, dict[str, Any]]:
    """Train on ``dataset.load("train")``; return the net and its metadata (CPU only)."""
    t0 = time.perf_counter()
    train = dataset.load("train")
    x_train, y_train = to_unit(train.images), _labels(train, "train")
    reference = dataset.load("reference")
    x_ref, y_ref = to_unit(reference.images), _labels(reference, "reference")
    num_classes = int(dataset.num_classes or int(max(y_train.max(), y_ref.max())) + 1)
    channels, image_size = int(x_train.shape[1]), int(x_train.shape[-1])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible on any core count (see the module docstring)
    try:
        net = _fit(x_train, y_train, channels, num_classes, config)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        train_acc = float((net(x_train).argmax(1) == y_train).float().mean())
        ref_acc = float((net(x_ref).argmax(1) == y_ref).float().mean())
    elapsed = time.perf_counter() - t0
    log.info("digit classifier: reference accuracy %.4f, trained in %.1f s", ref_acc, elapsed)
    meta = {
        "reference_accuracy": ref_acc,
        "train_accuracy": train_acc,
        "train_time_s": round(elapsed, 3),
        "num_train": len(x_train),
        "num_reference": len(x_ref),
        "num_classes": num_classes,
        "channels": channels,
        "image_size": image_size,
        "feature_dim": config.feature_dim,
        "widths": list(config.widths),
    }
    return net, meta


def _fit(
    x_train: torch.Tensor, y_train: torch.Tensor, channels: int, num_classes: int, config: ClassifierConfig
) -> DigitNet:
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG
        torch.manual_seed(config.seed)
        net = DigitNet(channels, num_classes, config.widths, config.feature_dim)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    n = len(x_train)
    steps_per_epoch = max(1, (n + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    net.train()
    for _epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb = _shifted(x_train[idx], config.shift, g)
            loss = F.cross_entropy(net(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


# ------------------------------------------------------------------ artifacts + memo

_MEMO: dict[str, Any] = {}
_MEMO_LOCK = threading.Lock()


def clear_memo() -> None:
    """Forget the in-process classifiers (tests use this)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def classifier_config(dataset: Dataset, config: ClassifierConfig) -> dict[str, Any]:
    """What identifies a classifier artifact: the dataset and every hyper-parameter."""
    return {
        "dataset": dataset.config_key(),
        "arch": "digit_cnn",
        "version": CLASSIFIER_VERSION,
        **dataclasses.asdict(config),
    }


def _require_dataset(ctx: MetricContext) -> Dataset:
    if ctx.dataset is None:
        raise ValueError("the digit classifier needs ctx.dataset (its 'train' and 'reference' splits)")
    return ctx.dataset


def _restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any], config: ClassifierConfig, key: str) -> Classifier:
    net = DigitNet(int(meta["channels"]), int(meta["num_classes"]), config.widths, config.feature_dim)
    net.load_state_dict(tensors)
    return Classifier(net, int(meta["image_size"]), int(meta["channels"]), key, meta)


def get_classifier(ctx: MetricContext, config: ClassifierConfig | None = None) -> Classifier:
    """The classifier of ``ctx.dataset`` (see :func:`load_classifier`), cached in ``ctx.cache``."""
    return load_classifier(_require_dataset(ctx), ctx.cache, config)


def load_classifier(dataset: Dataset, cache: ArtifactCache | None, config: ClassifierConfig | None = None) -> Classifier:
    """The classifier of ``dataset``: memoised, else loaded from ``cache``, else trained.

    Without a cache (``cache is None``, e.g. a contract test) it is trained in memory and
    memoised for the rest of the process.
    """
    config = config or ClassifierConfig()
    cfg = classifier_config(dataset, config)
    if cache is not None:
        # the root is part of the memo key so that every cache folder gets its artifact
        memo_key = f"{CLASSIFIER_KIND}:{cache.root.resolve()}:{cache.key(CLASSIFIER_KIND, cfg)}"
    else:
        memo_key = f"{CLASSIFIER_KIND}:mem-{stable_hash(cfg, 20)}"

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        net, meta = train_classifier(dataset, config)
        return {k: v.detach().clone() for k, v in net.state_dict().items()}, meta

    def load() -> Classifier:
        tensors, meta, key = stored_artifact(cache, CLASSIFIER_KIND, cfg, build)
        return _restore(tensors, meta, config, key or memo_key.rsplit(":", 1)[1])

    return memoised(_MEMO, _MEMO_LOCK, memo_key, load)
