"""Crash-safe writes: a file or a whole folder is replaced so that a reader, or a crash at any instant, sees either
the old content or the new one, never a mix.

A folder is replaced by building the new content in a *staging* folder beside it (same filesystem, so renames are
atomic), fsyncing it, and swapping it in. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call: the target
path names the old folder until that instant and the new one after it. Where the exchange is unavailable (other
systems, filesystems without it) the swap is two renames, ``target → backup`` then ``staging → target``; a crash
between them leaves no folder at the target, only the complete backup, which :func:`interrupted_backup` finds
(loaders read it) and the next replacement restores or removes.

Leftovers of killed writers (staging folders of dead processes, backups) are removed by the next replacement of
the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional

__all__ = ["write_text_atomic", "replace_folder", "interrupted_backup", "fsync_file", "fsync_dir", "STAGING_TAG"]

# Sibling names: ".<target name>.pvtv2-staging-<pid>-<random>" and ".<target name>.pvtv2-backup-<pid>-<random>".
STAGING_TAG = ".pvtv2-staging-"
BACKUP_TAG = ".pvtv2-backup-"


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (creations, renames) durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the data files were synced already
        pass
    finally:
        os.close(fd)


def _sibling(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}{tag}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it over ``path``."""
    path = Path(path)
    tmp = _sibling(path, STAGING_TAG)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------------------------------------- folder swap
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where the system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl builds without it
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _leftovers(target: Path, tag: str):
    prefix = f".{target.name}{tag}"
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))


def interrupted_backup(target: str | os.PathLike) -> Optional[Path]:
    """The complete old folder a two-rename swap left when it was interrupted between its renames (``target`` is
    then missing); None otherwise."""
    target = Path(target)
    if target.exists():
        return None
    backups = _leftovers(target, BACKUP_TAG)
    return backups[-1] if len(backups) == 1 else None


def _clean_leftovers(target: Path) -> None:
    """Restore an interrupted two-rename swap, then remove backups and dead writers' staging folders."""
    backup = interrupted_backup(target)
    if backup is not None:
        os.rename(backup, target)
    for path in _leftovers(target, BACKUP_TAG):
        shutil.rmtree(path, ignore_errors=True)
    for path in _leftovers(target, STAGING_TAG):
        pid = path.name[len(f".{target.name}{STAGING_TAG}") :].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, keep: Callable[[str], bool]) -> None:
    """Hard-link (else copy) the entries of ``old`` that ``keep`` accepts and ``new`` lacks into ``new``."""
    for entry in os.scandir(old):
        dst = new / entry.name
        if not keep(entry.name) or os.path.lexists(dst):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(dst))


@contextlib.contextmanager
def replace_folder(target: str | os.PathLike, keep: Callable[[str], bool] = lambda name: True) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; write the new content there.

    On normal exit, the entries of the old ``target`` that ``keep(name)`` accepts (and the staging folder does not
    hold) are carried over as hard links, every file and the folder are fsynced, and the staging folder takes
    ``target``'s place atomically (see the module docstring). On an exception the staging folder is removed and
    ``target`` is untouched. A symlinked ``target`` is resolved: the folder it points to is replaced.
    """
    target = Path(os.path.realpath(os.fspath(target)))
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(target)
    staging = _sibling(target, STAGING_TAG)
    staging.mkdir()
    try:
        # The new folder gets the old one's permissions (mkdir's default under the umask for a new target).
        if target.is_dir():
            os.chmod(staging, target.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)
        yield staging
        for root, _, files in os.walk(staging):
            for name in files:
                fsync_file(os.path.join(root, name))
        if target.is_dir():
            _carry_over(target, staging, keep)
        fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    try:
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old content
        else:
            backup = _sibling(target, BACKUP_TAG)
            os.rename(target, backup)
            os.rename(staging, target)  # a crash before this line leaves only `backup`: see interrupted_backup
            shutil.rmtree(backup, ignore_errors=True)
    except OSError as e:
        if backup is not None and backup.exists() and not target.exists():
            with contextlib.suppress(OSError):  # if even this fails, loaders read the backup (interrupted_backup)
                os.rename(backup, target)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        # EBUSY: the target is a mount point (a container volume) or otherwise pinned, and cannot be swapped.
        raise OSError(
            e.errno,
            f"could not swap the new content into {target} ({e.strerror}); nothing was "
            f"changed there. A mount point cannot be replaced: write into a folder inside it",
        ) from e
    fsync_dir(target.parent)
