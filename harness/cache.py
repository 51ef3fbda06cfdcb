"""Content-addressed artifact cache: safetensors + JSON metadata, written atomically.

An artifact is identified by ``(kind, key)``; ``key`` is a hash of the canonical JSON of
the config that produced it, its parent's key and the code version. Layout::

    <root>/<kind>/<key>/tensors.safetensors
    <root>/<kind>/<key>/meta.json
    <root>/<kind>/.lock-<key>                 held while the artifact is built

An artifact is written into a hidden ``<root>/<kind>/.tmp-*`` folder and renamed into
place (:mod:`harness.fsio`), so an interrupted write is never seen as an artifact.
:meth:`ArtifactCache.get_or_create` builds under the key's lock, so two processes never
build the same artifact at once: the second waits and then loads the first one's.
Everything is written before ``get_or_create`` returns; a cell costs seconds, a write
milliseconds, so nothing is gained by writing later on another thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fsio

log = logging.getLogger(__name__)

CODE_VERSION = "1"  # bump when a change invalidates every cached artifact

#: kinds that are cheap to rebuild from their parents: written without fsync (a torn
#: file after a power loss is detected on load and rebuilt). Everything else (trained and
#: pruned models, classifiers) is fsynced before it is renamed into place.
VOLATILE_KINDS = frozenset({"samples", "metric"})

#: where earlier versions staged artifacts; only cleaned now
OLD_STAGING_DIR = ".staging"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and normalised floats, the input of every hash."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), default=str)


def _normalise(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if obj.is_integer():
            return int(obj)  # 1.0 and 1 hash the same
        return round(obj, 12)
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short hex hash of ``obj``'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@dataclass
class Artifact:
    """A loaded artifact: tensors (on CPU), metadata, and its folder."""

    kind: str
    key: str
    tensors: dict[str, Any]
    meta: dict[str, Any]
    path: Path


class ArtifactCache:
    """Content-addressed store of tensors + metadata under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def key(self, kind: str, config: Any, parent: str | None = None) -> str:
        """The key of an artifact of ``kind`` built from ``config`` (and ``parent``)."""
        return stable_hash({"kind": kind, "config": config, "parent": parent, "code": CODE_VERSION}, 20)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def exists(self, kind: str, key: str) -> bool:
        """Whether ``(kind, key)`` is stored (its ``meta.json`` is written last)."""
        return (self.path(kind, key) / "meta.json").is_file()

    def load(self, kind: str, key: str) -> Artifact:
        from safetensors.torch import load_file

        p = self.path(kind, key)
        meta = json.loads((p / "meta.json").read_text())
        tensor_file = p / "tensors.safetensors"
        tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
        return Artifact(kind, key, tensors, meta, p)

    def load_meta(self, kind: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(kind, key) / "meta.json").read_text())

    def save(self, kind: str, key: str, tensors: dict[str, Any], meta: dict[str, Any]) -> Artifact:
        """Write atomically and return the artifact as :meth:`load` would read it.

        If another writer put the artifact in place first, theirs is kept and returned.
        Durable kinds are read back from disk, so their tensors never share memory with
        the caller's (a model's weights); volatile ones are returned as written.
        """
        from safetensors.torch import save_file

        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        text = json.dumps({**meta, "_kind": kind, "_key": key}, indent=1, sort_keys=True, default=str)
        final = self.path(kind, key)
        tmp = fsio.make_tmp_dir(final)
        try:
            if clean:
                save_file(clean, str(tmp / "tensors.safetensors"))
            (tmp / "meta.json").write_text(text)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        durable = kind not in VOLATILE_KINDS
        if not fsio.publish_dir(tmp, final, durable=durable) or durable:
            return self.load(kind, key)
        return Artifact(kind, key, clean, json.loads(text), final)

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold the inter-process lock for building ``(kind, key)``."""
        with fsio.lock(self.root / kind / f".lock-{key}"):
            yield

    def get_or_create(
        self,
        kind: str,
        config: Any,
        build: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        parent: str | None = None,
        *,
        key: str | None = None,
    ) -> Artifact:
        """Load the artifact for ``config``, building and saving it first if needed.

        ``build`` returns ``(tensors, meta)``; it runs under the key's lock, after a
        second look-up, so only one process builds an artifact. ``config`` and ``parent``
        are added to the stored metadata.

        :param key: ``self.key(kind, config, parent)`` when the caller has it already.
        """
        if key is None:
            key = self.key(kind, config, parent)
        found = self._find(kind, key)
        if found is not None:
            return found
        with self.lock(kind, key):
            found = self._find(kind, key)  # built by another process while we waited
            if found is not None:
                return found
            log.info("building %s artifact %s", kind, key)
            tensors, meta = build()
            return self.save(kind, key, tensors, {**meta, "config": config, "parent": parent})

    def _find(self, kind: str, key: str) -> Artifact | None:
        """Load a stored artifact; an unreadable one (torn by a crash) is moved aside and
        removed, and ``None`` returned, so it is rebuilt."""
        if not self.exists(kind, key):
            return None
        try:
            return self.load(kind, key)
        except Exception as exc:  # noqa: BLE001 - json, safetensors and OS errors alike
            log.warning("cache: %s artifact %s is unreadable (%s); rebuilding it", kind, key, exc)
            broken = self.path(kind, key)
            aside = broken.parent / f".broken-{key}-{os.getpid()}"
            with contextlib.suppress(OSError):
                os.rename(broken, aside)
                shutil.rmtree(aside, ignore_errors=True)
            return None

    def clean_partial(self) -> int:
        """Remove the temporary folders of interrupted writes (:func:`harness.fsio.is_stale_tmp`:
        their writer on this host is gone, or they are a day old); return how many.

        Looks in every kind folder, and in ``.staging/`` where older versions wrote.
        Live writers' folders, of this or another process, are left alone.
        """
        if not self.root.is_dir():
            return 0
        removed = fsio.remove_stale_tmp(list(self.root.glob("*/.tmp-*")))
        with contextlib.suppress(OSError):  # gone already, or still in use by an old version
            (self.root / OLD_STAGING_DIR).rmdir()
        return removed
