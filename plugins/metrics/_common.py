"""Helpers shared by the built-in metrics: load-once memos, cached artifacts, weight files, inputs.

Each of these was written out in several metrics (``fid``, ``clip_score``, ``lpips``,
``feature_distance``, the digit classifier); keeping one copy keeps their locking, their
cache fall-back and their one-line error messages the same everywhere.

- :func:`memoised`: a value per key per process (a loaded network, reference statistics);
- :func:`stored_artifact` / :func:`cache_root`: an artifact of ``ctx.cache``, or built in
  memory when the context has no cache;
- :func:`local_weights` / :func:`download_weights`: a weights file from an option or an
  environment variable, else torch's download cache;
- :func:`to_unit`, :func:`to_uint8_rgb`, :func:`check_paired`: what the metrics' inputs are.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from harness import MissingFileError, offline

log = logging.getLogger(__name__)

T = TypeVar("T")


def memoised(memo: dict[Any, T], lock: threading.Lock, key: Hashable, make: Callable[[], T]) -> T:
    """``memo[key]``, made by ``make()`` the first time it is asked for.

    ``make`` runs outside the lock, since loading weights or training takes seconds and
    must not hold up other keys; if two threads race, the first value stored wins and
    both return it, so a process keeps one object per key.
    """
    with lock:
        found = memo.get(key)
    if found is None:
        found = make()
        with lock:
            found = memo.setdefault(key, found)
    return found


def cache_root(cache: Any) -> Any:
    """What names ``cache`` in an in-process memo key: its resolved folder, or ``"mem"`` without one.

    The folder is part of the key so that every cache folder gets its own artifact.
    """
    return cache.root.resolve() if cache is not None else "mem"


def stored_artifact(
    cache: Any,
    kind: str,
    config: Any,
    build: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
    parent: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """``(tensors, meta, key)`` of the ``kind`` artifact for ``config``, built on a miss.

    Without a cache (``cache is None``, e.g. a contract test) ``build`` runs in memory and
    the key is ``None``: the caller names the result its own way.
    """
    if cache is None:
        tensors, meta = build()
        return tensors, meta, None
    art = cache.get_or_create(kind, config, build, parent)
    return art.tensors, art.meta, art.key


def local_weights(
    value: str | os.PathLike[str] | None,
    option: str,
    env_var: str,
    what: str,
    how_to_fix: Callable[[], str],
    filename: str | None = None,
) -> Path | None:
    """The weights file set by the option (``value``, named ``option``), else by ``env_var``; None if neither.

    With ``filename`` a folder may be given and the file is looked for in it. A path that
    is not a file is a :class:`MissingFileError`: ``"<what> <path> (from <source>) not
    found; <how_to_fix()>"`` (``how_to_fix`` is called only then, as it may import).
    """
    configured = value or os.environ.get(env_var)
    if not configured:
        return None
    source = option if value else env_var
    path = Path(configured).expanduser()
    if filename is not None and path.is_dir():
        path = path / filename
    if not path.is_file():
        raise MissingFileError(f"{what} {path} (from {source}) not found; {how_to_fix()}")
    return path


def download_weights(
    url: str, target: Path, what: str, how_to_fix: Callable[[], str], hash_prefix: str | None = None
) -> Path:
    """Download ``url`` to ``target`` (torch's hub cache), unless downloads are off.

    Offline, or when the download fails, a one-line :class:`MissingFileError`
    ``"<what> <target> not found and ...; <how_to_fix()>"``.
    """
    if offline():
        raise MissingFileError(f"{what} {target} not found and downloads are off; {how_to_fix()}")
    import torch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, target)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=False)
    except Exception as exc:  # URLError, HTTPError, OSError...
        reason = getattr(exc, "reason", exc)
        raise MissingFileError(
            f"{what} {target} not found and the download failed ({reason}); {how_to_fix()}"
        ) from None
    return target


def to_unit(images: Any) -> Any:
    """A dataset's images (float in [-1, 1]) mapped to [0, 1], the scale of ``ctx.samples``."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def to_uint8_rgb(images01: Any, metric: str | None = None) -> Any:
    """Float N x C x H x W in [0, 1] -> uint8 N x H x W x C numpy, as an image file stores it.

    Values are rounded to 8 bits and grayscale is repeated to RGB (as
    ``PIL.Image.convert("RGB")`` does), so a feature network sees what it would see
    reading a PNG. With ``metric``, anything but 1 or 3 channels is a ``ValueError``.
    """
    import torch

    x = torch.as_tensor(images01).detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if metric is not None and x.shape[1] != 3:
        raise ValueError(f"{metric} expects 1 or 3 channels, got {x.shape[1]}")
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_paired(ctx: Any, metric: str) -> None:
    """Raise the ``ValueError`` of a paired metric whose reference samples are missing or differ in shape.

    Paired metrics compare sample i with the reference model's sample i (same noise and
    condition), which needs both sets, of one shape.
    """
    if ctx.reference_samples is None:
        raise ValueError(f"{metric} needs ctx.reference_samples (the reference model's samples)")
    if tuple(ctx.samples.shape) != tuple(ctx.reference_samples.shape):
        raise ValueError(
            f"{metric}: samples {tuple(ctx.samples.shape)} and reference samples "
            f"{tuple(ctx.reference_samples.shape)} differ in shape"
        )
