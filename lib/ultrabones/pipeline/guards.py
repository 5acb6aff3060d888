"""Checks a stage run makes before any work: where it writes, whether it may, and that it runs alone.

:func:`check_roots` refuses a derived dataset inside the input (the input is read-only, and a derived root
inside it would add files to it). :func:`check_writable` tries to create a file in every folder the stage
writes, so that a read-only or full disk is reported before the first frame is labelled, not after the last.
:func:`stage_lock` holds an exclusive lock on ``build/<profile>/locks/<stem>.lock`` for the run: a second run
of the same stage into the same build folder (whose cache and outputs it would overwrite) stops at once and
names the first. Different stages may still run together (``make -j``). The operating system releases the
lock when the process ends, even by ``kill -9``, so a stale lock file never blocks a later run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ultrabones.core.errors import ParamsError, UltrabonesError
from ultrabones.core.paths import Paths

#: Stages that write into the derived dataset (``Paths.derived``).
WRITES_DERIVED = ("02_labeling",)


class BusyError(UltrabonesError):
    """Another run of the same stage holds the build folder."""


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_roots(paths: Paths) -> None:
    """Refuse a derived dataset equal to, or inside, the input dataset.

    Raises
    ------
    ParamsError
        Naming both folders and what to set instead.
    """
    if paths.derived_root is None and paths.data_root is None:
        return
    if _inside(paths.derived, paths.dataset):
        where = "is" if paths.derived.resolve() == paths.dataset.resolve() else "lies inside"
        raise ParamsError(
            f"derived_root {paths.derived} {where} the input dataset {paths.dataset}; the input is never written: "
            f"choose a derived_root outside it (-p derived_root=...), or leave it null (build/<profile>/dataset)")


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and a file in it (removed at once); raise naming the folder if either fails.

    Parameters
    ----------
    folder : a folder the stage will write.
    what : what it is, for the message (``"derived_root"``, ``"build folder"``).

    Raises
    ------
    ParamsError
        With the folder, the system's reason and what to do.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ultrabones-write-check.", dir=folder)
        try:
            os.write(fd, b"ok\n")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise ParamsError(
            f"{what} {folder} is not writable ({reason}); nothing was run. Make it writable, free space, or "
            f"choose another folder") from None


def check_outputs(stem: str, paths: Paths) -> None:
    """Every check before a stage runs: :func:`check_roots`, then the build folder and (for the stages of
    :data:`WRITES_DERIVED`) the derived dataset writable."""
    check_roots(paths)
    check_writable(paths.build_dir, "build folder")
    if stem in WRITES_DERIVED:
        check_writable(paths.derived, "derived_root" if paths.derived_root is not None else "derived dataset")


@contextlib.contextmanager
def stage_lock(paths: Paths, stem: str) -> Iterator[Path]:
    """Hold ``<build>/locks/<stem>.lock`` exclusively while the body runs.

    Raises
    ------
    BusyError
        If another process holds it: the message names that run (pid, start time, command) and what to do.
    """
    lock = paths.build_dir / "locks" / f"{stem}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise BusyError(
                f"{stem} is already running into {paths.build_dir} ({holder}); wait for it to finish, or run this "
                f"one into another build folder (another profile, --seed N, or ULTRABONES_BUILD_ROOT)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
