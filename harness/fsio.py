"""Atomic file writes, leftovers of interrupted writes, and file locks.

Every file the harness keeps (result fragments, manifests, cached artifacts, exports) is
written the same way: into a hidden temporary name ``.tmp-<name>-<host>-<pid>-...`` in
the folder of its final name, then renamed into place with ``os.replace`` (files) or
``os.rename`` (folders). A reader therefore sees the whole thing or nothing: every
reader skips names that start with ``.``, and temporary names never end in
``.parquet``. A process killed mid-write leaves its temporary name behind;
:func:`remove_stale_tmp` deletes those whose writer is gone.

``durable=True`` fsyncs the data before the rename, for what cannot be rebuilt cheaply
(result fragments, trained weights, manifests), so a power cut cannot leave a renamed
but empty file. The folder itself is not fsynced: a power cut may then lose the rename,
which only means the work is redone. Everything else (sample sets, metric values,
reports) skips the fsync; a file torn by a power cut is detected on load and rebuilt.

Locks are ``filelock`` locks (``flock`` on Unix): held by an open file, so a killed
holder releases them, and two lock objects on one path exclude each other even within
one process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

#: this machine's name as it appears in temporary names (shared folders see many hosts)
HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"
#: a temporary name untouched this long is stale even if its writer cannot be checked
STALE_AFTER_S = 24 * 3600

_serial = itertools.count()


def tmp_tag() -> str:
    """``<host>-<pid>``: the writer of a temporary file or folder, part of its name."""
    return f"{HOST}-{os.getpid()}"


def tmp_path(final: Path) -> Path:
    """A fresh hidden temporary name beside ``final``; it never ends in ``.parquet``."""
    return final.with_name(f".tmp-{final.name}-{tmp_tag()}-{next(_serial)}.tmp")


def write_bytes(
    final: str | os.PathLike[str],
    data: bytes,
    *,
    durable: bool = False,
    before_replace: Callable[[], Any] | None = None,
) -> Path:
    """Write ``data`` to ``final`` atomically; return ``final`` as a ``Path``.

    :param durable: fsync the data before the rename.
    :param before_replace: called once the data is complete in the temporary file, just
        before the rename (the result store moves an older fragment aside there, so a
        failed write never removes the old one).
    """
    final = Path(final)
    tmp = tmp_path(final)
    try:
        with open(tmp, "wb") as fh:  # (a dead writer with our pid may have left this name)
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return final


def write_json(final: str | os.PathLike[str], obj: Any, *, durable: bool = False) -> Path:
    """:func:`write_bytes` of ``obj`` as indented JSON."""
    return write_bytes(final, (json.dumps(obj, indent=1, default=str) + "\n").encode(), durable=durable)


def make_tmp_dir(final: Path) -> Path:
    """A fresh hidden temporary folder beside ``final`` (its parent is created if needed)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-{tmp_tag()}-", dir=final.parent))


def publish_dir(tmp: Path, final: Path, *, durable: bool = False) -> bool:
    """Rename the filled folder ``tmp`` to ``final``; ``False`` (and ``tmp`` removed) if
    ``final`` exists already: the first writer's folder is kept."""
    try:
        if durable:
            for f in tmp.iterdir():
                fsync_file(f)
        os.rename(tmp, final)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir():
            return False
        raise


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock(path: Path, *, timeout: float = -1) -> FileLock:
    """An exclusive inter-process lock on ``path`` (created, with its folder, if missing).

    Use it as a context manager; ``timeout=0`` raises ``filelock.Timeout`` at once if
    another holder has it, ``-1`` waits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=timeout)


# -- leftovers of interrupted writes -------------------------------------------------------


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
    found = re.search(rf"-{re.escape(HOST)}-(\d+)(?:[-.]|$)", path.name)
    if found is not None and not _pid_alive(int(found.group(1))):
        return True
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    return age > max_age_s


def remove_stale_tmp(paths: Iterable[Path]) -> int:
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

