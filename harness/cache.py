"""Content-addressed artifact cache: safetensors + JSON metadata, written atomically.

An artifact is identified by ``(kind, key)``; ``key`` is a hash of the canonical JSON of
the config that produced it, its parent's key and the code version. Layout::

    <root>/<kind>/<key>/tensors.safetensors
    <root>/<kind>/<key>/meta.json

An artifact is written into a temporary folder (``<root>/.staging/.tmp-*``) and renamed
into place, so an interrupted write is never seen as an artifact. ``get_or_create`` holds a
file lock so two processes never build the same artifact at once: one lock file per key
for durable kinds (models), and for volatile kinds one of ``LOCK_STRIPES`` lock files per
kind chosen by the key (creating a new file per key cost more than the rest of a cell's
bookkeeping on slow-metadata disks). Two keys of one stripe built at the same moment by
two processes take turns; within a process a held stripe is shared (counted), so nested
and overlapping builds never wait for themselves. ``exclusive=False`` skips the lock for
an artifact only one worker ever builds (the engine's metric values, and the samples of
every variant but the reference: a variant's cells form one work unit): if two
processes built it anyway, the atomic rename keeps the first and drops the second.

Volatile artifacts (samples, metric values: cheap to rebuild, several per cell) built by
``get_or_create(..., wait=False)`` (as the engine does) are returned at once and written
by the cache's one writer thread,
which releases the key's lock only once the artifact is in place: other processes wait
for the file as before, and in this process a read of a queued key waits for its write.
``flush`` waits for all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import writegate

log = logging.getLogger(__name__)

CODE_VERSION = "1"  # bump when a change invalidates every cached artifact


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


#: kinds that are cheap to rebuild from their parents: written without fsync (a torn
#: file after a power loss is detected on load and rebuilt). Everything else (trained and
#: pruned models, classifiers) is fsynced before it is renamed into place.
VOLATILE_KINDS = frozenset({"samples", "metric"})

#: volatile artifacts queued for the writer thread before ``get_or_create`` waits
_MAX_PENDING_WRITES = 8

#: where artifacts are written before they are renamed into ``<kind>/<key>``
STAGING_DIR = ".staging"

#: lock files per volatile kind; a collision only makes two builds of different keys take
#: turns (with W processes building at once, a build waits with probability ~ (W-1)/1024)
LOCK_STRIPES = 1024


class ArtifactCache:
    """Content-addressed store of tensors + metadata under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        #: kind folders this object has created or seen: not made again for every
        #: artifact (a folder removed meanwhile is made again, see :meth:`save`)
        self._made_dirs: set[Path] = set()
        # volatile artifacts built by get_or_create are written by one writer thread (a
        # few file creations each, ~1 ms on many disks), so the next cell overlaps them
        self._writer: ThreadPoolExecutor | None = None
        self._writer_pid = 0
        self._pending: dict[tuple[str, str], Future[None]] = {}
        #: keys per kind folder, read once (see exists(listed=True)); writes add to it
        self._listings: dict[str, set[str]] = {}
        # lock files held by this process: path -> [open file, holders] (see _lock)
        self._held: dict[Path, list[Any]] = {}
        self._held_guard = threading.Lock()
        self._held_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        self.flush()
        return {**self.__dict__, "_writer": None, "_writer_pid": 0, "_pending": {}, "_held": {}, "_listings": {},
                "_held_guard": None, "_held_pid": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._held_guard = threading.Lock()

    def _ensure_dir(self, folder: Path) -> None:
        if folder not in self._made_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(folder)

    # -- keys -------------------------------------------------------------------------
    def key(self, kind: str, config: Any, parent: str | None = None) -> str:
        """The key of an artifact of ``kind`` built from ``config`` (and ``parent``)."""
        return stable_hash({"kind": kind, "config": config, "parent": parent, "code": CODE_VERSION}, 20)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    # -- read -------------------------------------------------------------------------
    def exists(self, kind: str, key: str, *, listed: bool = False) -> bool:
        """Whether ``(kind, key)`` is stored.

        :param listed: answer a miss from this process's listing of the kind folder (read
            once, plus what this process has written) instead of a look-up on disk. Only
            for artifacts no other process builds meanwhile (``exclusive=False``): a miss
            there costs a look-up that waits for the writer thread's folder updates
            (~0.4 ms, several per cell), and a wrong "missing" only rebuilds an artifact
            whose rename then keeps the stored one.
        """
        self._settle(kind, key)
        if listed and key not in self._listing(kind):
            return False
        p = self.path(kind, key)
        return (p / "meta.json").is_file()

    def _listing(self, kind: str) -> set[str]:
        names = self._listings.get(kind)
        if names is None:
            try:
                with os.scandir(self.root / kind) as entries:
                    names = {e.name for e in entries if not e.name.startswith(".")}
            except FileNotFoundError:
                names = set()
            self._listings[kind] = names
        return names

    def load(self, kind: str, key: str) -> Artifact:
        from safetensors.torch import load_file

        self._settle(kind, key)
        p = self.path(kind, key)
        meta = json.loads((p / "meta.json").read_text())
        tensor_file = p / "tensors.safetensors"
        tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
        return Artifact(kind, key, tensors, meta, p)

    def load_meta(self, kind: str, key: str) -> dict[str, Any]:
        self._settle(kind, key)
        return json.loads((self.path(kind, key) / "meta.json").read_text())

    # -- write ------------------------------------------------------------------------
    def save(self, kind: str, key: str, tensors: dict[str, Any], meta: dict[str, Any]) -> Artifact:
        """Write atomically; if another process won the race, keep theirs.

        Returns the artifact as :meth:`load` would read it. For volatile kinds (samples,
        metric values: several per cell) it is not read back: see :meth:`_prepare`.
        Durable kinds (models, and every kind plugins store) are read back from disk.
        """
        art, text = self._prepare(kind, key, tensors, meta)
        if not self._write(kind, key, art.tensors, text) or kind not in VOLATILE_KINDS:
            return self.load(kind, key)  # theirs, or a durable kind
        return art

    def _prepare(self, kind: str, key: str, tensors: dict[str, Any], meta: dict[str, Any]) -> tuple[Artifact, str]:
        """The artifact as it will be stored, and its ``meta.json`` text.

        The metadata is parsed back from that text and the tensors are the CPU copies
        that are written, so this is what :meth:`load` gives once they are on disk (the
        tensors may share memory with ``tensors``).
        """
        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        text = json.dumps({**meta, "_kind": kind, "_key": key}, indent=1, sort_keys=True, default=str)
        return Artifact(kind, key, clean, json.loads(text), self.path(kind, key)), text

    def _write(self, kind: str, key: str, clean: dict[str, Any], text: str) -> bool:
        """Write one artifact into a ``.tmp-*`` folder and rename it into place; ``False``
        if another process had put it there first (theirs is kept)."""
        from safetensors.torch import save_file

        final = self.path(kind, key)
        # staged outside the kind folder: creating entries in a folder blocks look-ups of
        # missing names in it (the directory lock), and the engine looks keys up there
        # while the writer thread writes; only the rename touches the kind folder
        staging = self.root / STAGING_DIR
        for folder in (final.parent, staging):
            self._ensure_dir(folder)
        durable = kind not in VOLATILE_KINDS
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-{key}-{tmp_tag()}-", dir=staging))
        except FileNotFoundError:  # the folder was removed since we made it
            self._made_dirs.difference_update({final.parent, staging})
            for folder in (final.parent, staging):
                self._ensure_dir(folder)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-{key}-{tmp_tag()}-", dir=staging))
        try:
            if clean:
                save_file(clean, str(tmp / "tensors.safetensors"))
                if durable:
                    _fsync_path(tmp / "tensors.safetensors")
            with open(tmp / "meta.json", "w") as fh:
                fh.write(text)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, final)
            except FileNotFoundError:  # the kind folder was removed meanwhile
                self._made_dirs.discard(final.parent)
                self._ensure_dir(final.parent)
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        listing = self._listings.get(kind)
        if listing is not None:
            listing.add(key)
        return True

    # -- the writer thread (volatile artifacts) -----------------------------------------
    def _write_later(self, kind: str, key: str, clean: dict[str, Any], text: str, lock_path: Path | None) -> None:
        """Queue the write of a volatile artifact; the writer releases ``lock_path`` (this
        key's build lock, if held) once the artifact is in place, so other processes wait for the
        file as before. This process sees it at once: reads of a queued key wait for it."""
        if self._writer is None or self._writer_pid != os.getpid():  # (none yet, or forked)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")
            self._writer_pid = os.getpid()
            self._pending = {}
        self._pending = {k: f for k, f in self._pending.items() if not f.done()}
        while len(self._pending) >= _MAX_PENDING_WRITES:  # bound the memory held by queued tensors
            self._settle(*next(iter(self._pending)))
        # the job starts while the run's thread does plugin work (see harness.writegate)
        self._pending[(kind, key)] = writegate.submit(
            self._writer, self._write_and_unlock, kind, key, clean, text, lock_path
        )

    def _write_and_unlock(self, kind: str, key: str, clean: dict[str, Any], text: str, lock_path: Path | None) -> None:
        try:
            self._write(kind, key, clean, text)
        except Exception as exc:  # noqa: BLE001 - its values are in use already; rebuilt when next needed
            log.warning("cache: could not write %s artifact %s (%s); it is rebuilt when needed", kind, key, exc)
        finally:
            if lock_path is not None:
                self._unlock(lock_path)

    def _settle(self, kind: str, key: str) -> None:
        """Wait until a queued write of ``(kind, key)`` (if any) is in place."""
        fut = self._pending.pop((kind, key), None)
        if fut is not None:
            with writegate.opened():
                fut.result()

    def flush(self) -> None:
        """Wait until every queued artifact is in place (the engine calls it after each unit)."""
        while self._pending:
            self._settle(*next(iter(self._pending)))

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Exclusive inter-process lock for building one artifact."""
        path = self._lock(kind, key)
        try:
            yield
        finally:
            self._unlock(path)

    def lock_path(self, kind: str, key: str) -> Path:
        """The lock file guarding ``(kind, key)``: per key for durable kinds, a stripe of
        :data:`LOCK_STRIPES` for volatile kinds."""
        if kind in VOLATILE_KINDS:
            return self.root / kind / f".lock-stripe-{int(key[:8], 16) % LOCK_STRIPES:04d}"
        return self.root / kind / f".lock-{key}"

    def _lock(self, kind: str, key: str) -> Path:
        """``flock`` this key's lock file (once per process: a file this process holds
        already is shared, counted); release with :meth:`_unlock` (any thread)."""
        path = self.lock_path(kind, key)
        with self._held_guard:
            if self._held_pid != os.getpid():  # forked: the parent's locks are not ours
                self._held, self._held_pid = {}, os.getpid()
            held = self._held.get(path)
            if held is not None:
                held[1] += 1
                return path
        self._ensure_dir(path.parent)
        try:
            fh = open(path, "a")  # noqa: SIM115 - closed by _unlock
        except FileNotFoundError:  # the kind folder was removed since we made it
            self._made_dirs.discard(path.parent)
            self._ensure_dir(path.parent)
            fh = open(path, "a")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except BaseException:
            fh.close()
            raise
        with self._held_guard:
            held = self._held.get(path)
            if held is None:
                self._held[path] = [fh, 1]
                return path
            held[1] += 1  # another thread of this process took it meanwhile
        _release(fh)
        return path

    def _unlock(self, path: Path) -> None:
        with self._held_guard:
            held = self._held.get(path)
            if held is None:
                return
            held[1] -= 1
            if held[1]:
                return
            del self._held[path]
        _release(held[0])

    def get_or_create(
        self,
        kind: str,
        config: Any,
        build: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        parent: str | None = None,
        *,
        key: str | None = None,
        wait: bool = True,
        exclusive: bool = True,
    ) -> Artifact:
        """Load the artifact for ``config``, building and saving it first if needed.

        :param key: ``self.key(kind, config, parent)`` when the caller has computed it
            already (hashing a config is a noticeable part of a cell's overhead).
        :param wait: ``False``: a volatile artifact built now is returned before it is
            on disk; the writer thread writes it (holding the key's lock until then), so
            its file creations overlap the caller's next work. Reads of that key through
            this cache wait for it; :meth:`flush` waits for all. Durable kinds are
            always written before this returns.
        :param exclusive: ``False``: build without the inter-process lock, for an
            artifact only one worker ever builds (two builders are harmless, just wasted
            work: the first rename wins and the other is dropped).
        """
        if key is None:
            key = self.key(kind, config, parent)
        if self.exists(kind, key, listed=not exclusive):
            found = self._load_or_discard(kind, key)
            if found is not None:
                return found
        lock_path = self._lock(kind, key) if exclusive else None
        try:
            if exclusive and self.exists(kind, key):
                found = self._load_or_discard(kind, key)
                if found is not None:
                    return found
            log.info("building %s artifact %s", kind, key)
            tensors, meta = build()
            meta = {**meta, "config": config, "parent": parent}
            if wait or kind not in VOLATILE_KINDS:
                return self.save(kind, key, tensors, meta)
            # volatile: returned now, written by the writer thread, which then unlocks
            art, text = self._prepare(kind, key, tensors, meta)
            self._write_later(kind, key, art.tensors, text, lock_path)
            lock_path = None
            return art
        finally:
            if lock_path is not None:
                self._unlock(lock_path)

    def _load_or_discard(self, kind: str, key: str) -> Artifact | None:
        """Load; an unreadable artifact (torn by a crash) is moved aside and ``None`` returned."""
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
        """Remove temporary folders of interrupted writes (:func:`is_stale_tmp`: their
        writer on this host is gone, or they are a day old); return how many. Live
        writers' folders, of this or another process, are left alone."""
        if not self.root.is_dir():
            return 0
        return remove_stale_tmp(list(self.root.glob("*/.tmp-*")))


# ---------------------------------------------------------------------------- temporary files

#: this machine's name as it appears in temporary names (shared folders see many hosts)
HOST = "".join(c if c.isalnum() else "_" for c in __import__("socket").gethostname())[:40] or "host"
STALE_AFTER_S = 24 * 3600


def tmp_tag() -> str:
    """``<host>-<pid>``: the writer of a temporary file or folder, part of its name."""
    return f"{HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale_tmp(path: Path, now: float | None = None, max_age_s: float = STALE_AFTER_S) -> bool:
    """A ``.tmp-*`` left by an interrupted writer: written on this host by a process that
    no longer runs, or untouched for ``max_age_s`` (writers on other hosts, old formats)."""
    import re
    import time

    found = re.search(rf"-{re.escape(HOST)}-(\d+)(?:[-.]|$)", path.name)
    if found is not None and not _pid_alive(int(found.group(1))):
        return True
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    return age > max_age_s


def remove_stale_tmp(paths: Iterator[Path] | list[Path]) -> int:
    """Delete the stale ones among ``paths`` (files or folders); return how many."""
    n = 0
    for tmp in paths:
        if not is_stale_tmp(tmp):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        n += 1
    return n


def _release(fh: Any) -> None:
    try:
        fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
