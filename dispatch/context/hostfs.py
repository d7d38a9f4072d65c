"""What a worker lets a submitted task read of its host: the workspace allowed, ordinary files, bounded reads.

The input names its ``workspace_path`` and its ``file:`` requirements; the worker
reads them with its own rights.  So phases 0 and 3 (embedded or on a worker)
only read:

* under an allowed workspace root (``DISPATCH_WORKSPACE_ROOTS``; never ``/`` or
  a system tree: ``dispatch.config.workspace_root_check``);
* regular files on ordinary file systems: a kernel file system (``proc``,
  ``sysfs``, ``devtmpfs``, ...) is never entered, because its "regular files"
  block (``/proc/kmsg``) or never end;
* at most a given number of bytes per file, opened non-blocking so that a file
  swapped for a FIFO between the check and the open cannot hang the read.

Which file systems are special is read from ``/proc/self/mountinfo`` (Linux);
elsewhere the check is the workspace roots alone.  Dispatch's own rule, so by hand.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Optional

from dispatch.config import workspace_root_check
from dispatch.context.errors import ContextGatheringError

SPECIAL_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "efivarfs", "binfmt_misc", "selinuxfs",
    "rpc_pipefs", "nsfs", "devfs", "fdescfs", "kernfs"})
_MOUNTS_TTL_S = 30.0
_cache: tuple[float, frozenset[int]] = (0.0, frozenset())


def special_devices() -> frozenset[int]:
    """``st_dev`` of every mounted kernel file system (re-read at most every 30 s)."""
    global _cache
    now = time.monotonic()
    if now - _cache[0] < _MOUNTS_TTL_S:
        return _cache[1]
    devices = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 3:
                    continue
                fstype = line.split(" - ", 1)[1].split()[0]
                if fstype in SPECIAL_FS:
                    major, _, minor = fields[2].partition(":")
                    devices.add(os.makedev(int(major), int(minor)))
    except (OSError, ValueError):
        pass  # no /proc (not Linux, or hidden): the roots are the check
    _cache = (now, frozenset(devices))
    return _cache[1]


def is_special(st_dev: int) -> bool:
    return st_dev in special_devices()


def allowed_workspace(path: str) -> Path:
    """The workspace as a resolved directory this worker may read, or a ``ContextGatheringError`` saying why not."""
    workspace = Path(path or ".").expanduser()
    try:
        if not workspace.exists():
            raise ContextGatheringError(f"workspace_path {path!r} does not exist")
        if not workspace.is_dir():
            raise ContextGatheringError(f"workspace_path {path!r} is not a directory")
        refused = workspace_root_check(str(workspace))
        if refused:
            raise ContextGatheringError(refused)
        real = workspace.resolve()
        if is_special(real.stat().st_dev):
            raise ContextGatheringError(f"workspace_path {path!r} is on a kernel file system, not files to read")
        if not os.access(real, os.R_OK | os.X_OK):
            raise PermissionError(13, "permission denied")
    except OSError as exc:  # a worker on another machine, or as another user (git workspaces need no access)
        raise ContextGatheringError(f"workspace_path {path!r} cannot be read on this worker "
                                    f"({exc.strerror or exc})") from None
    return real


def read_regular(path: str | Path, limit: int) -> Optional[bytes]:
    """At most ``limit`` bytes of a regular file on an ordinary file system; None for anything else.

    ``O_NONBLOCK``: a FIFO or device put in the file's place after it was listed
    opens without waiting, and is then refused by ``fstat``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or is_special(st.st_dev):
            return None
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def display_name(name: str) -> str:
    """A file name as text that can be saved: bytes that are not UTF-8 (Python's surrogate escapes) as
    ``\\xNN``, so the name stays visible and distinct instead of crashing the state's JSON."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
